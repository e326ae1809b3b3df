"""A run's output folder: the refusal of one that holds another run, the lock held while a run
writes into it (a second run into the same folder is refused), and its checkpoints (Trainer's
``checkpoint-N`` folders): which one a resume takes, and that it was made with the same options."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Iterator, List, Optional, Union

from ..serialization import CONFIG_NAME, WEIGHTS_NAME
from .options import ADAPTER_OPTIONS, DataArguments, ModelArguments, TrainArguments
from .report import check_writable

LOCK_NAME = ".ept-fast.lock"  # held in the output folder while a run writes into it
OPTIONS_NAME = "ept_fast_options.json"  # a checkpoint's run options, compared when it is resumed
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete when these are there: the adapter and the run's options are written
# first, trainer_state.json last (after the optimizer's state, in whatever form: plain, DeepSpeed's
# or FSDP's, or none with --save_only_model).
_CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, OPTIONS_NAME, "trainer_state.json")
# The options that make a run what it computes: a resumed run must have the same ones (max_new_tokens
# among them: a causal LM's room for the answer, and what validation generates to choose the checkpoint).
RUN_DEFINING = frozenset(
    ["method", *(name for name in ADAPTER_OPTIONS if name != "backend"),
     *(f.name for f in dataclasses.fields(DataArguments)),
     *(f.name for f in dataclasses.fields(ModelArguments)),
     "learning_rate", "lr_lowrank", "weight_decay", "warmup_steps", "num_train_epochs", "max_steps",
     "per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm", "seed", "data_seed",
     "lr_scheduler_type", "lr_scheduler_kwargs", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon",
     "param_budget", "head_init", "head_only_steps", "backbone_dropout", "spread_floor", "metric_for_best_model",
     "eval_strategy",
     "eval_steps", "early_stopping_patience", "load_best_model_at_end", "bf16", "fp16", "label_smoothing_factor",
     "dataloader_drop_last", "train_sampling_strategy", "optim_target_modules"])
# Run-defining options whose default the run resolves once it knows its backbone, and records
# resolved: left to the default, a resumed run is checked against the value it resolves to.
RESOLVED_BY_THE_RUN = frozenset(["spread_floor"])
logger = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the earlier ones are kept)."""


def checkpoints(out: Path) -> List[Path]:
    """The ``checkpoint-N`` folders in ``out``, by step."""
    found = [(int(match.group(1)), path) for path in out.glob("checkpoint-*")
             if path.is_dir() and (match := _CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found)]


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _CHECKPOINT_FILES)


def resume_folder(out: Path, resume: Union[None, bool, str]) -> Optional[Path]:
    """The checkpoint --resume_from_checkpoint names: None when not resuming; with no value, the
    last complete checkpoint in ``out`` (one a crash left half-written is passed over, said in
    the log); else the folder given, which must be a complete checkpoint of this run."""
    if resume in (None, False, "", "False", "false"):
        return None
    if resume in (True, "True", "true"):
        found = checkpoints(out)
        complete = [folder for folder in found if is_complete(folder)]
        if not complete:
            raise FileNotFoundError(f"--resume_from_checkpoint: no complete checkpoint-N folder in {out} "
                                    f"(each holds {', '.join(_CHECKPOINT_FILES)})")
        later = [folder.name for folder in found[found.index(complete[-1]) + 1:]]  # by step: all incomplete
        if later:
            logger.warning("--resume_from_checkpoint: %s incomplete (a save was interrupted); resuming from %s",
                           ", ".join(later), complete[-1])
        return complete[-1]
    folder = Path(resume)
    if not is_complete(folder):
        raise FileNotFoundError(f"--resume_from_checkpoint: {folder} is not a complete checkpoint (expected "
                                f"{', '.join(_CHECKPOINT_FILES)})")
    if folder.resolve().parent != out.resolve():  # the run's adapter and reports are in its own folder
        raise ValueError(f"--resume_from_checkpoint: {folder} is a checkpoint of another run than --output_dir "
                         f"{out}; resume it with --output_dir {folder.parent}")
    return folder


def check_same_options(saved: dict, options: dict, what: str) -> None:
    """``options`` (a resumed run's) must be those ``what`` was made with (``saved``) in every
    option of RUN_DEFINING: a resume continues the same run."""
    saved, options = json.loads(json.dumps(saved)), json.loads(json.dumps(options))
    if made_before(saved, LOAD_BEST_HONOURED):
        saved["load_best_model_at_end"] = True  # recorded as false, but the best checkpoint was kept
    changed = {key: (saved[key], options[key]) for key in sorted(RUN_DEFINING)
               if key in saved and key in options and saved[key] != options[key]
               and not (key in RESOLVED_BY_THE_RUN and options[key] is None)}
    if changed:
        listed = ", ".join(f"--{key} {before!r} -> {now!r}" + (" (resolved by the run: left out, it resolves "
                                                                "again)" if key in RESOLVED_BY_THE_RUN else "")
                           for key, (before, now) in changed.items())
        raise ValueError(f"--resume_from_checkpoint: {what} was made with other options ({listed}); resume with "
                         f"the same options, or start over with --overwrite")


# Options whose command-line default changed after they were added, and what a run did before it had
# them: a checkpoint written then has no value for the option.
BEFORE_THE_OPTION = {"backbone_dropout": "its backbone trained with its own dropout",
                     "head_only_steps": "its adapter trained from the first step",
                     "spread_floor": "it trained without a floor under its head's input's spread"}


