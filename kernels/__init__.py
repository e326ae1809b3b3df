"""Fused Triton kernels of EPT (installed as ``ept_fast.kernels``).

One module per op, each holding its ``@triton.jit`` kernels and the differentiable
``torch.library`` custom op that launches them:

- ``prompt_generator``: ``ept_fast::ept_prompt`` (P -> P*), forward and backward.
- ``input_assembly``: ``ept_fast::assemble_inputs`` (prefix + embeddings + low-rank rows).
"""

from .input_assembly import fused_assemble_inputs
from .prompt_generator import fused_ept_prompt

__all__ = ["fused_assemble_inputs", "fused_ept_prompt"]
