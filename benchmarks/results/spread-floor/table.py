"""The tables of docs/results.md's spread-floor section, from the runs' metrics.json files: EPT
trained with a floor under the spread of what its head reads (VICReg's variance term) against
the default (the suite's runs), with the rule of PLAN.md applied to the mean validation scores:
the seed-42 pilot, then seeds 42-44; then seeds 42-46, run after the rule had decided.

    python benchmarks/results/spread-floor/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, accuracy_tasks_means, listed, rule_table, scores  # noqa: E402

HERE = Path(__file__).resolve().parent
COLUMNS = [("EPT (default)", RESULTS / "suite-head-clip", "ept"), ("EPT, spread floor", HERE, "ept")]

if __name__ == "__main__":
    print("The pilot, seed 42:\n")
    rule_table(COLUMNS, (42,), budget=37_893)
    print("\nSeeds 42-44 (the rule's):\n")
    rule_table(COLUMNS, (42, 43, 44), budget=37_893)
    print("\nSeeds 42-46 (a look decided after the rule's result, not a second decision), validation / test:\n")
    seeds = (42, 43, 44, 45, 46)
    found = {name: [scores(folder, task, method, seeds) for task in TASKS] for name, folder, method in COLUMNS}
    print("| task | " + " | ".join(name for name, _, _ in COLUMNS) + " |\n|---|---|---|")
    for index, task in enumerate(TASKS):
        print(f"| {task} | " + " | ".join(f"{f[index]['validation']:.4f} / {f[index]['test']:.4f} "
                                         f"({listed(f[index]['tests'])})" for f in found.values()) + " |")
    for name, tasks in found.items():
        five_validation, five_test = accuracy_tasks_means(tasks)
        print(f"{name}: six-task {statistics.mean(t['validation'] for t in tasks):.4f} / "
              f"{statistics.mean(t['test'] for t in tasks):.4f}; five accuracy tasks {five_validation:.4f} / "
              f"{five_test:.4f}")
