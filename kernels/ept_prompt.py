"""Fused EPT prompt generator P -> P*: three launches forward, three backward.

Every product over the hidden size d is a product with one stacked operand. Stack the rows
of length d

    V = [P; B; W_gᵀ; D̃ᵀ; Ũ]    (m + r + K + 2·K·h rows)

with D̃[:, k·h + j] = D[k, :, j] and Ũ[k·h + j] = U[k, j]. Fusion and gating only need

    R = [P; B] · [P; B; W_gᵀ; D̃ᵀ]ᵀ     (m + r, Q), Q = m + r + K + K·h

(the scores S_self = P·Pᵀ/√d, P·Bᵀ for S_low, and F·[W_g | D̃] = P·X + λ(W_self·P·X +
s·WA·B·X) with X = [W_g | D̃], which is linear in the reduced products), and the output is

    P* = C · [P; B; Ũ],    C = [I + λ·W_self | λ·s·WA | G_wide ⊙ Z]    (m, m + r + K·h).

Forward:
  1. ``_reduce_over_d_kernel``: tiles of R, each program over one chunk of d (partial sums).
  2. ``_mix_kernel``: per block of prompt rows, the partials summed in chunk order, the
     softmax over [S_self | S_low] (online over the n low-rank columns), WA = W_low·A,
     F·X, the gate G, and the rows of C. Saves R, the softmax log-sum-exp, F·X and C.
  3. ``_combine_kernel``: P* = C·[P; B; Ũ], tiled over rows and d.
Backward (dP* given):
  1. ``_reduce_over_d_kernel``: dC = dP*·[P; B; Ũ]ᵀ, tiles over chunks of d.
  2. ``_mix_backward_kernel``: per block of prompt rows, its rows of dR's score columns
     ([dS_self/√d | d(P·Bᵀ)]) and of d(F·X), and per-program partials of dA, dλ and db_g.
  3. ``_scatter_kernel``: per tile of V rows and d columns, the gradient of V written into
     those of P, B, W_g, D and U: Cᵀ·dP* (plus Cᵀ·d(F·X)·Xᵀ for the rows of P and B), dR·[P; B]
     and dRᵀ·P, and d(F·X)ᵀ·F for the rows of W_gᵀ and D̃ᵀ. The F·X columns of dR need no
     cross-row reduction: they are Cᵀ·d(F·X), as C starts with [I + λ·W_self | λ·s·WA]. One
     more program adds the partials of dA, dλ and db_g in program order.
Every reduction adds partial sums in a fixed order: the results are deterministic.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _launch
from ._launch import accumulator, dot_pad, dot_precision, interpreting, multiprocessors, split_float, widen

Tensor = torch.Tensor


@triton.jit
def _load_tile(ptr, rows, cols, row_stride, n_rows, n_cols, ACC: tl.constexpr):
    """ptr[rows, cols] of a row-major matrix, zero outside (n_rows, n_cols), as ACC."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _stacked_offsets(P, B, WG, D, U, v, e, m, d, r, K, h):
    """Pointers to V[v, e] for V = [P; B; W_gᵀ; D̃ᵀ; Ũ] (one load or store per tile, whatever
    the segments it spans); meaningful where 0 <= v < m + r + K + 2·K·h. Each row is a base
    pointer and a stride along d: 1 for P, B and Ũ, K for W_gᵀ, h for D̃ᵀ."""
    KH = K * h
    b = v - m
    g = b - r
    c = g - K
    u = c - KH
    base = tl.where(c < KH, D + (c // h) * (d * h) + c % h, U + u * d)
    base = tl.where(g < K, WG + g, base)
    base = tl.where(b < r, B + b * d, base)
    base = tl.where(v < m, P + v * d, base)
    stride = tl.where((g >= 0) & (g < K), K, tl.where((c >= 0) & (c < KH), h, 1))
    return base[:, None] + e[None, :] * stride[:, None]


@triton.jit
def _stacked_tile(P, B, WG, D, U, v, e, limit, m, d, r, K, h, ACC: tl.constexpr):
    """V[v, e] for V = [P; B; W_gᵀ; D̃ᵀ; Ũ], zero for rows v >= limit and columns e >= d."""
    mask = (v[:, None] < limit) & (e[None, :] < d)
    return tl.load(_stacked_offsets(P, B, WG, D, U, v, e, m, d, r, K, h), mask=mask, other=0.0).to(ACC)


@triton.jit
def _store_stacked(DP, DB, DWG, DD, DU, tile, v, e, m, d, r, K, h):
    """Store rows v, columns e of the gradient of V into the gradients of P, B, W_g, D and U."""
    mask = (v[:, None] < m + r + K + 2 * K * h) & (e[None, :] < d)
    tl.store(_stacked_offsets(DP, DB, DWG, DD, DU, v, e, m, d, r, K, h), tile, mask=mask)


@triton.jit
def _summed(PART, rows, cols, mask, parts, part_stride, row_stride, ACC: tl.constexpr):
    """Σ over the parts of PART[part, rows, cols], added in part order; zero where not mask."""
    offsets = rows[:, None] * row_stride + cols[None, :]
    total = tl.load(PART + offsets, mask=mask, other=0.0).to(ACC)
    for part in range(1, parts):
        total += tl.load(PART + part * part_stride + offsets, mask=mask, other=0.0).to(ACC)
    return total


@triton.jit
def _low_rank_weights(A, n0, pb, rows_ok, rk, n, r, lse, low_scale,
                      BN: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Rows n0 … n0+BN of A (BN, R_PAD) and their softmax weights W_low (BM, BN), from the
    log-sum-exp of the rows (zero on rows past m)."""
    nn = n0 + tl.arange(0, BN)
    a_chunk = _load_tile(A, nn, rk, r, n, r, ACC)
    s_low = tl.dot(pb, tl.trans(a_chunk), input_precision=PRECISION) * low_scale
    w_low = tl.where(rows_ok[:, None] & (nn[None, :] < n), tl.exp(s_low - lse[:, None]), 0.0)
    return nn, a_chunk, w_low


@triton.jit
def _scales(scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo, ACC: tl.constexpr):
    """s, 1/√d and the low-rank scores' factor s/√d, rebuilt in the accumulator dtype."""
    scaling = widen(scaling_hi, scaling_lo, ACC)
    inv_sqrt_d = widen(inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)
    return scaling, inv_sqrt_d, scaling * inv_sqrt_d


@triton.jit
def _expansion(kk, c, h, KH, ACC: tl.constexpr):
    """(K_PAD, BF) 0/1 matrix: subspace code c belongs to subspace c // h."""
    return ((kk[:, None] == c[None, :] // h) & (c[None, :] < KH)).to(ACC)


@triton.jit
def _gate(logits, BG, kk, K, ACC: tl.constexpr):
    """G = softmax over the K subspaces of F·W_g + b_g (columns past K are zero)."""
    logits += tl.load(BG + kk, mask=kk < K, other=0.0).to(ACC)[None, :]
    logits = tl.where(kk[None, :] < K, logits, float("-inf"))
    gate = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    return gate / tl.sum(gate, axis=1)[:, None]


@triton.jit
def _fx_operands(R, cols, col_limit, m, r, parts, part_stride, row_stride,
                 M_PAD: tl.constexpr, R_PAD: tl.constexpr, ACC: tl.constexpr):
    """For the columns ``cols`` (< col_limit) of X = [W_g | D̃]: P·X of every prompt row
    (M_PAD, BF) and B·X (R_PAD, BF), summed from the parts of R."""
    all_rows = tl.arange(0, M_PAD)
    rk = tl.arange(0, R_PAD)
    q = m + r + cols
    col_ok = cols[None, :] < col_limit
    px_all = _summed(R, all_rows, q, (all_rows[:, None] < m) & col_ok, parts, part_stride, row_stride, ACC)
    bx = _summed(R, m + rk, q, (rk[:, None] < r) & col_ok, parts, part_stride, row_stride, ACC)
    return px_all, bx


@triton.jit
def _fx(R, rows, cols, col_limit, w_self, wa, lam, scaling, m, r, parts, part_stride, row_stride,
        M_PAD: tl.constexpr, R_PAD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """F·X[rows, cols] = P·X + λ(W_self·P·X + s·WA·B·X), from the parts of R."""
    px_all, bx = _fx_operands(R, cols, col_limit, m, r, parts, part_stride, row_stride, M_PAD, R_PAD, ACC)
    own = _summed(R, rows, m + r + cols, (rows[:, None] < m) & (cols[None, :] < col_limit), parts, part_stride,
                  row_stride, ACC)
    o = tl.dot(w_self, px_all, input_precision=PRECISION) + scaling * tl.dot(wa, bx, input_precision=PRECISION)
    return own + lam * o


@triton.jit
def _reduce_over_d_kernel(
    GRAD, P, B, WG, D, U, PART,
    m, d, r, K, h, x_limit, y_limit, n_cols, chunk,
    BX: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr,
    BACKWARD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """PART[chunk] = X[:, chunk]·Y[:, chunk]ᵀ on this program's tile: R's parts in the forward
    (X = [P; B], Y = [P; B; W_gᵀ; D̃ᵀ]), dC's in the backward (X = dP*, Y = [P; B; Ũ])."""
    x = tl.program_id(0) * BX + tl.arange(0, BX)
    y = tl.program_id(1) * BY + tl.arange(0, BY)
    split = tl.program_id(2)
    if BACKWARD:
        v = tl.where(y < m + r, y, y + K + K * h)  # column y of C multiplies row v of V
    else:
        v = y
    acc = tl.zeros((BX, BY), dtype=ACC)
    start = split * chunk
    for e0 in range(start, tl.minimum(start + chunk, d), BD):
        e = e0 + tl.arange(0, BD)
        if BACKWARD:
            x_tile = _load_tile(GRAD, x, e, d, m, d, ACC)
        else:
            x_tile = _stacked_tile(P, B, WG, D, U, x, e, x_limit, m, d, r, K, h, ACC)
        y_tile = _stacked_tile(P, B, WG, D, U, v, e, y_limit, m, d, r, K, h, ACC)
        acc += tl.dot(x_tile, tl.trans(y_tile), input_precision=PRECISION)
    offsets = (split * x_limit + x[:, None]) * n_cols + y[None, :]
    tl.store(PART + offsets, acc, mask=(x[:, None] < x_limit) & (y[None, :] < n_cols))


@triton.jit
def _mix_kernel(
    R_PART, A, LAM, BG, R, LSE, FX, C,
    m, n, r, K, h, splits, scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BQ: tl.constexpr,
    M_PAD: tl.constexpr, R_PAD: tl.constexpr, K_PAD: tl.constexpr,
    HAS_SPACES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    row_ok = rows < m
    all_rows = tl.arange(0, M_PAD)
    rk = tl.arange(0, R_PAD)
    KH = K * h
    Q = m + r + K + KH
    NC = m + r + KH
    part_stride = (m + r) * Q
    scaling, inv_sqrt_d, low_scale = _scales(scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)

    # R itself, saved for the backward: this block's rows, and B's rows in program 0.
    for q0 in range(0, Q, BQ):
        q = q0 + tl.arange(0, BQ)
        tile = _summed(R_PART, rows, q, row_ok[:, None] & (q[None, :] < Q), splits, part_stride, Q, ACC)
        tl.store(R + rows[:, None] * Q + q[None, :], tile, mask=row_ok[:, None] & (q[None, :] < Q))
        if pid == 0:
            b_ok = (rk[:, None] < r) & (q[None, :] < Q)
            b_rows = _summed(R_PART, m + rk, q, b_ok, splits, part_stride, Q, ACC)
            tl.store(R + (m + rk[:, None]) * Q + q[None, :], b_rows, mask=b_ok)

    # Softmax over [S_self | S_low], online over the n low-rank columns; WA = W_low·A.
    s_self = _summed(R_PART, rows, all_rows, row_ok[:, None] & (all_rows[None, :] < m), splits, part_stride, Q, ACC)
    s_self = tl.where(all_rows[None, :] < m, s_self * inv_sqrt_d, float("-inf"))
    pb = _summed(R_PART, rows, m + rk, row_ok[:, None] & (rk[None, :] < r), splits, part_stride, Q, ACC)
    row_max = tl.max(s_self, axis=1)
    row_sum = tl.sum(tl.exp(s_self - row_max[:, None]), axis=1)
    wa = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        nn = n0 + tl.arange(0, BN)
        a_chunk = _load_tile(A, nn, rk, r, n, r, ACC)
        s_low = tl.dot(pb, tl.trans(a_chunk), input_precision=PRECISION) * low_scale
        s_low = tl.where(nn[None, :] < n, s_low, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s_low, axis=1))
        rescale = tl.exp(row_max - new_max)
        e_low = tl.exp(s_low - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(e_low, axis=1)
        wa = wa * rescale[:, None] + tl.dot(e_low, a_chunk, input_precision=PRECISION)
        row_max = new_max
    lse = row_max + tl.log(row_sum)
    tl.store(LSE + rows, lse, mask=row_ok)
    w_self = tl.where(row_ok[:, None], tl.exp(s_self - lse[:, None]), 0.0)
    wa = tl.where(row_ok[:, None], wa / row_sum[:, None], 0.0)

    lam = tl.load(LAM).to(ACC)
    eye = (rows[:, None] == all_rows[None, :]).to(ACC)
    tl.store(C + rows[:, None] * NC + all_rows[None, :], eye + lam * w_self,
             mask=row_ok[:, None] & (all_rows[None, :] < m))
    tl.store(C + rows[:, None] * NC + m + rk[None, :], lam * scaling * wa, mask=row_ok[:, None] & (rk[None, :] < r))

    if HAS_SPACES:  # F·X: the gate logits, then the subspace codes Z; C's last columns are G_wide ⊙ Z
        kk = tl.arange(0, K_PAD)
        logits = _fx(R_PART, rows, kk, K, w_self, wa, lam, scaling, m, r, splits, part_stride, Q,
                     M_PAD, R_PAD, ACC, PRECISION)
        tl.store(FX + rows[:, None] * (K + KH) + kk[None, :], logits, mask=row_ok[:, None] & (kk[None, :] < K))
        gate = _gate(logits, BG, kk, K, ACC)
        for z0 in range(0, KH, BF):
            zc = z0 + tl.arange(0, BF)
            tile = row_ok[:, None] & (zc[None, :] < KH)
            codes = _fx(R_PART, rows, K + zc, K + KH, w_self, wa, lam, scaling, m, r, splits, part_stride, Q,
                        M_PAD, R_PAD, ACC, PRECISION)
            tl.store(FX + rows[:, None] * (K + KH) + K + zc[None, :], codes, mask=tile)
            gate_wide = tl.dot(gate, _expansion(kk, zc, h, KH, ACC), input_precision=PRECISION)
            tl.store(C + rows[:, None] * NC + m + r + zc[None, :], gate_wide * codes, mask=tile)


@triton.jit
def _combine_kernel(
    C, P, B, WG, D, U, F, OUT, m, d, r, K, h,
    BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """F[rows, e] = C[rows, :m+r]·[P; B][:, e] (saved for the backward), then
    P*[rows, e] = F + C[rows, m+r:]·Ũ[:, e]."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    e = tl.program_id(1) * BD + tl.arange(0, BD)
    tile = (rows[:, None] < m) & (e[None, :] < d)
    KH = K * h
    NC = m + r + KH
    acc = tl.zeros((BM, BD), dtype=ACC)
    for c0 in range(0, m + r, BC):
        c = c0 + tl.arange(0, BC)
        acc += tl.dot(_load_tile(C, rows, c, NC, m, m + r, ACC),
                      _stacked_tile(P, B, WG, D, U, c, e, m + r, m, d, r, K, h, ACC), input_precision=PRECISION)
    tl.store(F + rows[:, None] * d + e[None, :], acc, mask=tile)
    for c0 in range(m + r, NC, BC):
        c = c0 + tl.arange(0, BC)
        acc += tl.dot(_load_tile(C, rows, c, NC, m, NC, ACC),
                      _stacked_tile(P, B, WG, D, U, c + K + KH, e, NC + K + KH, m, d, r, K, h, ACC),
                      input_precision=PRECISION)
    tl.store(OUT + rows[:, None] * d + e[None, :], acc, mask=tile)


@triton.jit
def _fx_backward(d_fx, cols, col_limit, R, DFX, rows, w_self, wa, d_w_self, d_wa, d_lam, lam, scaling, m, r, K, KH,
                 M_PAD: tl.constexpr, R_PAD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Back through F·X[:, cols] = P·X + λ(W_self·P·X + s·WA·B·X) for this block's rows:
    saves d(F·X) for the scatter kernel and returns the updated dW_self, dWA and dλ. (The
    gradient of P·X and B·X, Cᵀ·d(F·X) since C = [I + λW_self | λs·WA | …], is the
    scatter kernel's.)"""
    px_all, bx = _fx_operands(R, cols, col_limit, m, r, 1, 0, m + r + K + KH, M_PAD, R_PAD, ACC)
    o = tl.dot(w_self, px_all, input_precision=PRECISION) + scaling * tl.dot(wa, bx, input_precision=PRECISION)
    d_lam += tl.sum(tl.sum(d_fx * o, axis=1), axis=0)
    d_w_self += lam * tl.dot(d_fx, tl.trans(px_all), input_precision=PRECISION)
    d_wa += lam * scaling * tl.dot(d_fx, tl.trans(bx), input_precision=PRECISION)
    tl.store(DFX + rows[:, None] * (K + KH) + cols[None, :], d_fx,
             mask=(rows[:, None] < m) & (cols[None, :] < col_limit))
    return d_w_self, d_wa, d_lam


@triton.jit
def _mix_backward_kernel(
    DC_PART, R, LSE, FX, A, LAM, BG,
    DR, DFX, DA_PART, DLAM_PART, DBG_PART,
    m, n, r, K, h, splits, scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr,
    M_PAD: tl.constexpr, R_PAD: tl.constexpr, K_PAD: tl.constexpr,
    HAS_SPACES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Per block of prompt rows: dR[rows, :m+r] = [dS_self/√d | d(P·Bᵀ)], d(F·X)[rows], and
    this program's partial sums of dA, dλ and db_g."""
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    row_ok = rows < m
    all_rows = tl.arange(0, M_PAD)
    rk = tl.arange(0, R_PAD)
    KH = K * h
    Q = m + r + K + KH
    NC = m + r + KH
    part_stride = m * NC
    scaling, inv_sqrt_d, low_scale = _scales(scaling_hi, scaling_lo, inv_sqrt_d_hi, inv_sqrt_d_lo, ACC)
    lam = tl.load(LAM).to(ACC)

    # The softmax weights again, from the saved R and log-sum-exp.
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0).to(ACC)
    s_self = _load_tile(R, rows, all_rows, Q, m, m, ACC) * inv_sqrt_d
    w_self = tl.where(row_ok[:, None] & (all_rows[None, :] < m), tl.exp(s_self - lse[:, None]), 0.0)
    pb = _load_tile(R + m, rows, rk, Q, m, r, ACC)
    wa = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        _, a_chunk, w_low = _low_rank_weights(A, n0, pb, row_ok, rk, n, r, lse, low_scale, BN, ACC, PRECISION)
        wa += tl.dot(w_low, a_chunk, input_precision=PRECISION)

    # C = [I + λW_self | λs·WA | G_wide ⊙ Z]: the gradients of W_self, WA and λ through C.
    dc_self = _summed(DC_PART, rows, all_rows, row_ok[:, None] & (all_rows[None, :] < m), splits, part_stride, NC, ACC)
    dc_low = _summed(DC_PART, rows, m + rk, row_ok[:, None] & (rk[None, :] < r), splits, part_stride, NC, ACC)
    d_w_self = lam * dc_self
    d_wa = lam * scaling * dc_low
    d_lam = tl.sum(tl.sum(dc_self * w_self, axis=1), axis=0) + scaling * tl.sum(tl.sum(dc_low * wa, axis=1), axis=0)

    if HAS_SPACES:  # back through G_wide ⊙ Z, the gate softmax and F·X
        kk = tl.arange(0, K_PAD)
        gate = _gate(_load_tile(FX, rows, kk, K + KH, m, K, ACC), BG, kk, K, ACC)
        d_gate = tl.zeros((BM, K_PAD), dtype=ACC)
        for z0 in range(0, KH, BF):
            zc = z0 + tl.arange(0, BF)
            codes = _load_tile(FX + K, rows, zc, K + KH, m, KH, ACC)
            d_mixed = _summed(DC_PART, rows, m + r + zc, row_ok[:, None] & (zc[None, :] < KH), splits, part_stride,
                              NC, ACC)
            d_gate += tl.dot(d_mixed * codes, tl.trans(_expansion(kk, zc, h, KH, ACC)), input_precision=PRECISION)
        d_logits = gate * (d_gate - tl.sum(gate * d_gate, axis=1)[:, None])
        tl.store(DBG_PART + pid * K + kk, tl.sum(d_logits, axis=0), mask=kk < K)
        d_w_self, d_wa, d_lam = _fx_backward(d_logits, kk, K, R, DFX, rows, w_self, wa, d_w_self, d_wa, d_lam, lam,
                                             scaling, m, r, K, KH, M_PAD, R_PAD, ACC, PRECISION)
        for z0 in range(0, KH, BF):
            zc = z0 + tl.arange(0, BF)
            d_mixed = _summed(DC_PART, rows, m + r + zc, row_ok[:, None] & (zc[None, :] < KH), splits, part_stride,
                              NC, ACC)
            d_codes = tl.dot(gate, _expansion(kk, zc, h, KH, ACC), input_precision=PRECISION) * d_mixed
            d_w_self, d_wa, d_lam = _fx_backward(d_codes, K + zc, K + KH, R, DFX, rows, w_self, wa, d_w_self, d_wa,
                                                 d_lam, lam, scaling, m, r, K, KH, M_PAD, R_PAD, ACC, PRECISION)
    tl.store(DLAM_PART + pid, d_lam)

    # Softmax backward: dS = W ⊙ (dW - c), c = Σ W⊙dW over both parts (the low part through WA).
    c = tl.sum(w_self * d_w_self, axis=1) + tl.sum(wa * d_wa, axis=1)
    d_s_self = w_self * (d_w_self - c[:, None])
    tl.store(DR + rows[:, None] * (m + r) + all_rows[None, :], d_s_self * inv_sqrt_d,
             mask=row_ok[:, None] & (all_rows[None, :] < m))
    d_pb = tl.zeros((BM, R_PAD), dtype=ACC)
    for n0 in range(0, n, BN):
        nn, a_chunk, w_low = _low_rank_weights(A, n0, pb, row_ok, rk, n, r, lse, low_scale, BN, ACC, PRECISION)
        d_s_low = w_low * (tl.dot(d_wa, tl.trans(a_chunk), input_precision=PRECISION) - c[:, None])
        d_pb += low_scale * tl.dot(d_s_low, a_chunk, input_precision=PRECISION)
        da = tl.dot(tl.trans(w_low), d_wa, input_precision=PRECISION)
        da += low_scale * tl.dot(tl.trans(d_s_low), pb, input_precision=PRECISION)
        tl.store(DA_PART + (pid * n + nn[:, None]) * r + rk[None, :], da, mask=(nn[:, None] < n) & (rk[None, :] < r))
    tl.store(DR + rows[:, None] * (m + r) + m + rk[None, :], d_pb, mask=row_ok[:, None] & (rk[None, :] < r))


@triton.jit
def _scatter_kernel(
    GRAD, C, F, DR, DFX, P, B, WG, D, U,
    DP, DB, DWG, DD, DU,
    DA_PART, DLAM_PART, DBG_PART, DA, DLAM, DBG,
    m, d, n, r, K, h, mix_programs, v_blocks, d_blocks,
    BV: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    R_PAD: tl.constexpr, K_PAD: tl.constexpr, HAS_SPACES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """dV[v, e] for a tile of V's rows and d's columns, into the gradients of P, B, W_g, D, U:

        rows of [P; B; Ũ]:     Cᵀ·dP*    (and Cᵀ·dF with dF = d(F·X)·Xᵀ for P and B, X = [W_g | D̃])
        rows of [P; B]:        dR[:, :m+r]·[P; B] + dR[:, :m+r]ᵀ·P
        rows of [W_gᵀ; D̃ᵀ]:    d(F·X)ᵀ·F
    The last program adds the partials of dA, dλ and db_g in program order."""
    pid = tl.program_id(0)
    KH = K * h
    Q = m + r + K + KH
    NC = m + r + KH
    if pid == v_blocks * d_blocks:
        rk = tl.arange(0, R_PAD)
        for n0 in range(0, n, BN):
            nn = n0 + tl.arange(0, BN)
            tile = (nn[:, None] < n) & (rk[None, :] < r)
            tl.store(DA + nn[:, None] * r + rk[None, :], _summed(DA_PART, nn, rk, tile, mix_programs, n * r, r, ACC),
                     mask=tile)
        d_lam = tl.load(DLAM_PART).to(ACC)
        for program in range(1, mix_programs):
            d_lam += tl.load(DLAM_PART + program).to(ACC)
        tl.store(DLAM, d_lam)
        kk = tl.arange(0, K_PAD)
        first = tl.arange(0, 1)
        bias_ok = (first[:, None] == 0) & (kk[None, :] < K)
        tl.store(DBG + first[:, None] * K + kk[None, :], _summed(DBG_PART, first, kk, bias_ok, mix_programs, K, K, ACC),
                 mask=bias_ok)
    else:
        first_v = (pid % v_blocks) * BV
        v = first_v + tl.arange(0, BV)
        e = (pid // v_blocks) * BD + tl.arange(0, BD)
        acc = tl.zeros((BV, BD), dtype=ACC)
        c = tl.where(v < m + r, v, v - K - KH)  # column c of C multiplies row v of V
        c_ok = ((v < m + r) | (v >= Q)) & (v < Q + KH)
        for i0 in range(0, m, BK):
            i = i0 + tl.arange(0, BK)
            coefficients = tl.load(C + i[None, :] * NC + c[:, None], mask=c_ok[:, None] & (i[None, :] < m), other=0.0)
            coefficients = coefficients.to(ACC)
            acc += tl.dot(coefficients, _load_tile(GRAD, i, e, d, m, d, ACC), input_precision=PRECISION)
            if HAS_SPACES and first_v < m + r:
                d_f = tl.zeros((BK, BD), dtype=ACC)
                for f0 in range(0, K + KH, BK):
                    f = f0 + tl.arange(0, BK)
                    d_f += tl.dot(_load_tile(DFX, i, f, K + KH, m, K + KH, ACC),
                                  _stacked_tile(P, B, WG, D, U, m + r + f, e, Q, m, d, r, K, h, ACC),
                                  input_precision=PRECISION)
                coefficients = tl.where((v < m + r)[:, None], coefficients, 0.0)
                acc += tl.dot(coefficients, d_f, input_precision=PRECISION)
        if first_v < m:  # dR[v, :m+r]·[P; B]
            for q0 in range(0, m + r, BK):
                q = q0 + tl.arange(0, BK)
                acc += tl.dot(_load_tile(DR, v, q, m + r, m, m + r, ACC),
                              _stacked_tile(P, B, WG, D, U, q, e, m + r, m, d, r, K, h, ACC), input_precision=PRECISION)
        if first_v < m + r:  # dR[:, v]ᵀ·P
            for x0 in range(0, m, BK):
                x = x0 + tl.arange(0, BK)
                acc += tl.dot(tl.trans(_load_tile(DR, x, v, m + r, m, m + r, ACC)),
                              _stacked_tile(P, B, WG, D, U, x, e, m, m, d, r, K, h, ACC), input_precision=PRECISION)
        if HAS_SPACES and (first_v + BV > m + r) and (first_v < Q):  # d(F·X)[:, f]ᵀ·F
            f = v - (m + r)
            for i0 in range(0, m, BK):
                i = i0 + tl.arange(0, BK)
                d_fx = tl.load(DFX + i[None, :] * (K + KH) + f[:, None],
                               mask=(f[:, None] >= 0) & (f[:, None] < K + KH) & (i[None, :] < m), other=0.0)
                acc += tl.dot(d_fx.to(ACC), _load_tile(F, i, e, d, m, d, ACC), input_precision=PRECISION)
        _store_stacked(DP, DB, DWG, DD, DU, acc, v, e, m, d, r, K, h)


MAX_PROMPT_LENGTH = 512  # m: the mix kernels hold a block's 16 x m softmax rows on chip


def unsupported(m: int, r: int, dtype: torch.dtype) -> Optional[str]:
    """Why the fused prompt generator cannot take these sizes, or None when it can. Past
    them the mix kernels' rows of the softmax (16 x m) and of the low-rank pair (16 x r)
    would need more than an H100's shared memory (docs/kernels.md; the compile check
    compiles the corners)."""
    if m > MAX_PROMPT_LENGTH:
        return f"num_virtual_tokens={m} is over {MAX_PROMPT_LENGTH}"
    if r > _launch.MAX_RANK:
        return f"r={r} is over {_launch.MAX_RANK}"
    if dtype == torch.float64 and m > 256 and r > 128:
        return f"in float64, num_virtual_tokens={m} over 256 together with r={r} over 128"
    return None


def launch_config(m: int, d: int, n: int, r: int, K: int, h: int, device: torch.device) -> Dict[str, int]:
    """Block sizes, warps and the split of d (the rule is in docs/kernels.md). Under the
    interpreter each launch is a few large tiles: its cost grows with programs × iterations,
    not FLOPs."""
    KH = K * h
    if interpreting():
        cap = lambda size: min(dot_pad(size), 256)  # noqa: E731
        return dict(BX=cap(m + r), BY=cap(m + r + K + KH), BD=cap(d), splits=1, BM=cap(m), BN=cap(n), BF=cap(KH),
                    BQ=cap(m + r + K + KH), BC=cap(m + r + KH), BV=cap(m + r + K + 2 * KH), BK=cap(m + r + KH),
                    num_warps=4, num_stages=1, mix={"num_warps": 4})
    # Split d so that the reductions over it run on about two programs per multiprocessor.
    tiles = triton.cdiv(m + r, 32) * triton.cdiv(m + r + K + KH, 32)
    splits = max(1, min(triton.cdiv(d, 16), triton.cdiv(2 * multiprocessors(device), tiles)))
    # The mix kernels hold a block's softmax rows (16 x m) and low-rank rows (16 x r) in
    # registers: 8 warps, and all 255 registers (without the cap ptxas spills below it).
    mix = {"num_warps": 8, "maxnreg": 255}
    return dict(BX=32, BY=32, BD=16, splits=splits, BM=16, BN=32, BF=16, BQ=64, BC=32, BV=32, BK=32,
                num_warps=4, num_stages=1, mix=mix)


def _check_parameters(op, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias,
                      grad=None):
    """The eight parameters' (and the output gradient's) shapes agree; returns m, d, n, r, K, h."""
    named = {"prompt": (prompt, "md"), "lora_a": (lora_a, "nr"), "lora_b": (lora_b, "rd"), "fusion_scale":
             (fusion_scale, ""), "proj_down": (proj_down, "KdH"), "proj_up": (proj_up, "KHd"),
             "gate_weight": (gate_weight, "dK"), "gate_bias": (gate_bias, "K"), "grad": (grad, "md")}
    dims = _launch.check_shapes(op, named, floating=tuple(named), nonempty="md")
    dtypes = {name: tensor.dtype for name, (tensor, _) in named.items() if tensor is not None and name != "grad"}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"{op}: expected the eight parameters in one dtype, got {dtypes}")
    return dims["m"], dims["d"], dims["n"], dims["r"], dims["K"], dims["H"]


def _sizes(prompt, lora_a, proj_down):
    m, d = prompt.shape
    n, r = lora_a.shape
    K, _, h = proj_down.shape
    return m, d, n, r, K, h


def _chunk(d: int, cfg) -> Tuple[int, int]:
    """Columns of d per split (a multiple of BD) and the number of splits that covers d."""
    chunk = cfg["BD"] * triton.cdiv(triton.cdiv(d, cfg["BD"]), cfg["splits"])
    return chunk, triton.cdiv(d, chunk)


def _work_dtype(prompt: Tensor) -> torch.dtype:
    return torch.float64 if prompt.dtype == torch.float64 else torch.float32


def _saved_shapes(m, d, r, K, h):
    """R (m+r, Q), the softmax log-sum-exp (m,), F·[W_g | D̃] (m, K+K·h), C (m, m+r+K·h), F (m, d)."""
    KH = K * h
    return (m + r, m + r + K + KH), (m,), (m, K + KH), (m, m + r + KH), (m, d)


def _allocate_outputs(prompt, lora_a, proj_down):
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    work = _work_dtype(prompt)
    saved = (_launch.new_buffer(prompt, shape, work) for shape in _saved_shapes(m, d, r, K, h))
    return (_launch.new_buffer(prompt, (m, d)), *saved)


def _common_meta(prompt, cfg):
    acc = accumulator(prompt)
    return dict(ACC=acc, PRECISION=dot_precision(acc), **_launch.options(cfg))


def ept_prompt_forward(
    prompt: Tensor, lora_a: Tensor, lora_b: Tensor, fusion_scale: Tensor, proj_down: Tensor,
    proj_up: Tensor, gate_weight: Tensor, gate_bias: Tensor, scaling: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (P*, R, log-sum-exp, F·[W_g | D̃], C, F); the last five are saved for the backward."""
    _check_parameters("ept_fast::ept_prompt", prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight,
                      gate_bias)
    return _launch_forward(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling)


@_launch.on_the_inputs_device
def _launch_forward(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    reason = unsupported(m, r, prompt.dtype)
    if reason is not None:
        raise ValueError(f"ept_fast::ept_prompt: the fused kernels cannot take these sizes: {reason}")
    Q = m + r + K + K * h
    stacked = [t.contiguous() for t in (prompt, lora_b, gate_weight, proj_down, proj_up)]
    out, reduced, lse, fused, coefficients, fusion = _allocate_outputs(prompt, lora_a, proj_down)
    cfg = launch_config(m, d, n, r, K, h, prompt.device)
    meta = _common_meta(prompt, cfg)
    chunk, splits = _chunk(d, cfg)
    parts = _launch.new_buffer(prompt, (splits, m + r, Q), _work_dtype(prompt))
    _reduce_over_d_kernel[(triton.cdiv(m + r, cfg["BX"]), triton.cdiv(Q, cfg["BY"]), splits)](
        prompt, *stacked, parts, m, d, r, K, h, m + r, Q, Q, chunk,
        BX=cfg["BX"], BY=cfg["BY"], BD=cfg["BD"], BACKWARD=False, **meta,
    )
    _mix_kernel[(triton.cdiv(m, cfg["BM"]),)](
        parts, lora_a.contiguous(), fusion_scale, gate_bias.contiguous(), reduced, lse, fused, coefficients,
        m, n, r, K, h, splits, *split_float(scaling), *split_float(d ** -0.5),
        BM=cfg["BM"], BN=cfg["BN"], BF=cfg["BF"], BQ=cfg["BQ"], M_PAD=dot_pad(m), R_PAD=dot_pad(r),
        K_PAD=dot_pad(K), HAS_SPACES=K > 0, **{**meta, **cfg["mix"]},
    )
    _combine_kernel[(triton.cdiv(m, cfg["BM"]), triton.cdiv(d, cfg["BD"]))](
        coefficients, *stacked, fusion, out, m, d, r, K, h, BM=cfg["BM"], BD=cfg["BD"], BC=cfg["BC"], **meta,
    )
    return out, reduced, lse, fused, coefficients, fusion


ept_prompt_op = torch.library.custom_op("ept_fast::ept_prompt", mutates_args=())(ept_prompt_forward)


@ept_prompt_op.register_fake
def _(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    return _allocate_outputs(prompt, lora_a, proj_down)


def ept_prompt_backward(
    grad: Tensor, prompt: Tensor, lora_a: Tensor, lora_b: Tensor, fusion_scale: Tensor, proj_down: Tensor,
    proj_up: Tensor, gate_weight: Tensor, gate_bias: Tensor, reduced: Tensor, lse: Tensor, fused: Tensor,
    coefficients: Tensor, fusion: Tensor, scaling: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias)."""
    op = "ept_fast::ept_prompt_backward"
    m, d, n, r, K, h = _check_parameters(op, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight,
                                         gate_bias, grad=grad)
    for name, tensor, shape in zip(("reduced", "lse", "fused", "coefficients", "fusion"),
                                   (reduced, lse, fused, coefficients, fusion), _saved_shapes(m, d, r, K, h)):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{op}: {name}: expected shape {shape} (as the forward saved it), got "
                             f"{tuple(tensor.shape)}")
    return _launch_backward(grad, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias,
                            reduced, lse, fused, coefficients, fusion, scaling)


@_launch.on_the_inputs_device
def _launch_backward(grad, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, reduced,
                     lse, fused, coefficients, fusion, scaling):
    m, d, n, r, K, h = _sizes(prompt, lora_a, proj_down)
    KH = K * h
    NC = m + r + KH
    stacked = [t.contiguous() for t in (prompt, lora_b, gate_weight, proj_down, proj_up)]
    cfg = launch_config(m, d, n, r, K, h, prompt.device)
    meta = _common_meta(prompt, cfg)
    work = _work_dtype(prompt)
    new = lambda *shape: _launch.new_buffer(prompt, shape, work)  # noqa: E731
    chunk, splits = _chunk(d, cfg)
    dc_parts = new(splits, m, NC)
    _reduce_over_d_kernel[(triton.cdiv(m, cfg["BX"]), triton.cdiv(NC, cfg["BY"]), splits)](
        grad, *stacked, dc_parts, m, d, r, K, h, m, NC + K + KH, NC, chunk,
        BX=cfg["BX"], BY=cfg["BY"], BD=cfg["BD"], BACKWARD=True, **meta,
    )
    mix_programs = triton.cdiv(m, cfg["BM"])
    d_reduced, d_fused = new(m, m + r), new(m, K + KH)
    da_parts, dlam_parts, dbg_parts = new(mix_programs, n, r), new(mix_programs), new(mix_programs, K)
    _mix_backward_kernel[(mix_programs,)](
        dc_parts, reduced, lse, fused, lora_a.contiguous(), fusion_scale, gate_bias.contiguous(),
        d_reduced, d_fused, da_parts, dlam_parts, dbg_parts,
        m, n, r, K, h, splits, *split_float(scaling), *split_float(d ** -0.5),
        BM=cfg["BM"], BN=cfg["BN"], BF=cfg["BF"], M_PAD=dot_pad(m), R_PAD=dot_pad(r), K_PAD=dot_pad(K),
        HAS_SPACES=K > 0, **{**meta, **cfg["mix"]},
    )
    grads = [_launch.new_buffer(t, t.shape) for t in (prompt, lora_b, gate_weight, proj_down, proj_up, lora_a,
                                                       fusion_scale, gate_bias)]
    v_blocks, d_blocks = triton.cdiv(m + r + K + 2 * KH, cfg["BV"]), triton.cdiv(d, cfg["BD"])
    _scatter_kernel[(v_blocks * d_blocks + 1,)](
        grad, coefficients, fusion, d_reduced, d_fused, *stacked, *grads[:5],
        da_parts, dlam_parts, dbg_parts, *grads[5:],
        m, d, n, r, K, h, mix_programs, v_blocks, d_blocks,
        BV=cfg["BV"], BD=cfg["BD"], BK=cfg["BK"], BN=cfg["BN"], R_PAD=dot_pad(r), K_PAD=dot_pad(K),
        HAS_SPACES=K > 0, **meta,
    )
    d_prompt, d_lora_b, d_gate_weight, d_proj_down, d_proj_up, d_lora_a, d_fusion_scale, d_gate_bias = grads
    return d_prompt, d_lora_a, d_lora_b, d_fusion_scale, d_proj_down, d_proj_up, d_gate_weight, d_gate_bias


ept_prompt_backward_op = torch.library.custom_op("ept_fast::ept_prompt_backward", mutates_args=())(
    ept_prompt_backward)


@ept_prompt_backward_op.register_fake
def _(grad, prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, reduced, lse, fused,
      coefficients, fusion, scaling):
    return tuple(t.new_empty(t.shape) for t in (prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight,
                                                gate_bias))  # contiguous, as the op's own buffers


def _setup_context(ctx, inputs, output):
    *params, scaling = inputs
    ctx.save_for_backward(*params, *output[1:])
    ctx.scaling = scaling
    ctx.set_materialize_grads(False)  # the saved outputs get no gradient: no zeros to build


def _backward(ctx, grad, *_unused):
    if grad is None:
        return (None,) * 9
    grads = ept_prompt_backward_op(grad.contiguous(), *ctx.saved_tensors, ctx.scaling)
    return (*grads, None)


ept_prompt_op.register_autograd(_backward, setup_context=_setup_context)


def fused_ept_prompt(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling):
    """P* (m, d) from the fused kernels; differentiable in all eight tensors."""
    return ept_prompt_op(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias,
                         float(scaling))[0]
