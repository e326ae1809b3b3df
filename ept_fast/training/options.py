"""The options of every ``ept-fast`` command, parsed by transformers' ``HfArgumentParser``.

Each command's options are dataclasses; the flags, the config-file keys and ``--help`` come from
their fields. ``ept-fast train`` takes every ``transformers.TrainingArguments`` option (its
spellings are the canonical ones: ``--learning_rate``, ``--num_train_epochs``, …) plus ours. The
adapter's options are ``EPTConfig``'s own fields (declared once, there); where the user gives
none, the command line uses one table by method, ``METHOD_DEFAULTS`` (sizes and learning rates),
so a value that contradicts the method is the same error as in ``EPTConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..budget import fit_budget
from ..config import EPTConfig, Method, Readout, TaskType, parse_enum
from ..tasks import DEFAULT_TASK, TASKS, Task

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
CLI_READOUT = "sentence_embedding"
# The dropout of an encoder classifier's frozen body while its adapter trains, where
# --backbone_dropout is not given (docs/results.md); other backbones keep their own.
CLI_BACKBONE_DROPOUT = 0.0
# The floor under the spread of what a classifier's head reads (EPTTrainer's spread_floor) where
# --spread_floor is not given: EPT's where its head reads the mean over the real tokens, chosen by
# benchmarks/results/spread-floor/CONFIRM.md; DePT and prompt tuning keep 0 until measured with it.
CLI_SPREAD_FLOOR = 0.5
# The share of an encoder classifier's steps that train its head alone before the adapter
# joins, where --head_only_steps is not given (docs/results.md); 0 for other backbones.
CLI_HEAD_ONLY_STEPS = 0.1
# Tokens generated per example where --max-new-tokens is not given (and no adapter recorded one).
GENERATION_LENGTH = 8


def default_spread_floor(method, task_type, readout) -> float:
    """The command line's floor where --spread_floor is not given (method, task type and readout as
    EPTConfig's enums or their values): CLI_SPREAD_FLOOR for EPT on a classifier whose head reads the
    mean over the real tokens, else 0."""
    reads_mean = parse_enum(Readout, "readout", readout) in (Readout.MEAN, Readout.SENTENCE_EMBEDDING)
    classifier = task_type is not None and parse_enum(TaskType, "task_type", task_type) is TaskType.SEQ_CLS
    is_ept = parse_enum(Method, "method", method) is Method.EPT
    return CLI_SPREAD_FLOOR if is_ept and classifier and reads_mean else 0.0


def option(default=None, help: str = "", aliases: Sequence[str] = (), **argparse_settings):
    """A command-line option: its help, and other spellings it accepts (ours before the Hugging
    Face names, or the reverse); ``argparse_settings`` go to ``add_argument``."""
    metadata = {"help": help, "aliases": _spellings(aliases), **argparse_settings}
    if isinstance(default, (list, tuple)):  # a list option's default, as HfArgumentParser reads it
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _spellings(names: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(f"--{spelling}" for name in names for spelling in (name, name.replace("_", "-"))))


def _require_at_least_one(args, names) -> None:
    """Each of the integer options ``names`` that is given is >= 1."""
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")


@dataclasses.dataclass
class ModelArguments:
    """The backbone (every command)."""

    model: Optional[str] = option(help="Hugging Face model name or local path (default: the packaged "
                                       "all-MiniLM-L6-v2)", aliases=("model_name_or_path",))
    task_type: Optional[str] = option(help="SEQ_CLS, SEQ_2_SEQ_LM or CAUSAL_LM (default: from the model)")
    max_new_tokens: Optional[int] = option(
        help="tokens generated per example when seq2seq or causal LMs are scored (a causal LM's inputs leave room "
             "for them, and its answers must fit in them; default: 8 to train, and what each adapter was trained "
             "with to eval, predict or serve)")

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()
        if self.task_type is not None:
            self.task_type = parse_enum(TaskType, "--task_type", self.task_type).value
        _require_at_least_one(self, ("max_new_tokens",))

    def generation_length(self, task_metadata: Iterable[Optional[dict]] = ()) -> int:
        """--max-new-tokens, else the most that the adapters whose saved task metadata is given
        were trained with, else ``GENERATION_LENGTH``."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        trained = [trained_generation_length(metadata) for metadata in task_metadata]
        return max((n for n in trained if n is not None), default=GENERATION_LENGTH)


