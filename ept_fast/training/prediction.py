"""The one batched-prediction path: ``ept-fast eval``, ``predict``, the validation and test
scoring of ``train``, and the server all run rows through ``predict_rows``.

A row is (adapter name, example). Rows of different adapters share a batch: each adapter's rows
are tokenized as its training tokenized them (its own ``max_length``), then padded together, and
the batch runs once through the backbone (``EPTModel(..., adapter_names=...)``); a batch whose
rows all run the active adapter takes the single-adapter path."""

from __future__ import annotations

import contextlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..config import TaskType
from ..model import EPTModel
from ..tasks import Example, Task, compute_metrics, parse_prediction
from .data import Collator

Row = Tuple[str, dict]  # (adapter name, example or input row as format_input gives it)
Lengths = Union[int, Mapping[str, int]]  # tokens to generate: for every adapter, or by adapter name


def length_of(max_new_tokens: Lengths, name: str) -> int:
    """The tokens adapter ``name`` generates."""
    return max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[name]


def adapter_collator(model: EPTModel, tokenizer, task: Task, name: str, max_new_tokens: int) -> Collator:
    """The collator of adapter ``name``: its rows tokenized as its training tokenized them."""
    return Collator(tokenizer, model.task_type, task, model.peft_config[name].max_length, max_new_tokens)


def encode_rows(model: EPTModel, tokenizer, tasks: Dict[str, Task], rows: Sequence[Row],
                max_new_tokens: Lengths) -> Dict[str, torch.Tensor]:
    """One padded batch of ``rows`` (a causal LM's padded on the left, so generation goes on
    from each row's last token; the others' on the right)."""
    encoded: List[Dict[str, torch.Tensor]] = [{} for _ in rows]
    for name in dict.fromkeys(name for name, _ in rows):
        collate = adapter_collator(model, tokenizer, tasks[name], name, length_of(max_new_tokens, name))
        indices = [i for i, (row_name, _) in enumerate(rows) if row_name == name]
        # The collator also encodes labels; predictions need none, so each row gets a placeholder.
        group = collate([dict(rows[i][1], label=0, target="") for i in indices], for_generation=True)
        keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in group]
        for position, i in enumerate(indices):
            kept = group["attention_mask"][position].bool()
            encoded[i] = {key: group[key][position][kept] for key in keys}
    width = max(len(row["input_ids"]) for row in encoded)
    left = model.task_type is TaskType.CAUSAL_LM
    batch = {key: torch.full((len(rows), width), tokenizer.pad_token_id if key == "input_ids" else 0)
             for key in encoded[0]}
    for i, row in enumerate(encoded):
        length = len(row["input_ids"])
        span = slice(width - length, width) if left else slice(0, length)
        for key, values in row.items():
            batch[key][i, span] = values
    return batch


@torch.no_grad()
def predict_batch(model: EPTModel, tokenizer, tasks: Dict[str, Task], names: List[str],
                  batch: Dict[str, torch.Tensor], max_new_tokens: int) -> List[dict]:
    """Per row: ``label`` (the class id, the regression value, or the id parsed from the
    generated text), and for a classifier ``score`` (the probability of that class) and ``probs``
    (of every class), else ``generated`` and its ``tokens`` (ids, special tokens left out)."""
    routed = None if set(names) == {model.active_adapter} else names
    if model.task_type is TaskType.SEQ_CLS:
        logits = model(**batch, adapter_names=routed).logits.float()
        out = []
        for name, row in zip(names, logits):
            if tasks[name].is_regression:
                out.append({"label": float(row[0])})
                continue
            probabilities = row.softmax(-1)
            label = int(probabilities.argmax())
            out.append({"label": label, "score": float(probabilities[label]), "probs": probabilities.tolist()})
        return out
    generated = model.generate(**batch, adapter_names=routed, max_new_tokens=max_new_tokens, do_sample=False,
                               num_beams=1, pad_token_id=tokenizer.pad_token_id)
    if model.task_type is TaskType.CAUSAL_LM:
        generated = generated[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    return [{"label": parse_prediction(tasks[name], text), "generated": text,
             "tokens": [token for token in row.tolist() if token not in special]}
            for name, text, row in zip(names, texts, generated)]


def predict_rows(model: EPTModel, tokenizer, tasks: Dict[str, Task], rows: Sequence[Row], batch_size: int,
                 device, max_new_tokens: Lengths, accelerator=None, autocast=None, progress=None) -> List[dict]:
    """``predict_batch`` over ``rows`` in batches of ``batch_size``, answered in their order. A
    generative backbone's rows are batched with the rows of adapters that generate as many
    tokens (``max_new_tokens``: one number, or one per adapter), so that each adapter's inputs
    keep the room for the answer it was trained with. With several processes (``accelerator``)
    each one predicts every world-th row and the answers are gathered. ``autocast`` makes the
    context each batch runs in (mixed precision); ``progress`` wraps the batches (a tqdm)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    was_training = model.training
    model.eval()
    generative = model.task_type is not TaskType.SEQ_CLS
    by_length: Dict[int, List[int]] = {}
    for i in range(rank, len(rows), world):
        by_length.setdefault(length_of(max_new_tokens, rows[i][0]) if generative else 0, []).append(i)
    chunks = [(length, members[start:start + batch_size]) for length, members in by_length.items()
              for start in range(0, len(members), batch_size)]
    indexed = []
    try:
        for length, chunk in progress(chunks) if progress else chunks:
            chunk_rows = [rows[i] for i in chunk]
            batch = {k: v.to(device) for k, v in encode_rows(model, tokenizer, tasks, chunk_rows, length).items()}
            with autocast() if autocast else contextlib.nullcontext():
                indexed += zip(chunk, predict_batch(model, tokenizer, tasks, [name for name, _ in chunk_rows], batch,
                                                    length))
    finally:
        model.train(was_training)
    if world > 1:  # each process's share is exact: nothing to drop (gather_for_metrics would cut by the
        # training dataloader's remainder, which is not this loop's)
        from accelerate.utils import gather_object

        indexed = gather_object(indexed)
    return [answer for _, answer in sorted(indexed, key=lambda pair: pair[0])]


def evaluate(model: EPTModel, tokenizer, task: Task, examples: List[Example], batch_size: int, device,
             max_new_tokens: int, accelerator=None, autocast=None, adapter: Optional[str] = None) -> Dict[str, float]:
    """The task's metrics of ``adapter`` (default: the active one) on ``examples``."""
    name = adapter or model.active_adapter
    answers = predict_rows(model, tokenizer, {name: task}, [(name, e) for e in examples], batch_size, device,
                           max_new_tokens, accelerator, autocast)
    groups = [e["group"] for e in examples] if task.group_column else None
    return compute_metrics(task, [a["label"] for a in answers], [e["label"] for e in examples], groups)
