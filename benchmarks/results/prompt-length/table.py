"""The table of docs/results.md's prompt-length section, from the runs' metrics.json files: EPT at
its budget with m = 4, 8 and 40 prompt rows against the default m = 20 (the suite's runs), and
the rule of PLAN.md applied to their mean validation scores, and each run's mean training time by task.

    python benchmarks/results/prompt-length/table.py   (from the repository root)
"""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, validation_test_table  # noqa: E402

HERE, DEFAULT = Path(__file__).resolve().parent, RESULTS / "suite-head-clip"
ACCURACY_TASKS = [index for index, task in enumerate(TASKS) if task != "cola"]


def validation_means(found) -> tuple:
    """The six-task and the five accuracy tasks' mean validation, and the five's mean test."""
    return (statistics.mean(task["validation"] for task in found),
            statistics.mean(found[index]["validation"] for index in ACCURACY_TASKS),
            statistics.mean(found[index]["test"] for index in ACCURACY_TASKS))


def main() -> None:
    candidates = [(f"m = {m}, r = {r}", HERE / f"m{m}", "ept") for m, r in ((4, 56), (8, 53), (40, 29))
                  if (HERE / f"m{m}").is_dir()]
    columns = [("m = 20, r = 44 (default)", DEFAULT, "ept"), *candidates]
    means, _ = validation_test_table(columns, RESULTS / "suite-embedding", (42, 43, 44))
    print("\n| run | six-task validation | five accuracy tasks, validation | five accuracy tasks, test |")
    print("|---|---|---|---|")
    default_six, default_five, _ = validation_means(means[columns[0][0]])
    for index, (name, _, _) in enumerate(columns):
        six, five, five_test = validation_means(means[name])
        passes = six > default_six and five > default_five
        verdict = "" if index == 0 else " (passes the rule)" if passes else " (does not pass)"
        print(f"| {name}{verdict} | {six:.4f} | {five:.4f} | {five_test:.4f} |")
    print("\nMean training time (s) of seeds 42-44:\n")
    print("| run | " + " | ".join(TASKS) + " |\n" + "|---" * (len(TASKS) + 1) + "|")
    for name, folder, method in columns:
        times = [statistics.mean(json.loads((folder / task / f"{method}-seed{seed}" / "metrics.json").read_text())
                                 ["train_time_s"] for seed in (42, 43, 44)) for task in TASKS]
        print(f"| {name} | " + " | ".join(f"{t:.0f}" for t in times) + " |")


if __name__ == "__main__":
    main()
