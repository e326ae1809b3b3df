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
from ..tasks import Example, compute_metrics
from .data import Collator, load_backbone, load_data
from .loop import prepare_output_dir
from .options import TrainArguments
from .report import peak_memory_mb, versions, write_results

PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)


@torch.no_grad()
def sentence_embeddings(backbone, examples: List[Example], collate: Collator, batch_size: int) -> np.ndarray:
    """(len(examples), d): the mean of the backbone's last hidden states over each input's
    attended tokens (inputs cut to the collator's max_length, as the adapters see them)."""
    encoder = backbone.base_model.eval()
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        batch.pop("labels")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float())
    return torch.cat(rows).numpy()


def linear_probe(args: TrainArguments) -> dict:
    """Fit the probe for ``args`` (its data, backbone, --max-length, --seed); write and return
    the summary that ``ept-fast train`` would (method "probe", no adapter parameters)."""
    from sklearn.linear_model import LogisticRegression

    out = prepare_output_dir(args)
    task, train_set, validation_set, test_set = load_data(args)
    metric = args.metric_for_best_model or task.metrics[0]
    backbone, tokenizer, task_type = load_backbone(args, task)
    if task_type is not TaskType.SEQ_CLS or task.is_regression:
        raise ValueError(f"--methods probe: the linear probe is a classifier of sentence embeddings; this run is "
                         f"{task_type.value}{' regression' if task.is_regression else ''}")
    started = time.perf_counter()
    collate = Collator(tokenizer, task_type, task, args.adapter_config().max_length, args.max_new_tokens)
    features = {split: sentence_embeddings(backbone, examples, collate, args.eval_batch_size)
                for split, examples in (("train", train_set), ("validation", validation_set), ("test", test_set))}
    labels = {split: [e["label"] for e in examples]
              for split, examples in (("train", train_set), ("validation", validation_set), ("test", test_set))}
    fits = {}
    for C in PROBE_C:
        classifier = LogisticRegression(C=C, max_iter=2000).fit(features["train"], labels["train"])
        fits[C] = (compute_metrics(task, classifier.predict(features["validation"]), labels["validation"]), classifier)
    best_C = max(PROBE_C, key=lambda C: fits[C][0][metric])  # the first of equals: the strongest regularisation
    validation, classifier = fits[best_C]
    test = compute_metrics(task, classifier.predict(features["test"]), labels["test"])
    summary = {
        "validation": validation, "test": test, "task": task.name, "task_type": task_type.value,
        "metric_for_best_model": metric, "probe_C": best_C,
        "validation_by_C": {str(C): fits[C][0][metric] for C in PROBE_C},
        # Reported, never used to choose: what each C would have scored (C = 1 is scikit-learn's default).
        "test_by_C": {str(C): compute_metrics(task, fits[C][1].predict(features["test"]), labels["test"])[metric]
                      for C in PROBE_C},
        "train_examples": len(train_set), "validation_examples": len(validation_set), "test_examples": len(test_set),
        "train_time_s": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(),
        "adapter_parameters": 0, "trainable_parameters": classifier.coef_.size + classifier.intercept_.size,
        "adapter": {"method": "probe", "C": best_C},
        "config": dataclasses.asdict(args), "versions": versions(),
    }
    write_results(out, summary)
    print(f"linear probe ({task.name}): C={best_C} on validation; test {metric} {test[metric]:.4f}")
    return summary
