"""Keep what table.py needs of a run folder of the snapshot: its metrics.json, and from the
``dumps/step-N.npz`` files one ``predictions.npz`` holding, at each validation, every validation
example's predicted class and log-probability of its label, and every test example's predicted
class.

    python benchmarks/results/selection/pack.py RUNS_DIR   (the probe_suite.sh output folder)
"""

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def pack(run: Path, kept: Path) -> None:
    steps, dumps = zip(*sorted((int(path.stem.split("-")[1]), path) for path in run.glob("dumps/step-*.npz")))
    loaded = [np.load(path) for path in dumps]
    labels = loaded[0]["validation_labels"]
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "metrics.json", kept / "metrics.json")
    np.savez_compressed(
        kept / "predictions.npz", steps=np.array(steps),
        validation_labels=labels, test_labels=loaded[0]["test_labels"],
        validation_predicted=np.stack([d["validation_probs"].argmax(1) for d in loaded]).astype(np.int8),
        validation_label_log_probability=np.stack([np.log(np.maximum(
            d["validation_probs"][np.arange(len(labels)), labels], 1e-300)) for d in loaded]).astype(np.float32),
        test_predicted=np.stack([d["test_probs"].argmax(1) for d in loaded]).astype(np.int8))


def main(runs: Path) -> None:
    for run in sorted(runs.glob("*/*-seed*")):
        if (run / "dumps").is_dir() and (run / "metrics.json").is_file():
            pack(run, HERE / run.parent.name / run.name)
    for compare in runs.glob("*/compare.json"):
        shutil.copy(compare, HERE / compare.parent.name / "compare.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