def trained_generation_length(task_metadata: Optional[dict]) -> Optional[int]:
    """The tokens per answer an adapter was trained to generate, from its saved task metadata
    (None where it recorded none: adapters saved before it was recorded)."""
    return (task_metadata or {}).get("max_new_tokens")


@dataclasses.dataclass
class DataArguments:
    """Where the examples come from (train, eval, compare)."""

    task: Optional[str] = option(help=f"registry task: {', '.join(sorted(TASKS))} (default: bbc_news, or your "
                                      f"files)")
    train_file: Optional[str] = option(help="CSV or JSON-lines training file (with --validation_file and "
                                            "--test_file)")
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

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()
        _require_at_least_one(self, ("limit_train_examples", "limit_eval_examples"))

    def data_name(self) -> str:
        """What the data is called in a default output folder: the task, or the training file
        (its folder when the file is called train…)."""
        if self.train_file:
            path = Path(self.train_file)
            return path.parent.name if path.stem.lower().startswith("train") and path.parent.name else path.stem
        return self.task or DEFAULT_TASK


@dataclasses.dataclass
class MachineArguments:
    """The machine (eval, predict, serve)."""

    mixed_precision: str = option("no", "no, bf16 or fp16 autocast (CUDA only)")
    device: str = option("auto", "auto, cpu or cuda")

    def __post_init__(self):
        getattr(super(), "__post_init__", lambda: None)()
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed_precision: expected no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device: expected auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: cuda was requested, but no CUDA device is available here")
        if self.mixed_precision != "no" and not torch.cuda.is_available():
            raise ValueError(f"--mixed_precision {self.mixed_precision}: needs a CUDA device; use 'no' on the CPU")

    def run_device(self) -> torch.device:
        """Where the model runs: CUDA when there is one, unless --device cpu."""
        return torch.device("cuda" if self.device != "cpu" and torch.cuda.is_available() else "cpu")

    def autocast(self, device: torch.device):
        """The --mixed_precision autocast for inference on ``device`` (a no-op for 'no')."""
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        return torch.autocast(device.type, dtype=precision, enabled=precision is not None)


@dataclasses.dataclass
class InferenceArguments(MachineArguments):
    """Batches and splits (eval, predict)."""

    eval_batch_size: int = option(64, "examples per batch", aliases=("per_device_eval_batch_size",))

    def __post_init__(self):
        super().__post_init__()
        _require_at_least_one(self, ("eval_batch_size",))


# Where the command line does more than EPTConfig: it tokenizes, so it cuts long texts.
_CLI_HELP = {"max_length": "n: positions the low-rank update A·B covers; longer inputs are cut to it while "
                           "tokenizing, and the run reports how many"}


def _cli_default(name: str, field: dataclasses.Field) -> Optional[str]:
    """What the command line uses for adapter option ``name`` where it is not given, in words."""
    by_method = {method: row[name] for method, row in METHOD_DEFAULTS.items() if name in row}
    if len(by_method) == len(METHOD_DEFAULTS) and len(set(by_method.values())) == 1:
        return f"default: {next(iter(by_method.values()))}"
    if by_method:
        return "default by method: " + ", ".join(f"{method} {value}" for method, value in by_method.items())
    if name == "readout":
        return f"default: {CLI_READOUT} for an encoder classifier, else {field.default.value}"
    if name == "prompt_init_text":
        return f"default: the registry task's, else {field.default!r}"
    default = getattr(field.default, "value", field.default)
    return None if default is None else f"default: {default}"


def _adapter_options():
    """EPTConfig's option fields, with None meaning "the method's default" (``method`` keeps
    EPTConfig's default: it picks the row of METHOD_DEFAULTS); each help says the default the
    command line uses."""
    fields = {field.name: field for field in dataclasses.fields(EPTConfig)}
    hints = typing.get_type_hints(EPTConfig)
    method = fields["method"]
    specs = [("method", str, option(method.default.value, method.metadata["help"]))]
    for name in ADAPTER_OPTIONS:
        kind = typing.get_args(hints[name])[0] if typing.get_origin(hints[name]) is Union else hints[name]
        if isinstance(kind, type) and issubclass(kind, str):  # the enums are given by their values
            kind = str
        text = _CLI_HELP.get(name, fields[name].metadata["help"]).replace(" (default by method)", "")
        default = _cli_default(name, fields[name])
        specs.append((name, Optional[kind], option(help=f"{text} ({default})" if default else text)))
    return specs


