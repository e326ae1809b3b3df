"""``ept-fast train``: one run of transformers' Trainer (``EPTTrainer``) on the command line's
options, and what the command adds around it.

Trainer does the optimisation (DePT's two learning rates, warm-up and decay, clipping,
accumulation, mixed precision, data parallelism through Accelerate), the checkpoints (adapter
files, optimizer, scheduler and RNG states, ``trainer_state.json``; read back with
``weights_only=True``), resuming, the best checkpoint, early stopping and the reporting
integrations. The command adds the data and the adapter, validation through the one
prediction path (generation for seq2seq and causal LMs), the refusals that keep a user's work
(a used or locked output folder, a resume with other options), and the reports."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..budget import adapter_parameters
from ..config import TaskType
from ..heads import is_encoder_classifier
from ..model import get_ept_model
from ..trainer import EPTTrainer
from .data import Collator, load_backbone, load_data, report_inputs_cut, task_metadata
from .options import TrainArguments
from .output import (
    HEAD_ONLY_CLIPPING,
    LOAD_BEST_HONOURED,
    OPTIONS_NAME,
    CheckpointWriteError,
    check_head_only_clipping,
    check_no_default_since,
    check_same_options,
    check_same_spread_floor,
    foreign_checkpoint_folders,
    hold_output_dir,
    is_complete,
    read_options,
    remove_checkpoints,
    remove_partial_checkpoint,
    resume_folder,
)
from .prediction import evaluate
from .probe import init_head_from_probe
from .report import peak_memory_mb, plot_history, summary_table, versions, write_json, write_results


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being a finite number."""


class RunTrainer(EPTTrainer):
    """``EPTTrainer`` as ``ept-fast train`` runs it: validation is the task's metrics through the
    prediction path (``evaluate``), a non-finite loss stops the run, the first ``head_only_steps``
    optimizer steps train the head alone, each checkpoint also holds the run's options (JSON) and
    a failed checkpoint write says what is kept."""

    def __init__(self, *args, task, validation_set, run_options: dict, max_new_tokens: int,
                 head_only_steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.validation_set = task, validation_set
        self.run_options, self.max_new_tokens = run_options, max_new_tokens
        self.label_names = ["labels"]  # --label_names are the task's class names, not Trainer's input keys
        self.head_only_steps = head_only_steps
        head = {id(p) for p in self.model.head_copies.parameters()}
        self.held = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head]

    def score(self, examples) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        return evaluate(model, self.processing_class, self.task, examples, self.args.per_device_eval_batch_size,
                        self.args.device, self.max_new_tokens, self.accelerator,
                        self.accelerator.autocast if self.args.bf16 or self.args.fp16 else None)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = {f"{metric_key_prefix}_{name}": value
                   for name, value in self.score(self.validation_set if eval_dataset is None else eval_dataset).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            lr, lr_lowrank = self.args.learning_rate, self.lowrank_learning_rate
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.state.global_step + 1}; try lower learning rates "
                f"(--learning_rate {lr}, --lr_lowrank {lr_lowrank}), a smaller --max_grad_norm, or no --bf16/--fp16; "
                f"the checkpoints in {self.args.output_dir} are kept")
        if self.state.global_step < self.head_only_steps:
            # Dropped here, before clipping, so that the clipped norm is the head's: the optimizer
            # leaves a parameter without a gradient (and its state) as it was.
            for p in self.held:
                p.grad = None
        return loss

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_json(Path(output_dir or self.args.output_dir) / OPTIONS_NAME, self.run_options)

    def _save_checkpoint(self, model, trial) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:  # a full disk: OSError, torch.save's RuntimeError, the tokenizers' Exception
            if is_complete(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"):
                raise  # the checkpoint was written whole: the error is another one
            kept = remove_partial_checkpoint(Path(self.args.output_dir), self.state.global_step)
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {self.state.global_step} into {self.args.output_dir} "
                f"({error}); is the disk full? "
                + (f"{kept} is kept: free some space, then --resume" if kept else "there is no earlier checkpoint")
            ) from None


class ValidateAndKeepBest(TrainerCallback):
    """Validation at the last step too, and a checkpoint at every new best when the best one is
    kept (so that it is on disk, whatever --save_steps); ``trainer_state.json`` in the output folder after
    each validation, for the tools that read it as the run goes."""

    def __init__(self, metric: str):
        self.metric = f"eval_{metric}"

    def on_step_end(self, args, state, control, **kwargs):
        # transformers >= 5.2x validates the last step itself; the image on the GPU machine may be older.
        if state.global_step >= state.max_steps and args.eval_strategy == "steps":
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if args.load_best_model_at_end and (state.best_metric is None or metrics[self.metric] > state.best_metric):
            control.should_save = True
        self._write_state(args, state)

    def on_save(self, args, state, control, **kwargs):  # the best metric is known by then
        self._write_state(args, state)

    @staticmethod
    def _write_state(args, state):
        if state.is_world_process_zero:
            state.save_to_json(os.path.join(args.output_dir, "trainer_state.json"))


