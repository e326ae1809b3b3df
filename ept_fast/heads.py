"""Per-adapter copies of a backbone's trained head (PEFT's ``modules_to_save``).

A sequence classifier's head trains with the prompt, so every adapter owns a copy of it. The
backbone itself is left as it was (its modules and ``state_dict`` unchanged): only while an
``EPTModel`` runs it, a forward hook on its head answers with the adapter's copy instead of
the head's own output. (The small head then runs twice; the backbone does not.)"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

from torch import nn


def head_copy(head: nn.Module) -> nn.Module:
    """A trainable copy of a (frozen) head: an adapter's starting point."""
    return copy.deepcopy(head).requires_grad_(True)


@contextlib.contextmanager
def heads_replaced(heads: Sequence[nn.Module], replacements: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, each of ``heads`` returns its replacement's output for the same input."""
    def replace_with(replacement):
        return lambda module, args, kwargs, output: replacement(*args, **kwargs)

    handles = [head.register_forward_hook(replace_with(replacement), with_kwargs=True)
               for head, replacement in zip(heads, replacements)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
