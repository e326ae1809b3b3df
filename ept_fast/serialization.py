"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's names),
both written to temporary files first and renamed only when both are written: a failed write
leaves the previous pair as it was, and no file is ever torn. Both files carry the same
``save_id``, so a reader that meets one save's config beside another's weights (a crash between
the two renames, or a second process saving into the folder meanwhile) reads again, and says so
if the pair never matches."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from ._version import __version__

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_TYPE = "EPT"
FORMAT_VERSION = 1
# Keys written next to the config fields; not config fields themselves. "task" describes the
# data the adapter was trained on (name, labels, metrics), when the trainer knows it.
METADATA_KEYS = ("peft_type", "format_version", "ept_fast_version", "inference_mode", "task", "save_id")
PAIR_READS = 20  # reads of a pair that two saves are replacing, 50 ms apart, before giving up

PathLike = Union[str, os.PathLike]


class WriteError(OSError):
    """A file could not be written (a full disk, a folder turned read-only); nothing was replaced."""


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` in the target's folder, then rename over ``path``."""
    atomic_write_all({path: write})


def atomic_write_all(writers: Dict[PathLike, Callable[[str], None]]) -> None:
    """Each ``writers[path](temporary_path)`` in the target's folder, and only when every one has
    succeeded, each temporary renamed over its path: a failed write replaces none of them (and
    says which file, as a ``WriteError``)."""
    temporaries = {}
    path = None
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(handle)
            temporaries[path] = temporary
            write(temporary)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; keep the usual permissions
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except BaseException as error:
        for temporary in temporaries.values():
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error.errno, f"could not write {path} ({error.strerror or error}); is the disk full? "
                                          f"nothing was replaced") from None
        raise


class AdapterFiles(NamedTuple):
    config: dict  # the EPTConfig fields
    tensors: Dict[str, torch.Tensor]  # on the CPU
    task: Optional[dict]  # the "task" metadata, when written


def save_adapter(directory: PathLike, config: dict, tensors: Dict[str, torch.Tensor],
                 task: Optional[dict] = None) -> None:
    """Write the two adapter files into ``directory`` (created if needed)."""
    save_id = uuid.uuid4().hex
    document = {"peft_type": PEFT_TYPE, "format_version": FORMAT_VERSION, "ept_fast_version": __version__,
                "inference_mode": True, "save_id": save_id, **config, **({"task": task} if task else {})}
    write_adapter_files(directory, document, tensors, {"save_id": save_id})


def write_adapter_files(directory: PathLike, document: dict, tensors: Dict[str, torch.Tensor],
                        metadata: Optional[Dict[str, str]] = None) -> None:
    """``document`` as ``adapter_config.json`` and ``tensors`` as ``adapter_model.safetensors``
    (with ``metadata``) in ``directory``, replaced together (``atomic_write_all``): ept_fast's own
    format or PEFT's."""
    directory = Path(directory)
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    metadata = {"format": "pt", **(metadata or {})}
    atomic_write_all({directory / WEIGHTS_NAME: lambda tmp: save_file(contiguous, tmp, metadata=metadata),
                      directory / CONFIG_NAME: lambda tmp: Path(tmp).write_text(text, encoding="utf-8")})


def load_adapter(directory: PathLike) -> AdapterFiles:
    """Read and check the two adapter files (read again while they belong to different saves)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory: expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}, "
                                f"but {directory} " + ("is a file" if directory.exists() else "does not exist"))
    for attempt in range(PAIR_READS):
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"adapter directory {directory}: expected {name}, which is missing")
        files, weights_save = _read_pair(directory)
        if None in (files.save_id, weights_save) or files.save_id == weights_save:  # None: written by hand
            return AdapterFiles(files.config, files.tensors, files.task)
        time.sleep(0.05)
    raise ValueError(f"adapter directory {directory}: {CONFIG_NAME} and {WEIGHTS_NAME} belong to different saves "
                     f"(save_id {files.save_id} and {weights_save}), still after {PAIR_READS} reads; is another "
                     f"process saving into it? Save again, or into a folder of its own")


class _Pair(NamedTuple):
    config: dict
    tensors: Dict[str, torch.Tensor]
    task: Optional[dict]
    save_id: Optional[str]  # the config's


def _read_pair(directory: Path) -> Tuple[_Pair, Optional[str]]:
    """The config side and the weights, and the weights' own save_id."""
    try:
        document = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{directory / CONFIG_NAME}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{directory / CONFIG_NAME}: expected a JSON object of config fields, got "
                         f"{type(document).__name__}")
    if document.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"{directory / CONFIG_NAME}: expected peft_type {PEFT_TYPE!r}, got "
                         f"{document.get('peft_type')!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_NAME}: expected adapter format_version {FORMAT_VERSION}, got "
            f"{document.get('format_version')!r} (written by ept_fast {document.get('ept_fast_version', '?')}); "
            f"upgrade ept_fast to read it"
        )
    config = {key: value for key, value in document.items() if key not in METADATA_KEYS}
    tensors, metadata = read_tensors(directory / WEIGHTS_NAME, with_metadata=True)
    return _Pair(config, tensors, document.get("task"), document.get("save_id")), metadata.get("save_id")


def read_tensors(path: PathLike, with_metadata: bool = False):
    """The tensors of a safetensors file (and its metadata, ``with_metadata``), each finite: a
    truncated or corrupt file, or a NaN or infinity that would flow into every output, is an
    error naming the file (and the tensor)."""
    try:  # the bytes read once: a save renaming a new file over this one between two opens cannot tear it
        data = Path(path).read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        metadata = header.get("__metadata__") or {}
        tensors = safetensors_load(data)
    except Exception as error:  # safetensors raises its own SafetensorError, OSError or others
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values; the adapter would give "
                             f"non-finite outputs")
    return (tensors, metadata) if with_metadata else tensors