AdapterArguments = dataclasses.make_dataclass("AdapterArguments", _adapter_options())
AdapterArguments.__doc__ = "The adapter (EPTConfig's options; where not given: the method's default)."


@dataclasses.dataclass
class EPTTrainingArguments(TrainingArguments):
    """What ept_fast adds to transformers' TrainingArguments, and the defaults it changes.

    Where a default differs from Trainer's, it is the command line's tuned one; a learning rate
    left out is the method's (METHOD_DEFAULTS)."""

    lr_lowrank: Optional[float] = option(help="learning rate of the low-rank pair A, B and EPT's fusion scale, "
                                              "projections and gate (DePT's second rate; default 1e-3)")
    param_budget: Optional[int] = option(help="trainable adapter parameters to spend (the head excluded): sizes m "
                                              "for pt, r for dept, r (and h if needed) for ept to match")
    head_init: str = option("random", "how a classifier's head starts: random (as the backbone makes it) or probe "
                                      "(the logistic regression of what it reads, C chosen on validation; then "
                                      "everything tunes from there)")
    head_only_steps: Optional[float] = option(
        help="steps at the start that train an encoder classifier's head alone, every adapter parameter held "
             "(linear probing by gradient, then tuning); below 1, a fraction of the steps; default: "
             f"{CLI_HEAD_ONLY_STEPS:g} for encoder classifiers, 0 otherwise")
    backbone_dropout: Optional[float] = option(
        help="dropout probability of the frozen backbone's body while the adapter trains (its classifier's own "
             "dropout is kept); default: 0 for encoder classifiers, the backbone's own rates otherwise")
    spread_floor: Optional[float] = option(
        help="a floor under the spread of what an encoder classifier's head reads: while training, the loss adds "
             "VICReg's variance term (weight 25) wherever a dimension's standard deviation over the batch falls below "
             "this fraction of the frozen backbone's (a second, gradient-free pass); 0: off. Default: "
             f"{CLI_SPREAD_FLOOR:g} for ept where the head reads the mean over the real tokens (an encoder "
             "classifier's default readout), 0 otherwise (dept and pt are not yet measured with it)")
    early_stopping_patience: Optional[int] = option(help="stop after N validations without improvement")
    overwrite: bool = option(False, "write into an --output_dir that already holds a run (its checkpoints are "
                                    "removed)", aliases=("overwrite_output_dir",))
    # Trainer's options, with the command line's defaults and our spellings beside Hugging Face's.
    output_dir: Optional[str] = option(help="where the adapter, checkpoints and reports go (default: "
                                            "runs/<method>-<task or data>)")
    resume_from_checkpoint: Optional[str] = option(
        help="continue from the last complete checkpoint-N in --output_dir (no value), or from the checkpoint "
             "folder given", aliases=("resume",), nargs="?", const=True)
    learning_rate: Optional[float] = option(help="learning rate of the soft prompt P and the head (default by "
                                                 "method: ept 3e-2, dept 3e-2, pt 1e-2, head 3e-2)",
                                            aliases=("lr",))
    num_train_epochs: float = option(1.0, "passes over the training set", aliases=("num_epochs",))
    per_device_train_batch_size: int = option(16, "training examples per step and process", aliases=("batch_size",))
    per_device_eval_batch_size: int = option(64, "examples per evaluation batch and process",
                                             aliases=("eval_batch_size",))
    weight_decay: float = option(1e-5, "AdamW weight decay")
    warmup_steps: float = option(0.06, "steps of linear warm-up (then a linear decay); below 1, a fraction of "
                                       "the steps", aliases=("warmup_ratio",))
    eval_strategy: str = option("steps", "when to validate: steps, epoch or no")
    eval_steps: Optional[float] = option(25, "validate every N steps (and at the end)")
    save_steps: float = option(50, "checkpoint every N steps (and at the end, and at each new best when the best "
                                   "checkpoint is kept)")
    load_best_model_at_end: Optional[bool] = option(
        help="keep the checkpoint with the best validation --metric_for_best_model: it is the adapter saved and the "
             "one scored on test (default: true); false keeps the last step's")
    logging_steps: float = option(1, "log the training loss every N steps")
    seed: int = option(42, "seed of the splits, the initialisation, the example order and dropout")
    dataloader_pin_memory: bool = option(torch.cuda.is_available(), "pin the batches' memory (CUDA only)")
    remove_unused_columns: bool = option(False, "drop the inputs the model's forward does not name (ept-fast's "
                                                "collator tokenizes whole examples, so it keeps them)")

    def __post_init__(self):
        _require_at_least_one(self, ("per_device_train_batch_size", "per_device_eval_batch_size",
                                     "gradient_accumulation_steps", "early_stopping_patience"))
        for name in ("learning_rate", "lr_lowrank", "max_grad_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"--{name}: expected a number > 0, got {getattr(self, name)}")
        if not self.num_train_epochs > 0:
            raise ValueError(f"--num_train_epochs: expected a number > 0, got {self.num_train_epochs}")
        if not 0 <= self.warmup_steps:
            raise ValueError(f"--warmup_steps: expected steps >= 0 or a fraction in [0, 1), got {self.warmup_steps}")
        if self.backbone_dropout is not None and not 0 <= self.backbone_dropout < 1:
            raise ValueError(f"--backbone_dropout: expected a probability in [0, 1), got {self.backbone_dropout}")
        value = self.head_only_steps
        if value is not None and not (value >= 0 and (value < 1 or (value < math.inf and value == int(value)))):
            raise ValueError(f"--head_only_steps: expected whole steps >= 0 or a fraction in [0, 1), got {value}")
        if self.head_init not in ("random", "probe"):
            raise ValueError(f"--head_init: expected random or probe, got {self.head_init!r}")
        if self.spread_floor is not None and not 0 <= self.spread_floor < math.inf:
            raise ValueError(f"--spread_floor: expected a number >= 0 (0: off), got {self.spread_floor}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight_decay: expected a number >= 0, got {self.weight_decay}")
        # Trainer's own check of --load_best_model_at_end ties --save_steps to --eval_steps; the best
        # checkpoint is saved at every new best here instead (engine.ValidateAndKeepBest), so the check
        # is left out and the choice put back after it.
        if self.greater_is_better is False:  # before Trainer's own check sets it for a metric named *loss
            raise ValueError("--greater_is_better: every metric a task reports here is higher-is-better, so false "
                             "would keep the worst checkpoint; leave it out")
        keep_best, self.load_best_model_at_end = self.load_best_model_at_end, False
        super().__post_init__()
        self.load_best_model_at_end = keep_best is not False
        if self.early_stopping_patience is not None and not self.load_best_model_at_end:
            raise ValueError("--early_stopping_patience: stops once validation has not improved for that many "
                             "validations and keeps the best checkpoint; --load_best_model_at_end false would keep "
                             "the last one instead: give one or the other")
        if self.load_best_model_at_end and self.save_strategy == "no":
            raise ValueError("--save_strategy: 'no' writes no checkpoint, but keeping the best one "
                             "(--load_best_model_at_end, the default) saves a checkpoint at each new best; give "
                             "--load_best_model_at_end false too, to keep the last step's adapter and write none")
        if self.neftune_noise_alpha is not None:
            raise ValueError("--neftune_noise_alpha: NEFTune adds its noise in a hook on the backbone's embedding "
                             "layer, which ept-fast's input assembly reads directly, so no noise would be added; "
                             "leave it out")


@dataclasses.dataclass
class TrainArguments(AdapterArguments, ModelArguments, DataArguments, EPTTrainingArguments):
    """The training run.

    Every option of ``ept-fast train`` (flags, and keys of a --config file)."""

    def __post_init__(self):
        method = parse_enum(Method, "--method", self.method)
        if self.metric_for_best_model and self.metric_for_best_model.startswith("eval_"):
            self.metric_for_best_model = self.metric_for_best_model[len("eval_"):]  # Trainer's spelling, or ours
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / f"{method.value}-{self.data_name()}")
        super().__post_init__()
        self.max_new_tokens = self.generation_length()
        config = self.adapter_config()  # a value that contradicts the method fails now, as EPTConfig says
        if self.param_budget is not None and config.method is Method.HEAD:
            raise ValueError("--param_budget: method 'head' trains the head alone, no adapter parameters to size")
        if self.head_only_steps and config.method is Method.HEAD:
            raise ValueError("--head_only_steps: method 'head' trains the head alone at every step already; "
                             "leave it out or give 0")
        if self.param_budget is not None:
            fitted = "num_virtual_tokens" if config.method is Method.PT else "r"
            if getattr(self, fitted) is not None:
                raise ValueError(f"--param_budget: it picks {fitted} for method {config.method.value!r}; do not "
                                 f"also give --{fitted}")

    def adapter_config(self, task: Optional[Task] = None, task_type: Optional[TaskType] = None,
                       token_dim: Optional[int] = None, encoder_classifier: bool = False) -> EPTConfig:
        """The EPTConfig of this run: the method's row of METHOD_DEFAULTS, the task's init
        text, CLI_READOUT for an ``encoder_classifier``, then every adapter option given; sized
        to --param_budget on a backbone of hidden size ``token_dim`` when both are known."""
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

    def backbone_dropout_for(self, encoder_classifier: bool) -> Optional[float]:
        """The dropout of the backbone's body while it trains: --backbone_dropout, else
        CLI_BACKBONE_DROPOUT for an ``encoder_classifier``; None keeps the backbone's own."""
        if self.backbone_dropout is not None:
            return self.backbone_dropout
        return CLI_BACKBONE_DROPOUT if encoder_classifier else None

    def head_only_steps_for(self, encoder_classifier: bool, steps: int, backbone: str) -> int:
        """How many of the run's ``steps`` train the head alone: --head_only_steps (a fraction below
        1, rounded down), else CLI_HEAD_ONLY_STEPS of them for an ``encoder_classifier``;
        ``backbone`` names the model class for the error where the option does not apply."""
        given, head_method = self.head_only_steps, parse_enum(Method, "--method", self.method) is Method.HEAD
        if given and not encoder_classifier:
            raise ValueError(f"--head_only_steps: applies to encoder classifiers (a BERT-like backbone with a "
                             f"classification head), where it was measured; this run's backbone is {backbone}: "
                             f"leave it out or give 0")
        value = given if given is not None else (CLI_HEAD_ONLY_STEPS if encoder_classifier and not head_method else 0)
        head_only = math.floor(value * steps) if value < 1 else int(value)
        if head_only >= steps:
            raise ValueError(f"--head_only_steps: {value:g} steps of the head alone is the whole run ({steps} "
                             f"steps): the adapter would never train; give fewer, or a fraction below 1")
        return head_only

    def spread_floor_for(self, task_type, readout) -> float:
        """The floor under the spread of what the head reads, for this run's method on ``task_type``
        with ``readout`` (enums or their values): --spread_floor, else ``default_spread_floor``."""
        if self.spread_floor is not None:
            return self.spread_floor
        return default_spread_floor(self.method, task_type, readout)

    def learning_rates(self) -> Tuple[float, float]:
        """(--learning_rate, --lr_lowrank), each the method's default where not given."""
        row = METHOD_DEFAULTS[parse_enum(Method, "--method", self.method).value]
        return (row["lr"] if self.learning_rate is None else self.learning_rate,
                row["lr_lowrank"] if self.lr_lowrank is None else self.lr_lowrank)

    def best_model_metric(self, task: Task) -> str:
        """--metric_for_best_model (with or without Trainer's ``eval_``), else the task's first metric."""
        metric = self.metric_for_best_model or task.metrics[0]
        if metric not in task.metrics:
            raise ValueError(f"--metric_for_best_model: task {task.name} reports {list(task.metrics)}, got {metric!r}")
        return metric

    def run_device(self) -> torch.device:
        return self.device

    def options(self) -> dict:
        """The options as JSON writes them (Trainer's ``to_dict``: enums by value, tokens hidden),
        with the learning rates the run uses (the method's where not given)."""
        lr, lr_lowrank = self.learning_rates()
        return json.loads(json.dumps({**self.to_dict(), "learning_rate": lr, "lr_lowrank": lr_lowrank}, default=str))


