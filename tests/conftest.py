import math
import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter; the variable must be set
# before any @triton.jit function is defined (that is, before ept_fast.kernels is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reject_dots_the_gpu_compiler_rejects():
    """The interpreter accepts tl.dot shapes and dtypes that NVIDIA's compiler does not (and
    multiplies bf16 bit patterns): make it refuse them, so CPU-green means GPU-compilable."""
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def checked_create_dot(self, a, b, acc, *args, **kwargs):
        m, k = a.data.shape[-2:]
        n = b.data.shape[-1]
        assert min(m, n, k) >= 16, f"tl.dot with a dimension < 16: ({m}x{k}) @ ({k}x{n})"
        widths = (a.dtype.primitive_bitwidth, b.dtype.primitive_bitwidth)
        assert widths[0] == widths[1], f"tl.dot operands of different widths: {a.dtype} and {b.dtype}"
        assert widths[0] >= 32, f"tl.dot on {a.dtype} operands: upcast to float32 first"
        return create_dot(self, a, b, acc, *args, **kwargs)

    interpreter.InterpreterBuilder.create_dot = checked_create_dot


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _reject_dots_the_gpu_compiler_rejects()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _poison_kernel_buffers(monkeypatch):
    """Kernel output buffers start as NaN (floats) or -7 (integers): an unwritten element fails."""
    from ept_fast.kernels import _launch

    allocate = _launch.new_buffer

    def poisoned(like, shape, dtype=None):
        buffer = allocate(like, shape, dtype)
        if buffer.is_floating_point():
            buffer.fill_(math.nan)
        elif buffer.dtype != torch.bool:
            buffer.fill_(-7)
        return buffer

    monkeypatch.setattr(_launch, "new_buffer", poisoned)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
