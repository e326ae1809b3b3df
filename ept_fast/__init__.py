"""ept_fast: Efficient Prompt Tuning (EPT) with fused Triton kernels for Hugging Face models."""

from . import functional, reference
from ._version import __version__
from .config import Backend, EPTConfig, Method, PromptInit, Readout, TaskType, infer_task_type
from .model import EPTModel, get_ept_model
from .optimizer import param_groups
from .prompt_encoder import EPTPromptEncoder

__all__ = [
    "__version__",
    "Backend",
    "EPTConfig",
    "EPTModel",
    "EPTPromptEncoder",
    "Method",
    "PromptInit",
    "Readout",
    "TaskType",
    "functional",
    "get_ept_model",
    "infer_task_type",
    "param_groups",
    "reference",
]


def __getattr__(name: str):
    if name in ("EPTTrainer", "EPTSeq2SeqTrainer"):  # transformers' Trainer imports slowly: only when asked
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'ept_fast' has no attribute {name!r}")
