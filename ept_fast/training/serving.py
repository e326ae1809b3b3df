"""``ept-fast predict``: several adapters on one frozen backbone, served in mixed batches.

Every row of the input file names its adapter (``--adapter-column``; not needed with one
``--adapter``). Rows are batched in file order whatever their adapters, each batch runs once
through the backbone (``EPTModel(..., adapter_names=...)``), and the predictions (a label and
its probability, a regression value, or generated text) go to a JSON-lines or CSV file."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm.auto import tqdm

from ..adapters import check_adapter_name
from ..config import TaskType
from ..model import EPTModel
from ..serialization import atomic_write, load_adapter
from ..tasks import Task, format_input, label_id, read_rows
from .data import load_backbone, task_from_metadata
from .options import InferenceArguments, ModelArguments, Repeatable, option
from .prediction import predict_rows
from .report import check_writable


@dataclasses.dataclass
class ServedAdapters:
    """The adapters on one backbone (predict, serve)."""

    adapter: List[str] = option(help="NAME=PATH of an adapter to serve (an --output_dir of ept-fast train); repeat "
                                     "it for several; a bare PATH is named after its folder", action=Repeatable)

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()
        if not self.adapter:
            raise ValueError("--adapter: expected at least one NAME=PATH, got none")

    def adapters(self) -> Dict[str, Path]:
        return named_adapters(self.adapter)


@dataclasses.dataclass
class PredictArguments(ServedAdapters, ModelArguments, InferenceArguments):
    """The inputs and where the predictions go.

    Every option of ``ept-fast predict``."""

    input_file: Optional[str] = option(help="CSV or JSON-lines file of inputs, in the adapters' input columns")
    adapter_column: str = option("adapter", "the column naming each row's adapter (not needed with one --adapter)")
    output_file: Optional[str] = option(help="where the predictions go, .jsonl or .csv (default: the input file's "
                                             "name + .predictions.jsonl)")
    overwrite: bool = option(False, "replace --output-file if it exists")

    def __post_init__(self):
        super().__post_init__()
        if not self.input_file:
            raise ValueError("--input-file: expected a CSV or JSON-lines file of inputs, got none")
        if self.output_file and Path(self.output_file).suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"--output-file: expected a .jsonl or .csv file, got {self.output_file!r}")
        out = self.output_path()
        if out.resolve() == Path(self.input_file).resolve():
            raise ValueError(f"--output-file: {out} is the input file, which the predictions would replace; choose "
                             f"another file")
        if out.exists() and not self.overwrite:
            raise FileExistsError(f"--output-file: {out} exists; pass --overwrite to replace it, or choose another "
                                  f"file")

    def output_path(self) -> Path:
        """--output-file, else the input file's name + .predictions.jsonl."""
        return Path(self.output_file or f"{self.input_file}.predictions.jsonl")


def named_adapters(items: List[str]) -> Dict[str, Path]:
    """--adapter values (NAME=PATH, or a bare PATH named after its folder) by name."""
    named: Dict[str, Path] = {}
    for item in items:
        name, _, path = item.partition("=")
        bare = not path or "/" in name or Path(item).exists()  # a bare PATH (which may hold a '=' itself)
        if bare:
            name, path = Path(item).name, item
        if not name or not path:
            raise ValueError(f"--adapter: expected NAME=PATH, got {item!r}")
        try:
            check_adapter_name(name, f"--adapter {item}")
        except ValueError as error:
            raise ValueError(f"{error}{'; name it with NAME=PATH' if bare else ''}") from None
        if name in named:
            raise ValueError(f"--adapter: the name {name!r} is given twice")
        named[name] = Path(path)
    return named


def read_served(name: str, path: Path, option: str = "--adapter") -> Tuple[dict, Task]:
    """(adapter config, task) of the adapter saved in ``path``; it must record its task."""
    loaded = load_adapter(path)
    task = task_from_metadata(loaded.task)
    if task is None:
        raise ValueError(f"{option} {name}: {path} records no task (its input columns and labels); train it with "
                         f"ept-fast train")
    return loaded.config, task


