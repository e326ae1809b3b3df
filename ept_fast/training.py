"""The training loop behind ``ept-fast train``: data, model, AdamW with DePT's two learning rates,
linear warmup and decay, clipping, accumulation, evaluation, best-checkpoint selection, early
stopping, checkpoints with exact resume, and data parallelism through HF Accelerate.

Determinism: the example order of epoch e is a permutation seeded by (seed, e), and the torch
RNG (dropout) is reseeded from (seed, step, rank) before every optimizer step, so a run resumed
from a checkpoint (adapter, optimizer, scheduler, step) continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .config import EPTConfig, TaskType
from .model import EPTModel, get_ept_model
from .serialization import atomic_write, load_adapter
from .tasks import (
    DEFAULT_TASK, Task, compute_metrics, custom_task, format_rows, get_task, load_bbc_news, load_from_hub,
    parse_prediction, read_rows,
)

CHECKPOINT = "checkpoint"
BEST = "best"


@dataclasses.dataclass
class TrainArguments:
    """Every option of ``ept-fast train`` (the command line and config files use these names)."""

    model: Optional[str] = None  # HF name or local path; None: the packaged all-MiniLM-L6-v2
    task: Optional[str] = None  # a registry task; None: BBC News, or the user's files
    task_type: Optional[str] = None  # inferred from the model class when None
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    output_dir: str = "runs/ept-bbc-news"
    overwrite: bool = False
    resume: bool = False
    method: str = "ept"
    num_virtual_tokens: int = 20
    max_length: int = 128  # positions of the low-rank update; inputs are tokenized to at most this
    r: Optional[int] = 8
    lora_alpha: float = 8.0
    num_spaces: Optional[int] = 4
    space_rank: int = 8
    prompt_init: str = "TEXT"
    prompt_init_text: str = "Classify the topic of this news article:"
    backend: str = "auto"
    lr: float = 3e-2  # prompt, fusion, projections, gate and head
    lr_lowrank: float = 3e-3  # A and B
    weight_decay: float = 1e-5
    warmup_ratio: float = 0.06
    num_epochs: float = 1.0
    max_steps: Optional[int] = None  # overrides num_epochs
    batch_size: int = 16
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    eval_steps: int = 25
    save_steps: int = 50
    early_stopping_patience: Optional[int] = None  # evaluations without improvement
    max_new_tokens: int = 8  # generation length for seq2seq / causal evaluation
    mixed_precision: str = "no"  # no | bf16 | fp16 (CUDA)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 42
    limit_train_examples: Optional[int] = None
    limit_eval_examples: Optional[int] = None

    def __post_init__(self):
        if self.method in ("dept", "pt") and self.num_spaces == TrainArguments.num_spaces:
            self.num_spaces = None  # the baselines fix K = 0 (and r = 0 for pt)
        if self.method == "pt" and self.r == TrainArguments.r:
            self.r = None
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision: expected no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device: expected auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: cuda was requested, but no CUDA device is available here")
        if self.mixed_precision != "no" and not torch.cuda.is_available():
            raise ValueError(f"--mixed-precision {self.mixed_precision}: needs a CUDA device; use 'no' on the CPU")


# ---------------------------------------------------------------------- data
def load_data(args: TrainArguments):
    """(task, train, validation, test) examples."""
    files = [args.train_file, args.validation_file, args.test_file]
    if any(files):
        if not all(files):
            raise ValueError("--train-file, --validation-file and --test-file: give all three (or none)")
        rows = [read_rows(path) for path in files]
        if args.task:
            task = get_task(args.task)
        else:
            columns = [args.text_column] + ([args.text_pair_column] if args.text_pair_column else [])
            labels = [row.get(args.label_column) for row in rows[0]]
            if any(label is None for label in labels):
                raise ValueError(f"{args.train_file}: label column {args.label_column!r} is absent "
                                 f"(columns: {sorted(rows[0][0]) if rows[0] else []})")
            is_float = any("." in str(label) for label in labels)
            task = custom_task(1 if is_float else max(int(label) for label in labels) + 1, columns)
        splits = [format_rows(task, r, path, args.label_column) for r, path in zip(rows, files)]
    else:
        task = get_task(args.task or DEFAULT_TASK)
        splits = list(load_bbc_news(args.seed) if task.name == DEFAULT_TASK else load_from_hub(task, args.seed))
    if args.limit_train_examples:
        splits[0] = splits[0][: args.limit_train_examples]
    if args.limit_eval_examples:
        splits[1], splits[2] = splits[1][: args.limit_eval_examples], splits[2][: args.limit_eval_examples]
    return (task, *splits)


def load_backbone(args: TrainArguments, task: Task):
    """(backbone, tokenizer, task type) for ``--model`` (default: the packaged MiniLM)."""
    from transformers import (
        AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer,
    )

    from .offline import minilm_path

    source = args.model or str(minilm_path())
    config = AutoConfig.from_pretrained(source)
    if args.task_type:
        task_type = TaskType(args.task_type)
    elif config.is_encoder_decoder:
        task_type = TaskType.SEQ_2_SEQ_LM
    elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or [])):
        task_type = TaskType.CAUSAL_LM
    else:
        task_type = TaskType.SEQ_CLS
    if task_type is TaskType.SEQ_CLS:
        problem = "regression" if task.is_regression else "single_label_classification"
        # The head is trained (and saved with the adapter), so one of another size is replaced.
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=task.num_labels,
                                                                   problem_type=problem, ignore_mismatched_sizes=True)
    else:
        loader = AutoModelForSeq2SeqLM if task_type is TaskType.SEQ_2_SEQ_LM else AutoModelForCausalLM
        model = loader.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, task_type


class Collator:
    """Examples -> a tokenized batch for the task type (inputs cut to ``max_length`` tokens)."""

    def __init__(self, tokenizer, task_type: TaskType, task: Task, max_length: int, max_new_tokens: int):
        self.tokenizer, self.task_type, self.task = tokenizer, task_type, task
        self.max_length, self.max_new_tokens = max_length, max_new_tokens

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

    def _causal(self, examples, for_generation):
        tok = self.tokenizer
        budget = self.max_length - self.max_new_tokens
        sources = [tok(e["source"] + " answer:", truncation=True, max_length=budget)["input_ids"] for e in examples]
        targets = [[] if for_generation else tok(" " + e["target"])["input_ids"] + [tok.eos_token_id] for e in examples]
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


# ----------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: EPTModel, examples, collate: Collator, task: Task, batch_size: int, device, max_new_tokens: int):
    """The task's metrics on ``examples`` (classifiers: argmax; LMs: parsed generations)."""
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        if collate.task_type is TaskType.SEQ_CLS:
            batch = {k: v.to(device) for k, v in collate(chunk).items() if k != "labels"}
            logits = model(**batch).logits
            predictions += (logits.squeeze(-1) if task.is_regression else logits.argmax(-1)).tolist()
        else:
            batch = {k: v.to(device) for k, v in collate(chunk, for_generation=True).items() if k != "labels"}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=collate.tokenizer.pad_token_id)
            if collate.task_type is TaskType.CAUSAL_LM:
                out = out[:, batch["input_ids"].shape[1]:]
            texts = collate.tokenizer.batch_decode(out, skip_special_tokens=True)
            predictions += [parse_prediction(task, text) for text in texts]
    model.train(was_training)
    return compute_metrics(task, predictions, [e["label"] for e in examples])


