"""Plain-PyTorch EPT: the oracle of every parity test and the CPU fallback.

Written to read like the equations of ``docs/ept.md``. The low-rank rows
``L = s · A · B`` are never materialised as an (n, d) matrix: every use factors
through A and B.

Both ops validate their arguments (``validate=False`` skips it, for a caller that already
ran the same check: ``check_ept_prompt_args`` and ``check_assemble_inputs_args`` here are
the checks of every public entry point).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from ._validation import Dims, check_assemble_inputs_layout, check_ept_prompt_args, check_mixed_layout, \
    check_mixed_values, check_token_values

__all__ = ["ept_prompt", "assemble_inputs", "assemble_inputs_mixed", "attended_mask", "check_ept_prompt_args",
           "check_assemble_inputs_args", "check_assemble_inputs_mixed_args", "stack_adapters"]


def ept_prompt(
    prompt: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    fusion_scale: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor,
    scaling: float,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """The prompt generator P -> P*.

    Shapes: prompt P (m, d), lora_a A (n, r), lora_b B (r, d), fusion_scale λ (),
    proj_down D (K, d, h), proj_up U (K, h, d), gate_weight W_g (d, K), gate_bias b_g (K,);
    ``scaling`` is s = lora_alpha / sqrt(r). Returns P* (m, d) in the parameters' dtype.
    """
    if validate:
        check_ept_prompt_args(prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling)
    P, A, B, s = prompt, lora_a, lora_b, scaling
    m, d = P.shape

    # Prompt fusion: each prompt row attends over C = [P ; L].
    S_self = P @ P.T / math.sqrt(d)  # (m, m)
    S_low = (s / math.sqrt(d)) * (P @ B.T) @ A.T  # (m, n)
    W = torch.softmax(torch.cat([S_self, S_low], dim=1), dim=1)
    W_self, W_low = W[:, :m], W[:, m:]
    O = W_self @ P + s * (W_low @ A) @ B  # (m, d)
    F = P + fusion_scale * O

    # Multi-space projection, recombined by the gate.
    G = torch.softmax(F @ gate_weight + gate_bias, dim=1)  # (m, K)
    Y = torch.einsum("md,kdh,khe->kme", F, proj_down, proj_up)  # (K, m, d)
    M = torch.einsum("mk,kme->me", G, Y)
    return F + M


def attended_mask(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(b, T) bool: which tokens are attended (all of them when ``attention_mask`` is None)."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return attention_mask != 0


def check_assemble_inputs_args(
    input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling, embed_scale=1.0
) -> Dims:
    """Validate the arguments of ``assemble_inputs``; returns the sizes b, T, V, d, m, n, r.

    Besides kinds, shapes, dtypes and devices this reads two values from the tensors:
    every id must index a row of ``word_embeddings``, and with a low-rank update (r > 0)
    no row may hold more than n attended tokens.
    """
    dims = check_assemble_inputs_layout(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b,
                                        scaling, embed_scale)
    lengths = attended_mask(input_ids, attention_mask).sum(dim=1)
    check_token_values(input_ids, lengths, vocab=dims["V"], max_length=dims["n"] if dims["r"] > 0 else None)
    return dims


def assemble_inputs(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    word_embeddings: torch.Tensor,
    prompt_out: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    embed_scale: float = 1.0,
    *,
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Build the backbone's input: prompt prefix, then word embeddings plus the low-rank update.

    Shapes: input_ids (b, T) integer, attention_mask (b, T) or None (all attended),
    word_embeddings (V, d) the frozen table, prompt_out P* (m, d), lora_a (n, r),
    lora_b (r, d). The k-th attended token of a row gets row k of L = s·A·B, whatever the
    padding side; unattended tokens get none. ``embed_scale`` is the factor the backbone's own
    lookup multiplies rows by (Gemma's √d; 1 for a plain table): tokens are embed_scale·E[id]. Returns ``inputs_embeds`` (b, m+T, d) in
    the table's dtype and the extended mask (b, m+T): m ones, then ``attention_mask``
    (in its dtype; int64 ones when it was None).
    """
    if validate:
        check_assemble_inputs_args(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling,
                                   embed_scale)
    b, T = input_ids.shape
    m = prompt_out.shape[0]
    E = word_embeddings[input_ids]  # (b, T, d)
    sum_dtype = torch.promote_types(E.dtype, torch.promote_types(lora_a.dtype, torch.float32))
    widened = E.to(sum_dtype) if embed_scale == 1.0 else E.to(sum_dtype) * embed_scale  # no extra op when unscaled
    looked_up = E if embed_scale == 1.0 else widened.to(E.dtype)

    if lora_a.shape[1] == 0:  # r = 0: no low-rank update (vanilla prompt tuning)
        tokens = looked_up
    else:
        attended = attended_mask(input_ids, attention_mask)
        pos = torch.cumsum(attended, dim=1) - 1  # k-th attended token -> k
        rows_of_a = lora_a[pos.clamp(min=0)]  # (b, T, r); unattended tokens are masked below
        L_rows = scaling * (rows_of_a @ lora_b)  # (b, T, d)
        updated = (widened + L_rows.to(sum_dtype)).to(E.dtype)
        tokens = torch.where(attended.unsqueeze(-1), updated, looked_up)

    prefix = prompt_out.to(E.dtype).unsqueeze(0).expand(b, m, -1)
    inputs_embeds = torch.cat([prefix, tokens], dim=1)

    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.long)
    prompt_mask = torch.ones(b, m, dtype=mask.dtype, device=mask.device)
    return inputs_embeds, torch.cat([prompt_mask, mask], dim=1)