@dataclasses.dataclass
class EvalArguments(ModelArguments, InferenceArguments, DataArguments):
    """The adapter to score and where the results go.

    Every option of ``ept-fast eval``."""

    adapter: Optional[str] = option(help="the adapter folder to score (an --output_dir of ept-fast train, or one "
                                         "of its checkpoint-N folders)")
    output_dir: Optional[str] = option(help="where metrics.json and all_results.json go (default: <adapter>/eval)")
    overwrite: bool = option(False, "replace the metrics.json and all_results.json already in --output_dir")
    seed: int = option(42, "seed of the registry task's or the embedded data's split, for an adapter that records "
                           "none (one trained by ept-fast train records its own, and eval uses that)")

    def __post_init__(self):
        super().__post_init__()
        if not self.adapter:
            raise ValueError("--adapter: expected the folder of a saved adapter, got none")
        if self.limit_train_examples is not None:
            raise ValueError(f"--max_train_samples: eval scores the validation and test splits and reads no "
                             f"training examples, got {self.limit_train_examples}")


# ------------------------------------------------------------------- parsing
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, where it has one the help does not already say."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OptionParser(HfArgumentParser):
    """``HfArgumentParser`` over one dataclass whose options are grouped in ``--help`` by the
    dataclass that declares them, with a ``--config`` YAML or JSON file whose values the flags
    override."""

    def __init__(self, cls, prog: str, description: str):
        self.options_class = cls
        super().__init__(cls, prog=prog, description=description, allow_abbrev=False, formatter_class=_Help)
        self.add_argument("--config", help="YAML or JSON file of options (flags override it; keys as the flags, "
                                           "without the dashes)")

    def _add_dataclass_arguments(self, cls) -> None:
        hints = typing.get_type_hints(cls)
        declared = {}
        for owner in reversed(cls.__mro__):
            for name in getattr(owner, "__dataclass_fields__", {}):
                declared.setdefault(name, owner)
            for name in vars(owner).get("__annotations__", {}):  # a redeclared field belongs to its last owner
                if name in getattr(owner, "__dataclass_fields__", {}):
                    declared[name] = owner
        groups = {}
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            owner = declared[field.name]
            if owner not in groups:
                title = (owner.__doc__ or owner.__name__).strip().split("\n")[0].rstrip(".")
                groups[owner] = self.add_argument_group(title)
            field.type = hints[field.name]
            self._parse_dataclass_field(groups[owner], field)
            if field.type == Optional[bool]:  # unset by default, yet a bare --flag still means true
                action = self._option_string_actions[f"--{field.name}"]
                action.nargs, action.const = "?", True

    def error(self, message: str):
        """argparse's error, without the usage of every option first, and with the nearest
        spelling of an unknown flag."""
        import difflib
        import sys

        hint = ""
        if message.startswith("unrecognized arguments:"):
            known = [flag for action in self._actions for flag in action.option_strings]
            unknown = [word for word in message.split(":", 1)[1].split() if word.startswith("--")]
            close = {word: difflib.get_close_matches(word.split("=")[0], known, n=1) for word in unknown}
            hint = "".join(f"; did you mean {match[0]}?" for word, match in close.items() if match)
        sys.stderr.write(f"{self.prog}: error: {message}{hint} ({self.prog} --help lists the options)\n")
        sys.exit(2)

    def parse(self, argv: Optional[List[str]]):
        first, _ = self.parse_known_args(argv)
        if first.config:
            self.set_defaults(**_read_config(first.config, self.options_class))
        values = vars(self.parse_args(argv))
        values.pop("config")
        return self.options_class(**values)


