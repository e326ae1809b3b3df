"""The fused input assembly against the reference: forward, the gradients of P*, A and B,
gradcheck, determinism, opcheck, random shapes (CPU: Triton interpreter; CUDA where present)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ept_fast import functional, reference
from ept_fast.kernels import assemble_inputs, compile_check, fused_assemble_inputs

from helpers import (
    DEVICE,
    assert_close,
    padded_batch,
    prompt_inputs,
    run_directly_and_from_a_cuda_graph,
    scaling_for,
    table,
)

# (lengths per row, T, V, d, n, r, m, left padding)
CASES = {
    "defaults-d384": ([128, 100, 3, 64], 128, 500, 384, 256, 30, 60, False),
    "defaults-d768-left": ([128, 100, 3, 64], 128, 500, 768, 256, 30, 60, True),
    "odd-right": ([5, 3, 1, 0], 5, 50, 40, 13, 3, 7, False),
    "odd-left": ([5, 3, 1, 0], 6, 50, 40, 13, 1, 1, True),
    "b1-T1": ([1], 1, 10, 40, 13, 3, 1, False),
    "no-real-token": ([0, 0], 4, 10, 24, 6, 2, 3, True),
    "r0": ([9, 5], 9, 30, 40, 4, 0, 7, False),
    "medium-left": ([40, 33, 5, 0], 44, 60, 48, 50, 5, 9, True),
}
# table dtype -> (rtol, atol relative to the largest reference value)
TOLERANCE = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 2e-2),
             torch.float16: (1e-2, 1e-2)}


def _inputs(case, table_dtype, device, mask_dtype=torch.long):
    lengths, T, V, d, n, r, m, left = CASES[case]
    ids, mask = padded_batch(lengths, T, V, left=left, device=device)
    params = torch.float64 if table_dtype == torch.float64 else torch.float32
    x = prompt_inputs(m, d, n, r, 1, 1, dtype=params, device=device)
    mask = None if mask_dtype is None else mask.to(mask_dtype)
    return ids, mask, table(V, d, dtype=table_dtype, device=device), x["prompt"], x["lora_a"], x["lora_b"], r


def _run(fn, ids, mask, E, P, A, B, s, grad_out, embed_scale=1.0):
    leaves = [t.detach().clone().requires_grad_() for t in (P, A, B)]
    out, ext_mask = fn(ids, mask, E, *leaves, s, embed_scale)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]  # r = 0: A, B unused
    return out.detach(), ext_mask, grads


def _check_parity(case, table_dtype, device, mask_dtype=torch.long, embed_scale=1.0):
    ids, mask, E, P, A, B, r = _inputs(case, table_dtype, device, mask_dtype)
    s = scaling_for(r)
    grad_out = torch.randn(ids.shape[0], P.shape[0] + ids.shape[1], E.shape[1], device=device).to(table_dtype)
    out, ext_mask, grads = _run(fused_assemble_inputs, ids, mask, E, P, A, B, s, grad_out, embed_scale)
    ref, ref_mask, ref_grads = _run(reference.assemble_inputs, ids, mask, E, P, A, B, s, grad_out, embed_scale)
    rtol, atol = TOLERANCE[table_dtype]
    assert out.dtype == table_dtype and ext_mask.dtype == ref_mask.dtype
    assert torch.equal(ext_mask, ref_mask)
    assert_close(out, ref, rtol, atol * ref.abs().max().item(), "inputs_embeds")
    for name, grad, ref_grad, param in zip(("prompt_out", "lora_a", "lora_b"), grads, ref_grads, (P, A, B)):
        assert grad.dtype == param.dtype
        scale = ref_grad.abs().max().item() if ref_grad.numel() else 1.0
        assert_close(grad, ref_grad, rtol, atol * max(scale, 1.0), f"d {name}")


@pytest.mark.parametrize("table_dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES)
def test_parity_with_reference(case, table_dtype, device):
    _check_parity(case, table_dtype, device)


@pytest.mark.parametrize("table_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", ["defaults-d384", "odd-left"])
def test_half_precision_tables(case, table_dtype, device):
    """fp32 parameters, 16-bit table: the sum is formed in fp32 and cast once."""
    _check_parity(case, table_dtype, device)


@pytest.mark.cuda
@pytest.mark.parametrize("table_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_tables_on_gpu_defaults(table_dtype):
    _check_parity("defaults-d768-left", table_dtype, "cuda")


@pytest.mark.parametrize("table_dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("case", ["odd-left", "r0"])
def test_scaled_tables(case, table_dtype, device):
    """A backbone whose lookup scales the rows (Gemma's embed_scale = √d): every token, attended or not."""
    _check_parity(case, table_dtype, device, embed_scale=6.25)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.float32, None], ids=str)
