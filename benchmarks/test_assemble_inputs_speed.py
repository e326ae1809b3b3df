"""assemble_inputs (the input assembly): fused Triton vs the eager reference vs torch.compile of it, and a
device-to-device copy of the output's size (the bandwidth yardstick)."""

import functools

import pytest
import torch
from conftest import CUDA, DEVICE, MODES, PROVIDERS, step

from ept_fast import reference
from ept_fast.kernels import fused_assemble_inputs

M, R, VOCAB = 60, 30, 32000
EAGER = functools.partial(reference.assemble_inputs, validate=False)
_compiled = torch.compile(EAGER)
IMPLEMENTATIONS = {"triton": fused_assemble_inputs, "eager": EAGER, "compile": _compiled}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = [(8, 128), (32, 256), (16, 1024)]


def _inputs(b, T, d, dtype):
    n = max(256, T)
    ids = torch.randint(VOCAB, (b, T), device=DEVICE)
    mask = torch.ones(b, T, dtype=torch.long, device=DEVICE)
    mask[b // 2 :, T - T // 4 :] = 0  # some right padding
    table = torch.randn(VOCAB, d, device=DEVICE, dtype=dtype)
    prompt = torch.randn(M, d, device=DEVICE, requires_grad=True)
    lora_a = torch.randn(n, R, device=DEVICE, requires_grad=True)
    lora_b = torch.randn(R, d, device=DEVICE, requires_grad=True)
    return ids, mask, table, prompt, lora_a, lora_b


def _moved_bytes(b, T, d, dtype, mode):
    """Minimum traffic: the forward gathers the token rows and writes the output; the
    backward reads the output's gradient once."""
    element = torch.tensor([], dtype=dtype).element_size()
    forward, backward = (b * T * d + b * (M + T) * d) * element, b * (M + T) * d * element
    return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("d", [384, 768, 1024, 4096])
@pytest.mark.parametrize("b,T", SHAPES)
def test_assemble_inputs(measure, benchmark, b, T, d, provider, mode, dtype):
    benchmark.group = f"assemble_inputs b={b} T={T} d={d} {dtype} {mode}"
    ids, mask, table, prompt, lora_a, lora_b = _inputs(b, T, d, DTYPES[dtype])
    impl = IMPLEMENTATIONS[provider]
    leaves = [prompt, lora_a, lora_b]
    scaling = 8 / R ** 0.5

    def forward():
        return impl(ids, mask, table, prompt, lora_a, lora_b, scaling)[0]

    measure(step(forward, leaves, mode), op="assemble_inputs", provider=provider, mode=mode, b=b, T=T, d=d,
            dtype=dtype, bytes=_moved_bytes(b, T, d, DTYPES[dtype], mode))


@pytest.mark.skipif(not CUDA, reason="the copy yardstick is for GPU bandwidth")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [384, 768, 1024, 4096])
@pytest.mark.parametrize("b,T", SHAPES)
def test_device_copy(measure, benchmark, b, T, d, dtype):
    """A device-to-device copy moving the same bytes as the assembly forward."""
    benchmark.group = f"assemble_inputs b={b} T={T} d={d} {dtype} copy"
    src = torch.randn(b, M + T, d, device=DEVICE, dtype=DTYPES[dtype])
    dst = torch.empty_like(src)
    measure(lambda: dst.copy_(src), op="device_copy", provider="copy", mode="forward", b=b, T=T, d=d, dtype=dtype,
            bytes=2 * src.numel() * src.element_size())
