"""Per-dimension spread of what EPT's head reads (p, prompted) against the frozen sentence
embedding (f), on a task's validation split: the std over the examples, the mean distance to the
centroid, and the class means' distance to it.

    python benchmarks/results/spread-floor/spread.py ADAPTER_DIR DATA_DIR   (a MiniLM classifier)
"""
import csv
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ept_fast import EPTModel
from ept_fast.offline import minilm_path

adapter, data = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{data}/validation.csv")))
labels = sorted({r["label"] for r in rows})
tok = AutoTokenizer.from_pretrained(minilm_path())
backbone = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(labels))
model = EPTModel.from_pretrained(backbone, adapter).eval()
captured = []
model.head_copies["default"][0].register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
P, F = [], []
with torch.no_grad():
    for s in range(0, len(rows), 64):
        batch = tok([r["text"] for r in rows[s:s + 64]], truncation=True, max_length=128, padding=True,
                    return_tensors="pt")
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        P.append(captured.pop())
        h = backbone.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        F.append((h * m).sum(1) / m.sum(1))
P, F = torch.cat(P), torch.cat(F)
y = torch.tensor([labels.index(r["label"]) for r in rows])
for name, X in (("prompted p", P), ("frozen f", F)):
    std = X.std(0)
    dist = (X - X.mean(0)).norm(dim=1).mean()
    # spread along the class direction vs total
    mu = torch.stack([X[y == k].mean(0) for k in range(len(labels))])
    between = (mu - X.mean(0)).norm(dim=1).mean()
    print(f"{name}: mean per-dim std {std.mean():.4f} (median {std.median():.4f}), mean distance to centroid "
          f"{dist:.3f}, class means' distance to centroid {between:.4f}, ratio {between / dist:.4f}")
print("p std / f std per dim: median", (P.std(0) / F.std(0)).median().item(), "fraction of dims below 1:",
      ((P.std(0) / F.std(0)) < 1).float().mean().item())
