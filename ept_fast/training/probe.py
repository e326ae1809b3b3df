"""The linear probe, the baseline a user tries before any adapter: logistic regression
(scikit-learn) on the frozen backbone's sentence embeddings, the mean of its last hidden states
over each input's real tokens (as sentence encoders such as MiniLM are read), trained on the
same training split, its inverse regularisation C chosen on validation. ``ept-fast compare
--methods … probe`` runs it beside the adapters and writes the same ``metrics.json``."""

from __future__ import annotations

import dataclasses
import time
from typing import List

import numpy as np
import torch

from ..config import TaskType
from ..tasks import Example, Task, compute_metrics
from .data import Collator, load_backbone, load_data
from .loop import hold_output_dir
from .options import TrainArguments
from .report import peak_memory_mb, versions, write_results

PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)


@torch.no_grad()
def sentence_embeddings(backbone, examples: List[Example], collate: Collator, batch_size: int,
                        device: torch.device) -> np.ndarray:
    """(len(examples), d): the mean of the backbone's last hidden states over each input's
    attended tokens (inputs cut to the collator's max_length, as the adapters see them)."""
    encoder = backbone.base_model.eval().to(device)
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = {key: value.to(device) for key, value in collate(examples[start:start + batch_size]).items()
                 if key != "labels"}
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu())
    return torch.cat(rows).numpy()


def linear_probe(args: TrainArguments) -> dict:
    """Fit the probe for ``args`` (its data, backbone, --max-length, --seed, --device); write
    and return the summary that ``ept-fast train`` would (method "probe", no adapter parameters)."""
    task, *splits = load_data(args)  # the checks come before the output folder is taken
    metric = args.metric_for_best_model or task.metrics[0]
    if metric not in task.metrics:
        raise ValueError(f"--metric-for-best-model: task {task.name} reports {list(task.metrics)}, got {metric!r}")
    if task.is_regression:
        raise ValueError(f"--methods probe: the linear probe is a classifier; task {task.name} is a regression")
    with hold_output_dir(args) as out:
        return _fit(args, out, task, splits, metric)


def _fit(args: TrainArguments, out, task: Task, splits: List[List[Example]], metric: str) -> dict:
    from sklearn.linear_model import LogisticRegression

    backbone, tokenizer, task_type = load_backbone(args, task)
    if task_type is not TaskType.SEQ_CLS:
        raise ValueError(f"--methods probe: the linear probe reads an encoder's sentence embeddings; this backbone "
                         f"is {task_type.value}")
    started = time.perf_counter()
    collate = Collator(tokenizer, task_type, task, args.adapter_config().max_length, args.max_new_tokens)
    device = args.run_device()
    names = ("train", "validation", "test")
    features = {name: sentence_embeddings(backbone, examples, collate, args.eval_batch_size, device)
                for name, examples in zip(names, splits)}
    labels = {name: [e["label"] for e in examples] for name, examples in zip(names, splits)}
    groups = {name: [e["group"] for e in examples] if task.group_column else None
              for name, examples in zip(names, splits)}

    def score(classifier, split: str) -> dict:
        return compute_metrics(task, classifier.predict(features[split]), labels[split], groups[split])

    fits = {}
    for C in PROBE_C:
        classifier = LogisticRegression(C=C, max_iter=2000).fit(features["train"], labels["train"])
        fits[C] = (score(classifier, "validation"), classifier)
    best_C = max(PROBE_C, key=lambda C: fits[C][0][metric])  # the first of equals: the strongest regularisation
    validation, classifier = fits[best_C]
    test = score(classifier, "test")
    summary = {
        "validation": validation, "test": test, "task": task.name, "task_type": task_type.value,
        "metric_for_best_model": metric, "probe_C": best_C,
        "validation_by_C": {str(C): fits[C][0][metric] for C in PROBE_C},
        # Reported, never used to choose: what each C would have scored (C = 1 is scikit-learn's default).
        "test_by_C": {str(C): score(fits[C][1], "test")[metric] for C in PROBE_C},
        "train_examples": len(splits[0]), "validation_examples": len(splits[1]), "test_examples": len(splits[2]),
        "train_time_s": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(),
        "adapter_parameters": 0, "trainable_parameters": classifier.coef_.size + classifier.intercept_.size,
        "adapter": {"method": "probe", "C": best_C},
        "config": dataclasses.asdict(args), "versions": versions(),
    }
    write_results(out, summary)
    print(f"linear probe ({task.name}): C={best_C} on validation; test {metric} {test[metric]:.4f}")
    return summary
