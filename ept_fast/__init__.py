"""ept_fast: Efficient Prompt Tuning (EPT) with fused Triton kernels for Hugging Face models."""

__version__ = "0.1.0"

from . import functional, reference
from .config import Backend, EPTConfig, Method, PromptInit
from .prompt_encoder import EPTPromptEncoder

__all__ = [
    "__version__",
    "Backend",
    "EPTConfig",
    "EPTPromptEncoder",
    "Method",
    "PromptInit",
    "functional",
    "reference",
]
