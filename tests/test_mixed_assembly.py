"""A batch whose rows run different adapters: the reference against separate single-adapter
runs row for row, the fused kernel against the reference (forward and every gradient),
gradcheck, and the errors (CPU: Triton interpreter; CUDA where present)."""

import pytest
import torch

from ept_fast import functional, reference
from ept_fast.kernels.assemble_inputs import fused_assemble_inputs_mixed

from helpers import DEVICE, assert_close, padded_batch, prompt_inputs, scaling_for, table

# Per adapter (m, n, r): different prompt lengths, reaches and ranks, one prompt-tuning adapter (r = 0).
ADAPTERS = [(5, 12, 3), (2, 9, 1), (4, 12, 0)]
ROW_ADAPTERS = [2, 0, 1, 0, 2, 1]
TOLERANCE = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 2e-2)}


def _adapters(d, dtype, device=DEVICE):
    """Each adapter's (P*, A, B, s) as separate leaves."""
    out = []
    for index, (m, n, r) in enumerate(ADAPTERS):
        x = prompt_inputs(m, d, n, r, 1, 1, dtype=dtype, device=device, seed=index)
        out.append([x["prompt"].requires_grad_(), x["lora_a"].requires_grad_(), x["lora_b"].requires_grad_(),
                    scaling_for(r)])
    return out


def _batch(left, device=DEVICE):
    ids, mask = padded_batch([9, 4, 7, 1, 0, 9], 9, 50, left=left, device=device)
    return ids, mask, torch.tensor(ROW_ADAPTERS, device=device)


def _stacked(adapters):
    return reference.stack_adapters(*(list(column) for column in zip(*adapters)))


def _mixed(fn, ids, mask, E, adapters, adapter_ids, embed_scale=1.0, padding_side="right"):
    s = _stacked(adapters)
    return fn(ids, mask, E, s.prompts, s.prompt_lengths, s.lora_a, s.lora_b, s.scalings, adapter_ids, embed_scale,
              padding_side)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_each_row_equals_its_adapter_run_alone(left, side):
    """Row i of the mixed batch is row i of its own adapter's batch, with m - m_a masked padding
    rows before its prompt or after its tokens; each adapter's gradients are those of its rows."""
    d = 16
    adapters = _adapters(d, torch.float64, "cpu")
    ids, mask, adapter_ids = _batch(left, "cpu")
    E = table(50, d)
    out, ext_mask = _mixed(reference.assemble_inputs_mixed, ids, mask, E, adapters, adapter_ids, 1.5, side)
    m = max(a[0] for a in ADAPTERS)
    grad_out = torch.randn_like(out)
    mixed_grads = torch.autograd.grad((out * grad_out).sum(), [t for a in adapters for t in a[:3]])
    alone_grads = []
    for index, (prompt, lora_a, lora_b, s) in enumerate(adapters):
        rows = (adapter_ids == index).nonzero().flatten()
        alone, alone_mask = reference.assemble_inputs(ids[rows], mask[rows], E, prompt, lora_a, lora_b, s, 1.5)
        skip = m - prompt.shape[0]
        own = torch.arange(skip, out.shape[1]) if side == "left" else torch.arange(out.shape[1] - skip)
        padding = torch.arange(skip) if side == "left" else torch.arange(out.shape[1] - skip, out.shape[1])
        assert torch.allclose(out[rows][:, own], alone, rtol=1e-12, atol=1e-12)
        assert torch.equal(ext_mask[rows][:, own], alone_mask)
        assert not out[rows][:, padding].any() and not ext_mask[rows][:, padding].any()
        alone_grads += torch.autograd.grad((alone * grad_out[rows][:, own]).sum(), [prompt, lora_a, lora_b],
                                           allow_unused=True)
    for mixed, alone in zip(mixed_grads, alone_grads):
        assert torch.allclose(mixed, torch.zeros_like(mixed) if alone is None else alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_rows_laid_out_by_hand(side):
    """The layout rule written out row by row: prompt, then E[id] + s·A[k]·B for the k-th attended
    token (unattended tokens as looked up), and m - m_a zero rows masked out on ``side``."""
    d, T = 4, 3
    g = torch.Generator().manual_seed(0)
    E, B = torch.randn(10, d, generator=g, dtype=torch.float64), torch.randn(2, 2, d, generator=g, dtype=torch.float64)
    P = torch.randn(2, 3, d, generator=g, dtype=torch.float64)
    A = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    P[1, 1:] = 0  # adapter 1's prompt is one row long, zero-padded to m = 3
    scalings, lengths = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([3, 1])
    ids, mask = torch.tensor([[4, 5, 6], [7, 8, 9], [1, 2, 3]]), torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])
    adapter_ids = torch.tensor([1, 0, 1])
    out, ext = reference.assemble_inputs_mixed(ids, mask, E, P, lengths, A, B, scalings, adapter_ids,
                                               padding_side=side)
    for i, a in enumerate(adapter_ids.tolist()):
        tokens, k = [], 0
        for t in range(T):
            tokens.append(E[ids[i, t]] + (scalings[a] * A[a, k] @ B[a] if mask[i, t] else 0))
            k += int(mask[i, t])
        prompt, pad = P[a, :lengths[a]], torch.zeros(3 - lengths[a], d, dtype=torch.float64)
        ones, zeros = torch.ones(int(lengths[a]), dtype=torch.long), torch.zeros(3 - int(lengths[a]), dtype=torch.long)
        if side == "right":
            expected, expected_mask = torch.cat([prompt, torch.stack(tokens), pad]), torch.cat([ones, mask[i], zeros])
        else:
            expected, expected_mask = torch.cat([pad, prompt, torch.stack(tokens)]), torch.cat([zeros, ones, mask[i]])
        assert_close(out[i], expected, 1e-14, 1e-14, f"row {i}")
        assert torch.equal(ext[i], expected_mask)


