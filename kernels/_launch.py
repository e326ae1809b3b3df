"""Launch helpers shared by the kernels: dtypes, padding, block sizes."""

from __future__ import annotations

import functools
import os
import struct
from typing import Dict, Sequence

import torch
import triton
import triton.language as tl

# NVIDIA's tl.dot needs every dimension >= 16; rank-like sizes (r, K, K*h) are padded to it.
MIN_DOT = 16
# The largest low-rank r the kernels take: rows of A are held on chip (docs/kernels.md).
MAX_RANK = 256


def check_shapes(op: str, tensors: dict, integer: Sequence[str] = (), floating: Sequence[str] = (),
                 nonempty: str = "") -> Dict[str, int]:
    """The raw custom ops' own check (the library's entry points check more, first): every
    ``tensors[name] = (tensor, pattern)`` has ``len(pattern)`` dimensions whose sizes agree with
    every other use of the same letter (a tensor may be None: not given), the ``integer`` ones of
    an integer dtype and the ``floating`` ones of a floating one, and the sizes named in ``nonempty``
    at least 1; returns the sizes. A kernel launched on shapes that disagree would read or write out
    of bounds, and one launched on an empty dimension would leave its outputs unwritten."""
    dims: Dict[str, int] = {}
    for name, (tensor, pattern) in tensors.items():
        if tensor is None:
            continue
        want = "(" + ", ".join(f"{p}={dims[p]}" if p in dims else p for p in pattern) + ")"
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != len(pattern) or any(
                dims.setdefault(letter, size) != size for letter, size in zip(pattern, tensor.shape)):
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{op}: {name}: expected shape {want}, got {got}")
        if (name in integer and tensor.is_floating_point()) or (name in floating and not tensor.is_floating_point()):
            raise TypeError(f"{op}: {name}: expected {'an integer' if name in integer else 'a floating'} dtype, "
                            f"got {tensor.dtype}")
    empty = [letter for letter in nonempty if dims.get(letter, 1) < 1]
    if empty:
        raise ValueError(f"{op}: expected sizes {', '.join(empty)} of at least 1, got 0 (shapes "
                         f"{ {name: tuple(t.shape) for name, (t, _) in tensors.items() if t is not None} })")
    return dims


def interpreting() -> bool:
    """Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_pad(size: int) -> int:
    """``size`` rounded up to a power of two, at least ``MIN_DOT``."""
    return max(MIN_DOT, triton.next_power_of_2(max(size, 1)))


def accumulator(*tensors: torch.Tensor):
    """Triton dtype to compute in: float64 when any input is float64, float32 otherwise."""
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def dot_precision(acc, output: torch.dtype = torch.float32) -> str:
    """How ``tl.dot`` multiplies, for a kernel that computes in ``acc`` and stores ``output``.

    float64: IEEE (the only float64 mode; DMMA tensor cores on Hopper). float32: ``tf32x3``,
    three TF32 tensor-core products that recover about float32 accuracy (plain TF32 rounds
    operands to 10 mantissa bits, ~1e-3 relative, outside the float32 parity tolerances;
    IEEE float32 runs on FMA units only). A 16-bit output is rounded to 8 or 11 bits anyway,
    so single ``tf32`` products suffice there.
    """
    if acc == tl.float64:
        return "ieee"
    return "tf32" if output.itemsize < 4 else "tf32x3"


def options(cfg: dict) -> dict:
    """The Triton launch options in a block configuration (warps, stages, register cap)."""
    return {key: cfg[key] for key in ("num_warps", "num_stages", "maxnreg") if key in cfg}


def new_buffer(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An uninitialised buffer for a kernel to fill (the tests poison it with NaN)."""
    return like.new_empty(shape, dtype=like.dtype if dtype is None else dtype)


def on_the_inputs_device(launch):
    """``launch(tensor, ...)`` with ``tensor``'s CUDA device made current: Triton launches on the
    current device (and its stream), which need not be the one the tensors are on."""
    @functools.wraps(launch)
    def run(tensor, *args, **kwargs):
        if not tensor.is_cuda:
            return launch(tensor, *args, **kwargs)
        with torch.cuda.device(tensor.device):
            return launch(tensor, *args, **kwargs)

    return run


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of the GPU that runs the kernels, as Triton's active driver
    reports them (1 under the interpreter)."""
    if interpreting():
        return 1
    driver = triton.runtime.driver.active
    index = device.index if device.index is not None else driver.get_current_device()
    return driver.utils.get_device_properties(index)["multiprocessor_count"]


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