def test_mask_dtypes(mask_dtype, device):
    _check_parity("odd-left", torch.float64, device, mask_dtype)


@pytest.fixture
def small_blocks(monkeypatch):
    """Several segments per row (a prefix count over several chunks), several blocks of d,
    several position splits, batch rows loaded two at a time."""
    monkeypatch.setattr(assemble_inputs, "_forward_config",
                        lambda *sizes: dict(BT=16, BD=16, B_PREFIX=16, segment=16, num_warps=4))
    monkeypatch.setattr(assemble_inputs, "_backward_config",
                        lambda *sizes: dict(BP=16, BD=16, BB=2, splits=3, BN=16, num_warps=4))


@pytest.mark.parametrize("case", ["medium-left", "odd-right", "no-real-token", "r0"])
def test_parity_with_small_blocks(case, small_blocks, device):
    _check_parity(case, torch.float64, device)


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_gradcheck(left, device):
    ids, mask = padded_batch([5, 2, 0], 5, 20, left=left, device=device)
    x = prompt_inputs(3, 24, 6, 3, 1, 1, device=device)
    E = table(20, 24, device=device)
    leaves = tuple(x[k].requires_grad_() for k in ("prompt", "lora_a", "lora_b"))
    fn = lambda P, A, B: fused_assemble_inputs(ids, mask, E, P, A, B, 1.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_backward_is_deterministic(small_blocks, device):
    ids, mask, E, P, A, B, r = _inputs("medium-left", torch.float32, device)
    grad_out = torch.randn(ids.shape[0], P.shape[0] + ids.shape[1], E.shape[1], device=device)
    first = _run(fused_assemble_inputs, ids, mask, E, P, A, B, 2.0, grad_out)[2]
    second = _run(fused_assemble_inputs, ids, mask, E, P, A, B, 2.0, grad_out)[2]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_opcheck(device):
    ids, mask, E, P, A, B, _ = _inputs("odd-left", torch.float32, device)
    args = (ids, mask, E, P.requires_grad_(), A.requires_grad_(), B.requires_grad_(), 1.5, 3.0)
    torch.library.opcheck(torch.ops.ept_fast.assemble_inputs.default, args)


def test_torch_compile_traces_without_graph_breaks(device):
    ids, mask, E, P, A, B, _ = _inputs("odd-right", torch.float32, device)
    fn = lambda *a: functional.assemble_inputs(*a, 2.0, backend="triton")[0] * 2  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert_close(compiled(ids, mask, E, P, A, B), reference.assemble_inputs(ids, mask, E, P, A, B, 2.0)[0] * 2,
                 1e-5, 1e-6)


def test_the_backward_ops_fake_kernels_give_the_real_strides(device):
    """torch.compile plans with the fake kernels: their outputs must be laid out as the real ones
    (contiguous), also for a non-contiguous parameter."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ids, mask, E, P, A, B, _ = _inputs("odd-right", torch.float32, device)
    P, A, s = P.t().contiguous().t(), A.t().contiguous().t(), 1.5  # P, A: the same values, column-major
    _, _, token_index, lengths = torch.ops.ept_fast.assemble_inputs(ids, mask, E, P, A, B, s, 1.0)
    grad = torch.randn(ids.shape[0], P.shape[0] + ids.shape[1], P.shape[1], device=device)
    args = (grad, token_index, lengths, P, A, B, s)
    real = torch.ops.ept_fast.assemble_inputs_backward(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.ept_fast.assemble_inputs_backward(*(mode.from_tensor(t) if isinstance(t, torch.Tensor)
                                                             else t for t in args))
    assert [t.stride() for t in fake] == [t.stride() for t in real] == [t.contiguous().stride() for t in real]


def test_a_table_that_requires_grad_runs_on_the_reference(device, monkeypatch):
    """The fused assembly treats the table as frozen: 'triton' refuses a table that requires grad,
    'auto' (made to pick the kernels, as it does on CUDA) warns and runs the reference, which gives
    the table its gradient."""
    ids, mask, E, P, A, B, _ = _inputs("odd-left", torch.float32, device)
    E.requires_grad_()
    with pytest.raises(ValueError, match=r"backend: 'triton' cannot run assemble_inputs here \(word_embeddings "
                                         r"requires grad, but the fused assembly treats the table as frozen"):
        functional.assemble_inputs(ids, mask, E, P, A, B, 2.0, backend="triton")
    monkeypatch.setattr(functional, "use_triton", lambda backend, device: True)
    with pytest.warns(UserWarning, match=r"assemble_inputs runs the PyTorch reference, not the fused kernels: "
                                         r"word_embeddings requires grad"):
        out, _ = functional.assemble_inputs(ids, mask, E, P, A, B, 2.0, backend="auto")
    out.sum().backward()
    assert E.grad is not None and E.grad.abs().sum() > 0


@settings(max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=4), extra=st.integers(0, 3),
    d=st.integers(1, 40), spare=st.integers(0, 4), r=st.integers(0, 4), m=st.integers(1, 6),
    left=st.booleans(), seed=st.integers(0, 2**16),
)
def test_random_small_shapes(lengths, extra, d, spare, r, m, left, seed):
    T = max(max(lengths), 1) + extra
    ids, mask = padded_batch(lengths, T, 17, left=left, device=DEVICE, seed=seed)
    x = prompt_inputs(m, d, max(lengths) + spare or 1, r, 1, 1, device=DEVICE, seed=seed)
    E = table(17, d, device=DEVICE, seed=seed)
    s = scaling_for(r)
    grad_out = torch.randn(len(lengths), m + T, d, dtype=torch.float64, device=DEVICE)
    out, ext_mask, grads = _run(fused_assemble_inputs, ids, mask, E, x["prompt"], x["lora_a"], x["lora_b"], s, grad_out)
    ref, ref_mask, ref_grads = _run(reference.assemble_inputs, ids, mask, E, x["prompt"], x["lora_a"], x["lora_b"], s,
                                    grad_out)
    assert torch.equal(ext_mask, ref_mask)
    assert_close(out, ref, 1e-12, 1e-12, "inputs_embeds")
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, 1e-10, 1e-10, "grad")


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_a_direct_call_with_a_row_longer_than_n_stays_inside_a(left, device):
    """functional refuses such rows; the op itself must still never index A past n: tokens
    past the n-th attended one get no update, the first n get theirs."""
    n = 4
    ids, mask = padded_batch([7, 3], 8, 20, left=left, device=device)
    x = prompt_inputs(2, 24, n, 3, 1, 1, device=device)
    E = table(20, 24, device=device)
    out, _ = fused_assemble_inputs(ids, mask, E, x["prompt"], x["lora_a"], x["lora_b"], 1.5)
    tokens = out[:, 2:]
    plain = E[ids]
    position = mask.cumsum(dim=1) - 1
    low_rank = 1.5 * x["lora_a"][position.clamp(0, n - 1)] @ x["lora_b"]
    expected = torch.where(((mask == 1) & (position < n)).unsqueeze(-1), plain + low_rank, plain)
    assert_close(tokens, expected, 1e-12, 1e-12, "tokens")
    with pytest.raises(ValueError, match=r"input_ids: row 0 has 7 attended tokens, but the low-rank update covers "
                                         r"max_length=4 positions"):
        functional.assemble_inputs(ids, mask, E, x["prompt"], x["lora_a"], x["lora_b"], 1.5, backend="triton")


def test_ranks_past_the_kernels_are_refused_or_run_on_the_reference(monkeypatch, device):
    ids, mask = padded_batch([3, 2], 3, 10, left=False, device=device)
    x = prompt_inputs(2, 16, 4, 257, 1, 1, dtype=torch.float32, device=device)
    E = table(10, 16, dtype=torch.float32, device=device)
    args = (ids, mask, E, x["prompt"], x["lora_a"], x["lora_b"], 0.5)
    with pytest.raises(ValueError,
                       match=r"assemble_inputs: the fused kernels cannot take these sizes: r=257 is over 256"):
        fused_assemble_inputs(*args)
    with pytest.raises(ValueError, match=r"backend: 'triton' cannot run assemble_inputs here \(r=257"):
        functional.assemble_inputs(*args, backend="triton")
    monkeypatch.setattr(functional, "use_triton", lambda backend, device: True)  # as on a GPU
    with pytest.warns(UserWarning, match=r"assemble_inputs runs the PyTorch reference"):
        out, _ = functional.assemble_inputs(*args, backend="auto")
    assert torch.equal(out, reference.assemble_inputs(*args)[0])


REAL_SHAPES = sorted({case.shape for case in compile_check.CASES if case.op == "assemble_inputs"}, key=str)


@pytest.mark.cuda
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", REAL_SHAPES, ids=str)
def test_parity_at_real_shapes_on_gpu(shape, table_dtype, left):
    """Forward, extended mask and the gradients of P*, A and B against the float64 reference
    at the sizes the compile check compiles, with padding of every length."""
    b, T, d, n, r, m = shape
    lengths = torch.linspace(0, T, b).round().long().tolist()
    ids, mask = padded_batch(lengths, T, 1000, left=left, device="cuda")
    x = prompt_inputs(m, d, n, r, 1, 1, dtype=torch.float32, device="cuda")
    E = table(1000, d, dtype=table_dtype, device="cuda")
    grad_out = torch.randn(b, m + T, d, device="cuda").to(table_dtype)
    P, A, B = x["prompt"], x["lora_a"], x["lora_b"]
    out, ext_mask, grads = _run(fused_assemble_inputs, ids, mask, E, P, A, B, scaling_for(r), grad_out)
    ref, ref_mask, ref_grads = _run(reference.assemble_inputs, ids, mask, E.double(), P.double(), A.double(),
                                    B.double(), scaling_for(r), grad_out.double())
    rtol, atol = TOLERANCE[table_dtype]
    assert torch.equal(ext_mask, ref_mask)
    assert_close(out, ref, rtol, atol * ref.abs().max().item(), "inputs_embeds")
    for name, grad, ref_grad in zip(("prompt_out", "lora_a", "lora_b"), grads, ref_grads):
        assert_close(grad, ref_grad, rtol, atol * max(ref_grad.abs().max().item(), 1.0), f"d {name}")


@pytest.mark.cuda
def test_forward_and_backward_replay_from_a_cuda_graph():
    """No host sync (the functional layer's value checks become device asserts while a graph
    is captured): a captured forward + backward replays to the same values and gradients."""
    ids, mask = padded_batch(list(range(200, 232)), 256, 1000, left=False, device="cuda")
    x = prompt_inputs(60, 768, 256, 30, 1, 1, dtype=torch.float32, device="cuda")
    E = table(1000, 768, dtype=torch.float32, device="cuda")
    leaves = [x[k].requires_grad_() for k in ("prompt", "lora_a", "lora_b")]
    grad_out = torch.randn(32, 60 + 256, 768, device="cuda")

    def step():
        out, _ = functional.assemble_inputs(ids, mask, E, *leaves, 1.46, backend="triton")
        return (out, *torch.autograd.grad(out, leaves, grad_out))

    for got, want in zip(*run_directly_and_from_a_cuda_graph(step)):
        assert torch.equal(got, want)
