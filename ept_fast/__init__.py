"""ept_fast: Efficient Prompt Tuning (EPT) with fused Triton kernels for Hugging Face models."""

__version__ = "0.1.0"

from . import functional, reference
from .config import Backend, EPTConfig, Method, PromptInit, TaskType
from .model import EPTModel, get_ept_model, infer_task_type
from .prompt_encoder import EPTPromptEncoder

__all__ = [
    "__version__",
    "Backend",
    "EPTConfig",
    "EPTModel",
    "EPTPromptEncoder",
    "Method",
    "PromptInit",
    "TaskType",
    "functional",
    "get_ept_model",
    "infer_task_type",
    "reference",
]
