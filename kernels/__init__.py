"""Fused Triton kernels of EPT (installed as ``ept_fast.kernels``).

One module per op, each holding its ``@triton.jit`` kernels and the differentiable
``torch.library`` custom op that launches them:

- ``ept_prompt``: ``ept_fast::ept_prompt`` (the prompt generator P -> P*), forward and backward.
- ``assemble_inputs``: ``ept_fast::assemble_inputs`` (prefix + embeddings + low-rank rows).

``compile_check`` compiles them all for an H100 on any machine (``python -m
ept_fast.kernels.compile_check``); docs/kernels.md describes the design and its limits.
"""

# From a checkout's root this folder is also importable as a top-level package "kernels", and
# transformers imports that name when it probes for the unrelated hub "kernels" library.
# Registering the custom ops a second time would invalidate the first registration (the
# operator's schema is freed under the first module), so that stray import stays empty.
if __name__ == "ept_fast.kernels":
    from .assemble_inputs import fused_assemble_inputs
    from .ept_prompt import fused_ept_prompt

    __all__ = ["fused_assemble_inputs", "fused_ept_prompt"]
