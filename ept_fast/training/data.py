"""The examples and the backbone of a run: task splits from the registry, the embedded BBC
News or the user's files; the backbone with the head the task needs; the collator."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..config import TaskType, infer_task_type
from ..tasks import (
    DEFAULT_TASK,
    Example,
    Task,
    custom_task,
    format_rows,
    get_task,
    load_bbc_news,
    load_from_hub,
    read_rows,
)
from .options import DataArguments, ModelArguments

Splits = Tuple[Task, List[Example], List[Example], List[Example]]


def load_data(args: DataArguments, task: Optional[Task] = None, files_needed=("train", "validation", "test")) -> Splits:
    """(task, train, validation, test). Files (``--train-file`` …) follow the registry task's
    format when ``--task`` names one, else a task is made from the training file's labels;
    ``task`` (a saved adapter's) fixes it instead. A split not in ``files_needed`` may be
    absent and comes back empty."""
    paths = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    if any(paths.values()):
        missing = [f"--{split}-file" for split in files_needed if not paths[split]]
        if missing:
            raise ValueError(f"{', '.join(missing)}: needed with the other data files, but not given")
        rows = {split: read_rows(path) if path else [] for split, path in paths.items()}
        empty = [f"--{split}-file {paths[split]}" for split in paths if paths[split] and not rows[split]]
        if empty:
            raise ValueError(f"{', '.join(empty)}: no rows")
        if task is None and args.task:
            task = get_task(args.task)
        elif task is None:
            columns = [args.text_column] + ([args.text_pair_column] if args.text_pair_column else [])
            task = custom_task(rows["train"], args.label_column, columns, args.train_file, args.label_names,
                               getattr(args, "metric_for_best_model", None))
        splits = [format_rows(task, rows[split], paths[split], args.label_column) for split in paths]
    else:
        task = task or get_task(args.task or DEFAULT_TASK)
        splits = list(load_bbc_news(args.seed) if task.name == DEFAULT_TASK else load_from_hub(task, args.seed))
    if args.limit_train_examples:
        splits[0] = splits[0][: args.limit_train_examples]
    if args.limit_eval_examples:
        splits[1], splits[2] = splits[1][: args.limit_eval_examples], splits[2][: args.limit_eval_examples]
    return (task, *splits)


def report_inputs_cut(collate: Collator, splits: Dict[str, List[Example]]) -> Dict[str, int]:
    """Per split, how many inputs the batches cut to --max-length; printed when any are."""
    cut = {split: collate.inputs_cut(examples) for split, examples in splits.items()}
    if any(cut.values()):
        room = collate.max_length - collate.input_limit
        limit = f"--max-length={collate.max_length}" + (f" less --max-new-tokens={room}" if room else "")
        print(f"inputs longer than {collate.input_limit} tokens ({limit}), cut to it: "
              + ", ".join(f"{split} {cut[split]} of {len(examples)}" for split, examples in splits.items()))
    return cut


def task_metadata(task: Task, split_seed: int, max_new_tokens: int) -> dict:
    """What an adapter saves of its task, so that ``ept-fast eval`` scores it the same way: the
    task, the seed its registry or embedded data was split with, and the tokens generated per
    answer (``ModelArguments.generation_length``)."""
    return {**dataclasses.asdict(task), "split_seed": split_seed, "max_new_tokens": max_new_tokens}


def task_from_metadata(metadata: Optional[dict]) -> Optional[Task]:
    if not metadata:
        return None
    fields = {field.name for field in dataclasses.fields(Task)}
    return Task(**{key: tuple(value) if isinstance(value, list) else value for key, value in metadata.items()
                   if key in fields})


def load_backbone(args: ModelArguments, task: Task, source: Optional[str] = None):
    """(backbone, tokenizer, task type) for ``source`` (default: ``--model``, else the packaged
    MiniLM). A checkpoint without a head of its own (an encoder) becomes a classifier."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from ..offline import MINILM_NAME, packaged_copy, portable_name

    source = packaged_copy(source or args.model or MINILM_NAME)
    if Path(source).exists():  # a local folder: recorded absolute, so the adapter finds it from anywhere
        source = str(Path(source).resolve())
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise ValueError(f"--model: cannot load a backbone from {source!r} (not a model folder here, and hub "
                         f"downloads need the network): {error}") from None
    task_type = TaskType(args.task_type) if args.task_type else infer_task_type(config, default=TaskType.SEQ_CLS)
    if task_type is TaskType.SEQ_CLS:
        problem = "regression" if task.is_regression else "single_label_classification"
        labels = {"id2label": dict(enumerate(task.label_names))} if task.label_names else {}
        # The head is trained (and saved with the adapter), so one of another size is replaced, and
        # transformers' report that the backbone has no such head says nothing to a user of ept_fast.
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=task.num_labels, problem_type=problem, ignore_mismatched_sizes=True, **labels)
    else:
        loader = AutoModelForSeq2SeqLM if task_type is TaskType.SEQ_2_SEQ_LM else AutoModelForCausalLM
        try:
            model = loader.from_pretrained(source)
        except ValueError as error:  # transformers': "Unrecognized configuration class …"
            raise ValueError(f"--model: {source} ({type(config).__name__}) cannot be a {task_type.value} backbone "
                             f"({str(error).splitlines()[0][:200]}); an adapter is served on the kind of model it "
                             f"was trained on") from None
    model.config.name_or_path = portable_name(source)  # what the adapter records as its base model
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, task_type


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs errors only, within the block."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


