"""What a causal LM's generation adds to the backbone's own: how many tokens to generate, counted
as PEFT counts them, and the low-rank update on each generated token.

The assembly gives a row's k-th attended token row k of its adapter's L = s·A·B, and a causal
LM trains on its answer tokens that way. The backbone embeds the tokens it generates itself
(only the first step reads ``inputs_embeds``), so a forward hook on its input embedding adds
the same rows to them: decoding sees the input that training saw."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from .prompt_encoder import EPTPromptEncoder

# The new tokens transformers generates where no length is set anywhere (its own default).
TRANSFORMERS_NEW_TOKENS = 20
# Decoding that embeds candidate tokens and may drop them: the update's positions would drift.
_ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def new_token_count(backbone: nn.Module, input_ids: torch.Tensor, kwargs: dict) -> Tuple[int, str]:
    """How many tokens ``generate`` makes, and where that number came from: ``max_new_tokens``, or
    ``max_length`` counting ``input_ids`` and the new tokens, not the prompt, as in PEFT (a keyword
    first, then the ``generation_config`` given, then the backbone's); where no length is set,
    transformers' default. Rewrites ``kwargs`` to ask the backbone for exactly that many."""
    given = kwargs.get("generation_config")
    configs = [("generation_config", given)] if given is not None else []
    configs.append(("the backbone's generation_config", backbone.generation_config))
    found = next(((f"{name}.{field}", getattr(config, field)) for name, config in configs
                  for field in ("max_new_tokens", "max_length") if getattr(config, field) is not None), None)
    if kwargs.get("max_new_tokens") is not None:
        count, source = kwargs.pop("max_new_tokens"), "max_new_tokens"
    elif kwargs.get("max_length") is not None:
        source = "max_length"
        count = kwargs.pop("max_length") - input_ids.shape[1]
    elif found is not None:
        source, value = found
        count = value - input_ids.shape[1] if source.endswith("max_length") else value
    else:
        count, source = TRANSFORMERS_NEW_TOKENS, f"transformers' default of {TRANSFORMERS_NEW_TOKENS} new tokens"
    if source.endswith("max_length") and count < 1:
        raise ValueError(f"{source}: counts input_ids ({input_ids.shape[1]} tokens) and the new tokens, so it "
                         f"leaves none at {count + input_ids.shape[1]}; give a larger one or max_new_tokens")
    kwargs.pop("max_length", None)
    if given is None:
        kwargs["max_new_tokens"] = count
    else:
        kwargs["generation_config"] = copy.deepcopy(given)
        kwargs["generation_config"].max_new_tokens, kwargs["generation_config"].max_length = count, None
    return count, source


@contextlib.contextmanager
def updated_generated_tokens(embedding: nn.Module, encoders: Sequence[EPTPromptEncoder],
                             adapter_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
                             input_ids: torch.Tensor, new_tokens: int, source: str, kwargs: dict) -> Iterator[None]:
    """Within the block, each token that the backbone embeds (those it generates) gets the row of
    L of its position: row i's adapter is ``encoders[adapter_ids[i]]`` (``encoders[0]`` for every row
    when ``adapter_ids`` is None), and its j-th new token is
    its (attended + j)-th attended token. A row whose input and ``new_tokens`` (from ``source``)
    would pass the n positions its adapter's update covers is an error, as in the assembly; so is
    assisted decoding (in ``kwargs``), which embeds candidate tokens it may drop."""
    if all(encoder.config.r == 0 for encoder in encoders):
        yield
        return
    assisted = [name for name in _ASSISTED if kwargs.get(name) is not None]
    if assisted:
        raise ValueError(f"{assisted[0]}: assisted decoding embeds candidate tokens and may drop them, so the "
                         f"low-rank update of each generated token's position cannot follow it; leave it out")
    if adapter_ids is None:
        adapter_ids = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    attended = ((attention_mask != 0).sum(1) if attention_mask is not None
                else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device))
    covered = torch.tensor([encoder.config.max_length for encoder in encoders], device=input_ids.device)[adapter_ids]
    updated = torch.tensor([encoder.config.r > 0 for encoder in encoders], device=input_ids.device)[adapter_ids]
    over = (updated & (attended + new_tokens > covered)).nonzero().flatten().tolist()  # r = 0: no limit
    if over:
        row = over[0]
        raise ValueError(f"{source}: row {row} has {int(attended[row])} attended tokens, and {new_tokens} new "
                         f"ones would take it to {int(attended[row]) + new_tokens} positions, past the "
                         f"n={int(covered[row])} that its adapter's low-rank update covers; generate at most "
                         f"{int(covered[row] - attended[row])} tokens, or train with a larger max_length")
    generated = [0]
    dtype = torch.promote_types(torch.promote_types(embedding.weight.dtype, encoders[0].lora_a.dtype), torch.float32)

    def add_update(module, args, output):
        rows, steps = output.shape[:2]
        repeats = rows // input_ids.shape[0]  # beams or returned sequences, consecutive per row
        row_adapters, starts = adapter_ids.repeat_interleave(repeats), attended.repeat_interleave(repeats)
        positions = starts[:, None] + generated[0] + torch.arange(steps, device=output.device)  # (rows, steps)
        generated[0] += steps
        update = torch.zeros(output.shape, dtype=dtype, device=output.device)  # E + L summed as the assembly does
        for index, encoder in enumerate(encoders):
            chosen = row_adapters == index
            if encoder.config.r and chosen.any():
                rows_of_a = encoder.lora_a.to(dtype)[positions[chosen]] * encoder.scaling  # (rows', steps, r)
                update[chosen] = rows_of_a @ encoder.lora_b.to(dtype)
        return (output.to(dtype) + update).to(output.dtype)

    handle = embedding.register_forward_hook(add_update)
    try:
        yield
    finally:
        handle.remove()
