"""Fused input assembly: prompt prefix + word embeddings + low-rank rows; one launch forward,
two backward.

Forward (``_assemble_fwd_kernel``): one program per (batch row, block of d, segment of the
row's tokens). It loads its block of B once, counts the attended tokens before its segment
(a vectorised pass over the mask), then walks the segment in blocks of tokens with a running
count: token t at position pos (attended tokens before it) gathers embed_scale·word_embeddings[id] and,
when attended, adds s·A[pos]·B[:, block], formed in float32 and cast once. L = s·A·B is never
materialised. The first segment's programs also write the m prompt rows; the programs of the
first block of d write the extended mask, for each position p the token that holds it
(``token_index[b, p]``) and, in the last segment, the row's length (-1 for positions no token
holds).

Backward: the incoming gradient is read once. ``_assemble_bwd_kernel`` runs programs over
(block of d, split of the positions) that sum, for their positions p, the gradient rows of the
tokens holding p across the batch (dL[p], several batch rows per load), then write dL·Bᵀ to a
per-block-of-d partial of dA and add Aᵀ·dL to a per-split partial of dB; more programs of the
same launch sum the prompt rows over the batch (dP*, written whole). ``_assemble_bwd_finish_kernel``
adds the partials in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

import inspect
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _launch
from ._launch import accumulator, dot_pad, dot_precision, interpreting, multiprocessors, split_float, widen

Tensor = torch.Tensor


@triton.jit
def _assemble_fwd_kernel(
    IDS, MASK, TABLE, PROMPT, A, B, ADAPTER_IDS, PROMPT_LENGTHS, SCALES,
    OUT, OUT_MASK, TOKEN_INDEX, LENGTHS,
    T, m, d, n, r, V, N, segment, scaling_hi, scaling_lo, embed_hi, embed_lo,
    BT: tl.constexpr, BD: tl.constexpr, R_PAD: tl.constexpr, B_PREFIX: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_LOW_RANK: tl.constexpr, MIXED: tl.constexpr, PAD_LEFT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    col_ok = cols < d
    first_col_block = tl.program_id(1) == 0
    seg = tl.program_id(2)
    seq = m + T
    out_row = (row * seq).to(tl.int64)
    if MIXED:  # this row's adapter: its prompt (m_row of the m rows), A, B and scaling
        adapter = tl.load(ADAPTER_IDS + row).to(tl.int64)
        # The entry points check ids on the host; a raw call with a bad one still reads in bounds.
        tl.device_assert((adapter >= 0) & (adapter < N), "adapter_ids: an id outside [0, N)")
        adapter = tl.minimum(tl.maximum(adapter, 0), N - 1)
        PROMPT += adapter * m * d
        A += adapter * n * r
        B += adapter * r * d
        scaling = tl.load(SCALES + adapter).to(ACC)
        m_row = tl.minimum(tl.maximum(tl.load(PROMPT_LENGTHS + adapter).to(tl.int32), 0), m)
    else:
        scaling = widen(scaling_hi, scaling_lo, ACC)
        m_row = m

    # A row of a shorter prompt gets m - m_row padding rows (zeros, masked): before its prompt
    # (PAD_LEFT), or after its tokens; its tokens start right after its prompt.
    start = m - m_row if PAD_LEFT else 0
    first_token = start + m_row
    if seg == 0:  # the prompt's rows and the padding rows
        for j0 in range(0, m, BT):
            rows = j0 + tl.arange(0, BT)
            held = (rows >= start) & (rows < start + m_row)
            place = rows if PAD_LEFT else tl.where(held, rows, rows + T)
            prefix = tl.load(PROMPT + (rows[:, None] - start) * d + cols[None, :], mask=held[:, None] & col_ok[None, :],
                             other=0.0)
            tl.store(OUT + (out_row + place[:, None]) * d + cols[None, :], prefix.to(ACC).to(OUT.dtype.element_ty),
                     mask=(rows[:, None] < m) & col_ok[None, :])
            if first_col_block:
                tl.store(OUT_MASK + row * seq + place, held.to(OUT_MASK.dtype.element_ty), mask=rows < m)

    embed_scale = widen(embed_hi, embed_lo, ACC)
    t_start = seg * segment
    t_end = tl.minimum(t_start + segment, T)
    count = t_start  # attended tokens before this segment (all, without a mask)
    if HAS_MASK:
        count = 0
        for t0 in range(0, t_start, B_PREFIX):
            earlier = t0 + tl.arange(0, B_PREFIX)
            flags = tl.load(MASK + row * T + earlier, mask=earlier < t_start, other=0)
            count += tl.sum((flags != 0).to(tl.int32), axis=0)
    if HAS_LOW_RANK:
        rk = tl.arange(0, R_PAD)
        b_block = tl.load(B + rk[:, None] * d + cols[None, :], mask=(rk[:, None] < r) & col_ok[None, :], other=0.0)
        b_block = b_block.to(ACC)

    for t0 in range(t_start, t_end, BT):
        t = t0 + tl.arange(0, BT)
        is_token = t < t_end
        if HAS_MASK:
            flags = tl.load(MASK + row * T + t, mask=is_token, other=0)
            attended = (flags != 0) & is_token
        else:
            attended = is_token
        ids = tl.load(IDS + row * T + t, mask=is_token, other=0).to(tl.int64)
        known = (ids >= 0) & (ids < V)  # a raw call's id past the table reads no row (a zero row instead)
        tl.device_assert(known | ~is_token, "input_ids: an id outside the word-embedding table")
        tokens = tl.load(TABLE + ids[:, None] * d + cols[None, :], mask=(is_token & known)[:, None] & col_ok[None, :],
                         other=0.0).to(ACC) * embed_scale
        if HAS_LOW_RANK:
            pos = count + tl.cumsum(attended.to(tl.int32), axis=0) - 1
            # Only positions < n have a row of A. The functional layer refuses longer rows; this
            # guard keeps a direct call of the op inside A and TOKEN_INDEX (such tokens get no update).
            updated = attended & (pos < n)
            pos = tl.where(updated, pos, 0)
            a_rows = tl.load(A + pos[:, None] * r + rk[None, :], mask=updated[:, None] & (rk[None, :] < r), other=0.0)
            low = tl.dot(a_rows.to(ACC), b_block, input_precision=PRECISION) * scaling
            tokens = tl.where(updated[:, None], tokens + low, tokens)
            if first_col_block:
                tl.store(TOKEN_INDEX + row * n + pos, t, mask=updated)
            count += tl.sum(attended.to(tl.int32), axis=0)
        tl.store(OUT + (out_row + first_token + t[:, None]) * d + cols[None, :], tokens.to(OUT.dtype.element_ty),
                 mask=is_token[:, None] & col_ok[None, :])
        if first_col_block:
            if HAS_MASK:
                tl.store(OUT_MASK + row * seq + first_token + t, flags.to(OUT_MASK.dtype.element_ty), mask=is_token)
            else:
                tl.store(OUT_MASK + row * seq + first_token + t, tl.full((BT,), 1, OUT_MASK.dtype.element_ty),
                         mask=is_token)

    if HAS_LOW_RANK:
        if first_col_block & (t_end == T):  # the row's last segment: its length, and the positions no token holds
            tl.store(LENGTHS + row, tl.minimum(count, n))  # tokens past n hold no position of A
            for p0 in range(count, n, BT):
                tail = p0 + tl.arange(0, BT)
                tl.store(TOKEN_INDEX + row * n + tail, tl.full((BT,), -1, tl.int32), mask=tail < n)


@triton.jit
def _rows_of(ADAPTER_IDS, rows, nb, adapter, MIXED: tl.constexpr):
    """Which of ``rows`` are batch rows of this program's adapter (all of them for one adapter)."""
    if MIXED:
        return (rows < nb) & (tl.load(ADAPTER_IDS + rows, mask=rows < nb, other=-1) == adapter)
    else:
        return rows < nb


