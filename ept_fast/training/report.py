"""What a run leaves behind, in the forms users' tools read: ``metrics.json`` (the whole
summary), ``all_results.json`` (flat ``eval_*`` / ``test_*`` / ``train_*`` keys, as Hugging
Face's example scripts write them), ``training.png`` (from Trainer's log history), and the
table printed at the end."""

from __future__ import annotations

import json
import platform
import resource
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .._version import __version__
from ..serialization import atomic_write
from ..tasks import Task

SPLIT_PREFIX = {"validation": "eval", "test": "test"}


def check_writable(folder: Path, option: str) -> None:
    """``folder`` (created if needed) takes new files; else an error naming ``option``, before any
    work whose results would have nowhere to go."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ept-fast-write-check."):
            pass
    except OSError as error:
        raise ValueError(f"{option}: cannot write into {folder} ({error.strerror or error}); choose a folder you "
                         f"can write to") from None


def write_json(path: Path, document: dict) -> None:
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def flat_results(summary: dict) -> Dict[str, float]:
    """``all_results.json``: ``eval_<metric>`` (validation), ``test_<metric>``, the sizes, and
    the training figures when the summary has them."""
    flat = {}
    for split, prefix in SPLIT_PREFIX.items():
        for name, value in summary.get(split, {}).items():
            flat[f"{prefix}_{name}"] = value
        if f"{split}_examples" in summary:
            flat[f"{prefix}_samples"] = summary[f"{split}_examples"]
    if "steps" in summary:
        flat.update(train_loss=summary["train_loss"], train_runtime=summary["train_time_s"],
                    train_samples=summary["train_examples"], train_samples_per_second=summary["train_examples_per_s"],
                    train_steps=summary["steps"], epoch=summary["epoch"])
    return flat


def write_results(directory: Path, summary: dict) -> None:
    write_json(directory / "metrics.json", summary)
    write_json(directory / "all_results.json", flat_results(summary))


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def versions() -> dict:
    import transformers

    return {"ept_fast": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def plot_history(log_history: List[dict], metric: str, path: Path, best_step: Optional[int] = None,
                 test_score: Optional[float] = None) -> None:
    """The training loss and the validation metric by step, from Trainer's ``log_history``; the
    best checkpoint (``best_step``) marked, and its ``test_score`` when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    losses = [entry for entry in log_history if "loss" in entry]
    loss_axis.plot([e["step"] for e in losses], [e["loss"] for e in losses], linewidth=0.8)
    loss_axis.set(xlabel="step", ylabel="training loss", title="loss")
    key = f"eval_{metric}"
    evaluated = {e["step"]: e[key] for e in log_history if key in e}  # a step validated twice: its last score
    metric_axis.plot(list(evaluated), list(evaluated.values()), marker="o")
    if best_step in evaluated:
        label = f"best, step {best_step}" + (f" (test {test_score:.4f})" if test_score is not None else "")
        metric_axis.scatter([best_step], [evaluated[best_step]], s=120, facecolors="none", edgecolors="red",
                            zorder=3, label=label)
        if test_score is not None:
            metric_axis.axhline(test_score, color="gray", linestyle=":", linewidth=1, label=f"test {metric}")
        metric_axis.legend(loc="lower right")
    metric_axis.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def summary_table(summary: dict, task: Task) -> str:
    rows = [(f"{split} {name}", f"{summary[split][name]:.4f}") for split in ("validation", "test") if summary.get(split)
            for name in task.metrics]
    if "steps" in summary:
        rows += [("best step", str(summary["best_step"])),
                 ("adapter from step", str(summary.get("kept_step", summary["best_step"]))),
                 ("train time", f"{summary['train_time_s']:.1f} s"),
                 ("examples/s", f"{summary['train_examples_per_s']:.1f}")]
    rows.append(("peak memory", f"{summary['peak_memory_mb']:.0f} MB"))
    if "trainable_parameters" in summary:
        rows += [("trainable params", f"{summary['trainable_parameters']:,d}"),
                 ("  of the adapter", f"{summary['adapter_parameters']:,d}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{'':-<{width + 16}}"] + [f"{k:<{width}}  {v:>12}" for k, v in rows] + [f"{'':-<{width + 16}}"])
