"""Fused input assembly: prompt prefix + word embeddings + low-rank rows, in one launch.

Forward: one program per (batch row, block of BT output rows, block of BD columns). Output
row j < m copies P*[j]; row m + t gathers word_embeddings[input_ids[b, t]] and, when token
t is attended, adds s·A[pos]·B (pos = attended tokens before t in the row: a prefix count
over the earlier mask entries plus a cumulative sum inside the block), formed in float32
and cast once. L = s·A·B is never materialised. The programs of the first column block
also write the extended mask, the row lengths and, for each row b and position p, the
token that holds it (``token_index[b, p]``; -1 for p >= length[b]).

Backward: the incoming gradient is read once. Programs over (column block, position
split) sum, for their positions p, the gradient rows of the tokens holding p in every
batch row (dL[p], in registers), then add dL·Bᵀ to a per-column-block partial of dA and
Aᵀ·dL to a per-split partial of dB; one more program per column block sums the prefix
rows over the batch (dP*). Partials are added in a fixed order afterwards.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _launch
from ._launch import accumulator, dot_pad, dot_precision, interpreting, multiprocessors, split_float, widen

Tensor = torch.Tensor


@triton.jit
def _assemble_fwd_kernel(
    IDS, MASK, TABLE, PROMPT, A, B,
    OUT, OUT_MASK, TOKEN_INDEX, LENGTHS,
    T, m, d, n, r, scaling_hi, scaling_lo,
    BT: tl.constexpr, BD: tl.constexpr, R_PAD: tl.constexpr, B_PREFIX: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_LOW_RANK: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    block = tl.program_id(1)
    first_col_block = tl.program_id(2) == 0
    rows = block * BT + tl.arange(0, BT)  # output rows: m prompt rows, then T tokens
    cols = tl.program_id(2) * BD + tl.arange(0, BD)
    col_ok = cols < d
    is_prompt = rows < m
    t = rows - m
    is_token = (t >= 0) & (t < T)
    t = tl.where(is_token, t, 0)
    if HAS_MASK:
        mask_values = tl.load(MASK + b * T + t, mask=is_token, other=0)
        attended = (mask_values != 0) & is_token
    else:
        attended = is_token

    ids = tl.load(IDS + b * T + t, mask=is_token, other=0).to(tl.int64)
    emb = tl.load(TABLE + ids[:, None] * d + cols[None, :], mask=is_token[:, None] & col_ok[None, :], other=0.0)
    tokens = emb.to(ACC)
    if HAS_LOW_RANK:
        first_t = tl.maximum(block * BT - m, 0)
        if HAS_MASK:
            before = tl.full((), 0, tl.int32)
            for t0 in range(0, first_t, B_PREFIX):
                earlier = t0 + tl.arange(0, B_PREFIX)
                flags = tl.load(MASK + b * T + earlier, mask=earlier < first_t, other=0)
                before += tl.sum((flags != 0).to(tl.int32), axis=0)
        else:
            before = first_t
        pos = before + tl.cumsum(attended.to(tl.int32), axis=0) - 1
        # Only positions < n have a row of A. The functional layer refuses longer rows; this
        # guard keeps a direct call of the op inside A and TOKEN_INDEX (such tokens get no update).
        updated = attended & (pos < n)
        pos = tl.where(updated, pos, 0)
        rk = tl.arange(0, R_PAD)
        a_rows = tl.load(A + pos[:, None] * r + rk[None, :], mask=updated[:, None] & (rk[None, :] < r), other=0.0)
        b_cols = tl.load(B + rk[:, None] * d + cols[None, :], mask=(rk[:, None] < r) & col_ok[None, :], other=0.0)
        low = tl.dot(a_rows.to(ACC), b_cols.to(ACC), input_precision=PRECISION) * widen(scaling_hi, scaling_lo, ACC)
        tokens = tl.where(updated[:, None], tokens + low, tokens)
        if first_col_block:
            tl.store(TOKEN_INDEX + b * n + pos, t, mask=updated)
            last = m + T - 1
            if (block * BT <= last) & (last < block * BT + BT):
                length = before + tl.sum(attended.to(tl.int32), axis=0)
                tl.store(LENGTHS + b, length)
                for p0 in range(length, n, BT):  # positions no token holds
                    tail = p0 + tl.arange(0, BT)
                    tl.store(TOKEN_INDEX + b * n + tail, tl.full((BT,), -1, tl.int32), mask=tail < n)

    prefix = tl.load(PROMPT + rows[:, None] * d + cols[None, :], mask=is_prompt[:, None] & col_ok[None, :], other=0.0)
    out = tl.where(is_prompt[:, None], prefix.to(ACC), tokens)
    in_range = rows < m + T
    out_rows = (b * (m + T) + rows).to(tl.int64)
    tl.store(OUT + out_rows[:, None] * d + cols[None, :], out.to(OUT.dtype.element_ty),
             mask=in_range[:, None] & col_ok[None, :])
    if first_col_block:
        if HAS_MASK:
            flags = tl.where(is_prompt, 1, mask_values)
        else:
            flags = tl.full((BT,), 1, tl.int32)
        tl.store(OUT_MASK + b * (m + T) + rows, flags.to(OUT_MASK.dtype.element_ty), mask=in_range)


@triton.jit
def _assemble_bwd_kernel(
    GRAD, TOKEN_INDEX, LENGTHS, A, B,
    D_PROMPT, DA_PART, DB_PART,
    nb, T, m, d, n, r, splits, scaling_hi, scaling_lo,
    BP: tl.constexpr, BD: tl.constexpr, R_PAD: tl.constexpr, NB_PAD: tl.constexpr,
    HAS_LOW_RANK: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    col_block = tl.program_id(0)
    split = tl.program_id(1)
    cols = col_block * BD + tl.arange(0, BD)
    col_ok = cols < d
    seq = m + T
    if split == splits:  # the prefix rows: dP* = Σ_b grad[b, :m]
        for j0 in range(0, m, BP):
            rows = j0 + tl.arange(0, BP)
            tile = (rows[:, None] < m) & col_ok[None, :]
            acc = tl.zeros((BP, BD), dtype=ACC)
            for bi in range(0, nb):
                grad_rows = (bi * seq + rows).to(tl.int64)
                acc += tl.load(GRAD + grad_rows[:, None] * d + cols[None, :], mask=tile, other=0.0).to(ACC)
            tl.store(D_PROMPT + rows[:, None] * d + cols[None, :], acc, mask=tile)
    else:  # positions, split among `splits` programs per column block
        if HAS_LOW_RANK:
            scaling = widen(scaling_hi, scaling_lo, ACC)
            rk = tl.arange(0, R_PAD)
            batch = tl.arange(0, NB_PAD)
            longest = tl.max(tl.load(LENGTHS + batch, mask=batch < nb, other=0), axis=0)
            db = tl.zeros((R_PAD, BD), dtype=ACC)
            b_t = tl.trans(tl.load(B + rk[:, None] * d + cols[None, :], mask=(rk[:, None] < r) & col_ok[None, :],
                                   other=0.0).to(ACC))
            for p0 in range(split * BP, n, splits * BP):
                positions = p0 + tl.arange(0, BP)
                d_low = tl.zeros((BP, BD), dtype=ACC)
                if p0 < longest:
                    for bi in range(0, nb):
                        held = positions < tl.load(LENGTHS + bi)
                        tok = tl.load(TOKEN_INDEX + bi * n + positions, mask=held, other=0)
                        grad_rows = (bi * seq + m + tok).to(tl.int64)
                        d_low += tl.load(GRAD + grad_rows[:, None] * d + cols[None, :],
                                         mask=held[:, None] & col_ok[None, :], other=0.0).to(ACC)
                    a_rows = tl.load(A + positions[:, None] * r + rk[None, :],
                                     mask=(positions[:, None] < n) & (rk[None, :] < r), other=0.0).to(ACC)
                    db += tl.dot(tl.trans(a_rows), d_low, input_precision=PRECISION)
                da = scaling * tl.dot(d_low, b_t, input_precision=PRECISION)
                tl.store(DA_PART + (col_block * n + positions[:, None]) * r + rk[None, :], da,
                         mask=(positions[:, None] < n) & (rk[None, :] < r))
            tl.store(DB_PART + (split * r + rk[:, None]) * d + cols[None, :], scaling * db,
                     mask=(rk[:, None] < r) & col_ok[None, :])


def _forward_blocks(d: int, r: int):
    """Token rows and columns per program. The (BT, r) rows of A and the (r, BD) block of B
    live in registers: past r = 64 the blocks shrink so that nothing spills (docs/kernels.md)."""
    if interpreting():
        return dict(BT=64, BD=min(dot_pad(d), 1024), B_PREFIX=1024, num_warps=4, num_stages=1)
    r_pad = dot_pad(r)
    return dict(BT=32 if r_pad <= 64 else 16, BD=min(dot_pad(d), 128, max(32, 8192 // r_pad)), B_PREFIX=1024,
                num_warps=4, num_stages=1, maxnreg=255)


def _backward_blocks(d: int, n: int, r: int, device: torch.device):
    if interpreting():
        return dict(BP=64, BD=min(dot_pad(d), 1024), num_warps=4, num_stages=1), 1
    bd = min(dot_pad(d), 64 if dot_pad(r) <= 64 else 32)
    col_blocks = triton.cdiv(d, bd)
    splits = max(1, min(triton.cdiv(2 * multiprocessors(device), col_blocks), triton.cdiv(n, 32)))
    return dict(BP=32, BD=bd, num_warps=4, num_stages=1, maxnreg=255), splits


def unsupported(r: int) -> Optional[str]:
    """Why the fused assembly cannot take this rank, or None when it can (docs/kernels.md)."""
    return f"r={r} is over {_launch.MAX_RANK}" if r > _launch.MAX_RANK else None


@torch.library.custom_op("ept_fast::assemble_inputs", mutates_args=())
def assemble_inputs_op(
    input_ids: Tensor, attention_mask: Optional[Tensor], word_embeddings: Tensor, prompt_out: Tensor,
    lora_a: Tensor, lora_b: Tensor, scaling: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (inputs_embeds (b, m+T, d), extended mask (b, m+T), token_index (b, n), lengths (b,))."""
    nb, T = input_ids.shape
    m, d = prompt_out.shape
    n, r = lora_a.shape
    if unsupported(r) is not None:
        raise ValueError(f"ept_fast::assemble_inputs: the fused kernels cannot take these sizes: {unsupported(r)}")
    out, out_mask, token_index, lengths = _allocate_outputs(input_ids, attention_mask, word_embeddings, prompt_out, lora_a)
    has_mask = attention_mask is not None
    mask = attention_mask.contiguous() if has_mask else input_ids
    cfg = _forward_blocks(d, r)
    acc = accumulator(word_embeddings, prompt_out, lora_a)
    grid = (nb, triton.cdiv(m + T, cfg["BT"]), triton.cdiv(d, cfg["BD"]))
    _assemble_fwd_kernel[grid](
        input_ids.contiguous(), mask, word_embeddings.contiguous(), prompt_out.contiguous(),
        lora_a.contiguous(), lora_b.contiguous(), out, out_mask, token_index, lengths,
        T, m, d, n, r, *split_float(scaling),
        BT=cfg["BT"], BD=cfg["BD"], R_PAD=dot_pad(r), B_PREFIX=cfg["B_PREFIX"], HAS_MASK=has_mask, HAS_LOW_RANK=r > 0,
        ACC=acc, PRECISION=dot_precision(acc, word_embeddings.dtype),
        **_launch.options(cfg),
    )
    return out, out_mask, token_index, lengths


