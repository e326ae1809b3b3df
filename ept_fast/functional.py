"""The functional layer: one entry per EPT op, dispatching to the fused Triton kernels or
the PyTorch reference. Both backends return the same values and gradients.

``backend``: ``"auto"`` runs the kernels on CUDA tensors when Triton is importable and the
reference otherwise; ``"triton"`` insists on the kernels (CUDA tensors, or any device when
``TRITON_INTERPRET=1`` runs them in Triton's CPU interpreter); ``"torch"`` is the reference.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import torch

from . import reference
from ._validation import (
    Backend,
    check_assemble_inputs_args,
    check_assemble_inputs_mixed_args,
    check_ept_prompt_args,
    parse_enum,
)
from .reference import StackedAdapters, stack_adapters

__all__ = ["ept_prompt", "assemble_inputs", "assemble_inputs_mixed", "stack_adapters", "StackedAdapters",
           "triton_available", "use_triton"]


def triton_available() -> bool:
    """Whether the Triton kernels can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(backend, device: torch.device) -> bool:
    """The dispatch decision: True for the Triton kernels, False for the reference."""
    backend = parse_enum(Backend, "backend", backend)
    if backend is Backend.TORCH:
        return False
    runnable = triton_available() and (device.type == "cuda" or _interpreting())
    if backend is Backend.TRITON and not runnable:
        reason = "Triton is not installed" if not triton_available() else f"tensors are on {device}"
        raise ValueError(
            f"backend: 'triton' needs Triton and CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
            f"interpreter), but {reason}; use backend='auto' or 'torch'"
        )
    return backend is Backend.TRITON or (runnable and device.type == "cuda")


def _reference_instead(backend, op: str, reason: str, stacklevel: int = 3) -> None:
    """Inputs the fused kernels do not take (``reason``): an error for backend='triton', a warning
    (at the user's call, ``stacklevel`` frames up) and the reference for 'auto'."""
    if parse_enum(Backend, "backend", backend) is Backend.TRITON:
        raise ValueError(f"backend: 'triton' cannot run {op} here ({reason}); use backend='auto', "
                         f"which then runs the PyTorch reference, or backend='torch'")
    warnings.warn(f"ept_fast: {op} runs the PyTorch reference, not the fused kernels: {reason}", stacklevel=stacklevel)


def _assembly_kernels(op: str, word_embeddings: torch.Tensor, dims: dict, backend):
    """The fused assembly kernels' module where the backend and the sizes (``dims``) allow
    ``op``, else None (after the warning or error of ``_reference_instead``)."""
    if not use_triton(backend, word_embeddings.device):
        return None
    from .kernels import assemble_inputs as kernels

    reason = kernels.unsupported(dims["r"])
    if reason is None and word_embeddings.requires_grad and torch.is_grad_enabled():
        reason = ("word_embeddings requires grad, but the fused assembly treats the table as frozen "
                  "(freeze it: requires_grad_(False))")
    if reason is None:
        return kernels
    _reference_instead(backend, op, reason, stacklevel=4)  # warn at the caller of the public op
    return None


def ept_prompt(
    prompt: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    fusion_scale: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor,
    scaling: float,
    backend: str = "auto",
) -> torch.Tensor:
    """The prompt generator P -> P* (m, d); see ``ept_fast.reference.ept_prompt`` for shapes."""
    args = (prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling)
    dims = check_ept_prompt_args(*args)
    if use_triton(backend, prompt.device):
        from .kernels import ept_prompt as kernels

        reason = kernels.unsupported(dims["m"], dims["r"], prompt.dtype)
        if reason is None:
            return kernels.fused_ept_prompt(*args)
        _reference_instead(backend, "ept_prompt", reason)
    return reference.ept_prompt(*args, validate=False)


def assemble_inputs(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    word_embeddings: torch.Tensor,
    prompt_out: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    backend: str = "auto",
    embed_scale: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(inputs_embeds (b, m+T, d), attention_mask (b, m+T))``; see
    ``ept_fast.reference.assemble_inputs`` for the rule and shapes."""
    args = (input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling, embed_scale)
    kernels = _assembly_kernels("assemble_inputs", word_embeddings, check_assemble_inputs_args(*args), backend)
    if kernels is not None:
        return kernels.fused_assemble_inputs(*args)
    return reference.assemble_inputs(*args, validate=False)


def assemble_inputs_mixed(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    word_embeddings: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scalings: torch.Tensor,
    adapter_ids: torch.Tensor,
    backend: str = "auto",
    embed_scale: float = 1.0,
    padding_side: str = "right",
    max_lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch whose rows run different adapters, in one pass; see
    ``ept_fast.reference.assemble_inputs_mixed`` for the rule and shapes."""
    args = (input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a, lora_b, scalings, adapter_ids,
            embed_scale, padding_side)
    dims = check_assemble_inputs_mixed_args(*args, max_lengths)
    kernels = _assembly_kernels("assemble_inputs_mixed", word_embeddings, dims, backend)
    if kernels is not None:
        return kernels.fused_assemble_inputs_mixed(*args)
    return reference.assemble_inputs_mixed(*args, validate=False)