def check_no_default_since(saved: dict, resolved: dict, before: dict, what: str) -> None:
    """``saved`` (the options of a checkpoint, ``what``) must not predate an option of
    BEFORE_THE_OPTION whose value for this run (``resolved``) is not the value runs had before the
    option existed (``before``; None where no single value gives it): resumed, the run would change
    midway."""
    for name, meaning in BEFORE_THE_OPTION.items():
        if name in saved or resolved[name] == before[name]:
            continue
        instead = "start over" if before[name] is None else f"resume with --{name} {before[name]:g}, or start over"
        raise ValueError(f"--resume_from_checkpoint: {what} was made before --{name} existed ({meaning}); with "
                         f"--{name} {resolved[name]:g} the run would change midway: {instead} with --overwrite")


def check_same_spread_floor(trained: Optional[float], floor: float, what: str, flag: str) -> None:
    """A resumed run, whose --spread_floor resolves to ``floor``, must continue ``what``, which trained
    with the floor ``trained``: None skips the check (a checkpoint made before the option is
    check_no_default_since's; compare passes such a run as 0, as it trained). ``flag`` is the
    resuming option the error names."""
    if trained is not None and trained != floor:
        raise ValueError(f"{flag}: {what} trained with --spread_floor {trained:g} and this run with {floor:g}: "
                         f"resume with --spread_floor {trained:g}, or start over with --overwrite")


# Recorded in every run's options (a checkpoint's, metrics.json's "config"): the head-only steps clip
# the head's gradient alone. Runs made before it was recorded clipped the whole gradient in those
# steps, the adapter's included, and dropped the adapter's part after.
HEAD_ONLY_CLIPPING = {"head_only_clipping": "head"}
HEAD_ONLY_CLIPPING_BEFORE = "its head-only steps clipped the adapter's gradient too, then dropped it"
# Recorded the same way: --load_best_model_at_end is honoured. Runs made before recorded it as false
# and kept the best checkpoint all the same.
LOAD_BEST_HONOURED = {"load_best_model_at_end_honoured": True}


def made_before(options: dict, marker: dict) -> bool:
    """Whether run ``options`` (a checkpoint's, or metrics.json's "config") predate ``marker``
    (HEAD_ONLY_CLIPPING, LOAD_BEST_HONOURED)."""
    return any(options.get(key) != value for key, value in marker.items())


def made_before_head_only_clipping(options: dict) -> bool:
    return made_before(options, HEAD_ONLY_CLIPPING)


def check_head_only_clipping(saved: dict, checkpoint: Path, head_only_steps: int) -> None:
    """A ``checkpoint`` whose options (``saved``) predate HEAD_ONLY_CLIPPING resumes only after the
    run's ``head_only_steps``: inside them the run would change midway."""
    if not made_before_head_only_clipping(saved):
        return
    step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    if step >= head_only_steps:
        return
    raise ValueError(f"--resume_from_checkpoint: the checkpoint {checkpoint} was made before the head-only steps "
                     f"clipped the head's gradient alone ({HEAD_ONLY_CLIPPING_BEFORE}); it is at step {step}, inside "
                     f"the {head_only_steps} head-only steps, so the run would change midway: resume from a "
                     f"checkpoint of step {head_only_steps} or later, or start over with --overwrite")


def read_options(folder: Path) -> dict:
    return json.loads((folder / OPTIONS_NAME).read_text(encoding="utf-8"))


def remove_partial_checkpoint(out: Path, step: int) -> Optional[Path]:
    """Remove what a failed save of step ``step`` left; returns the last complete checkpoint."""
    shutil.rmtree(out / f"checkpoint-{step}", ignore_errors=True)
    complete = [folder for folder in checkpoints(out) if is_complete(folder)]
    return complete[-1] if complete else None


def _written_by_a_run(folder: Path) -> bool:
    """Whether Trainer or ept-fast wrote (some of) the checkpoint folder ``folder``."""
    return any((folder / name).is_file() for name in _CHECKPOINT_FILES)


def foreign_checkpoint_folders(out: Path) -> List[Path]:
    """The folders in ``out`` named like checkpoints that neither Trainer nor ept-fast wrote."""
    return [folder for folder in checkpoints(out) if not _written_by_a_run(folder)]


def remove_checkpoints(out: Path) -> None:
    """--overwrite: the replaced run's checkpoints go, so that a later resume cannot take one (a
    folder named like one that neither Trainer nor ept-fast wrote stays)."""
    for folder in checkpoints(out):
        if _written_by_a_run(folder):
            shutil.rmtree(folder)


def prepare_output_dir(args: TrainArguments) -> Path:
    """--output_dir, checked: a folder holding another run is refused unless --overwrite or a resume."""
    out = Path(args.output_dir)
    resuming = resume_folder(out, args.resume_from_checkpoint) is not None
    if not resuming and out.exists() and any(path.name != LOCK_NAME for path in out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"--output_dir: {out} already holds a run; pass --overwrite to replace it or "
                                  f"--resume_from_checkpoint to continue it")
    check_writable(out, "--output_dir")
    return out


@contextlib.contextmanager
def hold_output_dir(args: TrainArguments, main_process: bool = True) -> Iterator[Path]:
    """--output_dir, checked (``prepare_output_dir``) and, by the main process, locked for as long
    as the run writes into it: a second run into the same folder, --overwrite or not, is refused."""
    from filelock import FileLock, Timeout

    if not main_process:
        yield Path(args.output_dir)
        return
    out = prepare_output_dir(args)
    lock = FileLock(str(out / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FileExistsError(f"--output_dir: {out} is in use by another ept-fast run (it holds "
                              f"{out / LOCK_NAME}); let that run finish, or write into another folder") from None
    try:
        yield out
    finally:
        # Removed while still held (a run that then takes the folder makes a new lock file): the
        # folder is left as the run left it.
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()
