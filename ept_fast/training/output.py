"""A run's output folder: where it is, the refusal of one that holds another run, and the lock
held while a run writes into it (a second run into the same folder is refused)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from .checkpoints import checkpoint_folder
from .data import data_name
from .options import TrainArguments
from .report import check_writable

LOCK_NAME = ".ept-fast.lock"  # held in the output folder while a run writes into it


def output_dir(args: TrainArguments) -> Path:
    """--output-dir, or runs/<method>-<task or data>."""
    return Path(args.output_dir or Path("runs") / f"{args.method}-{data_name(args)}")


def prepare_output_dir(args: TrainArguments) -> Path:
    out = output_dir(args)
    if args.resume:
        folder = checkpoint_folder(out, args.resume)  # it must exist
        if folder.resolve().parent != out.resolve():  # the run's best adapter and reports are in its own folder
            raise ValueError(f"--resume: {folder} is a checkpoint of another run than --output-dir {out}; resume "
                             f"it with --output-dir {folder.parent}")
    elif out.exists() and any(path.name != LOCK_NAME for path in out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output-dir: {out} already holds a run; pass --overwrite to replace it or "
                              f"--resume to continue it")
    check_writable(out, "--output-dir")
    return out


@contextlib.contextmanager
def hold_output_dir(args: TrainArguments) -> Iterator[Path]:
    """--output-dir, checked (``prepare_output_dir``) and locked for as long as the run writes
    into it: a second run into the same folder, ``--overwrite`` or not, is refused."""
    from filelock import FileLock, Timeout

    out = prepare_output_dir(args)
    lock = FileLock(str(out / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FileExistsError(f"--output-dir: {out} is in use by another ept-fast run (it holds "
                              f"{out / LOCK_NAME}); let that run finish, or write into another folder") from None
    try:
        yield out
    finally:
        # Removed while still held (a run that then takes the folder makes a new lock file): the
        # folder is left as the run left it.
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()