def check_assemble_inputs_mixed_args(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a,
                                     lora_b, scalings, adapter_ids, embed_scale=1.0, padding_side="right",
                                     max_lengths=None) -> Dims:
    """Validate the arguments of ``assemble_inputs_mixed``; returns b, T, V, d, m, n, r, N.
    Reads values: ids in range, adapter ids in [0, N), prompt lengths in [1, m], and (with
    ``max_lengths`` (N,), each adapter's n) no row longer than its adapter covers."""
    dims = check_mixed_layout(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a, lora_b,
                              scalings, adapter_ids, embed_scale)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    lengths = attended_mask(input_ids, attention_mask).sum(dim=1)
    overall = dims["n"] if dims["r"] > 0 and max_lengths is None else None  # else each row against its adapter
    check_token_values(input_ids, lengths, vocab=dims["V"], max_length=overall)
    check_mixed_values(adapter_ids, prompt_lengths, lengths, max_lengths, dims["N"], dims["m"])
    return dims


def assemble_inputs_mixed(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    word_embeddings: torch.Tensor,
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scalings: torch.Tensor,
    adapter_ids: torch.Tensor,
    embed_scale: float = 1.0,
    padding_side: str = "right",
    *,
    max_lengths: Optional[torch.Tensor] = None,
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``assemble_inputs`` for a batch whose rows run different adapters (docs/kernels.md).

    Shapes: the stacked adapters prompts (N, m, d) (adapter a's P* in rows [0, prompt_lengths[a]),
    zeros after), lora_a (N, n, r), lora_b (N, r, d), zero-padded to the largest n and r, and
    scalings (N,) (each adapter's s); adapter_ids (b,) picks row i's adapter. Row i of the
    output is a's prompt (prompt_lengths[a] rows) followed by the tokens as ``assemble_inputs``
    builds them with a's A, B and s, exactly as a alone builds it, plus m - prompt_lengths[a]
    padding rows (zeros, mask 0) on ``padding_side``: "right" after the tokens (every position
    as alone: for encoders and seq2seq), "left" before the prompt (the last position is a real
    token: for generation with causal LMs). Returns (b, m+T, d) and (b, m+T).
    """
    if validate:
        check_assemble_inputs_mixed_args(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a,
                                         lora_b, scalings, adapter_ids, embed_scale, padding_side, max_lengths)
    b, T = input_ids.shape
    m = prompts.shape[1]
    E = word_embeddings[input_ids]  # (b, T, d)
    sum_dtype = torch.promote_types(E.dtype, torch.promote_types(lora_a.dtype, torch.float32))
    attended = attended_mask(input_ids, attention_mask)
    pos = torch.cumsum(attended, dim=1) - 1  # k-th attended token -> k
    # s·A[pos] on the small (b, T, r) side, zero for unattended tokens and past A's n rows (a
    # prompt-tuning adapter's row may be longer): one fused E·scale + (s·A)·B.
    updated = attended & (pos < lora_a.shape[1])
    weights = (updated.to(sum_dtype) * scalings[adapter_ids].to(sum_dtype)[:, None]).unsqueeze(-1)
    rows_of_a = lora_a[adapter_ids[:, None], pos.clamp(0, lora_a.shape[1] - 1)].to(sum_dtype) * weights  # (b, T, r)
    tokens = torch.baddbmm(E.to(sum_dtype), rows_of_a, lora_b[adapter_ids].to(sum_dtype), beta=embed_scale)
    tokens = tokens.to(E.dtype)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.long)
    prefix = prompts[adapter_ids].to(E.dtype)  # (b, m, d); rows past a prompt's length are zeros (stacked so)

    lengths = prompt_lengths.tolist()
    if min(lengths) == m:  # every prompt fills the m rows: no padding to place
        prompt_mask = torch.ones(b, m, dtype=mask.dtype, device=mask.device)
        return torch.cat([prefix, tokens], dim=1), torch.cat([prompt_mask, mask], dim=1)
    inputs_embeds = E.new_zeros(b, m + T, E.shape[2])
    extended = mask.new_zeros(b, m + T)
    row_lengths = prompt_lengths[adapter_ids]
    for length in sorted(set(lengths)):  # rows grouped by prompt length: one copy each
        rows = (row_lengths == length).nonzero().flatten()
        start = m - length if padding_side == "left" else 0  # where the row's prompt starts
        inputs_embeds[rows, start:start + length] = prefix[rows, :length]
        inputs_embeds[rows, start + length:start + length + T] = tokens[rows]
        extended[rows, start:start + length] = 1
        extended[rows, start + length:start + length + T] = mask[rows]
    return inputs_embeds, extended


class StackedAdapters(NamedTuple):
    """Several adapters as ``assemble_inputs_mixed`` takes them (zero-padded, differentiable)."""

    prompts: torch.Tensor  # (N, m, d): adapter a's P* in rows [0, prompt_lengths[a])
    prompt_lengths: torch.Tensor  # (N,) int64
    lora_a: torch.Tensor  # (N, n, r)
    lora_b: torch.Tensor  # (N, r, d)
    scalings: torch.Tensor  # (N,)
    max_lengths: torch.Tensor  # (N,) int64: each adapter's n (the rows it covers)


def stack_adapters(prompts: Sequence[torch.Tensor], lora_as: Sequence[torch.Tensor], lora_bs: Sequence[torch.Tensor],
                   scalings: Sequence[float]) -> StackedAdapters:
    """Stack adapters of different m, n and r: each P* (m_a, d), A (n_a, r_a), B (r_a, d) is
    zero-padded to the largest sizes (padding adds nothing: zero rows of A, zero columns of the
    rank). Gradients flow back to each adapter's own tensors."""
    if not (len(prompts) == len(lora_as) == len(lora_bs) == len(scalings)) or not prompts:
        raise ValueError(f"stack_adapters: expected as many prompts, lora_as, lora_bs and scalings (at least one), "
                         f"got {len(prompts)}, {len(lora_as)}, {len(lora_bs)} and {len(scalings)}")
    widths = {p.shape[-1] for p in prompts} | {b.shape[-1] for b in lora_bs}
    if len(widths) != 1:
        raise ValueError(f"stack_adapters: every adapter must have the same hidden size d, got {sorted(widths)} "
                         f"(adapters for different backbones?)")
    m = max(p.shape[0] for p in prompts)
    n = max(a.shape[0] for a in lora_as)
    r = max(a.shape[1] for a in lora_as)
    pad = torch.nn.functional.pad
    device = prompts[0].device
    long = dict(dtype=torch.long, device=device)
    return StackedAdapters(
        torch.stack([pad(p, (0, 0, 0, m - p.shape[0])) for p in prompts]),
        torch.tensor([p.shape[0] for p in prompts], **long),
        torch.stack([pad(a, (0, r - a.shape[1], 0, n - a.shape[0])) for a in lora_as]),
        torch.stack([pad(b, (0, 0, 0, r - b.shape[0])) for b in lora_bs]),
        torch.tensor([float(s) for s in scalings], dtype=lora_as[0].dtype, device=device),
        torch.tensor([a.shape[0] if a.shape[1] > 0 else torch.iinfo(torch.int32).max for a in lora_as], **long),
    )
