"""Argument checks shared by every public entry point.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape,
device or value) with a message that names the argument, what was expected and what
came. Shape letters follow ``docs/ept.md``: m prompt rows, d hidden size, n positions
covered by the low-rank update, r its rank, K subspaces of rank h.
"""

from __future__ import annotations

import enum
from numbers import Real
from typing import Dict, Optional, Sequence, Tuple

import torch

Dims = Dict[str, int]


class Backend(str, enum.Enum):
    """Which implementation runs the ops: ``auto`` (the Triton kernels for CUDA tensors where
    Triton is available, the PyTorch reference otherwise), ``triton`` or ``torch``."""

    AUTO = "auto"  # Triton for CUDA tensors when available, the PyTorch reference otherwise
    TRITON = "triton"
    TORCH = "torch"


def parse_enum(enum_cls, field: str, value):
    try:
        return enum_cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum_cls)
        raise ValueError(f"{field}: expected one of {allowed}, got {value!r}") from None


def _require_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _describe(pattern: Sequence[str], dims: Dims) -> str:
    return "(" + ", ".join(f"{p}={dims[p]}" if p in dims else p for p in pattern) + ")"


def _match_shape(name: str, tensor: torch.Tensor, pattern: Sequence[str], dims: Dims) -> None:
    """Check ``tensor.shape`` against named dimensions, binding names seen for the first time."""
    if tensor.dim() != len(pattern):
        raise ValueError(
            f"{name}: expected a {len(pattern)}-d tensor of shape {_describe(pattern, dims)}, "
            f"got shape {tuple(tensor.shape)}"
        )
    for axis, (letter, size) in enumerate(zip(pattern, tensor.shape)):
        if letter in dims and dims[letter] != size:
            raise ValueError(
                f"{name}: expected shape {_describe(pattern, dims)}, got {tuple(tensor.shape)} "
                f"(dimension {axis} is {size}, but {letter}={dims[letter]} elsewhere)"
            )
    for letter, size in zip(pattern, tensor.shape):
        dims.setdefault(letter, size)


def check_input_ids(input_ids) -> None:
    """``input_ids`` is a (b, T) tensor (checked before anything reads its rows)."""
    _match_shape("input_ids", _require_tensor("input_ids", input_ids), ("b", "T"), {})


