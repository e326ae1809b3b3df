"""Per-adapter copies of a backbone's trained head (PEFT's ``modules_to_save``).

A sequence classifier's head trains with the prompt, so every adapter owns a copy of it. The
backbone itself is left as it was (its modules and ``state_dict`` unchanged): a forward hook on
its head returns the active adapter's copy's output instead of the head's own, or keeps the
head's own while adapters are disabled. (The small head then runs twice; the backbone does not.)"""

from __future__ import annotations

import copy
from typing import Callable, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle


def route_head(head: nn.Module, choose: Callable[[], Optional[nn.Module]]) -> RemovableHandle:
    """Make ``head`` answer with ``choose()``'s output (its own when ``choose()`` is None)."""
    def hook(module, args, kwargs, output):
        if module is not head:  # a copy of the head carries this hook too
            return output
        chosen = choose()
        return output if chosen is None else chosen(*args, **kwargs)

    return head.register_forward_hook(hook, with_kwargs=True)


def head_copy(head: nn.Module) -> nn.Module:
    """A trainable copy of a (frozen) head: an adapter's starting point."""
    return copy.deepcopy(head).requires_grad_(True)
