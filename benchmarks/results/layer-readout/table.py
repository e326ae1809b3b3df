"""The table of docs/results.md's layer-readout pilot, from the runs' metrics.json files: EPT and
the head alone, seed 42, with the head reading the mean over the real tokens of the average of
MiniLM's six layers' outputs (``layers-mean/``, three tasks) or of its fourth layer's output
(``layer4/``), beside the default readout (the last layer's; the suite's runs).

    python benchmarks/results/layer-readout/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, run_documents  # noqa: E402

HERE = Path(__file__).resolve().parent
COLUMNS = [("last layer (default)", {"ept": RESULTS / "suite-head-clip", "head": RESULTS / "suite-embedding"}),
           ("mean of layers 1-6", {"ept": HERE / "layers-mean", "head": HERE / "layers-mean"}),
           ("layer 4", {"ept": HERE / "layer4", "head": HERE / "layer4"})]


def cell(folder: Path, task: str, method: str) -> str:
    if not (folder / task / f"{method}-seed42" / "metrics.json").is_file():
        return "not run"
    run = run_documents(folder, task, method, (42,))[0]
    metric = run["metric_for_best_model"]
    return f"{run['validation'][metric]:.4f} / {run['test'][metric]:.4f}"


def main() -> None:
    for method, name in (("ept", "EPT"), ("head", "the head alone")):
        print(f"\n{name}, seed 42 (validation / test):\n")
        print("| task | " + " | ".join(column for column, _ in COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 1) + "|")
        for task in TASKS:
            print(f"| {task} | " + " | ".join(cell(folders[method], task, method) for _, folders in COLUMNS) + " |")


if __name__ == "__main__":
    main()