def _require_floating(name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")


def _require_same_dtype(named: Sequence[Tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.dtype != first.dtype:
            raise TypeError(
                f"{name}: expected dtype {first.dtype} (the dtype of {first_name}), got {tensor.dtype}"
            )


def _require_same_device(named: Sequence[Tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (the device of {first_name}), "
                f"got one on {tensor.device}"
            )


def check_scaling(scaling, name: str = "scaling") -> None:
    if isinstance(scaling, bool) or not isinstance(scaling, Real):
        raise TypeError(f"{name}: expected a Python float, got {type(scaling).__name__}")
    if not abs(scaling) <= torch.finfo(torch.float32).max:  # the kernels take it as float32
        raise ValueError(f"{name}: expected a finite number within float32's range, got {scaling}")


def check_ept_prompt_args(
    prompt, lora_a, lora_b, fusion_scale, proj_down, proj_up, gate_weight, gate_bias, scaling
) -> Dims:
    """Validate the arguments of ``ept_prompt``; returns the sizes m, d, n, r, K, h."""
    named = [
        ("prompt", prompt, ("m", "d")),
        ("lora_a", lora_a, ("n", "r")),
        ("lora_b", lora_b, ("r", "d")),
        ("fusion_scale", fusion_scale, ()),
        ("proj_down", proj_down, ("K", "d", "h")),
        ("proj_up", proj_up, ("K", "h", "d")),
        ("gate_weight", gate_weight, ("d", "K")),
        ("gate_bias", gate_bias, ("K",)),
    ]
    dims: Dims = {}
    for name, value, pattern in named:
        _require_tensor(name, value)
        _match_shape(name, value, pattern, dims)
        _require_floating(name, value)
    if dims["m"] < 1 or dims["d"] < 1:
        raise ValueError(f"prompt: expected at least one row and one column, got shape {tuple(prompt.shape)}")
    pairs = [(name, value) for name, value, _ in named]
    _require_same_dtype(pairs)
    _require_same_device(pairs)
    check_scaling(scaling)
    return dims


def check_assemble_inputs_layout(
    input_ids, attention_mask, word_embeddings, prompt_out, lora_a, lora_b, scaling, embed_scale=1.0
) -> Dims:
    """The kinds, shapes, dtypes and devices of ``assemble_inputs``' arguments (no values read);
    returns the sizes b, T, V, d, m, n, r."""
    _require_tensor("input_ids", input_ids)
    if input_ids.dtype not in (torch.int64, torch.int32):  # what an embedding lookup takes
        raise TypeError(f"input_ids: expected an int64 or int32 tensor, got dtype {input_ids.dtype}")
    dims: Dims = {}
    _match_shape("input_ids", input_ids, ("b", "T"), dims)
    if dims["b"] < 1 or dims["T"] < 1:
        raise ValueError(f"input_ids: expected at least one row and one token, got shape {tuple(input_ids.shape)}")
    named = [("input_ids", input_ids)]
    if attention_mask is not None:
        _require_tensor("attention_mask", attention_mask)
        _match_shape("attention_mask", attention_mask, ("b", "T"), dims)
        if attention_mask.is_complex():
            raise TypeError(f"attention_mask: expected a bool, integer or float tensor, got dtype "
                            f"{attention_mask.dtype}")
        named.append(("attention_mask", attention_mask))
    for name, value, pattern in [
        ("word_embeddings", word_embeddings, ("V", "d")),
        ("prompt_out", prompt_out, ("m", "d")),
        ("lora_a", lora_a, ("n", "r")),
        ("lora_b", lora_b, ("r", "d")),
    ]:
        _require_tensor(name, value)
        _match_shape(name, value, pattern, dims)
        _require_floating(name, value)
        named.append((name, value))
    _require_same_dtype([("lora_a", lora_a), ("lora_b", lora_b)])
    _require_same_device(named)
    check_scaling(scaling)
    check_scaling(embed_scale, "embed_scale")
    return dims


def check_mixed_layout(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a, lora_b, scalings,
                       adapter_ids, embed_scale) -> Dims:
    """``check_assemble_inputs_layout`` for a mixed batch: prompts (N, m, d), prompt_lengths (N,),
    lora_a (N, n, r), lora_b (N, r, d), scalings (N,), adapter_ids (b,); returns b, T, V, d, m,
    n, r and N."""
    stacked: Dims = {}
    named = []
    for name, value, pattern in [("prompts", prompts, ("N", "m", "d")), ("lora_a", lora_a, ("N", "n", "r")),
                                 ("lora_b", lora_b, ("N", "r", "d")), ("prompt_lengths", prompt_lengths, ("N",)),
                                 ("scalings", scalings, ("N",))]:
        _require_tensor(name, value)
        _match_shape(name, value, pattern, stacked)
        named.append((name, value))
    if stacked["N"] < 1:
        raise ValueError(f"prompts: expected at least one stacked adapter, got shape {tuple(prompts.shape)}")
    dims = check_assemble_inputs_layout(input_ids, attention_mask, word_embeddings, prompts[0], lora_a[0], lora_b[0],
                                        0.0, embed_scale)
    dims["N"] = stacked["N"]
    _require_tensor("adapter_ids", adapter_ids)
    _match_shape("adapter_ids", adapter_ids, ("b",), dims)
    for name, value in (("prompt_lengths", prompt_lengths), ("adapter_ids", adapter_ids)):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor, got dtype {value.dtype}")
    _require_floating("scalings", scalings)
    _require_same_device([("input_ids", input_ids), ("adapter_ids", adapter_ids)] + named)
    return dims


def _values_unreadable(tensor: torch.Tensor) -> bool:
    """True under ``torch.compile`` and while a CUDA graph is captured: reading a value there would
    break the graph, so the value checks become device-side asserts (``torch._assert_async``)."""
    return torch.compiler.is_compiling() or (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def check_mixed_values(adapter_ids: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor,
                       max_lengths: Optional[torch.Tensor], adapters: int, m: int) -> None:
    """Every row names an adapter in [0, N); every prompt length is in [0, m] (0: the head alone); no row holds
    more attended tokens than its adapter's ``max_lengths`` (when given). One device sync (device
    asserts under ``torch.compile`` and CUDA-graph capture, as in ``check_token_values``)."""
    limits = max_lengths[adapter_ids.clamp(0, adapters - 1)] if max_lengths is not None else lengths
    excess = lengths - limits
    if _values_unreadable(adapter_ids):
        torch._assert_async((adapter_ids.min() >= 0) & (adapter_ids.max() < adapters),
                            f"adapter_ids: expected ids in [0, {adapters}) (one per stacked adapter)")
        torch._assert_async((prompt_lengths.min() >= 0) & (prompt_lengths.max() <= m),
                            f"prompt_lengths: expected lengths in [0, {m}] (m, the stacked prompts' rows)")
        torch._assert_async(excess.max() <= 0,
                            "input_ids: a row has more attended tokens than its adapter's max_length")
        return
    lowest, highest, shortest, longest, worst, worst_row = torch.stack([
        adapter_ids.min(), adapter_ids.max(), prompt_lengths.min(), prompt_lengths.max(), excess.max(), excess.argmax(),
    ]).tolist()
    if lowest < 0 or highest >= adapters:
        raise ValueError(f"adapter_ids: expected ids in [0, {adapters}) (one per stacked adapter), got "
                         f"{lowest if lowest < 0 else highest}")
    if shortest < 0 or longest > m:
        raise ValueError(f"prompt_lengths: expected lengths in [0, {m}] (m, the stacked prompts' rows), got "
                         f"{shortest if shortest < 0 else longest}")
    if worst > 0:
        adapter = int(adapter_ids[worst_row])
        raise ValueError(
            f"input_ids: row {worst_row} has {int(lengths[worst_row])} attended tokens, but its adapter ({adapter}) "
            f"covers max_length={int(max_lengths[adapter])} positions; shorten or split the input (it is never "
            f"truncated silently)"
        )


def check_token_values(input_ids: torch.Tensor, lengths: torch.Tensor, vocab: int, max_length: Optional[int]) -> None:
    """Every id indexes a row of the word-embedding table, and no row holds more than
    ``max_length`` attended tokens (``lengths``, per row; ``max_length`` None: no limit).

    Reads values from the tensors (one device synchronisation); under ``torch.compile`` and
    while a CUDA graph is captured these become device-side asserts (``torch._assert_async``).
    """
    if _values_unreadable(input_ids):
        torch._assert_async((input_ids.min() >= 0) & (input_ids.max() < vocab),
                            f"input_ids: expected ids in [0, {vocab}) (the rows of word_embeddings)")
        if max_length is not None:
            torch._assert_async(lengths.max() <= max_length,
                                f"input_ids: a row has more attended tokens than max_length={max_length}")
        return
    lowest, highest, longest, longest_row = torch.stack(
        [input_ids.min(), input_ids.max(), lengths.max(), lengths.argmax()]
    ).tolist()
    if lowest < 0 or highest >= vocab:
        bad = lowest if lowest < 0 else highest
        raise ValueError(f"input_ids: expected ids in [0, {vocab}) (the rows of word_embeddings), got id {bad}")
    if max_length is not None and longest > max_length:
        raise ValueError(
            f"input_ids: row {longest_row} has {longest} attended tokens, but the low-rank update "
            f"covers max_length={max_length} positions; shorten or split the input (it is never "
            f"truncated silently), or build the adapter with a larger max_length"
        )


# ------------------------------------------------------ the ops' entry checks
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


def check_assemble_inputs_mixed_args(input_ids, attention_mask, word_embeddings, prompts, prompt_lengths, lora_a,
                                     lora_b, scalings, adapter_ids, embed_scale=1.0, padding_side="right",
                                     max_lengths=None) -> Dims:
    """Validate the arguments of ``assemble_inputs_mixed``; returns b, T, V, d, m, n, r, N.
    Reads values: ids in range, adapter ids in [0, N), prompt lengths in [0, m], and (with
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
