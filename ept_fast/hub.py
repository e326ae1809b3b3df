"""Adapters on the Hugging Face hub: where ``from_pretrained`` / ``load_adapter`` find the files
(a local folder, else a hub repository through ``huggingface_hub`` and its cache), and what
``push_to_hub`` uploads (the adapter's files and a model card, never the backbone)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .serialization import CONFIG_NAME, WEIGHTS_NAME, PathLike

CARD_NAME = "README.md"
_NOT_FOUND = (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
              RevisionNotFoundError)


def adapter_folder(model_id: PathLike, revision: Optional[str] = None, subfolder: Optional[str] = None,
                   token: Optional[str] = None) -> Path:
    """The local folder holding the adapter ``model_id`` names: ``model_id/subfolder`` when
    ``model_id`` is a local folder, else the two files downloaded (or taken from the cache,
    as ``HF_HUB_OFFLINE=1`` requires) from the hub repository ``model_id`` at ``revision``."""
    local = Path(model_id).expanduser()
    if local.is_dir() or _names_a_path(model_id):
        return local / subfolder if subfolder else local
    try:
        paths = [hf_hub_download(str(model_id), name, subfolder=subfolder or None, revision=revision, token=token,
                                 library_name="ept_fast") for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except _NOT_FOUND as error:
        where = f" (subfolder {subfolder!r}, revision {revision or 'main'!r})" if subfolder or revision else ""
        raise FileNotFoundError(
            f"model_id: {str(model_id)!r} is neither a local adapter folder nor an adapter on the Hugging Face hub"
            f"{where}: {type(error).__name__}: {error}"
        ) from None
    return Path(paths[0]).parent


def _names_a_path(model_id: PathLike) -> bool:
    """A ``Path``, or a string a hub id cannot be (absolute, relative with ./ or ~, deeper than owner/name)."""
    text = str(model_id)
    return not isinstance(model_id, str) or text.startswith((".", "~", "/")) or text.count("/") > 1


def model_card(config: dict, trainable_parameters: int, task: Optional[dict], metrics: Optional[dict]) -> str:
    """The README.md of an uploaded adapter: the base model, the method and its sizes, the
    trainable parameters, and the task and metrics when known."""
    base = config.get("base_model_name_or_path")
    header = ["---", "library_name: ept_fast", "tags: [ept, prompt-tuning, peft]"]
    header += [f"base_model: {base}"] if base else []
    lines = header + ["---", "", f"# EPT adapter ({config['method']})", ""]
    lines += [f"A soft-prompt adapter trained with ept_fast on the frozen backbone `{base or 'unknown'}`.", ""]
    sizes = {"method": config["method"], "task type": config.get("task_type"), "m (prompt length)":
             config["num_virtual_tokens"], "n (positions of A·B)": config["max_length"], "r": config["r"],
             "K (subspaces)": config["num_spaces"], "h (subspace rank)": config["space_rank"],
             "fusion": config["fusion"], "trainable parameters": f"{trainable_parameters:,d}"}
    if task:
        sizes["task"] = task.get("name")
        if task.get("label_names"):
            sizes["labels"] = ", ".join(map(str, task["label_names"]))
    lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in sizes.items()]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in metrics.items()]
    lines += ["", "Load it with `EPTModel.from_pretrained(backbone, \"<this repo>\")` (ept_fast)."]
    return "\n".join(lines) + "\n"


def push_folder(repo_id: str, write: Callable[[Path], None], *, commit_message: str, private: Optional[bool],
                token: Optional[str], revision: Optional[str], create_pr: bool):
    """Create ``repo_id`` if needed and upload the folder ``write(folder)`` fills, nothing else."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:  # as transformers' push_to_hub: a new branch is created first
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="ept_fast-upload-") as folder:
        write(Path(folder))
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision, create_pr=create_pr, repo_type="model")
