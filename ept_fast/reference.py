"""Plain-PyTorch EPT: the oracle of every parity test and the CPU fallback.

Written to read like the equations of ``docs/ept.md``. The low-rank rows
``L = s · A · B`` are never materialised as an (n, d) matrix: every use factors
through A and B. The assembly builds its (b, m+T, d) output in one buffer: the lookup writes
it, the low-rank update and the prompt rows go in in place (as the CPU fallback it is
memory-bound: no (b, T, d) intermediates, no concatenation). A 16-bit table adds a float32
working copy and the cast back (the sum is formed in float32).

Both ops validate their arguments (``validate=False`` skips it, for a caller that already
ran the same check: ``ept_fast._validation`` holds the checks of every public entry point).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._validation import (
    attended_mask,
    check_assemble_inputs_args,
    check_assemble_inputs_mixed_args,
    check_ept_prompt_args,
)
from .layout import PromptLayout

__all__ = ["ept_prompt", "assemble_inputs", "assemble_inputs_mixed", "attended_mask", "stack_adapters"]


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
    lookup multiplies rows by (Gemma's √d; 1 for a plain table): tokens are embed_scale·E[id].
    Returns ``inputs_embeds`` (b, m+T, d) in
    the table's dtype and the extended mask (b, m+T): m ones, then ``attention_mask``
    (in its dtype; int64 ones when it was None).
    """
    if validate:
        check_assemble_inputs_args(input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling,
                                   embed_scale)
    b, T = input_ids.shape
    m = prompt_out.shape[0]
    sum_dtype = _sum_dtype(word_embeddings, lora_a)
    attended = attended_mask(input_ids, attention_mask)
    pos = torch.cumsum(attended, dim=1) - 1  # k-th attended token -> k: its row of A
    weights = (attended & (pos < lora_a.shape[0])).to(sum_dtype) * scaling  # (b, T); r = 0 may pass n
    rows_of_a = _rows_of(lora_a, pos).to(sum_dtype) * weights.unsqueeze(-1)  # (b, T, r)
    # Row i's m + T slots: m prompt slots (their lookups are overwritten), then its tokens.
    out = _tokens_into_slots(word_embeddings, F.pad(input_ids, (m, 0)), F.pad(rows_of_a, (0, 0, m, 0)),
                             lora_b.to(sum_dtype).expand(b, -1, -1), embed_scale)
    out[:, :m] = prompt_out.to(word_embeddings.dtype)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.long)
    return out.to(word_embeddings.dtype), F.pad(mask, (m, 0), value=1)


def _sum_dtype(word_embeddings: torch.Tensor, lora_a: torch.Tensor) -> torch.dtype:
    """The dtype a token's sum is formed in: float32 at least (cast once, on the way out)."""
    return torch.promote_types(word_embeddings.dtype, torch.promote_types(lora_a.dtype, torch.float32))


