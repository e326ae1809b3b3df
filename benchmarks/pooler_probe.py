"""What BERT's frozen pooler costs a linear head (docs/results.md): a logistic regression (C chosen
on validation) on three readouts of the frozen packaged MiniLM, per task of ``../shared/data``:
the mean of the last hidden states over the real tokens, that mean through the pooler (what the
head read with ``--readout mean``), and the first token ([CLS]). With ``--layers``, the mean over
the real tokens of each layer's output instead (the embeddings' output is layer 0), and of their
average over layers 1 to L. Inputs are cut to 128 tokens and training to the first 4,000 rows, as
in the six-task suite.

    python benchmarks/pooler_probe.py [--data ../shared/data] [--layers] [TASK ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, matthews_corrcoef
from transformers import AutoModel, AutoTokenizer

from ept_fast.offline import minilm_path
from ept_fast.training.probe import PROBE_C

SPLITS = ("train", "validation", "test")


def read_split(folder: Path, split: str):
    with open(folder / f"{split}.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows = rows[:4000] if split == "train" else rows
    return [row["text"] for row in rows], [row["label"] for row in rows]


@torch.no_grad()
def readouts(model, tokenizer, texts, layers: bool = False):
    """{readout: (len(texts), d)} for the mean, the mean through the pooler, and [CLS]; with
    ``layers``, for each layer's mean ("layer k") and their average over layers 1 to L."""
    means, first = [], []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
        hidden = model(**batch, output_hidden_states=True).hidden_states  # L + 1 of (b, S, d)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        means.append(torch.stack([(layer * mask).sum(1) / mask.sum(1) for layer in hidden], dim=1))
        first.append(hidden[-1][:, 0])
    means = torch.cat(means)  # (n, L + 1, d)
    if layers:
        found = {f"layer {k}": means[:, k].numpy() for k in range(means.shape[1])}
        return {**found, "layers 1-L": means[:, 1:].mean(1).numpy()}
    mean = means[:, -1]
    return {"mean": mean.numpy(), "pooler(mean)": model.pooler(mean.unsqueeze(1)).numpy(),
            "[CLS]": torch.cat(first).numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", default=["cr", "trec", "subj", "cola"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--layers", action="store_true", help="probe each layer's mean instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    for number, task in enumerate(args.tasks):
        data = {split: read_split(args.data / task, split) for split in SPLITS}
        features = {split: readouts(model, tokenizer, data[split][0], args.layers) for split in SPLITS}
        if number == 0:
            columns = [*features["test"], "readout chosen on validation"]
            print("| task: test (C), validation | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
        score = matthews_corrcoef if task == "cola" else accuracy_score
        cells, chosen = [], None
        for readout in features["test"]:
            fits = [LogisticRegression(C=C, max_iter=3000).fit(features["train"][readout], data["train"][1])
                    for C in PROBE_C]
            validation = [score(data["validation"][1], fit.predict(features["validation"][readout])) for fit in fits]
            best = fits[validation.index(max(validation))]
            test = score(data["test"][1], best.predict(features["test"][readout]))
            cells.append(f"{test:.4f} (C={best.C:g}), {max(validation):.4f}")
            if chosen is None or max(validation) > chosen[1]:
                chosen = (readout, max(validation), test)
        print(f"| {task} | " + " | ".join(cells) + f" | {chosen[0]}: {chosen[2]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
