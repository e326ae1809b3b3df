"""Fused Triton kernels of EPT (installed as ``ept_fast.kernels``)."""