def _rows_of(lora_a: torch.Tensor, positions: torch.Tensor, adapters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The rows of A at ``positions`` (b, S): (b, S, r), from lora_a (n, r), or (N, n, r) with
    each position's adapter in ``adapters`` (b, S). Positions past n (a prompt-tuning row) read
    row n - 1: their weight is zero. No rows at all (n = 0): zeros."""
    n, r = lora_a.shape[-2:]
    if n == 0:
        return lora_a.new_zeros(*positions.shape, r)
    positions = positions.clamp(0, n - 1)
    return lora_a[positions] if adapters is None else lora_a[adapters, positions]


def _tokens_into_slots(word_embeddings, slot_ids, rows_of_a, lora_b, embed_scale) -> torch.Tensor:
    """embed_scale·E[id] + (s·A[pos])·B for every slot (b, S) of the output, in one (b, S, d) buffer
    of the sum's dtype (``lora_b``'s, as the callers give it): rows_of_a (b, S, r) is zero where
    nothing is added, lora_b (b, r, d) each row's B. The buffer is written in place, one pass
    each: the lookup, the scale, the update."""
    out = F.embedding(slot_ids, word_embeddings).to(lora_b.dtype)  # index_select: whole rows, a memcpy each
    if embed_scale != 1.0:
        out.mul_(embed_scale)
    return out.baddbmm_(rows_of_a, lora_b)


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

    Shapes: the stacked adapters prompts (N, m, d) (adapter a's P* in rows [0, prompt_lengths[a]);
    the rows after are ignored: no value, no gradient), lora_a (N, n, r), lora_b (N, r, d),
    zero-padded to the largest n and r, and scalings (N,) (each adapter's s); adapter_ids (b,)
    picks row i's adapter. Row i of the output is a's prompt (prompt_lengths[a] rows) followed by
    the tokens as ``assemble_inputs`` builds them with a's A, B and s, exactly as a alone builds
    it, plus m - prompt_lengths[a] padding rows (zeros, mask 0) on ``padding_side``: "right" after
    the tokens (every position as alone: for encoders and seq2seq), "left" before the prompt (the
    last position is a real token: for generation with causal LMs). Returns (b, m+T, d) and
    (b, m+T).
    """
    if validate:
        check_assemble_inputs_mixed_args(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a,
                                         lora_b, scalings, adapter_ids, embed_scale, padding_side, max_lengths)
    # Every output slot holds a token or a row of the adapter's stacked prompt, by the layout's
    # rule (ept_fast.layout); the slots of stacked rows l..m-1 are the padding (zeros, mask 0).
    b, T = input_ids.shape
    m, d = prompts.shape[1:]
    n = lora_a.shape[1]
    device = input_ids.device
    sum_dtype = _sum_dtype(word_embeddings, lora_a)
    layout = PromptLayout(m, T, padding_side, prompt_lengths[adapter_ids])
    lengths = layout.prompt_lengths.unsqueeze(1)  # (b, 1): l of each row's adapter
    token, is_token = layout.token_slots(device)  # (b, m+T)
    token, is_token = token.expand(b, -1), is_token.expand(b, -1)

    attended = attended_mask(input_ids, attention_mask)
    pos = torch.cumsum(attended, dim=1) - 1  # k-th attended token -> k: its row of A
    updated = (attended & (pos < n)).gather(1, token) & is_token  # (b, m+T); a prompt-tuning row may pass n
    weights = updated.to(sum_dtype) * scalings[adapter_ids].to(sum_dtype).unsqueeze(1)
    rows_of_a = _rows_of(lora_a, pos.gather(1, token), adapter_ids.unsqueeze(1)).to(sum_dtype) * weights.unsqueeze(-1)
    out = _tokens_into_slots(word_embeddings, input_ids.gather(1, token), rows_of_a, lora_b[adapter_ids].to(sum_dtype),
                             embed_scale)

    prompt_slot, prompt_row = layout.prompt_slots(b, device)  # (b, m): where each stacked prompt row goes
    stacked_rows = torch.arange(m, device=device)  # rows past an adapter's l: zeros, whatever the tensor holds
    prompts = torch.where((stacked_rows < prompt_lengths.unsqueeze(1)).unsqueeze(-1), prompts, 0)
    prefix = prompts[adapter_ids.unsqueeze(1), prompt_row].to(word_embeddings.dtype).to(sum_dtype)  # (b, m, d)
    rows = torch.arange(b, device=device).unsqueeze(1) * (m + T)  # each row's first slot in out.view(-1, d)
    out.view(-1, d).index_copy_(0, (rows + prompt_slot).flatten(), prefix.flatten(0, 1))

    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.long)
    real_prompt = torch.zeros(b, m + T, dtype=torch.bool, device=device).scatter_(1, prompt_slot, prompt_row < lengths)
    extended = torch.where(is_token, mask.gather(1, token), real_prompt.to(mask.dtype))
    return out.to(word_embeddings.dtype), extended


class StackedAdapters(NamedTuple):
    """Several adapters as ``assemble_inputs_mixed`` takes them (zero-padded, differentiable)."""

    prompts: torch.Tensor  # (N, m, d): adapter a's P* in rows [0, prompt_lengths[a])
    prompt_lengths: torch.Tensor  # (N,) int64
    lora_a: torch.Tensor  # (N, n, r)
    lora_b: torch.Tensor  # (N, r, d)
    scalings: torch.Tensor  # (N,)
    max_lengths: torch.Tensor  # (N,) int64: each adapter's n (the rows it covers; int32's max for r = 0: no limit)


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
    device = prompts[0].device
    long = dict(dtype=torch.long, device=device)
    return StackedAdapters(
        torch.stack([F.pad(p, (0, 0, 0, m - p.shape[0])) for p in prompts]),
        torch.tensor([p.shape[0] for p in prompts], **long),
        torch.stack([F.pad(a, (0, r - a.shape[1], 0, n - a.shape[0])) for a in lora_as]),
        torch.stack([F.pad(b, (0, 0, 0, r - b.shape[0])) for b in lora_bs]),
        torch.tensor([float(s) for s in scalings], dtype=lora_as[0].dtype, device=device),
        torch.tensor([a.shape[0] if a.shape[1] > 0 else torch.iinfo(torch.int32).max for a in lora_as], **long),
    )
