"""Where each slot of a prompted row comes from: the one rule of the assembly's layout.

A batch of prompted rows is (b, m+T): row i holds its adapter's prompt (``prompt_lengths[i]``
rows, at most m), its T tokens, and m - prompt_lengths[i] padding slots (zeros, mask 0) on
``padding_side``: ``"right"``: [prompt, tokens, padding], every position as the row has alone
(encoders, seq2seq); ``"left"``: [padding, prompt, tokens], the last slot a real token (causal
LMs generate from it, decoder classifiers pool it). With one adapter every row's prompt is m
long and there is no padding. The assembly (``reference.assemble_inputs_mixed`` and the fused
kernel, tested against it) builds its output by this rule; everything that lays per-token
values out as the prompted rows (labels, masks, positions, what a classifier pools) asks the
``PromptLayout`` the assembly returns.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

PADDING_SIDES = ("right", "left")


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """The layout of b prompted rows of m + T slots (see the module docstring).

    ``prompt_lengths`` (b,) holds each row's own prompt length; None means every row's is m
    (one adapter, or a mixed batch of equal prompts)."""

    m: int
    T: int
    padding_side: str = "right"
    prompt_lengths: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side: expected 'left' or 'right', got {self.padding_side!r}")

    @property
    def width(self) -> int:
        """m + T, the slots of a row."""
        return self.m + self.T

    def _lengths(self, device) -> torch.Tensor:
        """(b, 1): each row's prompt length (m for every row when not given)."""
        if self.prompt_lengths is None:
            return torch.full((1, 1), self.m, dtype=torch.long, device=device)
        return self.prompt_lengths.to(device).unsqueeze(1)

    def token_slots(self, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """((b, m+T) the token each slot holds, clamped into [0, T); (b, m+T) whether it holds
        one): a row's tokens start after its prompt on the right, after all m slots on the left."""
        start = self._lengths(device) if self.padding_side == "right" else torch.full((1, 1), self.m, device=device)
        token = torch.arange(self.width, device=device) - start
        holds = (token >= 0) & (token < self.T)
        return token.clamp(0, max(self.T - 1, 0)), holds

    def prompt_slots(self, rows: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """((rows, m) the slot of each row's k-th non-token slot; (rows, m) the stacked prompt row
        it holds): prompt row k at slot k, then the padding after the tokens, on the right;
        padding first, then the prompt, on the left. Stacked rows past a row's prompt length are
        its padding."""
        lengths = self._lengths(device)
        k = torch.arange(self.m, device=device).expand(rows, self.m)
        if self.padding_side == "right":
            return torch.where(k < lengths, k, k + self.T), k
        return k, (k + lengths) % max(self.m, 1)

    def place(self, values: torch.Tensor, fill) -> torch.Tensor:
        """A per-token tensor (b, T) laid out as the prompted rows (b, m+T): ``fill`` over the
        prompt and any padding, ``values`` where each row's tokens are."""
        token, holds = self.token_slots(values.device)
        placed = values.gather(1, token.expand(values.shape[0], -1)) if self.T else values.new_empty(values.shape[0], 0)
        full = values.new_full((values.shape[0], self.width), fill)
        return torch.where(holds, placed, full) if self.T else full

    def check_fits(self, limit: Optional[int], backbone: str) -> None:
        """A prompted row of ``width`` slots must fit the ``limit`` positions of ``backbone`` (None:
        no limit); else an error naming m, T and the limit."""
        if limit is not None and self.width > limit:
            raise ValueError(f"input_ids: the prompt (m={self.m}) and the tokens (T={self.T}) make {self.width} "
                             f"positions, past the {limit} of {backbone}; shorten the input (to T <= "
                             f"{max(limit - self.m, 0)}) or the prompt")

    def position_ids(self) -> Optional[torch.Tensor]:
        """(b, m+T): the position each slot has in its row alone, for rows padded on the left
        before prompts of different lengths (the padding slots get 0); None where every slot
        already has its own position."""
        if self.padding_side == "right" or self.prompt_lengths is None:
            return None
        index = torch.arange(self.width, device=self.prompt_lengths.device)[None, :]
        return (index - (self.m - self.prompt_lengths[:, None])).clamp(min=0)

    def last_attended(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(b,): the slot of each row's last attended position in the prompted ``attention_mask``
        (b, m+T), what a decoder classifier pools."""
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        return (positions * (attention_mask != 0)).argmax(dim=1)
