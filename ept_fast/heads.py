"""Per-adapter copies of a backbone's trained head (PEFT's ``modules_to_save``).

A sequence classifier's head trains with the prompt, so every adapter owns a copy of it. The
backbone itself is left as it was (its modules and ``state_dict`` unchanged): only while an
``EPTModel`` runs it, a forward hook on its head answers with the adapter's copy instead of
the head's own output. (The small head then runs twice; the backbone does not.) What an encoder
classifier's head reads is the adapter's ``readout``: a forward hook on the encoder puts the
chosen vector (first prompt row, first real token, or the mean over the real tokens) at the
position the backbone pools; for ``sentence_embedding`` a forward hook on the backbone's frozen
pooler hands that vector on unchanged."""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .config import Readout
from .layout import PromptLayout


def head_copy(head: nn.Module) -> nn.Module:
    """A trainable copy of a (frozen) head: an adapter's starting point."""
    return copy.deepcopy(head).requires_grad_(True)


def rowwise(heads: Sequence[nn.Module], adapter_ids: torch.Tensor) -> Callable:
    """A head whose output row i is ``heads[adapter_ids[i]]``'s row i (each head sees every row;
    heads are small). The heads must give outputs of one shape, batch first."""
    def run(*args, **kwargs):
        outputs = [head(*args, **kwargs) for head in heads]
        if not all(isinstance(output, torch.Tensor) for output in outputs):
            raise TypeError(f"modules_to_save: a head served row by row must return one tensor, batch first; "
                            f"{type(heads[0]).__name__} returns {type(outputs[0]).__name__}")
        outputs = torch.stack(outputs)
        return outputs[adapter_ids, torch.arange(adapter_ids.shape[0], device=adapter_ids.device)]

    return run


def last_attended_pooled(head: Callable, last: torch.Tensor) -> Callable:
    """``head``, a decoder classifier's per-position head (output (b, S, labels)), with each
    row's output at its last attended position (``last`` (b,), ``PromptLayout.last_attended``)
    also put at the last position. Given ``inputs_embeds`` such a classifier pools the last
    position (it needs ``input_ids`` to find the padding), which in a right-padded row is padding."""
    def run(*args, **kwargs):
        output = head(*args, **kwargs)
        pooled = output[torch.arange(output.shape[0], device=output.device), last]
        return torch.cat([output[:, :-1], pooled.unsqueeze(1)], dim=1)

    return run


def sequence_output_module(backbone: nn.Module) -> nn.Module:
    """The module of an encoder classifier whose output is its last hidden states (b, S, d),
    before the backbone pools them: the base model's ``encoder`` (BERT, RoBERTa, DeBERTa,
    ELECTRA) or ``transformer`` (DistilBERT)."""
    base = getattr(backbone, "base_model", backbone)
    for name in ("encoder", "transformer"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"readout: cannot find the encoder of {type(backbone).__name__} (no base_model.encoder or "
                     f".transformer module); use readout='backbone'")


def mean_over_attended(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(b, d) float32: each row's mean of ``hidden`` (b, T, d) over its attended positions
    (``attention_mask`` (b, T); every position where it is None): a sentence encoder's embedding."""
    attended = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
                else attention_mask.float()).unsqueeze(-1)
    return (hidden.float() * attended).sum(1) / attended.sum(1).clamp(min=1)


