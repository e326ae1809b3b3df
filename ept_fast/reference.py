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
from typing import Optional, Tuple

import torch

from ._validation import Dims, check_assemble_inputs_layout, check_ept_prompt_args, check_token_values

__all__ = ["ept_prompt", "assemble_inputs", "attended_mask", "check_ept_prompt_args", "check_assemble_inputs_args"]


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
