"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's names),
both written to temporary files first and renamed only when both are written: a failed write
leaves the previous pair as it was, and no file is ever torn (only a crash between the two
renames, two system calls apart, could pair new weights with the old config)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from ._version import __version__

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_TYPE = "EPT"
FORMAT_VERSION = 1
# Keys written next to the config fields; not config fields themselves. "task" describes the
# data the adapter was trained on (name, labels, metrics), when the trainer knows it.
METADATA_KEYS = ("peft_type", "format_version", "ept_fast_version", "inference_mode", "task")

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` in the target's folder, then rename over ``path``."""
    atomic_write_all({path: write})


def atomic_write_all(writers: Dict[PathLike, Callable[[str], None]]) -> None:
    """Each ``writers[path](temporary_path)`` in the target's folder, and only when every one has
    succeeded, each temporary renamed over its path: a failed write replaces none of them."""
    temporaries = {}
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
    except BaseException:
        for temporary in temporaries.values():
            Path(temporary).unlink(missing_ok=True)
        raise


class AdapterFiles(NamedTuple):
    config: dict  # the EPTConfig fields
    tensors: Dict[str, torch.Tensor]  # on the CPU
    task: Optional[dict]  # the "task" metadata, when written


def save_adapter(directory: PathLike, config: dict, tensors: Dict[str, torch.Tensor],
                 task: Optional[dict] = None) -> None:
    """Write the two adapter files into ``directory`` (created if needed)."""
    document = {"peft_type": PEFT_TYPE, "format_version": FORMAT_VERSION, "ept_fast_version": __version__,
                "inference_mode": True, **config, **({"task": task} if task else {})}
    write_adapter_files(directory, document, tensors)


def write_adapter_files(directory: PathLike, document: dict, tensors: Dict[str, torch.Tensor]) -> None:
    """``document`` as ``adapter_config.json`` and ``tensors`` as ``adapter_model.safetensors`` in
    ``directory``, replaced together (``atomic_write_all``): ept_fast's own format or PEFT's."""
    directory = Path(directory)
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write_all({directory / WEIGHTS_NAME: lambda tmp: save_file(contiguous, tmp, metadata={"format": "pt"}),
                      directory / CONFIG_NAME: lambda tmp: Path(tmp).write_text(text, encoding="utf-8")})


def load_adapter(directory: PathLike) -> AdapterFiles:
    """Read and check the two adapter files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory: expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}, "
                                f"but {directory} does not exist")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"adapter directory {directory}: expected {name}, which is missing")
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
    return AdapterFiles(config, read_tensors(directory / WEIGHTS_NAME), document.get("task"))


def read_tensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each finite: a truncated or corrupt file, or a NaN or
    infinity that would flow into every output, is an error naming the file (and the tensor)."""
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError, OSError or others
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values; the adapter would give "
                             f"non-finite outputs")
    return tensors
