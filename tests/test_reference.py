"""The reference against the equations of docs/ept.md, gradchecks and the spec's reductions."""

import math

import pytest
import torch

from ept_fast import reference

from helpers import (
    PROMPT_ARGS,
    PROMPT_SHAPES,
    SMALL_PROMPT_SHAPES,
    assert_close,
    padded_batch,
    prompt_inputs,
    scaling_for,
    table,
)


def equations(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    """The spec written the long way: L materialised, C = [P ; L], one softmax, a loop over k."""
    P = prompt
    m, d = P.shape
    L = scaling * lora_a @ lora_b
    C = torch.cat([P, L])
    W = torch.softmax(P @ C.T / math.sqrt(d), dim=1)
    F = P + fusion_scale * (W @ C)
    G = torch.softmax(F @ gate_weight + gate_bias, dim=1)
    M = torch.zeros_like(F)
    for k in range(proj_down.shape[0]):
        M = M + G[:, k : k + 1] * ((F @ proj_down[k]) @ proj_up[k])
    return F + M


@pytest.mark.parametrize("shape", PROMPT_SHAPES, ids=str)
def test_ept_prompt_matches_equations(shape):
    m, d, n, r, K, h = shape
    x = prompt_inputs(m, d, n, r, K, h)
    s = scaling_for(r)
    assert_close(reference.ept_prompt(**x, scaling=s), equations(**x, scaling=s), 1e-12, 1e-12, "P*")


@pytest.mark.parametrize("shape", SMALL_PROMPT_SHAPES, ids=str)
def test_ept_prompt_gradcheck(shape):
    m, d, n, r, K, h = shape
    x = {k: v.requires_grad_() for k, v in prompt_inputs(m, d, n, r, K, h).items()}
    fn = lambda *args: reference.ept_prompt(*args, scaling=scaling_for(r))  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(x[k] for k in PROMPT_ARGS), fast_mode=True)


def test_ept_prompt_gradcheck_defaults():
    x = {k: v.requires_grad_() for k, v in prompt_inputs(60, 384, 256, 30, 4, 8).items()}
    fn = lambda *args: reference.ept_prompt(*args, scaling=scaling_for(30))  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(x[k] for k in PROMPT_ARGS), fast_mode=True)


def test_at_init_prompt_passes_through_exactly():
    """B = 0, λ = 0, U = 0 (and W_g, b_g = 0): P* == P bit for bit."""
    x = prompt_inputs(60, 384, 256, 30, 4, 8, dtype=torch.float32)
    for name in ("lora_b", "fusion_scale", "proj_up", "gate_weight", "gate_bias"):
        x[name] = torch.zeros_like(x[name])
    assert torch.equal(reference.ept_prompt(**x, scaling=scaling_for(30)), x["prompt"])


def test_dept_reduction_is_the_prompt_itself():
    """K = 0 and λ = 0: P* == P exactly, whatever A and B are."""
    x = prompt_inputs(6, 32, 10, 4, 0, 8, dtype=torch.float32)
    x["fusion_scale"] = torch.zeros(())
    assert torch.equal(reference.ept_prompt(**x, scaling=scaling_for(4)), x["prompt"])


def test_fusion_only_without_subspaces():
    """K = 0 with λ ≠ 0 leaves F = P + λ·O, checked against the materialised form."""
    x = prompt_inputs(5, 24, 9, 2, 0, 4)
    assert_close(reference.ept_prompt(**x, scaling=2.0), equations(**x, scaling=2.0), 1e-12, 1e-12, "F")


def _assembly_inputs(b_lengths, T, V, d, n, r, m, left, dtype=torch.float64):
    ids, mask = padded_batch(b_lengths, T, V, left=left)
    x = prompt_inputs(m, d, n, r, 1, 1, dtype=dtype)
    return ids, mask, table(V, d, dtype=dtype), x["prompt"], x["lora_a"], x["lora_b"]


def test_right_padding_follows_dept_rule():
    """Right padding: token t gets row t of L = s·A·B (DePT's per-position update)."""
    ids, mask, E, P, A, B = _assembly_inputs([5, 3, 1], T=5, V=50, d=12, n=8, r=3, m=4, left=False)
    s = scaling_for(3)
    embeds, ext_mask = reference.assemble_inputs(ids, mask, E, P, A, B, s)
    L = s * A @ B
    expected = E[ids] + torch.where(mask.bool().unsqueeze(-1), L[:5].unsqueeze(0), torch.zeros(()).double())
    assert_close(embeds[:, 4:], expected, 1e-14, 1e-14, "tokens")
    assert torch.equal(embeds[:, :4], P.unsqueeze(0).expand(3, -1, -1))
    assert torch.equal(ext_mask, torch.cat([torch.ones(3, 4, dtype=mask.dtype), mask], dim=1))


