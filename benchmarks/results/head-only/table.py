"""The tables of docs/results.md's head-only section, from the runs' metrics.json files: EPT with
the head trained alone for the first tenth or fifth of the steps against EPT from the first step
(the suite's runs), the head alone and the probe; BBC News over ten seeds; the pilots.

    python benchmarks/results/head-only/table.py   (from the repository root)
"""

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent
TASKS = ("cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news")
SUITE, TEN = RESULTS / "suite-embedding", RESULTS / "bbc-news-5seeds"
TENTH, FIFTH = RESULTS / "suite-head-only", RESULTS / "head-only" / "fifth"


def scores(folder: Path, task: str, method: str, seeds) -> dict:
    """Mean validation and test of the task's metric over ``seeds``, and the test scores."""
    runs = [json.loads((folder / task / f"{method}-seed{seed}" / "metrics.json").read_text()) for seed in seeds]
    metric = runs[0]["metric_for_best_model"]
    tests = [run["test"][metric] for run in runs]
    return {"validation": statistics.mean(run["validation"][metric] for run in runs),
            "test": statistics.mean(tests), "tests": tests}


def listed(values) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def six_tasks() -> None:
    seeds = (42, 43, 44)
    columns = [("EPT, from the first step", SUITE, "ept"), ("EPT, head alone for a tenth", TENTH, "ept"),
               ("EPT, head alone for a fifth", FIFTH, "ept"), ("head alone", SUITE, "head")]
    print("| task | " + " | ".join(f"{name} (validation / test)" for name, _, _ in columns) + " | probe (test) |")
    print("|---" * (len(columns) + 2) + "|")
    means = {name: [] for name, _, _ in columns}
    probes = []
    for task in TASKS:
        cells = []
        for name, folder, method in columns:
            found = scores(folder, task, method, seeds)
            means[name].append(found)
            cells.append(f"{found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])})")
        probes.append(scores(SUITE, task, "probe", seeds)["test"])
        print(f"| {task} | " + " | ".join(cells) + f" | {probes[-1]:.4f} |")
    print("| mean of the six | " + " | ".join(
        f"{statistics.mean(f['validation'] for f in means[name]):.4f} / "
        f"{statistics.mean(f['test'] for f in means[name]):.4f}" for name, _, _ in columns)
        + f" | {statistics.mean(probes):.4f} |")
    for name, _, _ in columns[:3]:
        ahead = [task for task, found, probe in zip(TASKS, means[name], probes) if found["test"] > probe]
        print(f"{name}: ahead of the probe on {len(ahead)} of 6 tasks ({', '.join(ahead)})")


def bbc_news_ten() -> None:
    ten = range(42, 52)
    probe = scores(TEN, "bbc_news", "probe", ten)["tests"]
    print("\nBBC News, seeds 42-51:\n")
    print("| run | test per seed | mean ± std | validation | against the probe, by seed |\n|---|---|---|---|---|")
    rows = (("EPT, from the first step", TEN, "ept"), ("EPT, head alone for a tenth", TENTH, "ept"),
            ("EPT, head alone for a fifth", FIFTH, "ept"), ("head alone", TEN, "head"), ("probe", TEN, "probe"))
    for name, folder, method in rows:
        found = scores(folder, "bbc_news", method, ten)
        record = [sum(a > b for a, b in zip(found["tests"], probe)), sum(a == b for a, b in zip(found["tests"], probe)),
                  sum(a < b for a, b in zip(found["tests"], probe))]
        against = f"{record[0]} won, {record[1]} tied, {record[2]} lost" if method != "probe" else ""
        print(f"| {name} | {listed(found['tests'])} | {found['test']:.4f} ± {statistics.stdev(found['tests']):.4f} | "
              f"{found['validation']:.4f} | {against} |")


def pilots() -> None:
    print("\nPilots (validation / test, per seed test):")
    for name in ("freeze25", "l2sp10"):
        for task, seeds in (("bbc_news", range(42, 47)), ("cr", range(42, 45))):
            found = scores(RESULTS / "head-only" / "pilots" / name, task, "ept", seeds)
            base = scores(TEN if task == "bbc_news" else SUITE, task, "ept", seeds)
            print(f"{name} {task}: {found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])}); "
                  f"from the first step {base['validation']:.4f} / {base['test']:.4f}")


if __name__ == "__main__":
    six_tasks()
    bbc_news_ten()
    pilots()