def _run(fn, ids, mask, E, adapters, adapter_ids, grad_out, embed_scale, side):
    out, ext_mask = _mixed(fn, ids, mask, E, adapters, adapter_ids, embed_scale, side)
    leaves = [t for a in adapters for t in a[:3]]
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return out.detach(), ext_mask, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


@pytest.mark.parametrize("table_dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_fused_mixed_assembly_matches_the_reference(table_dtype, left, side):
    d = 40
    params = torch.float64 if table_dtype == torch.float64 else torch.float32
    adapters = _adapters(d, params)
    ids, mask, adapter_ids = _batch(left)
    E = table(50, d, dtype=table_dtype, device=DEVICE)
    grad_out = torch.randn(ids.shape[0], max(a[0] for a in ADAPTERS) + ids.shape[1], d, device=DEVICE).to(table_dtype)
    out, ext_mask, grads = _run(fused_assemble_inputs_mixed, ids, mask, E, adapters, adapter_ids, grad_out, 2.0, side)
    ref, ref_mask, ref_grads = _run(reference.assemble_inputs_mixed, ids, mask, E, adapters, adapter_ids, grad_out, 2.0,
                                    side)
    rtol, atol = TOLERANCE[table_dtype]
    assert torch.equal(ext_mask, ref_mask)
    assert_close(out, ref, rtol, atol * ref.abs().max().item(), "inputs_embeds")
    for index, (grad, ref_grad) in enumerate(zip(grads, ref_grads)):
        scale = max(ref_grad.abs().max().item(), 1.0) if ref_grad.numel() else 1.0
        assert_close(grad, ref_grad, rtol, atol * scale, f"gradient {index}")


@pytest.mark.parametrize("op", [reference.assemble_inputs_mixed, fused_assemble_inputs_mixed],
                         ids=["reference", "fused"])
def test_gradcheck_of_the_mixed_op(op):
    adapters = _adapters(16, torch.float64)
    ids, mask, adapter_ids = _batch(True)
    E = table(50, 16, device=DEVICE)
    leaves = [t for a in adapters for t in a[:3]]

    def fn(*flat):
        grouped = [list(flat[i:i + 3]) + [adapters[i // 3][3]] for i in range(0, len(flat), 3)]
        return _mixed(op, ids, mask, E, grouped, adapter_ids, 1.0, side)[0]

    for side in ("left", "right"):
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_stacked_rows_past_a_prompt_are_ignored_by_both_backends():
    """Rows of the stacked prompts past an adapter's length give no value and get no gradient,
    whatever they hold (a caller's own (N, m, d) leaf, not only stack_adapters' zero padding)."""
    ids, mask, adapter_ids = _batch(False)
    E = table(50, 16, dtype=torch.float64, device=DEVICE)
    s = _stacked(_adapters(16, torch.float64))
    prompts = s.prompts.detach().clone()
    for a, length in enumerate(s.prompt_lengths.tolist()):
        prompts[a, length:] = 7.0
    outs, grads = [], []
    for backend in ("torch", "triton"):
        leaf = prompts.clone().requires_grad_()
        for side in ("left", "right"):
            out, _ = functional.assemble_inputs_mixed(ids, mask, E, leaf, s.prompt_lengths, s.lora_a.detach(),
                                                      s.lora_b.detach(), s.scalings, adapter_ids, backend=backend,
                                                      padding_side=side)
            out.sum().backward()
            outs.append(out)
        grads.append(leaf.grad)
    assert_close(outs[0], outs[2], 1e-12, 1e-12, "left")
    assert_close(outs[1], outs[3], 1e-12, 1e-12, "right")
    for grad in grads:
        for a, length in enumerate(s.prompt_lengths.tolist()):
            assert torch.all(grad[a, length:] == 0) and torch.all(grad[a, :length] != 0)
    assert not any((out == 7.0).any() for out in outs)


def test_functional_dispatch_and_errors():
    adapters = _adapters(16, torch.float32)
    ids, mask, adapter_ids = _batch(False)
    E = table(50, 16, dtype=torch.float32, device=DEVICE)
    s = _stacked(adapters)
    args = (ids, mask, E, s.prompts, s.prompt_lengths, s.lora_a, s.lora_b, s.scalings)
    torch_out, _ = functional.assemble_inputs_mixed(*args, adapter_ids, backend="torch", max_lengths=s.max_lengths)
    assert torch_out.shape == (6, 5 + 9, 16)
    with pytest.raises(ValueError, match=r"adapter_ids: expected ids in \[0, 3\) \(one per stacked adapter\), got 3"):
        functional.assemble_inputs_mixed(*args, torch.tensor([0, 1, 2, 3, 0, 0], device=DEVICE))
    with pytest.raises(ValueError, match=r"input_ids: row 5 has 9 attended tokens, but its adapter \(1\) covers "
                                         r"max_length=6"):
        short = reference.stack_adapters([a[0] for a in adapters], [adapters[0][1], adapters[1][1][:6], adapters[2][1]],
                                         [a[2] for a in adapters], [a[3] for a in adapters])
        functional.assemble_inputs_mixed(ids, mask, E, short.prompts, short.prompt_lengths, short.lora_a, short.lora_b,
                                         short.scalings, adapter_ids, max_lengths=short.max_lengths)
    # 0: the head alone
    with pytest.raises(ValueError, match=r"prompt_lengths: expected lengths in \[0, 5\] .*, got 6"):
        functional.assemble_inputs_mixed(*args[:4], torch.tensor([5, 6, 4], device=DEVICE), *args[5:], adapter_ids)
    with pytest.raises(ValueError, match=r"adapter_ids: expected shape \(b=6\), got \(5,\)"):
        functional.assemble_inputs_mixed(*args, adapter_ids[:5])
    with pytest.raises(ValueError,
                       match=r"stack_adapters: every adapter must have the same hidden size d, got \[16, 24\]"):
        reference.stack_adapters([adapters[0][0], torch.zeros(2, 24)], [a[1] for a in adapters[:2]],
                                 [adapters[0][2], torch.zeros(1, 24)], [1.0, 1.0])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_traces_without_graph_breaks(backend):
    """The value checks become device asserts under torch.compile: no host read, no graph break."""
    adapters = _adapters(16, torch.float32)
    ids, mask, adapter_ids = _batch(True)
    E = table(50, 16, dtype=torch.float32, device=DEVICE)
    s = _stacked(adapters)
    args = (ids, mask, E, s.prompts, s.prompt_lengths, s.lora_a, s.lora_b, s.scalings, adapter_ids)

    def fn(*a):
        return functional.assemble_inputs_mixed(*a, backend=backend, max_lengths=s.max_lengths)[0] * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert_close(compiled(*args), fn(*args), 1e-6, 1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_mixed_assembly_on_the_gpu(table_dtype, side):
    """The same parity on CUDA (selected by gpu_check's cuda run; DEVICE is the GPU there)."""
    test_fused_mixed_assembly_matches_the_reference(table_dtype, True, side)


def test_a_prompt_tuning_row_may_be_longer_than_the_stacked_reach():
    """A prompt-tuning adapter has no n: its row may outrun the other adapters' A, in both backends;
    and non-contiguous per-adapter tensors are read as they are."""
    d = 16
    P, A, B = (torch.randn(2, d, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64),
               torch.randn(2, d, dtype=torch.float64))
    pt = torch.randn(3, d, dtype=torch.float64)
    stacked = reference.stack_adapters([P, pt], [A, torch.zeros(1, 0, dtype=torch.float64)],
                                       [B, torch.zeros(0, d, dtype=torch.float64)], [2.0, 0.0])
    ids = torch.randint(50, (2, 6), device=DEVICE)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], device=DEVICE)
    E = table(50, d, device=DEVICE)
    scalings = torch.tensor([2.0, 9.0, 0.0, 9.0], dtype=torch.float64)[::2].to(DEVICE)  # a strided view
    args = (ids, mask, E, stacked.prompts.to(DEVICE), stacked.prompt_lengths.to(DEVICE), stacked.lora_a.to(DEVICE),
            stacked.lora_b.to(DEVICE), scalings, torch.tensor([0, 1], device=DEVICE))
    outs = [functional.assemble_inputs_mixed(*args, backend=backend, max_lengths=stacked.max_lengths.to(DEVICE))[0]
            for backend in ("torch", "triton")]
    alone = reference.assemble_inputs(ids[1:], mask[1:], E, pt.to(DEVICE), torch.zeros(1, 0, dtype=torch.float64,
                                      device=DEVICE), torch.zeros(0, d, dtype=torch.float64, device=DEVICE), 0.0)[0]
    for out in outs:
        assert torch.allclose(out[1:], alone, rtol=1e-12, atol=1e-12)
    assert torch.allclose(outs[0], outs[1], rtol=1e-10, atol=1e-10)

    # The backward too: the long row's tokens past n hold no position of A (no read past A's rows).
    grads = []
    for backend in ("torch", "triton"):
        leaves = [t.detach().clone().to(DEVICE).requires_grad_() for t in (stacked.prompts, stacked.lora_a,
                                                                         stacked.lora_b)]
        out, _ = functional.assemble_inputs_mixed(ids, mask, E, leaves[0], args[4], leaves[1], leaves[2], scalings,
                                                  args[8], backend=backend, max_lengths=stacked.max_lengths.to(DEVICE))
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=DEVICE).view_as(out))
        grads.append([leaf.grad for leaf in leaves])
    for torch_grad, triton_grad in zip(*grads):
        assert torch.allclose(torch_grad, triton_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_head_alone_has_no_prompt_in_a_mixed_batch_or_alone(side):
    """An adapter with no prompt and no low-rank update (method "head": m = 0, r = 0) beside
    others, and alone: both backends give its rows as looked up, the fused op's values and
    gradients equal the reference's."""
    d = 40
    adapters = _adapters(d, torch.float32)
    adapters[1] = [torch.zeros(0, d, device=DEVICE, requires_grad=True),
                   torch.zeros(12, 0, device=DEVICE, requires_grad=True),
                   torch.zeros(0, d, device=DEVICE, requires_grad=True), 0.0]
    ids, mask, adapter_ids = _batch(False)
    E = table(50, d, dtype=torch.float32, device=DEVICE)
    grad_out = torch.randn(ids.shape[0], max(a[0] for a in ADAPTERS) + ids.shape[1], d, device=DEVICE)
    out, ext_mask, grads = _run(fused_assemble_inputs_mixed, ids, mask, E, adapters, adapter_ids, grad_out, 1.0, side)
    ref, ref_mask, ref_grads = _run(reference.assemble_inputs_mixed, ids, mask, E, adapters, adapter_ids, grad_out, 1.0,
                                    side)
    assert torch.equal(ext_mask, ref_mask)
    assert_close(out, ref, 1e-5, 1e-6 * ref.abs().max().item(), "inputs_embeds")
    for index, (grad, ref_grad) in enumerate(zip(grads, ref_grads)):
        assert_close(grad, ref_grad, 1e-5, 1e-6 * max(ref_grad.abs().max().item() if ref_grad.numel() else 1.0, 1.0),
                     f"gradient {index}")
    rows = (adapter_ids == 1).nonzero().flatten()
    m = max(a[0] for a in ADAPTERS)
    own = slice(m, None) if side == "left" else slice(0, ids.shape[1])
    assert torch.equal(out[rows][:, own], E[ids[rows]])
    for backend in ("torch", "triton"):
        alone, alone_mask = functional.assemble_inputs(ids, mask, E, *adapters[1], backend=backend)
        assert torch.equal(alone, E[ids]) and torch.equal(alone_mask, mask)
