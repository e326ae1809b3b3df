"""The fused prompt generator against the reference: forward, all eight gradients, gradcheck,
determinism, opcheck, random shapes (CPU: Triton interpreter; CUDA where present)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ept_fast import functional, reference
from ept_fast.kernels import compile_check, ept_prompt, fused_ept_prompt

from helpers import (
    DEVICE,
    PROMPT_ARGS,
    PROMPT_SHAPES,
    assert_close,
    prompt_inputs,
    run_directly_and_from_a_cuda_graph,
    scaling_for,
)

TOLERANCE = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}


def _run(fn, x, scaling, grad_out):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out = fn(*(leaves[k] for k in PROMPT_ARGS), scaling)
    grads = torch.autograd.grad(out, [leaves[k] for k in PROMPT_ARGS], grad_out)
    return out.detach(), dict(zip(PROMPT_ARGS, grads))


def _check_parity(shape, dtype, device):
    m, d, n, r, K, h = shape
    x = prompt_inputs(m, d, n, r, K, h, dtype=dtype, device=device)
    s = scaling_for(r)
    grad_out = torch.randn(m, d, dtype=dtype, device=device)
    out, grads = _run(fused_ept_prompt, x, s, grad_out)
    ref, ref_grads = _run(reference.ept_prompt, x, s, grad_out)
    rtol, atol = TOLERANCE[dtype]
    assert_close(out, ref, rtol, atol, "P*")
    for name in PROMPT_ARGS:
        assert grads[name].dtype == x[name].dtype
        scale = max(ref_grads[name].abs().max().item(), 1.0) if ref_grads[name].numel() else 1.0
        assert_close(grads[name], ref_grads[name], rtol, atol * scale, f"d {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("shape", PROMPT_SHAPES, ids=str)
def test_parity_with_reference(shape, dtype, device):
    _check_parity(shape, dtype, device)


@pytest.fixture
def small_blocks(monkeypatch):
    """Several programs per launch and several splits of d, so the partial sums and the
    cross-row terms are exercised."""
    small = dict(BX=16, BY=16, BD=16, splits=3, BM=16, BN=16, BF=16, BQ=16, BC=16, BV=16, BK=16, num_warps=4,
                 num_stages=1, mix={"num_warps": 4})
    monkeypatch.setattr(ept_prompt, "launch_config", lambda *args: small)


@pytest.mark.parametrize("shape", [(60, 100, 37, 30, 4, 8), (33, 20, 5, 0, 2, 2), (17, 40, 13, 3, 0, 5)], ids=str)
def test_parity_with_several_programs(shape, small_blocks, device):
    _check_parity(shape, torch.float64, device)


@pytest.mark.parametrize("shape", [(7, 40, 13, 3, 3, 5), (5, 24, 9, 2, 0, 4)], ids=str)
def test_gradcheck(shape, device):
    m, d, n, r, K, h = shape
    x = prompt_inputs(m, d, n, r, K, h, device=device)
    leaves = tuple(x[k].requires_grad_() for k in PROMPT_ARGS)
    fn = lambda *args: fused_ept_prompt(*args, scaling_for(r))  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_backward_is_deterministic(small_blocks, device):
    x = prompt_inputs(40, 64, 30, 5, 3, 4, dtype=torch.float32, device=device)
    grad_out = torch.randn(40, 64, device=device)
    first = _run(fused_ept_prompt, x, 2.0, grad_out)[1]
    second = _run(fused_ept_prompt, x, 2.0, grad_out)[1]
    for name in PROMPT_ARGS:
        assert torch.equal(first[name], second[name]), name


def test_opcheck(device):
    x = prompt_inputs(7, 40, 13, 3, 3, 5, dtype=torch.float32, device=device)
    args = tuple(x[k].requires_grad_() for k in PROMPT_ARGS) + (1.5,)
    torch.library.opcheck(torch.ops.ept_fast.ept_prompt.default, args)


def test_functional_triton_backend_matches_reference(device):
    x = prompt_inputs(6, 24, 9, 2, 2, 3, dtype=torch.float64, device=device)
    args = [x[k] for k in PROMPT_ARGS]
    assert_close(functional.ept_prompt(*args, 2.0, backend="triton"), reference.ept_prompt(*args, 2.0), 1e-12, 1e-12)


def test_torch_compile_traces_without_graph_breaks(device):
    x = prompt_inputs(6, 24, 9, 2, 2, 3, dtype=torch.float32, device=device)
    args = [x[k] for k in PROMPT_ARGS]
    compiled = torch.compile(lambda *a: functional.ept_prompt(*a, 2.0, backend="triton") * 2,
                             backend="aot_eager", fullgraph=True)
    assert_close(compiled(*args), reference.ept_prompt(*args, 2.0) * 2, 1e-5, 1e-6)


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(1, 9), d=st.integers(1, 40), n=st.integers(1, 20), r=st.integers(0, 5),
    K=st.integers(0, 4), h=st.integers(1, 5), seed=st.integers(0, 2**16),
)
def test_random_small_shapes(m, d, n, r, K, h, seed):
    x = prompt_inputs(m, d, n, r, K, h, device=DEVICE, seed=seed)
    s = scaling_for(r)
    grad_out = torch.randn(m, d, dtype=torch.float64, device=DEVICE)
    out, grads = _run(fused_ept_prompt, x, s, grad_out)
    ref, ref_grads = _run(reference.ept_prompt, x, s, grad_out)
    assert_close(out, ref, 1e-10, 1e-12, "P*")
    for name in PROMPT_ARGS:
        assert_close(grads[name], ref_grads[name], 1e-10, 1e-10, f"d {name}")


def test_sizes_past_the_kernels_are_refused_or_run_on_the_reference(monkeypatch, device):
    x = prompt_inputs(513, 16, 4, 2, 1, 1, dtype=torch.float32, device=device)
    args = [x[k] for k in PROMPT_ARGS]
    with pytest.raises(ValueError, match=r"ept_prompt: the fused kernels cannot take these sizes: "
                                         r"num_virtual_tokens=513 is over 512"):
        fused_ept_prompt(*args, 2.0)
    with pytest.raises(ValueError, match=r"backend: 'triton' cannot run ept_prompt here "
                                         r"\(num_virtual_tokens=513 is over 512\); use backend='auto'"):
        functional.ept_prompt(*args, 2.0, backend="triton")
    monkeypatch.setattr(functional, "use_triton", lambda backend, device: True)  # as on a GPU
    with pytest.warns(UserWarning, match=r"ept_prompt runs the PyTorch reference, not the fused kernels"):
        out = functional.ept_prompt(*args, 2.0, backend="auto")
    assert torch.equal(out, reference.ept_prompt(*args, 2.0))


@pytest.mark.parametrize("m, r, dtype, reason", [
    (512, 256, torch.float32, None),
    (60, 257, torch.float32, "r=257 is over 256"),
    (512, 128, torch.float64, None),
    (257, 129, torch.float64, "in float64, num_virtual_tokens=257 over 256 together with r=129 over 128"),
])
def test_the_kernels_domain(m, r, dtype, reason):
    assert ept_prompt.unsupported(m, r, dtype) == reason


REAL_SHAPES = sorted({case.shape for case in compile_check.CASES if case.op == "ept_prompt"
                      and case.shape[0] <= 100}, key=str)  # the compile check's shapes, but its largest corners


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", REAL_SHAPES, ids=str)
def test_parity_at_real_shapes_on_gpu(shape, dtype):
    """Forward and all eight gradients against the float64 reference, at the sizes the
    compile check compiles (several programs in every launch)."""
    m, d, n, r, K, h = shape
    x = prompt_inputs(m, d, n, r, K, h, dtype=torch.float64, device="cuda")
    grad_out = torch.randn(m, d, dtype=torch.float64, device="cuda")
    low = {k: v.to(dtype) for k, v in x.items()}
    out, grads = _run(fused_ept_prompt, low, scaling_for(r), grad_out.to(dtype))
    ref, ref_grads = _run(reference.ept_prompt, {k: v.double() for k, v in low.items()}, scaling_for(r), grad_out)
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)
    assert_close(out, ref, rtol, atol * ref.abs().max().item(), "P*")
    for name in PROMPT_ARGS:
        scale = max(ref_grads[name].abs().max().item(), 1.0)
        assert_close(grads[name], ref_grads[name], rtol, atol * scale, f"d {name}")


@pytest.mark.cuda
def test_forward_and_backward_replay_from_a_cuda_graph():
    """No host sync and no shape-dependent host work the graph would miss: a captured forward +
    backward replays to the same values and gradients as a direct run."""
    x = prompt_inputs(60, 768, 256, 30, 4, 8, dtype=torch.float32, device="cuda")
    leaves = [x[k].requires_grad_() for k in PROMPT_ARGS]
    grad_out = torch.randn(60, 768, device="cuda")

    def step():
        out = functional.ept_prompt(*leaves, 1.46, backend="triton")
        return (out, *torch.autograd.grad(out, leaves, grad_out))

    for got, want in zip(*run_directly_and_from_a_cuda_graph(step)):
        assert torch.equal(got, want)