def _allocate_outputs(input_ids, attention_mask, word_embeddings, prompt_out, lora_a):
    nb, T = input_ids.shape
    m, d = prompt_out.shape
    n, r = lora_a.shape
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
    return (
        _launch.new_buffer(word_embeddings, (nb, m + T, d)),
        _launch.new_buffer(input_ids, (nb, m + T), mask_dtype),
        _launch.new_buffer(input_ids, (nb, n if r > 0 else 0), torch.int32),
        _launch.new_buffer(input_ids, (nb if r > 0 else 0,), torch.int32),
    )


@assemble_inputs_op.register_fake
def _(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling):
    return _allocate_outputs(input_ids, attention_mask, word_embeddings, prompt_out, lora_a)


@torch.library.custom_op("ept_fast::assemble_inputs_backward", mutates_args=())
def assemble_inputs_backward_op(
    grad: Tensor, token_index: Tensor, lengths: Tensor, prompt_out: Tensor, lora_a: Tensor, lora_b: Tensor,
    scaling: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (prompt_out, lora_a, lora_b) from the gradient of inputs_embeds."""
    nb, seq, d = grad.shape
    m = prompt_out.shape[0]
    n, r = lora_a.shape
    cfg, splits = _backward_blocks(d, n, r, grad.device)
    splits = splits if r > 0 else 0  # without a low-rank pair only the prefix programs run
    col_blocks = triton.cdiv(d, cfg["BD"])
    acc = accumulator(grad, prompt_out, lora_a)
    work = torch.float64 if acc == tl.float64 else torch.float32
    d_prompt = _launch.new_buffer(grad, (m, d), work)
    da_part = _launch.new_buffer(grad, (col_blocks, n, r), work)
    db_part = _launch.new_buffer(grad, (splits, r, d), work)
    _assemble_bwd_kernel[(col_blocks, splits + 1)](
        grad.contiguous(), token_index, lengths, lora_a.contiguous(), lora_b.contiguous(),
        d_prompt, da_part, db_part, nb, seq - m, m, d, n, r, splits, *split_float(scaling),
        BP=cfg["BP"], BD=cfg["BD"], R_PAD=dot_pad(r), NB_PAD=triton.next_power_of_2(nb), HAS_LOW_RANK=r > 0,
        ACC=acc, PRECISION=dot_precision(acc, grad.dtype), **_launch.options(cfg),
    )
    return d_prompt.to(prompt_out.dtype), da_part.sum(dim=0).to(lora_a.dtype), db_part.sum(dim=0).to(lora_b.dtype)


@assemble_inputs_backward_op.register_fake
def _(grad, token_index, lengths, prompt_out, lora_a, lora_b, scaling):
    return torch.empty_like(prompt_out), torch.empty_like(lora_a), torch.empty_like(lora_b)


def _setup_context(ctx, inputs, output):
    _, _, _, prompt_out, lora_a, lora_b, scaling = inputs
    _, _, token_index, lengths = output
    ctx.save_for_backward(token_index, lengths, prompt_out, lora_a, lora_b)
    ctx.scaling = scaling


def _backward(ctx, grad, *_unused):
    token_index, lengths, prompt_out, lora_a, lora_b = ctx.saved_tensors
    d_prompt, d_a, d_b = assemble_inputs_backward_op(grad.contiguous(), token_index, lengths, prompt_out, lora_a,
                                                     lora_b, ctx.scaling)
    return None, None, None, d_prompt, d_a, d_b, None


assemble_inputs_op.register_autograd(_backward, setup_context=_setup_context)


def fused_assemble_inputs(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling):
    """(inputs_embeds, extended attention mask) from the fused kernel; differentiable in
    ``prompt_out``, ``lora_a`` and ``lora_b`` (the word-embedding table is frozen)."""
    out, out_mask, _, _ = assemble_inputs_op(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b,
                                             float(scaling))
    return out, out_mask
