"""The options of ``ept-fast train`` and ``ept-fast eval``.

Each command's options are one dataclass; its flags, its config-file keys and its ``--help``
come from the fields. The adapter's options are ``EPTConfig``'s own fields (declared once,
there), and what the command line uses where the user gives none is one table by method,
``METHOD_DEFAULTS`` (sizes and learning rates): the adapter config is built from that row
plus the values given, so a value that contradicts the method is the same error as in
``EPTConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..budget import fit_budget
from ..config import EPTConfig, Method, TaskType, parse_enum
from ..tasks import TASKS, Task

# EPTConfig's fields that are command-line options.
ADAPTER_OPTIONS = ("num_virtual_tokens", "max_length", "r", "lora_alpha", "num_spaces", "space_rank", "fusion",
                   "prompt_init", "prompt_init_text", "backend", "readout")
# The command line's defaults by method, where the user gives none: the adapter's sizes (all
# three at one parameter budget on MiniLM, d = 384: 37,893, 37,888 and 37,632 parameters, the
# head excluded) and the two learning rates, tuned on validation (docs/results.md). EPTConfig's
# own defaults are the spec's, for T5-base. A task also gives its prompt_init_text.
METHOD_DEFAULTS: Dict[str, Dict[str, float]] = {
    "ept": dict(num_virtual_tokens=20, max_length=128, r=44, num_spaces=4, space_rank=2, lr=3e-2, lr_lowrank=1e-3),
    "dept": dict(num_virtual_tokens=20, max_length=128, r=59, lr=3e-2, lr_lowrank=1e-3),
    "pt": dict(num_virtual_tokens=98, max_length=128, lr=1e-2, lr_lowrank=1e-3),
    "head": dict(max_length=128, lr=3e-2, lr_lowrank=1e-3),
}
# What an encoder classifier's head reads where --readout is not given (docs/results.md): the
# library's own default stays PEFT's ("backbone": position 0, the first prompt row).
CLI_READOUT = "mean"


def option(default=None, help: str = "", aliases: Sequence[str] = ()):
    """A command-line option: its help, and other spellings it accepts (Hugging Face's)."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": tuple(aliases)})


@dataclasses.dataclass
class DataArguments:
    """Where the examples come from (train, eval, compare)."""

    task: Optional[str] = option(help=f"registry task: {', '.join(sorted(TASKS))} (default: bbc_news, or your "
                                      f"files)")
    train_file: Optional[str] = option(help="CSV or JSON-lines training file (with --validation-file and "
                                            "--test-file)")
    validation_file: Optional[str] = option(help="CSV or JSON-lines validation file")
    test_file: Optional[str] = option(help="CSV or JSON-lines test file")
    text_column: str = option("text", "the input column of your files (no --task)")
    text_pair_column: Optional[str] = option(help="a second input column of your files (no --task)")
    label_column: str = option("label", "the label column of your files")
    label_names: Optional[List[str]] = option(help="the class names, in id order, for files whose labels are names "
                                                   "(default: the names sorted)")
    limit_train_examples: Optional[int] = option(help="use only the first N training examples",
                                                 aliases=("max_train_samples",))
    limit_eval_examples: Optional[int] = option(help="use only the first N validation and test examples",
                                                aliases=("max_eval_samples",))
    seed: int = option(42, "seed of the splits, the initialisation, the example order and dropout")

    def __post_init__(self):
        _require_at_least_one(self, ("limit_train_examples", "limit_eval_examples"))


@dataclasses.dataclass
class RunArguments:
    """The backbone and the machine (train, eval, compare, predict)."""

    model: Optional[str] = option(help="Hugging Face model name or local path (default: the packaged "
                                       "all-MiniLM-L6-v2)", aliases=("model_name_or_path",))
    task_type: Optional[str] = option(help="SEQ_CLS, SEQ_2_SEQ_LM or CAUSAL_LM (default: from the model)")
    eval_batch_size: int = option(64, "examples per evaluation batch", aliases=("per_device_eval_batch_size",))
    max_new_tokens: int = option(8, "tokens generated per example when seq2seq or causal LMs are scored")
    mixed_precision: str = option("no", "no, bf16 or fp16 autocast (CUDA only)")
    device: str = option("auto", "auto, cpu or cuda")

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()  # DataArguments', for the commands that take data
        _require_at_least_one(self, ("eval_batch_size",))
        if self.task_type is not None:
            self.task_type = parse_enum(TaskType, "--task-type", self.task_type).value
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision: expected no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device: expected auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: cuda was requested, but no CUDA device is available here")
        if self.mixed_precision != "no" and not torch.cuda.is_available():
            raise ValueError(f"--mixed-precision {self.mixed_precision}: needs a CUDA device; use 'no' on the CPU")

    def run_device(self) -> torch.device:
        """Where the model runs: CUDA when there is one, unless --device cpu."""
        return torch.device("cuda" if self.device != "cpu" and torch.cuda.is_available() else "cpu")

    def autocast(self, device: torch.device):
        """The --mixed-precision autocast for inference on ``device`` (a no-op for 'no')."""
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        return torch.autocast(device.type, dtype=precision, enabled=precision is not None)


def _require_at_least_one(args, names) -> None:
    """Each of the integer options ``names`` that is given is >= 1."""
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")


# Where the command line does more than EPTConfig: it tokenizes, so it cuts long texts.
_CLI_HELP = {"max_length": "n: positions the low-rank update A·B covers; longer inputs are cut to it while "
                           "tokenizing, and the run reports how many"}


def _adapter_options():
    """EPTConfig's option fields, with None meaning "the method's default" (``method`` keeps
    EPTConfig's default: it picks the row of METHOD_DEFAULTS)."""
    fields = {field.name: field for field in dataclasses.fields(EPTConfig)}
    hints = typing.get_type_hints(EPTConfig)
    method = fields["method"]
    specs = [("method", str, option(method.default.value, method.metadata["help"]))]
    for name in ADAPTER_OPTIONS:
        kind = typing.get_args(hints[name])[0] if typing.get_origin(hints[name]) is Union else hints[name]
        if isinstance(kind, type) and issubclass(kind, str):  # the enums are given by their values
            kind = str
        specs.append((name, Optional[kind], option(help=_CLI_HELP.get(name, fields[name].metadata["help"]))))
    return specs


AdapterArguments = dataclasses.make_dataclass("AdapterArguments", _adapter_options())
AdapterArguments.__doc__ = "The adapter (EPTConfig's options; where not given: the method's default)."


@dataclasses.dataclass
class TrainArguments(AdapterArguments, RunArguments, DataArguments):
    """The training run.

    Every option of ``ept-fast train`` (flags, and keys of a --config file)."""

    param_budget: Optional[int] = option(help="trainable adapter parameters to spend (the head excluded): sizes m "
                                              "for pt, r for dept, r (and h if needed) for ept to match")
    output_dir: Optional[str] = option(help="where the adapter, checkpoints and reports go (default: "
                                            "runs/<method>-<task or data>)")
    overwrite: bool = option(False, "write into an --output-dir that already holds a run",
                             aliases=("overwrite_output_dir",))
    resume: Union[bool, str] = option(False, "continue from the last checkpoint in --output-dir, or from the "
                                             "checkpoint folder given", aliases=("resume_from_checkpoint",))
    lr: Optional[float] = option(help="learning rate of the soft prompt P and the head (default by method: ept "
                                      "3e-2, dept 3e-2, pt 1e-2, head 3e-2)", aliases=("learning_rate",))
    lr_lowrank: Optional[float] = option(help="learning rate of the low-rank pair A, B and EPT's fusion scale, "
                                              "projections and gate (DePT's second rate; default 1e-3)")
    weight_decay: float = option(1e-5, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "fraction of the steps with a linear warm-up (then a linear decay)")
    num_epochs: float = option(1.0, "passes over the training set", aliases=("num_train_epochs",))
    max_steps: Optional[int] = option(help="optimizer steps (overrides --num-epochs)")
    batch_size: int = option(16, "training examples per step and process",
                             aliases=("per_device_train_batch_size",))
    gradient_accumulation_steps: int = option(1, "micro-batches added up per optimizer step")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    eval_steps: int = option(25, "validate every N steps (and at the end)")
    save_steps: int = option(50, "checkpoint every N steps (and at the end)")
    metric_for_best_model: Optional[str] = option(help="the validation metric that picks the best checkpoint "
                                                       "(default: the task's first)")
    early_stopping_patience: Optional[int] = option(help="stop after N validations without improvement")
    head_init: str = option("random", "how a classifier's head starts: random (as the backbone makes it) or probe "
                                      "(the logistic regression of what it reads, C chosen on validation; then "
                                      "everything tunes from there)")

    def __post_init__(self):
        super().__post_init__()
        _require_at_least_one(self, ("batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                                     "max_steps", "early_stopping_patience"))
        if not self.num_epochs > 0:
            raise ValueError(f"--num-epochs: expected a number > 0, got {self.num_epochs}")
        for name in ("lr", "lr_lowrank", "max_grad_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a number > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio: expected a fraction of the steps in [0, 1), got {self.warmup_ratio}")
        if self.head_init not in ("random", "probe"):
            raise ValueError(f"--head-init: expected random or probe, got {self.head_init!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay: expected a number >= 0, got {self.weight_decay}")
        config = self.adapter_config()  # a value that contradicts the method fails now, as EPTConfig says
        if self.param_budget is not None and config.method is Method.HEAD:
            raise ValueError("--param-budget: method 'head' trains the head alone, no adapter parameters to size")
        if self.param_budget is not None:
            fitted = "num_virtual_tokens" if config.method is Method.PT else "r"
            if getattr(self, fitted) is not None:
                raise ValueError(f"--param-budget: it picks {fitted} for method {config.method.value!r}; do not "
                                 f"also give --{fitted.replace('_', '-')}")

    def adapter_config(self, task: Optional[Task] = None, task_type: Optional[TaskType] = None,
                       token_dim: Optional[int] = None, encoder_classifier: bool = False) -> EPTConfig:
        """The EPTConfig of this run: the method's row of METHOD_DEFAULTS, the task's init
        text, CLI_READOUT for an ``encoder_classifier``, then every adapter option given; sized
        to --param-budget on a backbone of hidden size ``token_dim`` when both are known."""
        method = parse_enum(Method, "--method", self.method).value
        values = {key: value for key, value in METHOD_DEFAULTS[method].items() if key in ADAPTER_OPTIONS}
        if task is not None and task.init_text:
            values["prompt_init_text"] = task.init_text
        if encoder_classifier:
            values["readout"] = CLI_READOUT
        values.update({name: getattr(self, name) for name in ADAPTER_OPTIONS if getattr(self, name) is not None})
        config = EPTConfig(method=method, task_type=task_type, **values)
        if self.param_budget is not None and token_dim is not None:
            config = fit_budget(config, self.param_budget, token_dim)
        return config

    def learning_rates(self) -> Tuple[float, float]:
        """(--lr, --lr-lowrank), each the method's default where not given."""
        row = METHOD_DEFAULTS[parse_enum(Method, "--method", self.method).value]
        return (row["lr"] if self.lr is None else self.lr,
                row["lr_lowrank"] if self.lr_lowrank is None else self.lr_lowrank)


@dataclasses.dataclass
class EvalArguments(RunArguments, DataArguments):
    """The adapter to score and where the results go.

    Every option of ``ept-fast eval``."""

    adapter: Optional[str] = option(help="the adapter folder to score (an --output-dir of ept-fast train, or its "
                                         "best/ or checkpoint/ folder)")
    output_dir: Optional[str] = option(help="where metrics.json and all_results.json go (default: <adapter>/eval)")

    def __post_init__(self):
        super().__post_init__()
        if not self.adapter:
            raise ValueError("--adapter: expected the folder of a saved adapter, got none")


# ------------------------------------------------------------------- parsing
def _base_type(annotation):
    if typing.get_origin(annotation) is Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def _own_fields(cls):
    """The fields ``cls`` declares itself (not its dataclass bases)."""
    inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "__dataclass_fields__", {})}
    return [field for field in dataclasses.fields(cls) if field.name not in inherited]


def build_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of ``cls`` (grouped by the dataclass that declares it), with dashes;
    the underscore spelling and Hugging Face's names are accepted too; booleans also take
    --no-…. Every help says what the option does and its default."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", help="YAML or JSON file of options (flags override it; keys as the "
                                         "flags, with underscores)")
    hints = typing.get_type_hints(cls)
    for owner in [base for base in reversed(cls.__mro__) if dataclasses.is_dataclass(base)]:
        group = parser.add_argument_group((owner.__doc__ or owner.__name__).split("\n")[0].rstrip("."))
        for field in _own_fields(owner):
            _add_option(group, field, _base_type(hints[field.name]))
    return parser


