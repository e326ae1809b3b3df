"""Scoring: the task's metrics on a split (split across processes, then gathered), and
``ept-fast eval``, which scores a saved adapter the way training scores its best one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..config import TaskType
from ..model import EPTModel
from ..serialization import load_adapter
from ..tasks import Example, Task, compute_metrics, get_task, parse_prediction
from .data import Collator, load_backbone, load_data, report_inputs_cut
from .options import EvalArguments
from .report import check_writable, peak_memory_mb, summary_table, versions, write_results


@torch.no_grad()
def predict(model: EPTModel, examples: List[Example], collate: Collator, batch_size: int, device,
            max_new_tokens: int, accelerator=None) -> List:
    """Predictions for ``examples``, in their order (classifiers: argmax or the regression
    value; LMs: parsed generations). With several processes each one predicts every
    world-th example and the predictions are gathered (``gather_for_metrics``)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    was_training = model.training
    model.eval()
    indices = list(range(rank, len(examples), world))
    predictions = []
    for start in range(0, len(indices), batch_size):
        chunk = [examples[i] for i in indices[start:start + batch_size]]
        if collate.task_type is TaskType.SEQ_CLS:
            batch = {k: v.to(device) for k, v in collate(chunk).items() if k != "labels"}
            logits = model(**batch).logits
            predictions += (logits.squeeze(-1) if collate.task.is_regression else logits.argmax(-1)).tolist()
        else:
            batch = {k: v.to(device) for k, v in collate(chunk, for_generation=True).items() if k != "labels"}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=collate.tokenizer.pad_token_id)
            if collate.task_type is TaskType.CAUSAL_LM:
                out = out[:, batch["input_ids"].shape[1]:]
            texts = collate.tokenizer.batch_decode(out, skip_special_tokens=True)
            predictions += [parse_prediction(collate.task, text) for text in texts]
    model.train(was_training)
    indexed = list(zip(indices, predictions))
    if world > 1:
        indexed = accelerator.gather_for_metrics(indexed, use_gather_object=True)
    return [prediction for _, prediction in sorted(indexed)]


def evaluate(model: EPTModel, examples: List[Example], collate: Collator, batch_size: int, device,
             max_new_tokens: int, accelerator=None) -> Dict[str, float]:
    """The task's metrics on ``examples``."""
    predictions = predict(model, examples, collate, batch_size, device, max_new_tokens, accelerator)
    groups = [e["group"] for e in examples] if collate.task.group_column else None
    return compute_metrics(collate.task, predictions, [e["label"] for e in examples], groups)


def task_metadata(task: Task, split_seed: int) -> dict:
    """What an adapter saves of its task, so that ``ept-fast eval`` scores it the same way: the
    task, and the seed its registry or embedded data was split with."""
    return {**dataclasses.asdict(task), "split_seed": split_seed}


def task_from_metadata(metadata: Optional[dict]) -> Optional[Task]:
    if not metadata:
        return None
    fields = {field.name for field in dataclasses.fields(Task)}
    return Task(**{key: tuple(value) if isinstance(value, list) else value for key, value in metadata.items()
                   if key in fields})


def score_adapter(args: EvalArguments) -> dict:
    """``ept-fast eval``: the adapter's metrics on the validation and test splits of its task
    (or of --task / the files given), written as training writes them."""
    files = load_adapter(args.adapter)
    out = Path(args.output_dir or Path(args.adapter) / "eval")
    check_writable(out, "--output-dir")
    saved_task = task_from_metadata(files.task)
    task = get_task(args.task) if args.task else saved_task
    if task is None and not (args.validation_file or args.test_file):
        raise ValueError(f"--adapter: {args.adapter} records no task; pass --task or --validation-file/--test-file")
    if any((args.validation_file, args.test_file)) and not args.train_file and task is None:
        raise ValueError("--validation-file/--test-file: the adapter records no task to read them with; pass --task")
    split_seed = (files.task or {}).get("split_seed")
    if split_seed is not None and not any((args.train_file, args.validation_file, args.test_file)):
        if args.seed != split_seed:
            print(f"eval: the split of seed {split_seed}, the one the adapter was trained with "
                  f"(not --seed {args.seed})")
        args = dataclasses.replace(args, seed=split_seed)
    if args.task_type is None:  # as trained (a decoder classifier's would be guessed as a causal LM)
        args = dataclasses.replace(args, task_type=files.config.get("task_type"))
    task, _, validation, test = load_data(args, task, files_needed=())
    if not (validation or test):
        raise ValueError("--validation-file/--test-file: nothing to score; give at least one of them")
    source = args.model or files.config.get("base_model_name_or_path")
    backbone, tokenizer, task_type = load_backbone(args, task, source)
    device = args.run_device()
    model = EPTModel.from_pretrained(backbone, args.adapter).to(device)
    collate = Collator(tokenizer, task_type, task, model.active_peft_config.max_length, args.max_new_tokens)
    inputs_cut = report_inputs_cut(collate, {"validation": validation, "test": test})
    with args.autocast(device):
        summary = {
            split: evaluate(model, examples, collate, args.eval_batch_size, device, args.max_new_tokens)
            for split, examples in (("validation", validation), ("test", test)) if examples
        }
    summary.update({
        "inputs_cut_to_max_length": inputs_cut, "split_seed": args.seed,
        "task": task.name, "task_type": task_type.value, "adapter": str(args.adapter),
        "validation_examples": len(validation), "test_examples": len(test),
        "peak_memory_mb": peak_memory_mb(), "config": dataclasses.asdict(args), "versions": versions(),
    })
    write_results(out, summary)
    print(summary_table(summary, task))
    print(f"ept-fast eval: wrote metrics.json and all_results.json to {out}")
    return summary