def check_served_together(configs: Dict[str, dict], tasks: Dict[str, Task], backbone_given: bool,
                          option: str = "--adapter") -> None:
    """Adapters served on one backbone share it (unless --model names it), their task type, and
    for classifiers the head's size."""
    backbones = {name: config.get("base_model_name_or_path") for name, config in configs.items()}
    if not backbone_given and len(set(backbones.values())) > 1:
        raise ValueError(f"{option}: the adapters were trained on different backbones ({backbones}); one backbone "
                         f"serves them all, so they must share it")
    kinds = {name: config.get("task_type") for name, config in configs.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"{option}: the adapters are of different task types ({kinds}); serve them apart")
    if next(iter(kinds.values())) == TaskType.SEQ_CLS.value:
        sizes = {name: task.num_labels for name, task in tasks.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{option}: classifiers served together need heads of one size (the backbone's); "
                             f"the adapters have {sizes} labels")


def load_served_model(args) -> Tuple[EPTModel, object, Dict[str, Task], Dict[str, dict]]:
    """The backbone (``--model``, else the one the adapters were trained on) with every adapter
    of ``args.adapters()`` loaded under its name, its P* computed once; refuses adapters that
    cannot share it (``check_served_together``). Returns the model, the tokenizer, and each
    adapter's task and config."""
    adapters = args.adapters()
    read = {name: read_served(name, path) for name, path in adapters.items()}
    configs, tasks = {name: r[0] for name, r in read.items()}, {name: r[1] for name, r in read.items()}
    check_served_together(configs, tasks, args.model is not None)
    first = next(iter(adapters))
    kind = configs[first].get("task_type")
    if args.task_type is not None and args.task_type != kind:
        raise ValueError(f"--task_type: the adapters were trained as {kind}, got {args.task_type}; leave it out "
                         f"(each adapter is served as it was trained)")
    backbone, tokenizer, _ = load_backbone(dataclasses.replace(args, task_type=kind), tasks[first],
                                           args.model or configs[first].get("base_model_name_or_path"))
    model = EPTModel.from_pretrained(backbone, adapters[first], adapter_name=first)
    for name, path in list(adapters.items())[1:]:
        model.load_adapter(path, adapter_name=name)
    for name in adapters:  # P* once per adapter: serving only runs the assembly and the backbone
        merge(model, name)
    model.set_adapter(first)
    return model, tokenizer, tasks, configs


def generation_length_of(args, model: EPTModel, name: str) -> int:
    """The tokens adapter ``name`` of ``model`` generates under predict's or serve's ``args``:
    --max-new-tokens, else what it was trained with (``ModelArguments.generation_length``)."""
    return args.generation_length([model.adapter_task_metadata[name]])


def merge(model: EPTModel, name: str) -> None:
    """Compute adapter ``name``'s P* once (the active adapter is left as it was)."""
    with model.active_for_a_while(name):
        model.merge_prompt()


def predict_file(args: PredictArguments) -> dict:
    """Run ``ept-fast predict``; returns the throughput summary it prints."""
    out = args.output_path()
    check_writable(out.parent, "--output-file")
    model, tokenizer, tasks, _ = load_served_model(args)
    lengths = {name: generation_length_of(args, model, name) for name in tasks}
    device = args.run_device()
    model.to(device).eval()
    rows = read_rows(args.input_file)
    if not rows:
        raise ValueError(f"--input-file: {args.input_file} has no rows to predict")
    only = next(iter(tasks)) if len(tasks) == 1 else None
    requests: List[Tuple[str, dict]] = []
    gold: List[Optional[object]] = []  # each row's label as the task names it, when the row carries one
    for number, row in enumerate(rows, start=1):
        cell = row.get(args.adapter_column)
        name = str(cell) if cell not in (None, "") else only
        if name not in tasks:
            where = f"in column {args.adapter_column!r}" if args.adapter_column in row else \
                f"in a column {args.adapter_column!r} (--adapter-column)"
            raise ValueError(f"{args.input_file}, row {number}: expected one of {sorted(tasks)} {where}, naming the "
                             f"row's adapter, got {cell!r}")
        try:
            requests.append((name, format_input(tasks[name], row)))
        except KeyError as error:
            raise ValueError(f"{args.input_file}, row {number} (adapter {name}): {error.args[0]}") from None
        gold.append(_label_of(tasks[name], row.get("label")))
    start = time.perf_counter()
    answers = predict_rows(model, tokenizer, tasks, requests, args.eval_batch_size, device, lengths,
                           autocast=lambda: args.autocast(device),
                           progress=lambda starts: tqdm(starts, desc="predict", unit="batch"))
    predictions = [{"row": number, "adapter": name, **named_answer(tasks[name], answer)}
                   for number, ((name, _), answer) in enumerate(zip(requests, answers), start=1)]
    seconds = time.perf_counter() - start
    _write(out, predictions)
    per_adapter = {name: sum(1 for p in predictions if p["adapter"] == name) for name in tasks}
    summary = {"rows": len(predictions), "seconds": round(seconds, 3),
               "rows_per_second": round(len(predictions) / seconds, 1) if seconds > 0 else None,
               "batch_size": args.eval_batch_size, "rows_per_adapter": per_adapter, "output_file": str(out)}
    print(f"{summary['rows']} rows ({', '.join(f'{k}: {v}' for k, v in per_adapter.items())}) in {seconds:.1f} s: "
          f"{summary['rows_per_second']} rows/s, batches of {args.eval_batch_size}")
    summary["accuracy"] = _accuracy(predictions, gold)
    for name, (accuracy, count) in summary["accuracy"].items():
        print(f"{name}: accuracy {accuracy:.4f} on the {count} rows that carry a label")
    print(f"ept-fast predict: wrote {len(predictions)} predictions to {out}")
    return summary


def named_answer(task: Task, answer: dict) -> dict:
    """A prediction as the output file writes it: ``prediction`` (the class name where the task
    has names, else the id or the regression value), then ``score`` or ``generated``."""
    label = answer["label"]
    names = task.label_names
    named = names[label] if names and isinstance(label, int) and 0 <= label < len(names) else label
    return {"prediction": named, **{key: round(value, 6) if key == "score" else value
                                    for key, value in answer.items() if key not in ("label", "probs", "tokens")}}


def _label_of(task: Task, value) -> Optional[object]:
    """A row's ``label`` as its task's predictions name it (a class name, or an id where the task
    has no names); None where the row has none, or the task is a regression."""
    if value in (None, "") or task.is_regression:
        return None
    try:
        index = label_id(task, value)
    except ValueError:
        return None
    return task.label_names[index] if task.label_names else index


def _accuracy(predictions: List[dict], gold: List[Optional[object]]) -> Dict[str, Tuple[float, int]]:
    """Per adapter, (accuracy, rows) over the rows that carry a label."""
    scored: Dict[str, List[bool]] = {}
    for prediction, label in zip(predictions, gold):
        if label is not None:
            scored.setdefault(prediction["adapter"], []).append(prediction["prediction"] == label)
    return {name: (sum(right) / len(right), len(right)) for name, right in scored.items()}


def _write(path: Path, predictions: List[dict]) -> None:
    if path.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(key for p in predictions for key in p))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(predictions)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(p) + "\n" for p in predictions)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
