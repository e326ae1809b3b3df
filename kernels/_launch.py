"""Launch helpers shared by the kernels: dtypes, padding, block sizes."""

from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

# NVIDIA's tl.dot needs every dimension >= 16; rank-like sizes (r, K, K*h) are padded to it.
MIN_DOT = 16


def interpreting() -> bool:
    """Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_pad(size: int) -> int:
    """``size`` rounded up to a power of two, at least ``MIN_DOT``."""
    return max(MIN_DOT, triton.next_power_of_2(max(size, 1)))


def accumulator(*tensors: torch.Tensor):
    """Triton dtype to compute in: float64 when any input is float64, float32 otherwise."""
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def dot_precision(*tensors: torch.Tensor) -> str:
    """IEEE fp32 dots (not TF32) whenever an input carries 32 or more bits of precision."""
    return "ieee" if any(t.element_size() >= 4 for t in tensors) else "tf32"


def new_buffer(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An uninitialised buffer for a kernel to fill (the tests poison it with NaN)."""
    return like.new_empty(shape, dtype=like.dtype if dtype is None else dtype)


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 under the interpreter)."""
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def split_float(value: float):
    """``value`` as two float32 numbers hi + lo: Triton passes Python floats as float32, and a
    float64 kernel rebuilds the constant to about 48 bits with ``widen``."""
    hi = _to_float32(value)
    return hi, _to_float32(value - hi)


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


@triton.jit
def widen(hi, lo, ACC: tl.constexpr):
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)
