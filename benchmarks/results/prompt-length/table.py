"""The table of docs/results.md's prompt-length section, from the runs' metrics.json files: EPT at
its budget with m = 4, 8 and 40 prompt rows against the default m = 20 (the suite's runs), the
rule of PLAN.md applied to their mean validation scores, and their mean training time by task.

    python benchmarks/results/prompt-length/table.py   (from the repository root)
"""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, accuracy_tasks_means, validation_test_table  # noqa: E402

HERE, DEFAULT = Path(__file__).resolve().parent, RESULTS / "suite-head-clip"
SEEDS, BUDGET = (42, 43, 44), 37_893


def rule_means(found) -> tuple:
    """What PLAN.md's rule compares, the six-task and the five accuracy tasks' mean validation, and
    the five's mean test."""
    five_validation, five_test = accuracy_tasks_means(found)
    return statistics.mean(task["validation"] for task in found), five_validation, five_test


def main() -> None:
    candidates = [(f"m = {m}, r = {r}", HERE / f"m{m}", "ept") for m, r in ((4, 56), (8, 53), (40, 29))]
    columns = [("m = 20, r = 44 (default)", DEFAULT, "ept"), *candidates]
    runs = {name: {task: [json.loads((folder / task / f"{method}-seed{seed}" / "metrics.json").read_text())
                          for seed in SEEDS] for task in TASKS} for name, folder, method in columns}
    sizes = {run["adapter_parameters"] for tasks in runs.values() for task in tasks.values() for run in task}
    if sizes != {BUDGET}:
        raise SystemExit(f"expected every run at {BUDGET:,} adapter parameters, found {sorted(sizes)}")
    means, _ = validation_test_table(columns, RESULTS / "suite-embedding", SEEDS)
    print("\n| run | six-task validation | five accuracy tasks, validation | five accuracy tasks, test |")
    print("|---|---|---|---|")
    default_six, default_five, _ = rule_means(means[columns[0][0]])
    for index, (name, _, _) in enumerate(columns):
        six, five, five_test = rule_means(means[name])
        passes = six > default_six and five > default_five
        verdict = "" if index == 0 else " (passes the rule)" if passes else " (does not pass)"
        print(f"| {name}{verdict} | {six:.4f} | {five:.4f} | {five_test:.4f} |")
    print("\nMean training time (s) of seeds 42-44:\n")
    print("| run | " + " | ".join(TASKS) + " |\n" + "|---" * (len(TASKS) + 1) + "|")
    for name, tasks in runs.items():
        times = [statistics.mean(run["train_time_s"] for run in tasks[task]) for task in TASKS]
        print(f"| {name} | " + " | ".join(f"{t:.0f}" for t in times) + " |")


if __name__ == "__main__":
    main()