def test_left_and_right_padding_give_each_token_the_same_row():
    lengths = [6, 2, 4, 0]
    right = _assembly_inputs(lengths, T=6, V=40, d=10, n=6, r=2, m=3, left=False)
    left_ids, left_mask = padded_batch(lengths, 6, 40, left=True)
    left_ids = left_ids.clone()
    for row, length in enumerate(lengths):  # same real tokens, padded on the other side
        left_ids[row, 6 - length :] = right[0][row, :length]
    s = scaling_for(2)
    out_r, _ = reference.assemble_inputs(*right, s)
    out_l, _ = reference.assemble_inputs(left_ids, left_mask, *right[2:], s)
    for row, length in enumerate(lengths):
        assert torch.equal(out_r[row, 3 : 3 + length], out_l[row, 3 + 6 - length :])


def test_unattended_tokens_keep_their_embedding():
    ids, mask, E, P, A, B = _assembly_inputs([2, 0], T=4, V=30, d=8, n=4, r=2, m=2, left=True)
    embeds, _ = reference.assemble_inputs(ids, mask, E, P, A, B, 3.0)
    pad = ~mask.bool()
    assert torch.equal(embeds[:, 2:][pad], E[ids][pad])


def test_embed_scale_multiplies_every_token_as_the_scaled_lookup_does():
    ids, mask, E, P, A, B = _assembly_inputs([3, 1], T=4, V=30, d=8, n=4, r=2, m=2, left=True, dtype=torch.float32)
    embeds, _ = reference.assemble_inputs(ids, mask, E, P, A, B, 3.0, 2.5)
    attended = mask.bool().unsqueeze(-1)
    rows = torch.stack([torch.cat([torch.zeros(4 - n, 2), A[:n]]) for n in (3, 1)])  # left padding
    expected = torch.where(attended, 2.5 * E[ids] + 3.0 * rows @ B, 2.5 * E[ids])
    assert torch.allclose(embeds[:, 2:], expected, atol=1e-6) and torch.equal(embeds[:, :2], P.expand(2, -1, -1))


def test_no_mask_means_every_token_attended():
    ids, mask, E, P, A, B = _assembly_inputs([4, 4], T=4, V=30, d=8, n=4, r=2, m=2, left=False)
    with_mask = reference.assemble_inputs(ids, mask, E, P, A, B, 3.0)
    without = reference.assemble_inputs(ids, None, E, P, A, B, 3.0)
    assert torch.equal(with_mask[0], without[0])
    assert torch.equal(without[1], torch.ones(2, 6, dtype=torch.long))


def test_pt_reduction_is_plain_concatenation():
    """r = 0: the input is [P ; E] exactly, as PEFT's prompt tuning builds it; no length limit applies."""
    ids, mask, E, P, _, _ = _assembly_inputs([9, 5], T=9, V=30, d=8, n=4, r=2, m=3, left=False, dtype=torch.float32)
    A, B = torch.zeros(4, 0), torch.zeros(0, 8)
    embeds, _ = reference.assemble_inputs(ids, mask, E, P, A, B, 0.0)
    assert torch.equal(embeds, torch.cat([P.expand(2, -1, -1), E[ids]], dim=1))


def test_prompt_tuning_without_rows_of_a():
    """r = 0 and n = 0 (no low-rank update at all): still [P ; E]."""
    ids, mask, E, P, _, _ = _assembly_inputs([3, 1], T=3, V=30, d=8, n=4, r=2, m=2, left=False, dtype=torch.float32)
    embeds, _ = reference.assemble_inputs(ids, mask, E, P, torch.zeros(0, 0), torch.zeros(0, 8), 0.0)
    assert torch.equal(embeds, torch.cat([P.expand(2, -1, -1), E[ids]], dim=1))


def test_sum_is_formed_in_float32_and_cast_once():
    ids, mask, E, P, A, B = _assembly_inputs([4, 2], T=4, V=30, d=8, n=4, r=2, m=2, left=False, dtype=torch.float32)
    E16 = E.to(torch.bfloat16)
    embeds, _ = reference.assemble_inputs(ids, mask, E16, P, A, B, 2.0)
    assert embeds.dtype == torch.bfloat16
    L = 2.0 * A @ B
    expected = torch.where(mask.bool().unsqueeze(-1), (E16[ids].float() + L[:4]).to(torch.bfloat16), E16[ids])
    assert torch.equal(embeds[:, 2:], expected)
    assert torch.equal(embeds[:, :2], P.to(torch.bfloat16).expand(2, -1, -1))


@pytest.mark.parametrize("left", [False, True])
def test_assemble_gradcheck(left):
    ids, mask, E, P, A, B = _assembly_inputs([5, 2, 0], T=5, V=20, d=7, n=6, r=3, m=2, left=left)
    tensors = tuple(t.requires_grad_() for t in (E, P, A, B))
    fn = lambda E, P, A, B: reference.assemble_inputs(ids, mask, E, P, A, B, 1.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)