def is_encoder_classifier(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a classifier whose readout can be chosen: an encoder (see
    ``sequence_output_module``), not a decoder classifier (head ``score``, pooling the last token)."""
    try:
        sequence_output_module(backbone)
    except ValueError:
        return False
    return not isinstance(getattr(backbone, "score", None), nn.Module)


def skippable_pooler(backbone: nn.Module, heads: Sequence[str]) -> Optional[nn.Module]:
    """The frozen pooler between an encoder classifier's position 0 and its head, which the
    ``sentence_embedding`` readout skips: BERT's, ALBERT's or DeBERTa's ``pooler`` (a dense
    layer of the hidden size and its activation). None where the head pools with layers it trains
    (RoBERTa, ELECTRA, or a pooler named in ``heads``). An error where the frozen part cannot be
    skipped."""
    frozen_dense = getattr(backbone, "pre_classifier", None)
    if isinstance(frozen_dense, nn.Module) and "pre_classifier" not in heads:
        raise ValueError(f"readout: 'sentence_embedding' gives the head the mean itself, but "
                         f"{type(backbone).__name__} passes it through its frozen pre_classifier and a ReLU; use "
                         f"'mean', or train pre_classifier too (modules_to_save)")
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] != "pooler" or name in heads:
            continue
        dense, width = getattr(module, "dense", None), getattr(backbone.config, "hidden_size", None)
        if not (isinstance(dense, nn.Linear) and dense.out_features == width):
            raise ValueError(f"readout: 'sentence_embedding' skips the backbone's pooler, but {name} "
                             f"({type(module).__name__}) is not a dense layer of the hidden size ({width}) that the "
                             f"head could do without; use 'mean'")
        return module
    return None


def skip_pooler(rows: torch.Tensor) -> Callable:
    """A forward hook for ``skippable_pooler``'s module: rows where ``rows`` (b,) is True get
    position 0 of the pooler's input (b, S, d) unchanged, the others the pooler's output."""
    def hook(module, args, output):
        return torch.where(rows[:, None], args[0][:, 0].to(output.dtype), output)

    return hook


def readout_kinds(readouts: Sequence[Readout], adapter_ids: Optional[torch.Tensor], batch: int,
                  device: torch.device) -> torch.Tensor:
    """(b,): the index in ``Readout`` of row i's readout, ``readouts[adapter_ids[i]]``
    (``readouts[0]`` for every row when ``adapter_ids`` is None)."""
    kinds = torch.tensor([list(Readout).index(readout) for readout in readouts], device=device)
    return kinds[adapter_ids] if adapter_ids is not None else kinds.expand(batch)


def readout_weights(readouts: Sequence[Readout], adapter_ids: Optional[torch.Tensor],
                    attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor,
                    layout: PromptLayout) -> torch.Tensor:
    """(b, m+T): the weights of each prompted slot in what row i's head reads, for its adapter's
    readout (``readouts[adapter_ids[i]]``; ``readouts[0]`` for every row when ``adapter_ids`` is
    None): position 0 (backbone), the row's first attended token (first_token) or the mean over
    its attended tokens (mean, sentence_embedding)."""
    kinds = readout_kinds(readouts, adapter_ids, input_ids.shape[0], input_ids.device)
    attended = (attention_mask != 0 if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool))
    attended = attended.float()
    first = torch.nn.functional.one_hot(attended.argmax(dim=1), attended.shape[1]).float()
    mean = attended / attended.sum(dim=1, keepdim=True).clamp(min=1)
    averaged = (kinds == list(Readout).index(Readout.MEAN)) | (kinds == list(Readout).index(Readout.SENTENCE_EMBEDDING))
    per_token = torch.where(averaged[:, None], mean, first)
    weights = layout.place(per_token, 0.0)
    position0 = torch.zeros_like(weights)
    position0[:, 0] = 1.0
    return torch.where((kinds == list(Readout).index(Readout.BACKBONE))[:, None], position0, weights)


def read_out(weights: torch.Tensor) -> Callable:
    """A forward hook for ``sequence_output_module``: each row's position 0 becomes the sum of its
    hidden states weighted by ``weights`` (b, S), so that whatever the backbone pools at
    position 0 (BERT's pooler, RoBERTa's head) reads that instead."""
    def hook(module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        vector = torch.einsum("bs,bsd->bd", weights.float(), hidden.float()).to(hidden.dtype)
        hidden = torch.cat([vector.unsqueeze(1), hidden[:, 1:]], dim=1)
        if isinstance(output, torch.Tensor):
            return hidden
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output[0 if isinstance(output, list) else next(iter(output.keys()))] = hidden
        return output

    return hook


@contextlib.contextmanager
def hooked(module: nn.Module, hook: Callable) -> Iterator[None]:
    """Within the block, ``hook`` is a forward hook of ``module``."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def together(*contexts) -> Iterator[None]:
    """One context manager that enters ``contexts`` in order (and leaves them in reverse)."""
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


@contextlib.contextmanager
def heads_replaced(heads: Sequence[nn.Module], replacements: Sequence[Callable]) -> Iterator[None]:
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