@triton.jit
def _assemble_bwd_kernel(
    GRAD, TOKEN_INDEX, LENGTHS, A, B, ADAPTER_IDS, PROMPT_LENGTHS, SCALES,
    D_PROMPT, DA_PART, DB_PART,
    nb, T, m, d, n, r, splits, col_blocks, scaling_hi, scaling_lo,
    BP: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr, R_PAD: tl.constexpr, NB_PAD: tl.constexpr,
    MIXED: tl.constexpr, PAD_LEFT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    col_block = tl.program_id(0)
    task = tl.program_id(1)
    cols = col_block * BD + tl.arange(0, BD)
    col_ok = cols < d
    seq = m + T
    batch = tl.arange(0, BB)
    adapter = tl.program_id(2).to(tl.int64)  # a mixed batch: each adapter sums its own rows (masked loads)
    if MIXED:
        m_rows = tl.minimum(tl.maximum(tl.load(PROMPT_LENGTHS + adapter).to(tl.int32), 0), m)
        scaling = tl.load(SCALES + adapter).to(ACC)
        A += adapter * n * r
        B += adapter * r * d
        D_PROMPT += adapter * m * d
        DA_PART += adapter * col_blocks * n * r
        DB_PART += adapter * splits * r * d
    else:
        m_rows = m
        scaling = widen(scaling_hi, scaling_lo, ACC)
    start = m - m_rows if PAD_LEFT else 0  # where the adapter's prompt starts in its rows (as in the forward)
    if task >= splits:  # a block of the prompt's rows: dP*[j] = Σ_b grad[b, start + j]
        rows = (task - splits) * BP + tl.arange(0, BP)
        tile = (rows[:, None] < m_rows) & col_ok[None, :]
        total = tl.zeros((BP, BD), dtype=ACC)
        for b0 in range(0, nb, BB):
            bb = b0 + batch
            mine = _rows_of(ADAPTER_IDS, bb, nb, adapter, MIXED)
            grad_rows = (bb[:, None] * seq + start + rows[None, :]).to(tl.int64)
            g = tl.load(GRAD + grad_rows[:, :, None] * d + cols[None, None, :],
                        mask=mine[:, None, None] & tile[None, :, :], other=0.0)
            total += tl.sum(g.to(ACC), axis=0)
        tl.store(D_PROMPT + rows[:, None] * d + cols[None, :], total, mask=(rows[:, None] < m) & col_ok[None, :])
    else:  # positions p0, p0 + splits·BP, …: dL[p] = Σ_b grad[b, start + m_rows + token holding p]
        rk = tl.arange(0, R_PAD)
        everyone = tl.arange(0, NB_PAD)
        # A raw call's lengths and token index are the caller's: kept in bounds like the forward's ids.
        most = tl.minimum(n, T)
        longest = tl.max(tl.minimum(tl.load(LENGTHS + everyone, mask=_rows_of(ADAPTER_IDS, everyone, nb, adapter,
                                                                                MIXED), other=0), most), axis=0)
        b_t = tl.trans(tl.load(B + rk[:, None] * d + cols[None, :], mask=(rk[:, None] < r) & col_ok[None, :],
                               other=0.0).to(ACC))
        db = tl.zeros((R_PAD, BD), dtype=ACC)
        for p0 in range(task * BP, n, splits * BP):
            positions = p0 + tl.arange(0, BP)
            d_low = tl.zeros((BP, BD), dtype=ACC)
            if p0 < longest:
                for b0 in range(0, nb, BB):
                    bb = b0 + batch
                    lengths = tl.load(LENGTHS + bb, mask=_rows_of(ADAPTER_IDS, bb, nb, adapter, MIXED), other=0)
                    held = positions[None, :] < tl.minimum(lengths, most)[:, None]  # (BB, BP)
                    tok = tl.load(TOKEN_INDEX + bb[:, None] * n + positions[None, :], mask=held, other=0)
                    held = held & (tok >= 0) & (tok < T)
                    grad_rows = (bb[:, None] * seq + start + m_rows + tok).to(tl.int64)
                    g = tl.load(GRAD + grad_rows[:, :, None] * d + cols[None, None, :],
                                mask=held[:, :, None] & col_ok[None, None, :], other=0.0)
                    d_low += tl.sum(g.to(ACC), axis=0)
                a_rows = tl.load(A + positions[:, None] * r + rk[None, :],
                                 mask=(positions[:, None] < n) & (rk[None, :] < r), other=0.0).to(ACC)
                db += tl.dot(tl.trans(a_rows), d_low, input_precision=PRECISION)
            da = scaling * tl.dot(d_low, b_t, input_precision=PRECISION)
            tl.store(DA_PART + (col_block * n + positions[:, None]) * r + rk[None, :], da,
                     mask=(positions[:, None] < n) & (rk[None, :] < r))
        tl.store(DB_PART + (task * r + rk[:, None]) * d + cols[None, :], scaling * db,
                 mask=(rk[:, None] < r) & col_ok[None, :])


@triton.jit
def _assemble_bwd_finish_kernel(
    DA_PART, DB_PART, DA, DB, d, n, r, col_blocks, splits, da_programs,
    BN: tl.constexpr, BD: tl.constexpr, R_PAD: tl.constexpr, ACC: tl.constexpr,
):
    """dA = Σ over blocks of d of the dA partials, dB = Σ over splits of the dB partials, in
    order; program_id(1) is the adapter (0 for a single one)."""
    pid = tl.program_id(0)
    adapter = tl.program_id(1).to(tl.int64)
    DA_PART += adapter * col_blocks * n * r
    DB_PART += adapter * splits * r * d
    DA += adapter * n * r
    DB += adapter * r * d
    rk = tl.arange(0, R_PAD)
    if pid < da_programs:
        rows = pid * BN + tl.arange(0, BN)
        da_tile = (rows[:, None] < n) & (rk[None, :] < r)
        da_offsets = rows[:, None] * r + rk[None, :]
        da = tl.zeros((BN, R_PAD), dtype=ACC)
        for block in range(0, col_blocks):
            da += tl.load(DA_PART + block * n * r + da_offsets, mask=da_tile, other=0.0).to(ACC)
        tl.store(DA + da_offsets, da, mask=da_tile)
    else:
        cols = (pid - da_programs) * BD + tl.arange(0, BD)
        db_tile = (rk[:, None] < r) & (cols[None, :] < d)
        db_offsets = rk[:, None] * d + cols[None, :]
        db = tl.zeros((R_PAD, BD), dtype=ACC)
        for split in range(0, splits):
            db += tl.load(DB_PART + split * r * d + db_offsets, mask=db_tile, other=0.0).to(ACC)
        tl.store(DB + db_offsets, db, mask=db_tile)


REGISTER_TILE = 12_288  # fp32 values of A's rows, B's block and the output per forward program (4 warps)


def _forward_config(nb: int, T: int, d: int, r: int, device: torch.device) -> Dict[str, int]:
    """Token rows and columns per program, and the tokens per segment. The (BT, r) rows of A,
    the (r, BD) block of B and the (BT, BD) output live in registers: the blocks shrink as r
    grows so that together they stay within REGISTER_TILE values and nothing spills (r = 44 with
    BD = 128 spilled). Rows are cut into segments only when the batch rows × blocks of d would
    leave multiprocessors idle (docs/kernels.md)."""
    if interpreting():
        return dict(BT=64, BD=min(dot_pad(d), 1024), B_PREFIX=1024, segment=T, num_warps=4, num_stages=1)
    r_pad = dot_pad(r)
    bt, bd = (32 if r_pad <= 64 else 16), min(dot_pad(d), 128)
    while bd > 32 and bt * r_pad + r_pad * bd + bt * bd > REGISTER_TILE:
        bd //= 2
    blocks = triton.cdiv(T, bt)
    segments = max(1, min(blocks, triton.cdiv(2 * multiprocessors(device), nb * triton.cdiv(d, bd))))
    return dict(BT=bt, BD=bd, B_PREFIX=1024, segment=bt * triton.cdiv(blocks, segments), num_warps=4,
                num_stages=1, maxnreg=255)


def _backward_config(d: int, n: int, r: int, device: torch.device) -> Dict[str, int]:
    """Positions × columns per program, batch rows per load, and the position splits: about
    two programs per multiprocessor sum the token rows (the prompt-row programs come on top)."""
    if interpreting():
        return dict(BP=64, BD=min(dot_pad(d), 1024), BB=4, splits=1, BN=256, num_warps=4, num_stages=1)
    bp, bd = 16, min(dot_pad(d), 64 if dot_pad(r) <= 64 else 32)
    splits = max(1, min(triton.cdiv(n, bp), triton.cdiv(2 * multiprocessors(device), triton.cdiv(d, bd))))
    return dict(BP=bp, BD=bd, BB=4, splits=splits, BN=64, num_warps=4, num_stages=1, maxnreg=255)


def unsupported(r: int) -> Optional[str]:
    """Why the fused assembly cannot take this rank, or None when it can (docs/kernels.md)."""
    return f"r={r} is over {_launch.MAX_RANK}" if r > _launch.MAX_RANK else None


class Routing(NamedTuple):
    """A mixed batch: row i runs adapter ``adapter_ids[i]``, whose prompt has
    ``prompt_lengths[a]`` rows and whose low-rank update is scaled by ``scalings[a]``; a row of
    a shorter prompt is padded on the left (before its prompt) or the right (after its tokens)."""

    adapter_ids: Tensor  # (b,) integer
    prompt_lengths: Tensor  # (N,) integer
    scalings: Tensor  # (N,) floating
    pad_left: bool


@_launch.on_the_inputs_device
def _launch_forward(input_ids, attention_mask, word_embeddings, prompts, lora_a, lora_b, scaling: float,
                    embed_scale: float, routing: Optional[Routing]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward launch for one adapter (``prompts`` (m, d), A (n, r), B (r, d)) or a mixed
    batch (the same with a leading adapter dimension N, and ``routing``)."""
    nb, T = input_ids.shape
    m, d = prompts.shape[-2:]
    n, r = lora_a.shape[-2:]
    if unsupported(r) is not None:
        raise ValueError(f"ept_fast::assemble_inputs: the fused kernels cannot take these sizes: {unsupported(r)}")
    out, out_mask, token_index, lengths = _allocate_outputs(input_ids, attention_mask, word_embeddings, prompts, lora_a)
    has_mask = attention_mask is not None
    cfg = _forward_config(nb, T, d, r, word_embeddings.device)
    acc = accumulator(word_embeddings, prompts, lora_a)
    ids, lengths_of_prompts, scalings = (t.contiguous() for t in (routing[:3] if routing is not None
                                                                  else (input_ids,) * 3))  # unread then
    grid = (nb, triton.cdiv(d, cfg["BD"]), triton.cdiv(T, cfg["segment"]))
    _assemble_fwd_kernel[grid](
        input_ids.contiguous(), attention_mask.contiguous() if has_mask else input_ids, word_embeddings.contiguous(),
        prompts.contiguous(), lora_a.contiguous(), lora_b.contiguous(), ids.contiguous(), lengths_of_prompts,
        scalings, out, out_mask, token_index, lengths,
        T, m, d, n, r, word_embeddings.shape[0], prompts.shape[0] if routing is not None else 1, cfg["segment"],
        *split_float(scaling), *split_float(embed_scale),
        BT=cfg["BT"], BD=cfg["BD"], R_PAD=dot_pad(r), B_PREFIX=cfg["B_PREFIX"], HAS_MASK=has_mask, HAS_LOW_RANK=r > 0,
        MIXED=routing is not None, PAD_LEFT=routing is not None and routing.pad_left, ACC=acc,
        PRECISION=dot_precision(acc, word_embeddings.dtype), **_launch.options(cfg),
    )
    return out, out_mask, token_index, lengths


def _allocate_outputs(input_ids, attention_mask, word_embeddings, prompts, lora_a):
    nb, T = input_ids.shape
    m, d = prompts.shape[-2:]
    n, r = lora_a.shape[-2:]
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
    return (
        _launch.new_buffer(word_embeddings, (nb, m + T, d)),
        _launch.new_buffer(input_ids, (nb, m + T), mask_dtype),
        _launch.new_buffer(input_ids, (nb, n if r > 0 else 0), torch.int32),
        _launch.new_buffer(input_ids, (nb if r > 0 else 0,), torch.int32),
    )


@_launch.on_the_inputs_device
def _launch_backward(grad, token_index, lengths, prompts, lora_a, lora_b, scaling: float,
                     routing: Optional[Routing]) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (prompts, lora_a, lora_b), shaped as they are, from the gradient of inputs_embeds.
    In a mixed batch the programs of adapter a sum the rows whose id is a (a grid axis per adapter)."""
    nb, seq, d = grad.shape
    m = prompts.shape[-2]
    n, r = lora_a.shape[-2:]
    adapters = 1 if routing is None else prompts.shape[0]
    cfg = _backward_config(d, n, r, grad.device)
    splits = cfg["splits"] if r > 0 else 0  # without a low-rank pair only the prompt-row programs run
    col_blocks = triton.cdiv(d, cfg["BD"])
    acc = accumulator(grad, prompts, lora_a)
    work = torch.float64 if acc == tl.float64 else torch.float32
    d_prompt, d_a, d_b = (_launch.new_buffer(t, t.shape) for t in (prompts, lora_a, lora_b))
    da_part = _launch.new_buffer(grad, (adapters, col_blocks, n, r), work)
    db_part = _launch.new_buffer(grad, (adapters, splits, r, d), work)
    adapter_ids, prompt_lengths, scalings = (t.contiguous() for t in (routing[:3] if routing is not None
                                                                       else (token_index,) * 3))  # unread then
    meta = dict(ACC=acc, **_launch.options(cfg))
    _assemble_bwd_kernel[(col_blocks, splits + triton.cdiv(m, cfg["BP"]), adapters)](
        grad.contiguous(), token_index, lengths, lora_a.contiguous(), lora_b.contiguous(), adapter_ids.contiguous(),
        prompt_lengths, scalings, d_prompt, da_part, db_part, nb, seq - m, m, d, n, r, splits, col_blocks,
        *split_float(scaling),
        BP=cfg["BP"], BD=cfg["BD"], BB=cfg["BB"], R_PAD=dot_pad(r), NB_PAD=triton.next_power_of_2(nb),
        MIXED=routing is not None, PAD_LEFT=routing is not None and routing.pad_left,
        PRECISION=dot_precision(acc, grad.dtype), **meta,
    )
    if r > 0:
        da_programs = triton.cdiv(n, cfg["BN"])
        _assemble_bwd_finish_kernel[(da_programs + col_blocks, adapters)](
            da_part, db_part, d_a, d_b, d, n, r, col_blocks, splits, da_programs,
            BN=cfg["BN"], BD=cfg["BD"], R_PAD=dot_pad(r), **meta,
        )
    return d_prompt, d_a, d_b


def _adapter_tensors(prompts, lora_a, lora_b, routing: Optional[Routing]) -> dict:
    """The adapter's tensors and their shapes for ``_launch.check_shapes`` (stacked: a leading N)."""
    stacked = "N" if routing is not None else ""
    named = {"prompts" if routing is not None else "prompt_out": (prompts, stacked + "md"),
             "lora_a": (lora_a, stacked + "nr"),
             "lora_b": (lora_b, stacked + "rd")}
    if routing is not None:
        named.update(prompt_lengths=(routing.prompt_lengths, "N"), scalings=(routing.scalings, "N"),
                     adapter_ids=(routing.adapter_ids, "b"))
    return named


def _check_forward(op, input_ids, attention_mask, word_embeddings, prompts, lora_a, lora_b, routing):
    named = {"input_ids": (input_ids, "bT"), "attention_mask": (attention_mask, "bT"),
             "word_embeddings": (word_embeddings, "Vd"), **_adapter_tensors(prompts, lora_a, lora_b, routing)}
    _launch.check_shapes(op, named, integer=("input_ids", "prompt_lengths", "adapter_ids"),
                         floating=("word_embeddings", "prompts", "prompt_out", "lora_a", "lora_b", "scalings"),
                         nonempty="bTVd")


def _check_backward(op, grad, token_index, lengths, prompts, lora_a, lora_b, routing):
    named = {"grad": (grad, "bSd"), **_adapter_tensors(prompts, lora_a, lora_b, routing)}
    dims = _launch.check_shapes(op, named, integer=("prompt_lengths", "adapter_ids"),
                                floating=("grad", "prompts", "prompt_out", "lora_a", "lora_b", "scalings"))
    if dims["S"] < dims["m"]:
        raise ValueError(f"{op}: grad: expected at least m={dims['m']} positions (the prompt's), got {dims['S']}")
    saved = {"token_index": (token_index, "bn"), "lengths": (lengths, "b")} if dims["r"] > 0 else {}
    _launch.check_shapes(op, {"grad": (grad, "bSd"), "lora_a": named["lora_a"], **saved},
                         integer=("token_index", "lengths"))


def _register(name: str, forward, backward, saved: Tuple[int, ...], constants: Tuple[int, ...],
              differentiable: Tuple[int, ...]):
    """Register the custom op ``ept_fast::<name>`` (``forward``: (inputs_embeds, extended mask,
    token_index, lengths)), its backward op (``backward``: the gradients of the inputs at
    ``differentiable`` from (grad, token_index, lengths, the inputs at ``saved``, the inputs at
    ``constants``)), both fake kernels, and the autograd formula joining them."""
    op = torch.library.custom_op(f"ept_fast::{name}", mutates_args=())(forward)
    backward_op = torch.library.custom_op(f"ept_fast::{name}_backward", mutates_args=())(backward)
    lora_a = differentiable[1]

    @op.register_fake
    def _(*inputs):
        return _allocate_outputs(*inputs[:4], inputs[lora_a])

    @backward_op.register_fake
    def _(grad, token_index, lengths, *rest):
        return tuple(rest[saved.index(i)].new_empty(rest[saved.index(i)].shape) for i in differentiable)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[2], output[3], *(inputs[i] for i in saved))
        ctx.constants = tuple(inputs[i] for i in constants)
        ctx.set_materialize_grads(False)  # the mask, token_index and lengths get no gradient: no zeros to build

    def autograd_backward(ctx, grad, *_unused):
        grads = [None] * len(inspect.signature(forward).parameters)
        if grad is not None:
            for i, value in zip(differentiable, backward_op(grad.contiguous(), *ctx.saved_tensors, *ctx.constants)):
                grads[i] = value
        return tuple(grads)

    op.register_autograd(autograd_backward, setup_context=setup_context)
    return op


# ---------------------------------------------------------------- one adapter
def assemble_inputs_forward(
    input_ids: Tensor, attention_mask: Optional[Tensor], word_embeddings: Tensor, prompt_out: Tensor,
    lora_a: Tensor, lora_b: Tensor, scaling: float, embed_scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (inputs_embeds (b, m+T, d), extended mask (b, m+T), token_index (b, n), lengths (b,))."""
    _check_forward("ept_fast::assemble_inputs", input_ids, attention_mask, word_embeddings, prompt_out, lora_a,
                   lora_b, None)
    return _launch_forward(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling,
                           embed_scale, None)


def assemble_inputs_backward(
    grad: Tensor, token_index: Tensor, lengths: Tensor, prompt_out: Tensor, lora_a: Tensor, lora_b: Tensor,
    scaling: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (prompt_out, lora_a, lora_b) from the gradient of inputs_embeds."""
    _check_backward("ept_fast::assemble_inputs_backward", grad, token_index, lengths, prompt_out, lora_a, lora_b, None)
    return _launch_backward(grad, token_index, lengths, prompt_out, lora_a, lora_b, scaling, None)


# Differentiable in prompt_out, lora_a, lora_b (inputs 3-5); scaling (6) is a constant of the backward.
assemble_inputs_op = _register("assemble_inputs", assemble_inputs_forward, assemble_inputs_backward,
                               saved=(3, 4, 5), constants=(6,), differentiable=(3, 4, 5))


def fused_assemble_inputs(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling,
                          embed_scale=1.0):
    """(inputs_embeds, extended attention mask) from the fused kernel; differentiable in
    ``prompt_out``, ``lora_a`` and ``lora_b`` (the word-embedding table is frozen, its rows
    multiplied by ``embed_scale``)."""
    out, out_mask, _, _ = assemble_inputs_op(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b,
                                             float(scaling), float(embed_scale))
    return out, out_mask


# ------------------------------------------------------- a mixed batch of adapters
def assemble_inputs_mixed_forward(
    input_ids: Tensor, attention_mask: Optional[Tensor], word_embeddings: Tensor, prompts: Tensor,
    prompt_lengths: Tensor, lora_a: Tensor, lora_b: Tensor, scalings: Tensor, adapter_ids: Tensor, embed_scale: float,
    pad_left: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``assemble_inputs_forward`` for stacked adapters: prompts (N, m, d), A (N, n, r), B (N, r, d)."""
    routing = Routing(adapter_ids, prompt_lengths, scalings, pad_left)
    _check_forward("ept_fast::assemble_inputs_mixed", input_ids, attention_mask, word_embeddings, prompts, lora_a,
                   lora_b, routing)
    return _launch_forward(input_ids, attention_mask, word_embeddings, prompts, lora_a, lora_b, 0.0, embed_scale,
                           Routing(adapter_ids, prompt_lengths, scalings, pad_left))


def assemble_inputs_mixed_backward(
    grad: Tensor, token_index: Tensor, lengths: Tensor, prompts: Tensor, prompt_lengths: Tensor, lora_a: Tensor,
    lora_b: Tensor, scalings: Tensor, adapter_ids: Tensor, pad_left: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of the stacked (prompts, lora_a, lora_b): each adapter's from its own rows."""
    _check_backward("ept_fast::assemble_inputs_mixed_backward", grad, token_index, lengths, prompts, lora_a, lora_b,
                    Routing(adapter_ids, prompt_lengths, scalings, pad_left))
    return _launch_backward(grad, token_index, lengths, prompts, lora_a, lora_b, 0.0,
                            Routing(adapter_ids, prompt_lengths, scalings, pad_left))


# Differentiable in prompts, lora_a, lora_b (inputs 3, 5, 6); the routing (4, 7, 8) is saved, pad_left (10) constant.
assemble_inputs_mixed_op = _register("assemble_inputs_mixed", assemble_inputs_mixed_forward,
                                     assemble_inputs_mixed_backward, saved=(3, 4, 5, 6, 7, 8), constants=(10,),
                                     differentiable=(3, 5, 6))


def fused_assemble_inputs_mixed(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a, lora_b,
                                scalings, adapter_ids, embed_scale=1.0, padding_side="right"):
    """The mixed batch's (inputs_embeds, extended attention mask); differentiable in the stacked
    ``prompts``, ``lora_a`` and ``lora_b`` (see ``ept_fast.reference.assemble_inputs_mixed``)."""
    out, out_mask, _, _ = assemble_inputs_mixed_op(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths,
                                                   lora_a, lora_b, scalings, adapter_ids, float(embed_scale),
                                                   padding_side == "left")
    return out, out_mask