def _read_config(path: str, cls) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config: {file} not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config: {file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    import yaml

    is_yaml = file.suffix.lower() in (".yaml", ".yml")
    try:
        values = (yaml.safe_load(text) or {}) if is_yaml else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ValueError(f"--config: {file} is not well-formed {'YAML' if is_yaml else 'JSON'} "
                         f"({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config: {file} must hold a mapping of option names to values")
    spellings = {alias.lstrip("-"): field.name for field in dataclasses.fields(cls) if field.init
                 for alias in [f"--{field.name}", f"--{field.name.replace('_', '-')}",
                               *field.metadata.get("aliases", ())]}
    if issubclass(cls, TrainingArguments):  # eval's and predict's machine options, as Trainer's
        values = _machine_keys(values)
    unknown = sorted(set(values) - set(spellings))
    if unknown:
        raise ValueError(f"--config: {file} has unknown option(s) {unknown}")
    hints = typing.get_type_hints(cls)
    values = {spellings[key]: _config_value(file, key, value, hints[spellings[key]]) for key, value in values.items()}
    return {name: value for name, value in values.items() if value is not None or _optional(hints[name])}


def _optional(hint) -> bool:
    """None is a value of the option (else a null in a config file means its default)."""
    return type(None) in typing.get_args(hint)


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
    if isinstance(value, bool) and kind is not bool and not value:
        return "no"  # YAML reads an unquoted no as false: eval_strategy: no
    if kind is list:
        return [str(item) for item in value] if isinstance(value, list) else [str(value)]
    if isinstance(value, (list, dict)) and kind is not dict:
        raise ValueError(f"--config: {file}: {key} expects one {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is bool:
        raise ValueError(f"--config: {file}: {key} expects true or false (unquoted), got {value!r}")
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and value != int(value):
            raise ValueError(f"--config: {file}: {key} expects an integer, got {value!r}")
        return kind(value)
    if not isinstance(kind, type):
        return value
    try:
        return kind(value) if isinstance(value, str) else kind(str(value))
    except (TypeError, ValueError):
        raise ValueError(f"--config: {file}: {key} expects a {kind.__name__}, got {value!r}") from None


class Repeatable(argparse.Action):
    """A list option: its first use on a command line replaces the default (or the config
    file's value), further uses add to it (``--adapter a=x --adapter b=y``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._used_in: set = set()

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, None) if id(namespace) in self._used_in else None
        self._used_in.add(id(namespace))
        setattr(namespace, self.dest, list(earlier or []) + list(values))


# Spellings of the machine options of eval and predict, for ``ept-fast train``: Trainer's flags,
# each set both ways, so that a later flag overrides an earlier one or a --config file's value.
_TRAIN_MACHINE = {("--device", "cpu"): {"use_cpu": True}, ("--device", "cuda"): {"use_cpu": False},
                  ("--device", "auto"): {"use_cpu": False},
                  ("--mixed-precision", "bf16"): {"bf16": True, "fp16": False},
                  ("--mixed-precision", "fp16"): {"bf16": False, "fp16": True},
                  ("--mixed-precision", "no"): {"bf16": False, "fp16": False}}


def _machine_settings(flag: str, value: str) -> dict:
    """Trainer's options for ``--device`` or ``--mixed-precision`` ``value``; a clear error for
    another value, or for cuda where there is none."""
    if (flag, value) not in _TRAIN_MACHINE:
        choices = sorted(v for f, v in _TRAIN_MACHINE if f == flag)
        raise ValueError(f"{flag}: expected one of {choices}, got {value!r}")
    if value == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda was requested, but no CUDA device is available here")
    return _TRAIN_MACHINE[(flag, value)]


def _machine_keys(values: dict) -> dict:
    """``device`` and ``mixed_precision`` keys of a config file as Trainer's options (a key of
    Trainer's own given beside them is overridden)."""
    out = {key: value for key, value in values.items() if key.replace("-", "_") not in ("device", "mixed_precision")}
    for key in set(values) - set(out):
        flag = "--" + key.replace("_", "-")
        out.update(_machine_settings(flag, str(values[key] if values[key] is not False else "no")))
    return out


def machine_flags(argv: List[str]) -> List[str]:
    """``--device cpu|cuda|auto`` and ``--mixed-precision bf16|fp16|no`` (the spellings of eval
    and predict) as Trainer's ``--use_cpu``, ``--bf16`` and ``--fp16``, each set true or false."""
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].replace("_", "-") if argv[i].startswith("--") else argv[i]
        flag, _, inline = flag.partition("=")
        if flag in ("--device", "--mixed-precision"):
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            for name, setting in _machine_settings(flag, value).items():
                out += [f"--{name}", str(setting).lower()]
            i += 1 if inline else 2
            continue
        out.append(argv[i])
        i += 1
    return out


def parse_options(cls, argv: Optional[List[str]], prog: str, description: str):
    """``cls`` from the command line: a --config file first, flags over it."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if issubclass(cls, TrainingArguments):
        argv = machine_flags(argv)
    return OptionParser(cls, prog, description).parse(argv)
