"""The tables of docs/results.md's parameter-average section (the average, and the prompt at
1e-2 with the head at 3e-2), from the runs' metrics.json files.

    python benchmarks/results/ema/ema_table.py   (from the repository root)
"""

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent
TASKS = ("cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news")


def scores(folder: Path, task: str, method: str, seeds) -> dict:
    """Mean validation and test of the task's metric over ``seeds``, and the test scores."""
    runs = [json.loads((folder / task / f"{method}-seed{seed}" / "metrics.json").read_text()) for seed in seeds]
    metric = runs[0]["metric_for_best_model"]
    tests = [run["test"][metric] for run in runs]
    return {"validation": statistics.mean(run["validation"][metric] for run in runs),
            "test": statistics.mean(tests), "tests": tests}


def per_seed(found: dict) -> str:
    return ", ".join(f"{t:.4f}" for t in found["tests"])


def ahead_of_probe(tests, probes) -> str:
    """How many tasks, and which, have a mean test score above the probe's."""
    ahead = [task for task, test, probe in zip(TASKS, tests, probes) if test > probe]
    return f"{len(ahead)} of 6 tasks: {', '.join(ahead)}"


def main() -> None:
    default, averaged = RESULTS / "suite-embedding", RESULTS / "ema"
    seeds = (42, 43, 44)
    columns = [("EPT", default, "ept"), ("EPT, average", averaged, "ept"),
               ("head", default, "head"), ("head, average", averaged, "head")]
    print("| task | " + " | ".join(f"{name} (validation / test)" for name, _, _ in columns) + " | probe (test) |")
    print("|---" * (len(columns) + 2) + "|")
    means = {name: [] for name, _, _ in columns}
    probes = []
    for task in TASKS:
        cells = []
        for name, folder, method in columns:
            found = scores(folder, task, method, seeds)
            means[name].append((found["validation"], found["test"]))
            cells.append(f"{found['validation']:.4f} / {found['test']:.4f} ({per_seed(found)})")
        probes.append(scores(default, task, "probe", seeds)["test"])
        print(f"| {task} | " + " | ".join(cells) + f" | {probes[-1]:.4f} |")
    print("| mean of the six | " + " | ".join(
        f"{statistics.mean(v for v, _ in means[name]):.4f} / {statistics.mean(t for _, t in means[name]):.4f}"
        for name, _, _ in columns) + f" | {statistics.mean(probes):.4f} |")
    print(f"\nEPT with the average beats the probe on "
          f"{ahead_of_probe([test for _, test in means['EPT, average']], probes)}")

    split = RESULTS / "schedule-pilots" / "prompt1e-2-head3e-2"
    print("\nEPT, the prompt at 1e-2 and the head at 3e-2 (validation / test):")
    rows = [(task, scores(split, task, "ept", seeds), default_ept) for task, default_ept in zip(TASKS, means["EPT"])]
    for task, found, (validation, test) in rows:
        print(f"| {task} | {validation:.4f} / {test:.4f} | {found['validation']:.4f} / {found['test']:.4f} "
              f"({per_seed(found)}) |")
    print(f"| mean of the six | {statistics.mean(v for v, _ in means['EPT']):.4f} / "
          f"{statistics.mean(t for _, t in means['EPT']):.4f} | "
          f"{statistics.mean(found['validation'] for _, found, _ in rows):.4f} / "
          f"{statistics.mean(found['test'] for _, found, _ in rows):.4f} |")
    print(f"\nEPT with the split rates beats the probe on "
          f"{ahead_of_probe([found['test'] for _, found, _ in rows], probes)}")

    ten = range(42, 52)
    five = RESULTS / "bbc-news-5seeds"
    print("\nBBC News, seeds 42-51 (test):")
    probe = scores(five, "bbc_news", "probe", ten)["tests"]
    for name, folder, method in (("EPT", five, "ept"), ("EPT, average", averaged, "ept"),
                                 ("EPT, split rates", split, "ept"), ("probe", five, "probe")):
        found = scores(folder, "bbc_news", method, ten)
        record = [sum(a > b for a, b in zip(found["tests"], probe)), sum(a == b for a, b in zip(found["tests"], probe)),
                  sum(a < b for a, b in zip(found["tests"], probe))]
        print(f"{name}: {' '.join(f'{t:.4f}' for t in found['tests'])} mean {found['test']:.4f} "
              f"std {statistics.stdev(found['tests']):.4f} validation {found['validation']:.4f} "
              f"against the probe won/tied/lost {record}")


if __name__ == "__main__":
    main()
