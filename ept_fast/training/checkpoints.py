"""Checkpoints of a run: adapter + optimizer + scheduler + the loop's state, written into a
fresh folder and swapped in by renames, so a crash never leaves no checkpoint; and the
exact resume from one. ``training_state.pt`` is read with ``weights_only=True``: opening a
checkpoint folder from elsewhere runs no code."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional

import torch

from ..model import EPTModel
from ..serialization import CONFIG_NAME, WEIGHTS_NAME, load_adapter

CHECKPOINT = "checkpoint"
BEST = "best"
STATE_FILE = "training_state.pt"
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """What the loop carries from step to step (and a checkpoint saves)."""

    step: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evaluations_without_improvement: int = 0
    history: List[dict] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    examples_seen: int = 0


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the earlier one, if any, is kept)."""


def save_checkpoint(directory: Path, model: EPTModel, optimizer, scheduler, state: TrainState, options: dict) -> None:
    """Write ``directory/checkpoint``: the adapter files and ``training_state.pt``. A failed write
    (a full disk) leaves the earlier checkpoint as it was and says so."""
    final = directory / CHECKPOINT
    staging, previous = directory / f".{CHECKPOINT}.tmp", directory / f".{CHECKPOINT}.old"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "state": dataclasses.asdict(state), "args": options}, staging / STATE_FILE)
    except (OSError, RuntimeError) as error:  # torch.save on a full disk: RuntimeError "unexpected pos"
        shutil.rmtree(staging, ignore_errors=True)
        kept = (f"the checkpoint of the last save in {final} is kept: free some space, then --resume"
                if _complete(final) else "there is no earlier checkpoint")
        raise CheckpointWriteError(f"could not write the checkpoint of step {state.step} into {directory} "
                                   f"({error}); is the disk full? {kept}") from None
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (STATE_FILE, CONFIG_NAME, WEIGHTS_NAME))


def checkpoint_folder(output_dir: Path, resume) -> Path:
    """The checkpoint ``--resume`` names: the one in ``output_dir``, or the folder given. If a
    crash interrupted ``save_checkpoint`` between its two renames, ``output_dir`` holds only the
    previous checkpoint (``.checkpoint.old``): that one is taken."""
    folder = output_dir / CHECKPOINT if resume is True else Path(resume)
    previous = folder.parent / f".{CHECKPOINT}.old"
    if not _complete(folder) and folder.name == CHECKPOINT and _complete(previous):
        logger.warning("--resume: %s is missing or incomplete (a save was interrupted); resuming from the previous "
                       "checkpoint %s", folder, previous)
        return previous
    if not _complete(folder):
        raise FileNotFoundError(f"--resume: no checkpoint in {folder} (expected {STATE_FILE}, {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME})")
    return folder


# Options that may change when a run is resumed: where and how it runs, not what it computes.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "output_dir", "device", "backend", "eval_batch_size",
                               "max_new_tokens"})


def check_same_options(saved: dict, options: dict, what: str) -> None:
    """``options`` (a resumed run's) must be those ``what`` was made with (``saved``), but for
    ``RESUMABLE_CHANGES``: a resume continues the same run. Compared as JSON writes them."""
    saved, options = json.loads(json.dumps(saved)), json.loads(json.dumps(options))
    changed = {key: (saved[key], value) for key, value in options.items()
               if key not in RESUMABLE_CHANGES and key in saved and saved[key] != value}
    if changed:
        listed = ", ".join(f"--{key.replace('_', '-')} {before!r} -> {now!r}" for key, (before, now) in changed.items())
        raise ValueError(f"--resume: {what} was made with other options ({listed}); resume with the same options, "
                         f"or start over with --overwrite")


def load_checkpoint(folder: Path, model: EPTModel, optimizer, scheduler, options: dict) -> TrainState:
    """Put the adapter, optimizer and scheduler of ``folder`` back; returns the loop's state.
    ``options`` (the resumed run's) must be those the checkpoint was made with
    (``check_same_options``)."""
    saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    check_same_options(saved["args"], options, f"the checkpoint in {folder}")
    files = load_adapter(folder)
    readout = files.config.get("readout", "backbone")  # a checkpoint from before the option read position 0
    if readout != model.active_peft_config.readout.value:
        raise ValueError(f"--resume: the checkpoint in {folder} reads out {readout!r}, this run "
                         f"{model.active_peft_config.readout.value!r}; resume with --readout {readout}")
    model.load_adapter_state_dict(files.tensors, str(folder))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])