class Progress(ProgressCallback):
    """Trainer's bar, with the loss and the training examples per second on it (time in the
    training steps only), and one line per validation."""

    def __init__(self, examples_per_step: int):
        super().__init__()
        self.examples_per_step, self.seconds, self.steps = examples_per_step, 0.0, 0
        self.started: Optional[float] = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self.started
        self.steps += 1
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    @property
    def examples_per_second(self) -> float:
        return self.steps * self.examples_per_step / max(self.seconds, 1e-9)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None:
            return
        if "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", ex_per_s=f"{self.examples_per_second:.1f}")
        scores = {key[len("eval_"):]: value for key, value in logs.items() if key.startswith("eval_")}
        if scores:
            self.training_bar.write(f"step {state.global_step}: validation "
                                    + ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))


def train(args: TrainArguments, stop_after_steps: Optional[int] = None) -> dict:
    """Run the whole job; returns the summary written to ``metrics.json``. ``stop_after_steps``
    ends the run after the checkpoint of that step (to simulate an interruption)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with hold_output_dir(args, main_process(args)) as out:
        return _train(args, out, stop_after_steps)


def _set_dropout(module: torch.nn.Module, p: float) -> None:
    """Every dropout layer of ``module`` drops with probability ``p`` (attention dropout included:
    transformers' attention reads its dropout layer's ``p``)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.dropout._DropoutNd):
            layer.p = p


def _dropout_rate(module: torch.nn.Module) -> Optional[float]:
    """The probability every dropout layer of ``module`` drops with; None if they differ."""
    rates = {layer.p for layer in module.modules() if isinstance(layer, torch.nn.modules.dropout._DropoutNd)}
    return rates.pop() if len(rates) == 1 else None


class _StopAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