# ------------------------------------------------------------- checkpointing
@dataclasses.dataclass
class TrainState:
    step: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evaluations_without_improvement: int = 0
    history: List[dict] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    examples_seen: int = 0


def save_checkpoint(directory: Path, model: EPTModel, optimizer, scheduler, state: TrainState, args) -> None:
    """Adapter + optimizer + scheduler + step (+ the state that picks the best checkpoint), written
    into a fresh folder and swapped in by renames, so a crash never leaves no checkpoint."""
    final = directory / CHECKPOINT
    staging, previous = directory / f".{CHECKPOINT}.tmp", directory / f".{CHECKPOINT}.old"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": dataclasses.asdict(state), "args": dataclasses.asdict(args)}, staging / "training_state.pt")
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(directory: Path, model: EPTModel, optimizer, scheduler) -> TrainState:
    folder = directory / CHECKPOINT
    if not (folder / "training_state.pt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {directory} (expected {folder / 'training_state.pt'})")
    _, tensors = load_adapter(folder)
    model.load_adapter_state_dict(tensors, str(folder))
    saved = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])


# --------------------------------------------------------------------- loop
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


def _metric_value(metrics: Dict[str, float], task: Task) -> float:
    return metrics[task.metrics[0]]


def _prepare_output_dir(args: TrainArguments) -> Path:
    out = Path(args.output_dir)
    if args.resume:
        if not (out / CHECKPOINT).is_dir():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint to resume from")
    elif out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output-dir: {out} already holds a run; pass --overwrite to replace it or "
                              f"--resume to continue it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(args: TrainArguments, stop_after_steps: Optional[int] = None) -> dict:
    """Run the whole job; returns the metrics written to ``metrics.json``. ``stop_after_steps``
    ends the loop early after a checkpoint (to simulate an interruption)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    out = _prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()
    torch.manual_seed(args.seed)
    task, train_set, validation_set, test_set = load_data(args)
    backbone, tokenizer, task_type = load_backbone(args, task)
    config = EPTConfig(
        num_virtual_tokens=args.num_virtual_tokens, max_length=args.max_length, r=args.r, lora_alpha=args.lora_alpha,
        num_spaces=args.num_spaces, space_rank=args.space_rank, prompt_init=args.prompt_init,
        prompt_init_text=args.prompt_init_text, method=args.method, backend=args.backend, task_type=task_type,
    )
    model = get_ept_model(backbone, config, tokenizer=tokenizer)
    model.to(accelerator.device)
    collate = Collator(tokenizer, task_type, task, args.max_length, args.max_new_tokens)

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = args.batch_size * world
    per_epoch = math.ceil(len(train_set) / global_batch)
    total_steps = args.max_steps or max(1, math.ceil(args.num_epochs * per_epoch / args.gradient_accumulation_steps))
    optimizer = torch.optim.AdamW(model.param_groups(args.lr, args.lr_lowrank), weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    state = load_checkpoint(out, model, optimizer, scheduler) if args.resume else TrainState()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    parameters = [p for p in model.parameters() if p.requires_grad]

    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train")
    while state.step < total_steps:
        started = time.perf_counter()
        torch.manual_seed(args.seed * 1_000_003 + state.step * 101 + rank)  # dropout: a function of the step
        wrapped.train()
        loss_sum = 0.0
        for k in range(args.gradient_accumulation_steps):
            j = state.step * args.gradient_accumulation_steps + k
            indices = _micro_batch_indices(j, len(train_set), global_batch, rank, world, args.batch_size, args.seed)
            batch = {key: v.to(accelerator.device) for key, v in collate([train_set[i] for i in indices]).items()}
            last = k == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(wrapped):
                with accelerator.autocast():
                    loss = wrapped(**batch).loss / args.gradient_accumulation_steps
                accelerator.backward(loss)
            loss_sum += loss.item()
        accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.train_seconds += time.perf_counter() - started
        state.examples_seen += global_batch * args.gradient_accumulation_steps
        record = {"step": state.step, "loss": loss_sum}
        progress.update(1)
        progress.set_postfix(loss=f"{loss_sum:.4f}", ex_per_s=f"{state.examples_seen / state.train_seconds:.1f}")

        if state.step % args.eval_steps == 0 or state.step == total_steps:
            metrics = evaluate(model, validation_set, collate, task, args.eval_batch_size, accelerator.device,
                               args.max_new_tokens)
            record["validation"] = metrics
            value = _metric_value(metrics, task)
            if state.best_metric is None or value > state.best_metric:
                state.best_metric, state.best_step, state.evaluations_without_improvement = value, state.step, 0
                if accelerator.is_main_process:
                    model.save_pretrained(out / BEST)
            else:
                state.evaluations_without_improvement += 1
        state.history.append(record)
        stopping = (args.early_stopping_patience is not None
                    and state.evaluations_without_improvement >= args.early_stopping_patience)
        if accelerator.is_main_process and (state.step % args.save_steps == 0 or stopping or state.step == total_steps
                                            or state.step == stop_after_steps):
            save_checkpoint(out, model, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                            scheduler, state, args)
        accelerator.wait_for_everyone()
        if stopping or state.step == stop_after_steps:
            break
    progress.close()
    if stop_after_steps is not None and state.step == stop_after_steps and state.step < total_steps:
        return {"stopped_at_step": state.step}

    model.load_adapter_state_dict(load_adapter(out / BEST)[1], str(out / BEST))
    results = {
        "validation": evaluate(model, validation_set, collate, task, args.eval_batch_size, accelerator.device,
                               args.max_new_tokens),
        "test": evaluate(model, test_set, collate, task, args.eval_batch_size, accelerator.device,
                         args.max_new_tokens),
    }
    checksum = torch.stack([p.detach().double().sum() for p in model.prompt_encoder.parameters()]).sum()
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    summary = {
        **results,
        "task": task.name, "task_type": task_type.value, "best_step": state.best_step, "steps": state.step,
        "train_examples": len(train_set), "train_time_s": state.train_seconds,
        "train_examples_per_s": state.examples_seen / max(state.train_seconds, 1e-9),
        "peak_memory_mb": _peak_memory_mb(), "trainable_parameters": model.get_nb_trainable_parameters()[0],
        "replica_adapter_checksums": checksums, "processes": world,
        "config": dataclasses.asdict(args), "versions": _versions(), "history": state.history,
    }
    if accelerator.is_main_process:
        model.save_pretrained(out)
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        plot_history(state.history, task, out / "training.png")
        print(summary_table(summary, task))
    accelerator.wait_for_everyone()
    return summary


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _versions() -> dict:
    import transformers

    from . import __version__

    return {"ept_fast": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def plot_history(history: List[dict], task: Task, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot([h["step"] for h in history], [h["loss"] for h in history], linewidth=0.8)
    loss_axis.set(xlabel="step", ylabel="training loss", title="loss")
    evaluated = [h for h in history if "validation" in h]
    name = task.metrics[0]
    metric_axis.plot([h["step"] for h in evaluated], [h["validation"][name] for h in evaluated], marker="o")
    metric_axis.set(xlabel="step", ylabel=name, title=f"validation {name}")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def summary_table(summary: dict, task: Task) -> str:
    rows = [(f"{split} {name}", f"{summary[split][name]:.4f}") for split in ("validation", "test") for name in task.metrics]
    rows += [("best step", str(summary["best_step"])), ("train time", f"{summary['train_time_s']:.1f} s"),
             ("examples/s", f"{summary['train_examples_per_s']:.1f}"),
             ("peak memory", f"{summary['peak_memory_mb']:.0f} MB"),
             ("trainable params", f"{summary['trainable_parameters']:,d}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{'':-<{width + 16}}"] + [f"{k:<{width}}  {v:>12}" for k, v in rows] + [f"{'':-<{width + 16}}"])
