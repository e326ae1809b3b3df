"""The linear probe, the baseline a user tries before any adapter: logistic regression
(scikit-learn) on the frozen backbone's sentence embeddings, the mean of its last hidden states
over each input's real tokens (as sentence encoders such as MiniLM are read), trained on the
same training split, its inverse regularisation C chosen on validation. ``ept-fast compare
--methods … probe`` runs it beside the adapters and writes the same ``metrics.json``."""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import TaskType
from ..heads import mean_over_attended
from ..model import EPTModel
from ..tasks import Example, Task, compute_metrics
from .data import Collator, load_backbone, load_data
from .options import TrainArguments
from .output import hold_output_dir
from .prediction import predict_rows
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
        rows.append(mean_over_attended(encoder(**batch).last_hidden_state, batch["attention_mask"]).cpu())
    return torch.cat(rows).numpy()


def linear_probe(args: TrainArguments) -> dict:
    """Fit the probe for ``args`` (its data, backbone, --max-length, --seed, --device); write
    and return the summary that ``ept-fast train`` would (method "probe", no adapter parameters)."""
    task, *splits = load_data(args)  # the checks come before the output folder is taken
    metric = args.best_model_metric(task)
    if task.is_regression:
        raise ValueError(f"--methods probe: the linear probe is a classifier; task {task.name} is a regression")
    with hold_output_dir(args) as out:
        return _fit(args, out, task, splits, metric)


class LogisticFit:
    """Logistic regressions of ``features[split]`` (n, d) on ``labels[split]``, one per C of
    ``PROBE_C``, fitted on "train"; ``C`` is the one with the best validation ``metric`` (the
    strongest regularisation of equals)."""

    def __init__(self, features: Dict[str, np.ndarray], labels: Dict[str, list], groups: Dict[str, Optional[list]],
                 task: Task, metric: str):
        from sklearn.linear_model import LogisticRegression

        self.features, self.labels, self.groups, self.task = features, labels, groups, task
        self.classifiers = {C: LogisticRegression(C=C, max_iter=2000).fit(features["train"], labels["train"])
                            for C in PROBE_C}
        self.validation = {C: self.score("validation", classifier) for C, classifier in self.classifiers.items()}
        self.C = max(PROBE_C, key=lambda C: self.validation[C][metric])
        self.classifier = self.classifiers[self.C]

    def score(self, split: str, classifier=None) -> Dict[str, float]:
        """The task's metrics of ``classifier`` (default: the chosen one) on ``split``."""
        predictions = (classifier or self.classifier).predict(self.features[split])
        return compute_metrics(self.task, predictions, self.labels[split], self.groups[split])


def head_inputs(model: EPTModel, examples: List[Example], collate: Collator, batch_size: int,
                device: torch.device) -> np.ndarray:
    """(len(examples), d): what the active adapter's head reads for each example, as it is now
    (caught on its way in while the prediction path runs the examples)."""
    name = model.active_adapter
    head = model.head_copies[name][0]
    captured: List[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    try:
        predict_rows(model, collate.tokenizer, {name: collate.task}, [(name, e) for e in examples], batch_size, device,
                     collate.max_new_tokens)
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


def init_head_from_probe(model: EPTModel, task: Task, train: List[Example], validation: List[Example],
                         collate: Collator, metric: str, batch_size: int, device: torch.device) -> dict:
    """``--head-init probe``: the active adapter's linear head starts as the logistic regression
    of what it reads on the training set (C chosen on validation): linear probing, then tuning
    (Kumar et al., 2022), so that training starts where the probe ends. Returns the chosen C and
    its validation metrics."""
    head = model.head_copies[model.active_adapter]
    if len(head) != 1 or not isinstance(head[0], torch.nn.Linear) or task.is_regression:
        raise ValueError(f"--head-init probe: needs a classifier whose head is one linear layer (BERT's "
                         f"classifier); this one is {[type(module).__name__ for module in head]}"
                         f"{' and a regression' if task.is_regression else ''}")
    splits = {"train": train, "validation": validation}
    fit = LogisticFit({name: head_inputs(model, examples, collate, batch_size, device) for name, examples in
                       splits.items()},
                      {name: [e["label"] for e in examples] for name, examples in splits.items()},
                      {name: [e["group"] for e in examples] if task.group_column else None
                       for name, examples in splits.items()}, task, metric)
    coefficients = torch.as_tensor(fit.classifier.coef_, dtype=torch.float32)
    intercepts = torch.as_tensor(fit.classifier.intercept_, dtype=torch.float32)
    if len(fit.classifier.classes_) == 2:  # one logit difference: split it evenly between the two classes
        coefficients = torch.cat([-coefficients, coefficients]) / 2
        intercepts = torch.cat([-intercepts, intercepts]) / 2
    linear = head[0]
    weight = torch.zeros_like(linear.weight, dtype=torch.float32)
    bias = torch.full_like(linear.bias, -1e4, dtype=torch.float32)  # a class the training set lacks: never predicted
    rows = torch.as_tensor(fit.classifier.classes_, dtype=torch.long)
    weight[rows], bias[rows] = coefficients, intercepts
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return {"C": fit.C, "validation": fit.validation[fit.C]}


def _fit(args: TrainArguments, out, task: Task, splits: List[List[Example]], metric: str) -> dict:
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

    fit = LogisticFit(features, labels, groups, task, metric)
    best_C, classifier, validation = fit.C, fit.classifier, fit.validation[fit.C]
    test = fit.score("test")
    summary = {
        "validation": validation, "test": test, "task": task.name, "task_type": task_type.value,
        "metric_for_best_model": metric, "probe_C": best_C,
        "validation_by_C": {str(C): fit.validation[C][metric] for C in PROBE_C},
        # Reported, never used to choose: what each C would have scored (C = 1 is scikit-learn's default).
        "test_by_C": {str(C): fit.score("test", fit.classifiers[C])[metric] for C in PROBE_C},
        "train_examples": len(splits[0]), "validation_examples": len(splits[1]), "test_examples": len(splits[2]),
        "train_time_s": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(),
        "adapter_parameters": 0, "trainable_parameters": classifier.coef_.size + classifier.intercept_.size,
        "adapter": {"method": "probe", "C": best_C},
        "config": args.options(), "versions": versions(),
    }
    write_results(out, summary)
    print(f"linear probe ({task.name}): C={best_C} on validation; test {metric} {test[metric]:.4f}")
    return summary
