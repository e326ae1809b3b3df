"""The training loop behind ``ept-fast train``: AdamW with DePT's two learning rates, linear
warm-up and decay, clipping, accumulation, validation, best-checkpoint selection, early
stopping, checkpoints with exact resume, and data parallelism through HF Accelerate.

Determinism: the example order of epoch e is a permutation seeded by (seed, e), and the torch
RNG (dropout) is reseeded from (seed, step, rank) before every optimizer step, so a run resumed
from a checkpoint (adapter, optimizer, scheduler, step) continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..budget import adapter_parameters
from ..config import TaskType
from ..heads import is_encoder_classifier
from ..model import get_ept_model
from ..optimizer import param_groups
from ..serialization import load_adapter
from .checkpoints import BEST, TrainState, checkpoint_folder, load_checkpoint, save_checkpoint
from .data import Collator, load_backbone, load_data, report_inputs_cut
from .evaluation import evaluate, task_metadata
from .options import TrainArguments
from .output import hold_output_dir, output_dir
from .probe import init_head_from_probe
from .report import (
    peak_memory_mb,
    plot_history,
    summary_table,
    trainer_state,
    versions,
    write_json,
    write_results,
)


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being a finite number."""


@functools.lru_cache(maxsize=2)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> Tuple[int, ...]:
    return tuple(torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def _micro_batch_indices(j: int, n_examples: int, global_batch: int, rank: int, world: int, batch: int, seed: int):
    """Example indices of this rank's part of global micro-batch j (epochs reshuffled by seed)."""
    per_epoch = math.ceil(n_examples / global_batch)
    epoch, position = divmod(j, per_epoch)
    order = _epoch_order(n_examples, seed, epoch)
    chunk = list(order[position * global_batch:(position + 1) * global_batch])
    chunk += order[: global_batch - len(chunk)]  # the last batch of an epoch wraps, so all ranks get work
    return chunk[rank * batch:(rank + 1) * batch]


def train(args: TrainArguments, stop_after_steps: Optional[int] = None) -> dict:
    """Run the whole job; returns the summary written to ``metrics.json``. ``stop_after_steps``
    ends the loop early after a checkpoint (to simulate an interruption)."""
    from accelerate import Accelerator

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    held = hold_output_dir(args) if accelerator.is_main_process else contextlib.nullcontext(output_dir(args))
    with held as out:
        accelerator.wait_for_everyone()
        return _train(args, accelerator, out, stop_after_steps)


def _train(args: TrainArguments, accelerator, out: Path, stop_after_steps: Optional[int]) -> dict:
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    task, train_set, validation_set, test_set = load_data(args)
    metric = args.metric_for_best_model or task.metrics[0]
    if metric not in task.metrics:
        raise ValueError(f"--metric-for-best-model: task {task.name} reports {list(task.metrics)}, got {metric!r}")
    backbone, tokenizer, task_type = load_backbone(args, task)
    token_dim = backbone.get_input_embeddings().embedding_dim
    config = args.adapter_config(task, task_type, token_dim,
                                 encoder_classifier=task_type is TaskType.SEQ_CLS and is_encoder_classifier(backbone))
    model = get_ept_model(backbone, config, tokenizer=tokenizer)
    model.task_metadata = task_metadata(task, split_seed=args.seed)
    model.to(accelerator.device)
    collate = Collator(tokenizer, task_type, task, model.active_peft_config.max_length, args.max_new_tokens)
    splits = {"train": train_set, "validation": validation_set, "test": test_set}
    inputs_cut = report_inputs_cut(collate, splits) if accelerator.is_main_process else {}
    device = accelerator.device
    scoring = dict(batch_size=args.eval_batch_size, device=device, max_new_tokens=args.max_new_tokens,
                   accelerator=accelerator)
    head_init = None
    if args.head_init == "probe" and not args.resume:  # a resumed run's head comes from its checkpoint
        head_init = init_head_from_probe(model, task, train_set, validation_set, collate, metric,
                                         args.eval_batch_size, device)
        if accelerator.is_main_process:
            print(f"--head-init probe: the head starts as the logistic regression of what it reads "
                  f"(C={head_init['C']}, validation {metric} {head_init['validation'][metric]:.4f})")

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = args.batch_size * world
    per_epoch = math.ceil(len(train_set) / global_batch)
    steps_per_epoch = per_epoch / args.gradient_accumulation_steps
    total_steps = args.max_steps or max(1, math.ceil(args.num_epochs * per_epoch / args.gradient_accumulation_steps))
    lr, lr_lowrank = args.learning_rates()
    optimizer = torch.optim.AdamW(param_groups(model, lr, lr_lowrank), weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    state = load_checkpoint(checkpoint_folder(out, args.resume), model, optimizer, scheduler,
                            dataclasses.asdict(args)) if args.resume else TrainState()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def log_state():
        write_json(out / "trainer_state.json", trainer_state(state.history, total_steps, steps_per_epoch, metric,
                                                             state.best_metric, state.best_step, str(out / BEST)))

    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train")
    while state.step < total_steps:
        started = time.perf_counter()
        torch.manual_seed(args.seed * 1_000_003 + state.step * 101 + rank)  # dropout: a function of the step
        wrapped.train()
        loss_sum = 0.0
        for k in range(args.gradient_accumulation_steps):
            j = state.step * args.gradient_accumulation_steps + k
            indices = _micro_batch_indices(j, len(train_set), global_batch, rank, world, args.batch_size, args.seed)
            batch = {key: v.to(device) for key, v in collate([train_set[i] for i in indices]).items()}
            last = k == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(wrapped):
                with accelerator.autocast():
                    loss = wrapped(**batch).loss / args.gradient_accumulation_steps
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"the training loss is {loss.item()} at step {state.step + 1}; try lower learning rates "
                        f"(--lr {lr}, --lr-lowrank {lr_lowrank}), a smaller --max-grad-norm, or "
                        f"--mixed-precision no; the last checkpoint in {out} is kept")
                accelerator.backward(loss)
            loss_sum += loss.item()
        accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.train_seconds += time.perf_counter() - started
        state.examples_seen += global_batch * args.gradient_accumulation_steps
        record = {"step": state.step, "loss": loss_sum, "learning_rate": learning_rate}
        progress.update(1)
        progress.set_postfix(loss=f"{loss_sum:.4f}", ex_per_s=f"{state.examples_seen / state.train_seconds:.1f}")

        if state.step % args.eval_steps == 0 or state.step == total_steps:
            metrics = evaluate(model, validation_set, collate, **scoring)
            record["validation"] = metrics
            if accelerator.is_main_process:
                scores = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
                progress.write(f"step {state.step}: validation {scores}")
            if state.best_metric is None or metrics[metric] > state.best_metric:
                state.best_metric, state.best_step = metrics[metric], state.step
                state.evaluations_without_improvement = 0
                if accelerator.is_main_process:
                    model.save_pretrained(out / BEST)
            else:
                state.evaluations_without_improvement += 1
        state.history.append(record)
        if accelerator.is_main_process and "validation" in record:
            log_state()
        stopping = (args.early_stopping_patience is not None
                    and state.evaluations_without_improvement >= args.early_stopping_patience)
        if accelerator.is_main_process and (state.step % args.save_steps == 0 or stopping or state.step == total_steps
                                            or state.step == stop_after_steps):
            save_checkpoint(out, model, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                            scheduler, state, dataclasses.asdict(args))
        accelerator.wait_for_everyone()
        if stopping or state.step == stop_after_steps:
            break
    progress.close()
    if stop_after_steps is not None and state.step == stop_after_steps and state.step < total_steps:
        return {"stopped_at_step": state.step}

    model.load_adapter_state_dict(load_adapter(out / BEST).tensors, str(out / BEST))
    results = {"validation": evaluate(model, validation_set, collate, **scoring),
               "test": evaluate(model, test_set, collate, **scoring)}
    checksum = torch.stack([p.detach().double().sum() for p in model.prompt_encoder.parameters()]).sum()
    checksums = accelerator.gather(checksum.reshape(1).to(device)).tolist()
    config = model.active_peft_config
    summary = {
        **results,
        "task": task.name, "task_type": task_type.value, "metric_for_best_model": metric,
        "best_step": state.best_step, "steps": state.step, "epoch": state.step / steps_per_epoch,
        "train_examples": len(train_set), "validation_examples": len(validation_set), "test_examples": len(test_set),
        "inputs_cut_to_max_length": inputs_cut, "head_init": head_init,
        "train_loss": sum(h["loss"] for h in state.history) / max(len(state.history), 1),
        "train_time_s": state.train_seconds,
        "train_examples_per_s": state.examples_seen / max(state.train_seconds, 1e-9),
        "peak_memory_mb": peak_memory_mb(), "trainable_parameters": model.get_nb_trainable_parameters()[0],
        "adapter_parameters": adapter_parameters(config, token_dim),
        "adapter": {"method": config.method.value, "readout": config.readout.value,
                    "m": config.num_virtual_tokens, "n": config.max_length,
                    "r": config.r, "K": config.num_spaces, "h": config.space_rank},
        "replica_adapter_checksums": checksums, "processes": world,
        "config": dataclasses.asdict(args), "versions": versions(), "history": state.history,
    }
    if accelerator.is_main_process:
        model.save_pretrained(out)
        write_results(out, summary)
        log_state()
        plot_history(state.history, metric, out / "training.png", state.best_step, results["test"].get(metric))
        print(summary_table(summary, task))
        print(f"ept-fast train: wrote the adapter, metrics.json, all_results.json, trainer_state.json and "
              f"training.png to {out}")
    accelerator.wait_for_everyone()
    return summary
