"""The tables of docs/results.md's parameter-average section (the average, and the prompt at
1e-2 with the head at 3e-2), from the runs' metrics.json files.

    python benchmarks/results/ema/ema_table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, against, ahead_of_probe, listed, scores, validation_test_table  # noqa: E402


def ahead(tests, probes) -> str:
    """How many tasks, and which, have a mean test score above the probe's."""
    tasks = ahead_of_probe(tests, probes)
    return f"{len(tasks)} of 6 tasks: {', '.join(tasks)}"


def main() -> None:
    default, averaged = RESULTS / "suite-embedding", RESULTS / "ema"
    seeds = (42, 43, 44)
    columns = [("EPT", default, "ept"), ("EPT, average", averaged, "ept"),
               ("head", default, "head"), ("head, average", averaged, "head")]
    means, probes = validation_test_table(columns, default, seeds)
    print(f"\nEPT with the average beats the probe on "
          f"{ahead([found['test'] for found in means['EPT, average']], probes)}")

    split = RESULTS / "schedule-pilots" / "prompt1e-2-head3e-2"
    print("\nEPT, the prompt at 1e-2 and the head at 3e-2 (validation / test):")
    rows = [(task, scores(split, task, "ept", seeds), default_ept) for task, default_ept in zip(TASKS, means["EPT"])]
    for task, found, default_ept in rows:
        print(f"| {task} | {default_ept['validation']:.4f} / {default_ept['test']:.4f} | "
              f"{found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])}) |")
    print(f"| mean of the six | {statistics.mean(f['validation'] for f in means['EPT']):.4f} / "
          f"{statistics.mean(f['test'] for f in means['EPT']):.4f} | "
          f"{statistics.mean(found['validation'] for _, found, _ in rows):.4f} / "
          f"{statistics.mean(found['test'] for _, found, _ in rows):.4f} |")
    print(f"\nEPT with the split rates beats the probe on "
          f"{ahead([found['test'] for _, found, _ in rows], probes)}")

    ten = range(42, 52)
    five = RESULTS / "bbc-news-5seeds"
    print("\nBBC News, seeds 42-51 (test):")
    probe = scores(five, "bbc_news", "probe", ten)["tests"]
    for name, folder, method in (("EPT", five, "ept"), ("EPT, average", averaged, "ept"),
                                 ("EPT, split rates", split, "ept"), ("probe", five, "probe")):
        found = scores(folder, "bbc_news", method, ten)
        print(f"{name}: {' '.join(f'{t:.4f}' for t in found['tests'])} mean {found['test']:.4f} "
              f"std {statistics.stdev(found['tests']):.4f} validation {found['validation']:.4f} "
              f"against the probe won/tied/lost {list(against(found['tests'], probe))}")


if __name__ == "__main__":
    main()