class _Repeatable(argparse.Action):
    """A list option: its first use on a command line replaces the default (or the config
    file's value), further uses add to it (``--adapter a=x --adapter b=y``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._used_in: set = set()

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, None) if id(namespace) in self._used_in else None
        self._used_in.add(id(namespace))
        setattr(namespace, self.dest, list(earlier or []) + list(values))


def _add_option(group, field, kind) -> None:
    default = field.default if field.default is not dataclasses.MISSING else None
    aliases = field.metadata.get("aliases", ())
    help_text = field.metadata.get("help", "")
    if default not in (None, False):
        help_text += f" (default: {default})"
    if aliases:
        help_text += f" (also --{', --'.join(aliases)})"
    if field.name == "resume":
        settings = dict(nargs="?", const=True, metavar="PATH")
    elif kind is bool:
        settings = dict(action=argparse.BooleanOptionalAction)
    elif kind is list:  # the flag replaces a default or a config file's list; repeating it adds to it
        settings = dict(nargs="+", metavar="NAME", action=_Repeatable)
    else:
        settings = dict(type=kind, metavar=field.name.upper())
    canonical = f"--{field.name.replace('_', '-')}"
    group.add_argument(canonical, dest=field.name, default=default, help=help_text, **settings)
    others = [f"--{spelling}" for name in (field.name, *aliases) for spelling in (name, name.replace("_", "-"))]
    others = [flag for flag in dict.fromkeys(others) if flag != canonical]
    if others:  # accepted, not listed
        group.add_argument(*others, dest=field.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **settings)


def _read_config(path: str, cls) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config: {file} not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config: {file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"--config: {file} must hold a mapping of option names to values")
    spellings = {spelling: field.name for field in dataclasses.fields(cls)
                 for name in (field.name, *field.metadata.get("aliases", ()))
                 for spelling in (name, name.replace("_", "-"))}
    unknown = sorted(set(values) - set(spellings))
    if unknown:
        raise ValueError(f"--config: {file} has unknown option(s) {unknown}")
    hints = typing.get_type_hints(cls)
    return {spellings[key]: _config_value(file, key, value, hints[spellings[key]]) for key, value in values.items()}


def _config_value(file: Path, key: str, value, hint):
    """A config file's ``value`` for an option annotated ``hint``, read as its flag would read
    it: a single name for a list option is a list of one; a string for a number is parsed; a
    value of another kind (a list for a number, a string for a yes/no) is an error naming the key."""
    if value is None:
        return None
    kinds = [typing.get_origin(k) or k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    if type(value) in kinds:
        return value
    kind = kinds[0]
    if kind is list:
        return [str(item) for item in value] if isinstance(value, list) else [str(value)]
    if isinstance(value, (list, dict)):
        raise ValueError(f"--config: {file}: {key} expects one {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"--config: {file}: {key} expects true or false (unquoted), got {value!r}")
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and value != int(value):
            raise ValueError(f"--config: {file}: {key} expects an integer, got {value!r}")
        return kind(value)
    try:
        return kind(value) if isinstance(value, str) else kind(str(value))
    except (TypeError, ValueError):
        raise ValueError(f"--config: {file}: {key} expects a {kind.__name__}, got {value!r}") from None


def parse_options(cls, argv: Optional[List[str]], prog: str, description: str):
    """``cls`` from the command line: a --config file first, flags over it."""
    parser = build_parser(cls, prog, description)
    first = parser.parse_args(argv)
    if first.config:
        parser.set_defaults(**_read_config(first.config, cls))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return cls(**values)
