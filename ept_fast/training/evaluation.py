"""``ept-fast eval``: a saved adapter's metrics on its task, through the prediction path that
training scores its best checkpoint with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..model import EPTModel
from ..serialization import load_adapter
from ..tasks import get_task
from .data import Collator, load_backbone, load_data, report_inputs_cut, task_from_metadata
from .options import EvalArguments
from .prediction import evaluate
from .report import check_writable, peak_memory_mb, summary_table, versions, write_results


def score_adapter(args: EvalArguments) -> dict:
    """``ept-fast eval``: the adapter's metrics on the validation and test splits of its task
    (or of --task / the files given), written as training writes them."""
    files = load_adapter(args.adapter)
    out = Path(args.output_dir or Path(args.adapter) / "eval")
    if (out / "trainer_state.json").is_file():
        raise FileExistsError(f"--output_dir: {out} holds a training run, whose metrics.json and all_results.json "
                              f"eval would replace; choose another folder (the default is <adapter>/eval)")
    written = [name for name in ("metrics.json", "all_results.json") if (out / name).is_file()]
    if written and not args.overwrite:
        raise FileExistsError(f"--output_dir: {out} holds {' and '.join(written)} already (an earlier eval, or "
                              f"another run's); pass --overwrite to replace them, or choose another folder")
    check_writable(out, "--output_dir")
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
    args = dataclasses.replace(args, max_new_tokens=args.generation_length([files.task]))
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
    summary = {split: evaluate(model, tokenizer, task, examples, args.eval_batch_size, device, args.max_new_tokens,
                               autocast=lambda: args.autocast(device))
               for split, examples in (("validation", validation), ("test", test)) if examples}
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
