"""Fused EPT prompt generator: P -> P* in one launch (fusion, K projections, gated mix).

Forward (one program per block of BM prompt rows, three passes over d):
  1. S_self = P_blk Pᵀ/√d and PB = P_blk Bᵀ; then an online softmax over the n low-rank
     columns S_low = (s/√d)·PB·Aᵀ accumulates WA = W_low·A (the (m, n) scores never leave
     registers).
  2. O = W_self·P + s·WA·B, F = P + λO (written once, saved for the backward), with the
     gate logits F·W_g and the subspace codes Z = F·[D_1 … D_K] reduced on the way.
  3. P* = F + (G ⊙ Z)·[U_1; …; U_K].
Saved for the backward: F (m, d), the row softmax max and sum (m,), G (m, K), Z (m, K·h).

Backward: a row kernel recomputes the scores from P, A, B and the saved statistics and
writes every gradient term that belongs to its rows, plus per-program partial sums for
the shared parameters; a column kernel adds the cross-row terms of dP (from W_self and
dS_self); the partial sums are then added in program order (deterministic, no atomics).

The subspaces are handled as one matrix: D as (d, K·h) with column k·h + j = D[k, :, j],
U as (K·h, d); G is spread over the K·h columns by a 0/1 expansion matrix.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from . import _launch
from ._launch import accumulator, dot_pad, dot_precision, interpreting, split_float, widen

Tensor = torch.Tensor


@triton.jit
def _load_tile(ptr, rows, cols, row_stride, n_rows, n_cols, ACC: tl.constexpr):
    """ptr[rows, cols] of a row-major (n_rows, n_cols) matrix, zero outside, as ACC."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _load_d_tile(D, e, c, d, h, KH, ACC: tl.constexpr):
    """[D_1 … D_K][e, c] = D[c // h, e, c % h] for e in rows, c in columns, as ACC."""
    mask = (e[:, None] < d) & (c[None, :] < KH)
    offsets = (c[None, :] // h) * d * h + e[:, None] * h + (c[None, :] % h)
    return tl.load(D + offsets, mask=mask, other=0.0).to(ACC)


@triton.jit
def _expansion(k, c, h, KH):
    """(K_PAD, KH_PAD) 0/1 matrix: column c belongs to subspace c // h."""
    return ((k[:, None] == c[None, :] // h) & (c[None, :] < KH)).to(tl.float32)


@triton.jit
def _self_scores_and_pb(
    P, B, rows, all_rows, rk, m, d, r, inv_sqrt_d,
    BD: tl.constexpr, BM: tl.constexpr, M_PAD: tl.constexpr, R_PAD: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Pass 1: the self scores S_self (BM, M_PAD) (masked columns -inf) and PB = P_blk·Bᵀ (BM, R_PAD)."""
    s_self = tl.zeros((BM, M_PAD), dtype=ACC)
    pb = tl.zeros((BM, R_PAD), dtype=ACC)
    for d0 in range(0, d, BD):
        cols = d0 + tl.arange(0, BD)
        p_blk = _load_tile(P, rows, cols, d, m, d, ACC)
        p_all_t = tl.trans(_load_tile(P, all_rows, cols, d, m, d, ACC))
        b_t = tl.trans(_load_tile(B, rk, cols, d, r, d, ACC))
        s_self += tl.dot(p_blk, p_all_t, input_precision=PRECISION)
        pb += tl.dot(p_blk, b_t, input_precision=PRECISION)
    s_self = tl.where(all_rows[None, :] < m, s_self * inv_sqrt_d, float("-inf"))
    return s_self, pb


@triton.jit
def _low_rank_weights(A, n0, pb, rk, n, r, row_max, row_sum, low_scale,
                      BN: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Rows n0 … n0+BN of A (BN, R_PAD) and their softmax weights W_low (BM, BN), from the
    saved row statistics (backward only: the forward builds the statistics online)."""
    nn = n0 + tl.arange(0, BN)
    a_chunk = _load_tile(A, nn, rk, r, n, r, ACC)
    s_low = tl.dot(pb, tl.trans(a_chunk), input_precision=PRECISION) * low_scale
    w_low = tl.where(nn[None, :] < n, tl.exp(s_low - row_max[:, None]) / row_sum[:, None], 0.0)
    return nn, a_chunk, w_low


@triton.jit
def _ept_prompt_fwd_kernel(
    P, A, B, LAM, D, U, WG, BG,
    OUT, F, ROW_MAX, ROW_SUM, GATE, Z,
    m, d, n, r, K, h, KH, scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo,
    BM: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    M_PAD: tl.constexpr, R_PAD: tl.constexpr, K_PAD: tl.constexpr, KH_PAD: tl.constexpr,
    HAS_SPACES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < m
    all_rows = tl.arange(0, M_PAD)
    rk = tl.arange(0, R_PAD)
    scaling = widen(scaling_hi, scaling_lo, ACC)
    inv_sqrt_d = widen(inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)
    low_scale = scaling * inv_sqrt_d

    # Pass 1 and the online softmax over [S_self | S_low].
    s_self, pb = _self_scores_and_pb(P, B, rows, all_rows, rk, m, d, r, inv_sqrt_d, BD, BM, M_PAD, R_PAD, ACC, PRECISION)
    row_max = tl.max(s_self, axis=1)
    row_sum = tl.sum(tl.exp(s_self - row_max[:, None]), axis=1)
    wa = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        nn = n0 + tl.arange(0, BN)
        a_chunk = _load_tile(A, nn, rk, r, n, r, ACC)  # (BN, R_PAD)
        s_low = tl.dot(pb, tl.trans(a_chunk), input_precision=PRECISION) * low_scale
        s_low = tl.where(nn[None, :] < n, s_low, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s_low, axis=1))
        rescale = tl.exp(row_max - new_max)
        e_low = tl.exp(s_low - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(e_low, axis=1)
        wa = wa * rescale[:, None] + tl.dot(e_low, a_chunk, input_precision=PRECISION)
        row_max = new_max
    w_self = tl.exp(s_self - row_max[:, None]) / row_sum[:, None]
    wa = wa / row_sum[:, None]
    tl.store(ROW_MAX + rows, row_max, mask=row_ok)
    tl.store(ROW_SUM + rows, row_sum, mask=row_ok)

    # Pass 2: F = P + λ(W_self·P + s·WA·B), reducing the gate logits and subspace codes.
    lam = tl.load(LAM).to(ACC)
    kk = tl.arange(0, K_PAD)
    kh = tl.arange(0, KH_PAD)
    logits = tl.zeros((BM, K_PAD), dtype=ACC)
    codes = tl.zeros((BM, KH_PAD), dtype=ACC)
    for d0 in range(0, d, BD):
        cols = d0 + tl.arange(0, BD)
        tile = row_ok[:, None] & (cols[None, :] < d)
        o = tl.dot(w_self, _load_tile(P, all_rows, cols, d, m, d, ACC), input_precision=PRECISION)
        o += scaling * tl.dot(wa, _load_tile(B, rk, cols, d, r, d, ACC), input_precision=PRECISION)
        f = _load_tile(P, rows, cols, d, m, d, ACC) + lam * o
        tl.store(F + rows[:, None] * d + cols[None, :], f, mask=tile)
        if HAS_SPACES:
            logits += tl.dot(f, _load_tile(WG, cols, kk, K, d, K, ACC), input_precision=PRECISION)
            codes += tl.dot(f, _load_d_tile(D, cols, kh, d, h, KH, ACC), input_precision=PRECISION)
        else:
            tl.store(OUT + rows[:, None] * d + cols[None, :], f, mask=tile)

    if HAS_SPACES:
        logits += tl.load(BG + kk, mask=kk < K, other=0.0).to(ACC)[None, :]
        logits = tl.where(kk[None, :] < K, logits, float("-inf"))
        gate = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        gate = gate / tl.sum(gate, axis=1)[:, None]
        tl.store(GATE + rows[:, None] * K + kk[None, :], gate, mask=row_ok[:, None] & (kk[None, :] < K))
        tl.store(Z + rows[:, None] * KH + kh[None, :], codes, mask=row_ok[:, None] & (kh[None, :] < KH))
        gate_wide = tl.dot(gate, _expansion(kk, kh, h, KH).to(ACC), input_precision=PRECISION)
        mixed = gate_wide * codes
        # Pass 3 reads back F written by other threads of this program in pass 2.
        tl.debug_barrier()
        for d0 in range(0, d, BD):
            cols = d0 + tl.arange(0, BD)
            f = _load_tile(F, rows, cols, d, m, d, ACC)
            out = f + tl.dot(mixed, _load_tile(U, kh, cols, d, KH, d, ACC), input_precision=PRECISION)
            tl.store(OUT + rows[:, None] * d + cols[None, :], out, mask=row_ok[:, None] & (cols[None, :] < d))


@triton.jit
def _ept_prompt_bwd_rows_kernel(
    GRAD, P, A, B, LAM, D, U, WG, F, ROW_MAX, ROW_SUM, GATE, Z,
    DP, DO, W_SELF, DS_SELF,
    DA_PART, DB_PART, DLAM_PART, DD_PART, DU_PART, DWG_PART, DBG_PART,
    m, d, n, r, K, h, KH, scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo,
    BM: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    M_PAD: tl.constexpr, R_PAD: tl.constexpr, K_PAD: tl.constexpr, KH_PAD: tl.constexpr,
    HAS_SPACES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    row_ok = rows < m
    all_rows = tl.arange(0, M_PAD)
    rk = tl.arange(0, R_PAD)
    kk = tl.arange(0, K_PAD)
    kh = tl.arange(0, KH_PAD)
    scaling = widen(scaling_hi, scaling_lo, ACC)
    inv_sqrt_d = widen(inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)
    low_scale = scaling * inv_sqrt_d
    lam = tl.load(LAM).to(ACC)
    row_max = tl.load(ROW_MAX + rows, mask=row_ok, other=0.0).to(ACC)
    row_sum = tl.load(ROW_SUM + rows, mask=row_ok, other=1.0).to(ACC)

    # Recompute the softmax weights from P, A, B and the saved statistics.
    s_self, pb = _self_scores_and_pb(P, B, rows, all_rows, rk, m, d, r, inv_sqrt_d, BD, BM, M_PAD, R_PAD, ACC, PRECISION)
    w_self = tl.exp(s_self - row_max[:, None]) / row_sum[:, None]
    wa = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        _, a_chunk, w_low = _low_rank_weights(A, n0, pb, rk, n, r, row_max, row_sum, low_scale, BN, ACC, PRECISION)
        wa += tl.dot(w_low, a_chunk, input_precision=PRECISION)

    # Gate and subspaces: dZ and the gate-logit gradient dα need g·Uᵀ over all of d first.
    if HAS_SPACES:
        gate = _load_tile(GATE, rows, kk, K, m, K, ACC)
        codes = _load_tile(Z, rows, kh, KH, m, KH, ACC)
        expand = _expansion(kk, kh, h, KH).to(ACC)
        gate_wide = tl.dot(gate, expand, input_precision=PRECISION)
        d_mixed = tl.zeros((BM, KH_PAD), dtype=ACC)
        for d0 in range(0, d, BD):
            cols = d0 + tl.arange(0, BD)
            g = _load_tile(GRAD, rows, cols, d, m, d, ACC)
            d_mixed += tl.dot(g, tl.trans(_load_tile(U, kh, cols, d, KH, d, ACC)), input_precision=PRECISION)
        d_codes = gate_wide * d_mixed
        d_gate = tl.dot(d_mixed * codes, tl.trans(expand), input_precision=PRECISION)
        d_logits = gate * (d_gate - tl.sum(gate * d_gate, axis=1)[:, None])
        tl.store(DBG_PART + pid * K + kk, tl.sum(d_logits, axis=0), mask=kk < K)

    # dF, then the fusion: dλ, dO = λ dF, dW_self = dO·Pᵀ, dWA = s·dO·Bᵀ.
    d_w_self = tl.zeros((BM, M_PAD), dtype=ACC)
    d_wa = tl.zeros((BM, R_PAD), dtype=ACC)
    d_lam = tl.zeros((BM,), dtype=ACC)
    for d0 in range(0, d, BD):
        cols = d0 + tl.arange(0, BD)
        tile = row_ok[:, None] & (cols[None, :] < d)
        g = _load_tile(GRAD, rows, cols, d, m, d, ACC)
        df = g
        if HAS_SPACES:
            f = _load_tile(F, rows, cols, d, m, d, ACC)
            df += tl.dot(d_codes, tl.trans(_load_d_tile(D, cols, kh, d, h, KH, ACC)), input_precision=PRECISION)
            df += tl.dot(d_logits, tl.trans(_load_tile(WG, cols, kk, K, d, K, ACC)), input_precision=PRECISION)
            f_t = tl.trans(f)
            dd = tl.dot(f_t, d_codes, input_precision=PRECISION)  # (BD, KH_PAD)
            tl.store(DD_PART + pid * d * KH + cols[:, None] * KH + kh[None, :], dd,
                     mask=(cols[:, None] < d) & (kh[None, :] < KH))
            dwg = tl.dot(f_t, d_logits, input_precision=PRECISION)  # (BD, K_PAD)
            tl.store(DWG_PART + pid * d * K + cols[:, None] * K + kk[None, :], dwg,
                     mask=(cols[:, None] < d) & (kk[None, :] < K))
            du = tl.dot(tl.trans(gate_wide * codes), g, input_precision=PRECISION)  # (KH_PAD, BD)
            tl.store(DU_PART + pid * KH * d + kh[:, None] * d + cols[None, :], du,
                     mask=(kh[:, None] < KH) & (cols[None, :] < d))
        p_all = _load_tile(P, all_rows, cols, d, m, d, ACC)
        b_chunk = _load_tile(B, rk, cols, d, r, d, ACC)
        o = tl.dot(w_self, p_all, input_precision=PRECISION)
        o += scaling * tl.dot(wa, b_chunk, input_precision=PRECISION)
        d_lam += tl.sum(df * o, axis=1)
        do = lam * df
        tl.store(DO + rows[:, None] * d + cols[None, :], do, mask=tile)
        tl.store(DP + rows[:, None] * d + cols[None, :], df, mask=tile)
        d_w_self += tl.dot(do, tl.trans(p_all), input_precision=PRECISION)
        d_wa += scaling * tl.dot(do, tl.trans(b_chunk), input_precision=PRECISION)
    tl.store(DLAM_PART + pid, tl.sum(d_lam, axis=0))

    # Softmax backward: dS = W ⊙ (dW - c), c = Σ W⊙dW over both parts (the low part through WA).
    c = tl.sum(w_self * d_w_self, axis=1) + tl.sum(wa * d_wa, axis=1)
    ds_self = w_self * (d_w_self - c[:, None])
    square = row_ok[:, None] & (all_rows[None, :] < m)
    tl.store(W_SELF + rows[:, None] * m + all_rows[None, :], w_self, mask=square)
    tl.store(DS_SELF + rows[:, None] * m + all_rows[None, :], ds_self, mask=square)
    d_pb = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        nn, a_chunk, w_low = _low_rank_weights(A, n0, pb, rk, n, r, row_max, row_sum, low_scale, BN, ACC, PRECISION)
        w_low = tl.where(row_ok[:, None], w_low, 0.0)
        ds_low = w_low * (tl.dot(d_wa, tl.trans(a_chunk), input_precision=PRECISION) - c[:, None])
        d_pb += low_scale * tl.dot(ds_low, a_chunk, input_precision=PRECISION)
        da = tl.dot(tl.trans(w_low), d_wa, input_precision=PRECISION)
        da += low_scale * tl.dot(tl.trans(ds_low), pb, input_precision=PRECISION)
        tl.store(DA_PART + pid * n * r + nn[:, None] * r + rk[None, :], da,
                 mask=(nn[:, None] < n) & (rk[None, :] < r))

    # Pass C adds to DP and reads DO, both written above by other threads of this program.
    tl.debug_barrier()
    for d0 in range(0, d, BD):
        cols = d0 + tl.arange(0, BD)
        tile = row_ok[:, None] & (cols[None, :] < d)
        p_blk = _load_tile(P, rows, cols, d, m, d, ACC)
        dp = _load_tile(DP, rows, cols, d, m, d, ACC)
        dp += tl.dot(d_pb, _load_tile(B, rk, cols, d, r, d, ACC), input_precision=PRECISION)
        dp += inv_sqrt_d * tl.dot(ds_self, _load_tile(P, all_rows, cols, d, m, d, ACC), input_precision=PRECISION)
        tl.store(DP + rows[:, None] * d + cols[None, :], dp, mask=tile)
        do = _load_tile(DO, rows, cols, d, m, d, ACC)
        db = scaling * tl.dot(tl.trans(wa), do, input_precision=PRECISION)
        db += tl.dot(tl.trans(d_pb), p_blk, input_precision=PRECISION)
        tl.store(DB_PART + pid * r * d + rk[:, None] * d + cols[None, :], db,
                 mask=(rk[:, None] < r) & (cols[None, :] < d))


@triton.jit
def _ept_prompt_bwd_cross_rows_kernel(
    P, DP, DO, W_SELF, DS_SELF, DP_OUT, m, d, inv_sqrt_d_hi, inv_sqrt_d_lo,
    BM: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """dP[j] = (own-row terms) + Σ_i W_self[i, j]·dO[i] + Σ_i dS_self[i, j]·P[i]/√d."""
    inv_sqrt_d = widen(inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    acc = _load_tile(DP, rows, cols, d, m, d, ACC)
    for i0 in range(0, m, BM):
        others = i0 + tl.arange(0, BM)
        w_t = tl.trans(_load_tile(W_SELF, others, rows, m, m, m, ACC))
        ds_t = tl.trans(_load_tile(DS_SELF, others, rows, m, m, m, ACC))
        acc += tl.dot(w_t, _load_tile(DO, others, cols, d, m, d, ACC), input_precision=PRECISION)
        acc += inv_sqrt_d * tl.dot(ds_t, _load_tile(P, others, cols, d, m, d, ACC), input_precision=PRECISION)
    tl.store(DP_OUT + rows[:, None] * d + cols[None, :], acc, mask=(rows[:, None] < m) & (cols[None, :] < d))


def blocks(m: int, d: int, n: int, r: int, KH: int) -> Dict[str, int]:
    """Block sizes from the shapes (one large configuration under the interpreter)."""
    m_pad, r_pad, kh_pad = dot_pad(m), dot_pad(r), dot_pad(KH)
    if interpreting():  # cost there grows with programs x iterations, not FLOPs
        return dict(BM=m_pad, BD=min(dot_pad(d), 512), BN=min(dot_pad(n), 512), num_warps=4)
    widest = max(m_pad, r_pad, kh_pad)
    return dict(BM=16, BD=max(16, min(128, 8192 // widest)), BN=64, num_warps=4 if m_pad <= 128 else 8)


def _sizes(prompt, lora_a, proj_down):
    m, d = prompt.shape
    n, r = lora_a.shape
    K, _, h = proj_down.shape
    return m, d, n, r, K, h


def _meta(prompt, lora_a, proj_down):
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    cfg = blocks(m, d, n, r, K * h)
    meta = dict(
        BM=cfg["BM"], BD=cfg["BD"], BN=cfg["BN"], M_PAD=dot_pad(m), R_PAD=dot_pad(r), K_PAD=dot_pad(K),
        KH_PAD=dot_pad(K * h), HAS_SPACES=K > 0, ACC=accumulator(prompt), PRECISION=dot_precision(prompt),
        num_warps=cfg["num_warps"],
    )
    return meta, triton.cdiv(m, cfg["BM"])


def _work_dtype(prompt: Tensor) -> torch.dtype:
    return torch.float64 if prompt.dtype == torch.float64 else torch.float32


@torch.library.custom_op("ept_fast::ept_prompt", mutates_args=())
def ept_prompt_op(
    prompt: Tensor, lora_a: Tensor, lora_b: Tensor, fusion_scale: Tensor, proj_down: Tensor,
    proj_up: Tensor, gate_weight: Tensor, gate_bias: Tensor, scaling: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (P*, F, row_max, row_sum, G, Z); the last five are saved for the backward."""
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    args = [t.contiguous() for t in (prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias)]
    out, fused, row_max, row_sum, gate, codes = _allocate_outputs(prompt, lora_a, proj_down)
    meta, programs = _meta(prompt, lora_a, proj_down)
    _ept_prompt_fwd_kernel[(programs,)](
        *args, out, fused, row_max, row_sum, gate, codes,
        m, d, n, r, K, h, K * h, *split_float(scaling), *split_float(d ** -0.5), **meta,
    )
    return out, fused, row_max, row_sum, gate, codes


def _allocate_outputs(prompt, lora_a, proj_down):
    """P* in the prompt's dtype; F, row max, row sum (m,), G (m, K), Z (m, K·h) in the work dtype."""
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    work = _work_dtype(prompt)
    saved = (_launch.new_buffer(prompt, shape, work) for shape in ((m, d), (m,), (m,), (m, K), (m, K * h)))
    return (_launch.new_buffer(prompt, (m, d)), *saved)


@ept_prompt_op.register_fake
def _(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    return _allocate_outputs(prompt, lora_a, proj_down)


@torch.library.custom_op("ept_fast::ept_prompt_backward", mutates_args=())
def ept_prompt_backward_op(
    grad: Tensor, prompt: Tensor, lora_a: Tensor, lora_b: Tensor, fusion_scale: Tensor, proj_down: Tensor,
    proj_up: Tensor, gate_weight: Tensor, fused: Tensor, row_max: Tensor, row_sum: Tensor, gate: Tensor,
    codes: Tensor, scaling: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias)."""
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    KH = K * h
    meta, programs = _meta(prompt, lora_a, proj_down)
    work = _work_dtype(prompt)
    new = lambda *shape: _launch.new_buffer(prompt, shape, work)  # noqa: E731
    dp, do, w_self, ds_self = new(m, d), new(m, d), new(m, m), new(m, m)
    partials = {
        "lora_a": new(programs, n, r), "lora_b": new(programs, r, d), "fusion_scale": new(programs),
        "proj_down": new(programs, d, KH), "proj_up": new(programs, KH, d),
        "gate_weight": new(programs, d, K), "gate_bias": new(programs, K),
    }
    if K == 0:
        for name in ("proj_down", "proj_up", "gate_weight", "gate_bias"):
            partials[name].zero_()
    inputs = [t.contiguous() for t in (grad, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight)]
    _ept_prompt_bwd_rows_kernel[(programs,)](
        *inputs, fused, row_max, row_sum, gate, codes, dp, do, w_self, ds_self,
        partials["lora_a"], partials["lora_b"], partials["fusion_scale"], partials["proj_down"],
        partials["proj_up"], partials["gate_weight"], partials["gate_bias"],
        m, d, n, r, K, h, KH, *split_float(scaling), *split_float(d ** -0.5), **meta,
    )
    d_prompt = _launch.new_buffer(prompt, (m, d))
    _ept_prompt_bwd_cross_rows_kernel[(programs, triton.cdiv(d, meta["BD"]))](
        inputs[1], dp, do, w_self, ds_self, d_prompt, m, d, *split_float(d ** -0.5),
        BM=meta["BM"], BD=meta["BD"], ACC=meta["ACC"], PRECISION=meta["PRECISION"], num_warps=meta["num_warps"],
    )
    # Deterministic finishing pass: partial sums added in program order.
    totals = {name: part.sum(dim=0) for name, part in partials.items()}
    d_proj_down = totals["proj_down"].view(d, K, h).permute(1, 0, 2)
    return (
        d_prompt,
        totals["lora_a"].to(lora_a.dtype),
        totals["lora_b"].to(lora_b.dtype),
        totals["fusion_scale"].to(fusion_scale.dtype),
        d_proj_down.to(proj_down.dtype).contiguous(),
        totals["proj_up"].view(K, h, d).to(proj_up.dtype),
        totals["gate_weight"].to(gate_weight.dtype),
        totals["gate_bias"].to(gate_weight.dtype),
    )


@ept_prompt_backward_op.register_fake
def _(grad, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, fused, row_max, row_sum,
      gate, codes, scaling):
    K = proj_down.shape[0]
    return (
        torch.empty_like(prompt), torch.empty_like(lora_a), torch.empty_like(lora_b), torch.empty_like(fusion_scale),
        torch.empty_like(proj_down), torch.empty_like(proj_up), torch.empty_like(gate_weight),
        gate_weight.new_empty((K,)),
    )


def _setup_context(ctx, inputs, output):
    prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling = inputs
    _, fused, row_max, row_sum, gate, codes = output
    ctx.save_for_backward(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight,
                          fused, row_max, row_sum, gate, codes)
    ctx.scaling = scaling


def _backward(ctx, grad, *_unused):
    saved = ctx.saved_tensors
    grads = ept_prompt_backward_op(grad.contiguous(), *saved, ctx.scaling)
    return (*grads, None)


ept_prompt_op.register_autograd(_backward, setup_context=_setup_context)


def fused_ept_prompt(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    """P* (m, d) from the fused kernel; differentiable in all eight tensors."""
    return ept_prompt_op(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias,
                         float(scaling))[0]
