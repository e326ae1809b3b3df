"""``ept-fast train`` / ``python -m ept_fast.train``: train an EPT adapter.

With no arguments it trains on the embedded offline default: the packaged all-MiniLM-L6-v2 as a
sequence classifier on BBC News (stratified, seeded 80/10/10 split). Every option of
``TrainArguments`` is a flag (``--lr-lowrank``) and a key of a ``--config`` YAML/JSON file
(``lr_lowrank``); flags override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import List, Optional

from .tasks import TASKS
from .training import TrainArguments, train

_HELP = {
    "model": "Hugging Face model name or local path (default: the packaged all-MiniLM-L6-v2)",
    "task": f"registry task: {', '.join(sorted(TASKS))} (default: bbc_news, or your files)",
    "task_type": "SEQ_CLS, SEQ_2_SEQ_LM or CAUSAL_LM (default: from the model class)",
    "max_length": "positions the low-rank update covers; inputs are tokenized to at most this many tokens",
    "resume": "continue the run in --output-dir from its last checkpoint",
    "overwrite": "write into an --output-dir that already holds a run",
}


def _flag_type(annotation):
    origin = typing.get_args(annotation)
    base = next((a for a in origin if a is not type(None)), annotation) if origin else annotation
    return {"int": int, "float": float, "str": str, "bool": bool}.get(getattr(base, "__name__", str(base)), str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ept-fast train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML or JSON file of options (flags override it)")
    hints = typing.get_type_hints(TrainArguments)
    for field in dataclasses.fields(TrainArguments):
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=field.default, help=_HELP.get(field.name))
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=_HELP.get(field.name, f"default: {field.default}"))
    return parser


def _read_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config: {file} not found")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"--config: {file} must hold a mapping of option names to values")
    known = {field.name for field in dataclasses.fields(TrainArguments)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config: {file} has unknown option(s) {unknown}")
    return values


def parse_args(argv: Optional[List[str]] = None) -> TrainArguments:
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config:
        parser.set_defaults(**_read_config(first.config))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return TrainArguments(**values)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
        train(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"ept-fast train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
