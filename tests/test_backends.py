"""Backend dispatch: auto / triton / torch, and the encoder on both backends."""

import pytest
import torch

from ept_fast import EPTConfig, EPTPromptEncoder
from ept_fast.functional import use_triton

from helpers import assert_close, padded_batch


@pytest.mark.parametrize("interpreter", ["1", "0"])
def test_auto_uses_the_reference_on_cpu_even_under_the_interpreter(monkeypatch, interpreter):
    monkeypatch.setenv("TRITON_INTERPRET", interpreter)
    assert not use_triton("auto", torch.device("cpu"))
    assert not use_triton("torch", torch.device("cpu"))


def test_triton_on_cpu_runs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton("triton", torch.device("cpu"))


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend: 'triton' needs Triton and CUDA tensors .* tensors are on cpu"):
        use_triton("triton", torch.device("cpu"))


@pytest.mark.cuda
def test_auto_uses_the_kernels_on_cuda():
    assert use_triton("auto", torch.device("cuda"))


def test_encoder_gives_the_same_values_and_gradients_on_both_backends(device):
    E = torch.randn(40, 32, device=device)
    ids, mask = padded_batch([7, 4, 0], 8, 40, left=True, device=device)
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        enc = EPTPromptEncoder(EPTConfig(num_virtual_tokens=5, max_length=10, r=3, num_spaces=2, space_rank=4,
                                         prompt_init="RANDOM", backend=backend), word_embeddings=E).to(device)
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(0.1 * torch.randn_like(p))
        embeds, ext_mask = enc.assemble_inputs(ids, mask, E)
        (embeds.square().sum() + ext_mask.sum()).backward()
        results[backend] = (embeds.detach(), {n: p.grad for n, p in enc.named_parameters()})
    assert_close(results["triton"][0], results["torch"][0], 1e-5, 1e-5, "inputs_embeds")
    for name, grad in results["torch"][1].items():
        assert_close(results["triton"][1][name], grad, 1e-4, 1e-4 * max(grad.abs().max().item(), 1.0), name)