class Collator:
    """Examples -> a tokenized batch for the task type. Inputs are cut to ``max_length`` tokens,
    as DePT's and PEFT's training scripts cut them (the library itself never cuts: it refuses
    rows longer than the adapter's n); ``inputs_cut`` counts them, and the runs report it."""

    def __init__(self, tokenizer, task_type: TaskType, task: Task, max_length: int, max_new_tokens: int):
        self.tokenizer, self.task_type, self.task = tokenizer, task_type, task
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        if task_type is TaskType.CAUSAL_LM and tokenizer.eos_token_id is None:
            raise ValueError(f"--model: a causal LM learns to end each answer with its tokenizer's end-of-sequence "
                             f"token, and this tokenizer ({type(tokenizer).__name__}) has none; give the model a "
                             f"tokenizer with an eos_token")
        if self.input_limit < 1:
            raise ValueError(f"--max-new-tokens: a causal LM's max_length ({max_length}) holds the input and the "
                             f"answer, and {max_new_tokens} new tokens leave no room for the input; give fewer than "
                             f"{max_length}")

    @property
    def input_limit(self) -> int:
        """The most input tokens a row keeps (a causal LM's leave room for the answer)."""
        return self.max_length - (self.max_new_tokens if self.task_type is TaskType.CAUSAL_LM else 0)

    def input_lengths(self, examples: List[dict]) -> List[int]:
        """Each example's input tokens before any cut (what ``input_limit`` is compared with)."""
        if not examples:
            return []
        tok = self.tokenizer
        if self.task_type is TaskType.SEQ_CLS:
            pairs = [e["text_pair"] for e in examples] if examples[0]["text_pair"] is not None else None
            encoded = tok([e["text"] for e in examples], pairs, verbose=False)
        elif self.task_type is TaskType.SEQ_2_SEQ_LM:
            encoded = tok([e["source"] for e in examples], verbose=False)
        else:
            encoded = tok([e["source"] + " answer:" for e in examples], verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def inputs_cut(self, examples: List[dict]) -> int:
        """How many of ``examples`` are longer than ``input_limit`` tokens: the batches cut them to it."""
        return sum(length > self.input_limit for length in self.input_lengths(examples))

    def __call__(self, examples: List[dict], for_generation: bool = False) -> Dict[str, torch.Tensor]:
        tok = self.tokenizer
        if self.task_type is TaskType.SEQ_CLS:
            pairs = [e["text_pair"] for e in examples] if examples[0]["text_pair"] is not None else None
            batch = tok([e["text"] for e in examples], pairs, truncation=True, max_length=self.max_length,
                        padding=True, return_tensors="pt")
            dtype = torch.float32 if self.task.is_regression else torch.long
            batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=dtype)
            return dict(batch)
        if self.task_type is TaskType.SEQ_2_SEQ_LM:
            batch = tok([e["source"] for e in examples], truncation=True, max_length=self.max_length, padding=True,
                        return_token_type_ids=False, return_tensors="pt")
            targets = tok([e["target"] for e in examples], padding=True, return_tensors="pt")["input_ids"]
            batch["labels"] = targets.masked_fill(targets == tok.pad_token_id, -100)
            return dict(batch)
        return self._causal(examples, for_generation)

    def _answer_ids(self, target: str) -> List[int]:
        """A causal LM's answer as it trains on it: the target's tokens, then end-of-sequence."""
        return self.tokenizer(" " + target)["input_ids"] + [self.tokenizer.eos_token_id]

    def check_answers_fit(self, examples: List[dict]) -> None:
        """A causal LM trains on each input followed by its answer, in max_length positions of
        which max_new_tokens are the answer's: a longer answer is refused before training."""
        if self.task_type is not TaskType.CAUSAL_LM or not examples:
            return
        longest = max(dict.fromkeys(e["target"] for e in examples), key=lambda target: len(self._answer_ids(target)))
        tokens = len(self._answer_ids(longest))
        if tokens > self.max_new_tokens:
            raise ValueError(f"--max-new-tokens: a causal LM trains on each input followed by its answer, and the "
                             f"answer {longest!r} takes {tokens} tokens (the end-of-sequence token included), more "
                             f"than the {self.max_new_tokens} kept for it; give --max-new-tokens {tokens} or more")

    def _causal(self, examples, for_generation):
        tok = self.tokenizer
        budget = self.max_length - self.max_new_tokens
        sources = [tok(e["source"] + " answer:", truncation=True, max_length=budget)["input_ids"] for e in examples]
        targets = [[] if for_generation else self._answer_ids(e["target"]) for e in examples]
        width = max(len(s) + len(t) for s, t in zip(sources, targets))
        ids = torch.full((len(examples), width), tok.pad_token_id)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100)
        for row, (s, t) in enumerate(zip(sources, targets)):
            sequence = s + t
            start = width - len(sequence)  # left padding, so generation continues each row
            ids[row, start:] = torch.tensor(sequence)
            mask[row, start:] = 1
            if t:
                labels[row, start + len(s):] = torch.tensor(t)
        batch = {"input_ids": ids, "attention_mask": mask}
        if not for_generation:
            batch["labels"] = labels
        return batch
