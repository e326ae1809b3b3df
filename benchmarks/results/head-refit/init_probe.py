"""One-off: how far does the prompt at its initialisation move what the head reads?
For each prompt init, a logistic regression (C on validation) on the head's input at init,
against the same on the frozen sentence embedding (the probe). Also the mean cosine between
each example's features at init and its frozen features."""
import sys, json, time
import numpy as np, torch
from ept_fast.cli import parse_train_args
from ept_fast.model import get_ept_model
from ept_fast.training.data import Collator, load_backbone, load_data
from ept_fast.training.engine import is_encoder_classifier, _set_dropout
from ept_fast.training.probe import head_inputs, sentence_embeddings, LogisticFit

task_argv = sys.argv[1].split()
inits = json.loads(sys.argv[2])  # list of [label, extra argv]
args = parse_train_args(["--method", "ept", "--param_budget", "38000", "--max-train-samples", "4000"] + task_argv)
torch.manual_seed(args.seed)
task, train, val, test = load_data(args)
splits = {"train": train, "validation": val, "test": test}
metric = args.best_model_metric(task)
labels = {k: [e["label"] for e in v] for k, v in splits.items()}
groups = {k: None for k in splits}
device = torch.device("cpu")
out = {}
frozen = None
for label, extra in inits:
    a = parse_train_args(["--method", "ept", "--param_budget", "38000", "--max-train-samples", "4000"] + task_argv + extra)
    torch.manual_seed(a.seed)
    backbone, tok, tt = load_backbone(a, task)
    config = a.adapter_config(task, tt, backbone.get_input_embeddings().embedding_dim, encoder_classifier=True)
    _set_dropout(backbone.base_model, 0.0)
    collate = Collator(tok, tt, task, config.max_length, a.max_new_tokens)
    if frozen is None:
        frozen = {k: sentence_embeddings(backbone, v, collate, 64, device) for k, v in splits.items()}
        fit = LogisticFit(frozen, labels, groups, task, metric)
        out["frozen"] = (fit.C, fit.validation[fit.C][metric], fit.score("test")[metric], 1.0)
        print(task.name, "frozen", out["frozen"], flush=True)
    model = get_ept_model(backbone, config, tokenizer=tok).eval()
    t = time.time()
    feats = {k: head_inputs(model, v, collate, 64, device) for k, v in splits.items()}
    fit = LogisticFit(feats, labels, groups, task, metric)
    f, g = feats["train"], frozen["train"]
    cos = float(np.mean((f * g).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(g, axis=1)))
    out[label] = (fit.C, fit.validation[fit.C][metric], fit.score("test")[metric], cos)
    print(task.name, label, config.prompt_init.value, repr(config.prompt_init_text), out[label], f"{time.time()-t:.0f}s", flush=True)
