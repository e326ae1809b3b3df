"""ept_prompt (the prompt generator P -> P*): fused Triton vs the eager reference vs torch.compile of it."""

import functools

import pytest
import torch
from conftest import DEVICE, MODES, PROVIDERS, step

from ept_fast import reference
from ept_fast.kernels import fused_ept_prompt

ARGS = ("prompt", "lora_a", "lora_b", "fusion_scale", "proj_down", "proj_up", "gate_weight", "gate_bias")
N, R, K, H = 256, 30, 4, 8
EAGER = functools.partial(reference.ept_prompt, validate=False)
_compiled = torch.compile(EAGER)
IMPLEMENTATIONS = {"triton": fused_ept_prompt, "eager": EAGER, "compile": _compiled}


def _parameters(m, d):
    shapes = {"prompt": (m, d), "lora_a": (N, R), "lora_b": (R, d), "fusion_scale": (), "proj_down": (K, d, H),
              "proj_up": (K, H, d), "gate_weight": (d, K), "gate_bias": (K,)}
    return [torch.randn(shapes[name], device=DEVICE).mul_(0.1).requires_grad_() for name in ARGS]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("d", [384, 768, 1024, 4096])
@pytest.mark.parametrize("m", [20, 60])
def test_ept_prompt(measure, benchmark, m, d, provider, mode):
    benchmark.group = f"ept_prompt m={m} d={d} {mode}"
    leaves = _parameters(m, d)
    impl = IMPLEMENTATIONS[provider]
    scaling = 8 / R ** 0.5
    measure(step(lambda: impl(*leaves, scaling), leaves, mode), op="ept_prompt", provider=provider,
            mode=mode, m=m, d=d, n=N, r=R, K=K, h=H)
