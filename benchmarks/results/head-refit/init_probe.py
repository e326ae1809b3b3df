"""One-off: how far does the prompt's start move what EPT's head reads? For each prompt start, a
logistic regression (C on validation) on the head's input before any training step, beside the
same on the frozen sentence embedding (the probe), and the mean cosine between each training
example's two feature vectors. Prints (C, validation, test, cosine) per start.

    PYTHONPATH=. python benchmarks/results/head-refit/init_probe.py "" "$(cat benchmarks/results/head-refit/inits.json)"

(the first argument: the task's data options, empty for the embedded BBC News)."""
import json
import sys
import time

import numpy as np
import torch

from ept_fast.cli import parse_train_args
from ept_fast.model import get_ept_model
from ept_fast.training.data import Collator, load_backbone, load_data
from ept_fast.training.engine import _set_dropout
from ept_fast.training.probe import LogisticFit, head_inputs, sentence_embeddings

SUITE = ["--method", "ept", "--param_budget", "38000", "--max-train-samples", "4000"]


def fit(features, labels, task, metric):
    result = LogisticFit(features, labels, {split: None for split in features}, task, metric)
    return result.C, result.validation[result.C][metric], result.score("test")[metric]


def main(task_argv, starts):
    args = parse_train_args(SUITE + task_argv)
    task, train, validation, test = load_data(args)
    splits = {"train": train, "validation": validation, "test": test}
    metric = args.best_model_metric(task)
    labels = {split: [e["label"] for e in examples] for split, examples in splits.items()}
    device = torch.device("cpu")
    frozen = None
    for label, extra in starts:
        run = parse_train_args(SUITE + task_argv + extra)
        torch.manual_seed(run.seed)
        backbone, tokenizer, task_type = load_backbone(run, task)
        config = run.adapter_config(task, task_type, backbone.get_input_embeddings().embedding_dim,
                                    encoder_classifier=True)
        _set_dropout(backbone.base_model, 0.0)
        collate = Collator(tokenizer, task_type, task, config.max_length, run.max_new_tokens)
        if frozen is None:
            frozen = {split: sentence_embeddings(backbone, examples, collate, 64, device)
                      for split, examples in splits.items()}
            print(task.name, "frozen", (*fit(frozen, labels, task, metric), 1.0), flush=True)
        model = get_ept_model(backbone, config, tokenizer=tokenizer).eval()
        started = time.time()
        features = {split: head_inputs(model, examples, collate, 64, device) for split, examples in splits.items()}
        f, g = features["train"], frozen["train"]
        cosine = float(np.mean((f * g).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(g, axis=1)))
        print(task.name, label, config.prompt_init.value, repr(config.prompt_init_text),
              (*fit(features, labels, task, metric), cosine), f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(), json.loads(sys.argv[2]))