def _train(args: TrainArguments, out: Path, stop_after_steps: Optional[int]) -> dict:
    torch.manual_seed(args.seed)
    task, train_set, validation_set, test_set = load_data(args)
    metric = args.best_model_metric(task)
    checkpoint = resume_folder(out, args.resume_from_checkpoint)
    run_options = {**args.options(), **HEAD_ONLY_CLIPPING, **LOAD_BEST_HONOURED}
    saved_options = None if checkpoint is None else read_options(checkpoint)
    if checkpoint is not None:
        check_same_options(saved_options, run_options, f"the checkpoint {checkpoint}")
    backbone, tokenizer, task_type = load_backbone(args, task)
    token_dim = backbone.get_input_embeddings().embedding_dim
    encoder_classifier = task_type is TaskType.SEQ_CLS and is_encoder_classifier(backbone)
    batch = args.per_device_train_batch_size * args.world_size
    batches_per_epoch = len(train_set) // batch if args.dataloader_drop_last else math.ceil(len(train_set) / batch)
    if batches_per_epoch == 0:
        raise ValueError(f"--dataloader_drop_last: the {len(train_set)} training examples are fewer than one batch "
                         f"({batch}), and the last partial batch is dropped: nothing would train; give a smaller "
                         f"--per_device_train_batch_size, or leave --dataloader_drop_last out")
    steps = args.max_steps if args.max_steps > 0 else \
        math.ceil(math.ceil(batches_per_epoch / args.gradient_accumulation_steps) * args.num_train_epochs)
    head_only_steps = args.head_only_steps_for(encoder_classifier, steps, type(backbone).__name__)
    config = args.adapter_config(task, task_type, token_dim, encoder_classifier=encoder_classifier)
    backbone_dropout = args.backbone_dropout_for(encoder_classifier)
    spread_floor = args.spread_floor_for(config.task_type, config.readout)
    run_options["spread_floor"] = spread_floor  # resolved, as the learning rates are
    if checkpoint is not None:
        own_dropout = _dropout_rate(backbone.base_model)
        resolved = {"head_only_steps": head_only_steps, "spread_floor": spread_floor,
                    "backbone_dropout": own_dropout if backbone_dropout is None else backbone_dropout}
        check_no_default_since(saved_options, resolved,
                               {"head_only_steps": 0, "backbone_dropout": own_dropout, "spread_floor": 0},
                               f"the checkpoint {checkpoint}")
        check_head_only_clipping(saved_options, checkpoint, head_only_steps)
        check_same_spread_floor(saved_options.get("spread_floor"), spread_floor, f"the checkpoint {checkpoint}",
                                "--resume_from_checkpoint")
    if backbone_dropout is not None:
        _set_dropout(backbone.base_model, backbone_dropout)
    model = get_ept_model(backbone, config, tokenizer=tokenizer)
    model.task_metadata = task_metadata(task, split_seed=args.seed, max_new_tokens=args.max_new_tokens)
    model.to(args.device)
    collate = Collator(tokenizer, task_type, task, config.max_length, args.max_new_tokens)
    collate.check_answers_fit(train_set)
    inputs_cut = report_inputs_cut(collate, {"train": train_set, "validation": validation_set, "test": test_set}) \
        if main_process(args) else {}
    head_init = None
    if args.head_init == "probe" and checkpoint is None:  # a resumed run's head comes from its checkpoint
        head_init = init_head_from_probe(model, task, train_set, validation_set, collate, metric,
                                         args.per_device_eval_batch_size, args.device)
        if main_process(args):
            print(f"--head_init probe: the head starts as the logistic regression of what it reads "
                  f"(C={head_init['C']}, validation {metric} {head_init['validation'][metric]:.4f})")

    if args.warmup_steps >= max(steps, 1):
        raise ValueError(f"--warmup_steps: {args.warmup_steps:g} steps of warm-up is the whole run ({steps} steps): "
                         f"nothing would train at its learning rate; give fewer, or a fraction below 1")
    if args.warmup_steps < 1 and math.ceil(args.warmup_steps * steps) >= steps:
        # Trainer rounds a fraction up: on a run this short it would warm up through every step, the
        # first at a learning rate of 0; a fraction leaves the last step at the full rate.
        args.warmup_steps = steps - 1
    if args.early_stopping_patience is not None and args.eval_strategy == "no":
        raise ValueError("--early_stopping_patience: stops on validation, but --eval_strategy is 'no'")
    foreign = foreign_checkpoint_folders(out) if args.save_total_limit else []
    if foreign:  # Trainer's rotation deletes every checkpoint-N folder, whoever wrote it
        raise ValueError(f"--save_total_limit: Trainer would delete the oldest checkpoint-N folders of {out}, and "
                         f"{[folder.name for folder in foreign]} there were not written by a run; move them, or leave "
                         f"--save_total_limit out")
    if args.overwrite and checkpoint is None and main_process(args):  # the run is set up: the old one goes
        remove_checkpoints(out)
    lr, lr_lowrank = args.learning_rates()
    args.learning_rate = lr
    args.restore_callback_states_from_checkpoint = True  # early stopping's count goes on where it was
    args.metric_for_best_model, args.greater_is_better = f"eval_{metric}", True
    examples_per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    progress = Progress(examples_per_step)
    callbacks = [ValidateAndKeepBest(metric)]
    if args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(args.early_stopping_patience))
    if stop_after_steps is not None:
        callbacks.append(_StopAfter(stop_after_steps))
    trainer = RunTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                         data_collator=collate, processing_class=tokenizer, lowrank_learning_rate=lr_lowrank,
                         callbacks=callbacks, task=task, validation_set=validation_set, run_options=run_options,
                         max_new_tokens=args.max_new_tokens, head_only_steps=head_only_steps,
                         spread_floor=spread_floor)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    state = trainer.state
    if stop_after_steps is not None and state.global_step == stop_after_steps < state.max_steps:
        return {"stopped_at_step": state.global_step}

    results = {"validation": trainer.score(validation_set), "test": trainer.score(test_set)}
    best_loaded = args.load_best_model_at_end and state.best_model_checkpoint is not None  # as Trainer decides
    kept_step = state.best_global_step if best_loaded else state.global_step
    steps_per_epoch = batches_per_epoch / args.gradient_accumulation_steps
    adapter = model.active_peft_config
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    summary = {
        **results,
        "task": task.name, "task_type": task_type.value, "metric_for_best_model": metric,
        "best_step": state.best_global_step, "kept_step": kept_step, "steps": state.global_step,
        "epoch": state.global_step / steps_per_epoch,
        "train_examples": len(train_set), "validation_examples": len(validation_set), "test_examples": len(test_set),
        "inputs_cut_to_max_length": inputs_cut, "head_init": head_init, "head_only_steps": head_only_steps,
        "backbone_dropout": backbone_dropout, "spread_floor": spread_floor,
        "train_loss": sum(losses) / max(len(losses), 1),
        "train_time_s": progress.seconds, "train_examples_per_s": progress.examples_per_second,
        "peak_memory_mb": peak_memory_mb(), "trainable_parameters": model.get_nb_trainable_parameters()[0],
        "adapter_parameters": adapter_parameters(adapter, token_dim),
        "adapter": {"method": adapter.method.value, "readout": adapter.readout.value, "m": adapter.num_virtual_tokens,
                    "n": adapter.max_length, "r": adapter.r, "K": adapter.num_spaces, "h": adapter.space_rank},
        "learning_rates": {"prompt_and_head": lr, "lowrank": lr_lowrank},
        "processes": args.world_size, "config": run_options, "versions": versions(), "history": state.log_history,
    }
    if main_process(args):
        model.save_pretrained(out)
        write_results(out, summary)
        state.save_to_json(str(out / "trainer_state.json"))
        plot_history(state.log_history, metric, out / "training.png", state.best_global_step,
                     results["test"].get(metric) if kept_step == state.best_global_step else None)
        print(summary_table(summary, task))
        print(f"ept-fast train: wrote the adapter, metrics.json, all_results.json, trainer_state.json and "
              f"training.png to {out}")
    return summary


def main_process(args: TrainArguments) -> bool:
    return args.process_index == 0
