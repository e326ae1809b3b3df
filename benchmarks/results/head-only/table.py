"""The tables of docs/results.md's head-only section, from the runs' metrics.json files: EPT with
the head trained alone for the first tenth or fifth of the steps against EPT from the first step
(the suite's runs), the head alone and the probe; BBC News over ten seeds; the pilots (a warm-up
of the adapter after the head-only steps among them); the two candidates after the default (the
head alone for 25 steps, label smoothing); the ablation of fusion and of the projections at the
default; the suite again once the head-only steps clip the head's gradient alone (EPT against
the earlier clipping, the adapters' order, EPT, the head alone and the probe over five and ten
seeds, BBC headlines over ten, and the ablation again at that default).

    python benchmarks/results/head-only/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import (  # noqa: E402
    RESULTS,
    TASKS,
    accuracy_tasks_means,
    against,
    ahead_of_probe,
    folder_of,
    listed,
    scores,
    validation_test_table,
)

SUITE, TEN = RESULTS / "suite-embedding", RESULTS / "bbc-news-5seeds"
TENTH, FIFTH = RESULTS / "suite-head-only", RESULTS / "head-only" / "fifth"
STEPS25, SMOOTHED = RESULTS / "head-only" / "steps25", RESULTS / "head-only" / "label-smoothing"
ABLATION = RESULTS / "head-only" / "ablation"
CLIPPED = RESULTS / "suite-head-clip"
CLIPPED_ABLATION = RESULTS / "suite-head-clip-ablation"


def print_ahead_of_probe(names, means, probes) -> None:
    for name in names:
        ahead = ahead_of_probe([found["test"] for found in means[name]], probes)
        print(f"{name}: ahead of the probe on {len(ahead)} of 6 tasks ({', '.join(ahead)})")


def six_tasks() -> None:
    columns = [("EPT, from the first step", SUITE, "ept"), ("EPT, head alone for a tenth", TENTH, "ept"),
               ("EPT, head alone for a fifth", FIFTH, "ept"), ("head alone", SUITE, "head")]
    means, probes = validation_test_table(columns, SUITE, (42, 43, 44))
    print_ahead_of_probe([name for name, _, _ in columns[:3]], means, probes)


def bbc_news_ten() -> None:
    ten = range(42, 52)
    probe = scores(TEN, "bbc_news", "probe", ten)["tests"]
    print("\nBBC News, seeds 42-51:\n")
    print("| run | test per seed | mean ± std | validation | against the probe, by seed |\n|---|---|---|---|---|")
    rows = (("EPT, from the first step", TEN, "ept"), ("EPT, head alone for a tenth", TENTH, "ept"),
            ("EPT, head alone for a fifth", FIFTH, "ept"),
            ("EPT, head alone for a tenth, clipping the head's gradient alone", CLIPPED, "ept"),
            ("head alone", TEN, "head"), ("probe", TEN, "probe"))
    for name, folder, method in rows:
        found = scores(folder, "bbc_news", method, ten)
        won, tied, lost = against(found["tests"], probe)
        record = f"{won} won, {tied} tied, {lost} lost" if method != "probe" else ""
        print(f"| {name} | {listed(found['tests'])} | {found['test']:.4f} ± {statistics.stdev(found['tests']):.4f} | "
              f"{found['validation']:.4f} | {record} |")


def pilots() -> None:
    """freeze25 and l2sp10 against EPT from the first step; adapter-warmup (a warm-up of the
    adapter's rates after the head-only steps) against the tenth it was built on."""
    print("\nPilots (validation / test, per seed test):")
    first_step = {"bbc_news": TEN, "cr": SUITE}
    for name, baseline, folder in (("freeze25", "from the first step", first_step),
                                   ("l2sp10", "from the first step", first_step),
                                   ("adapter-warmup", "the tenth", TENTH)):
        for task, seeds in (("bbc_news", range(42, 47)), ("cr", range(42, 45))):
            found = scores(RESULTS / "head-only" / "pilots" / name, task, "ept", seeds)
            base = scores(folder_of(folder, task), task, "ept", seeds)
            print(f"{name} {task}: {found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])}); "
                  f"{baseline} {base['validation']:.4f} / {base['test']:.4f}")


def after_the_default() -> None:
    """25 steps are a tenth of TREC's, SUBJ's and CoLA's 250: there, the tenth's runs are its runs."""
    steps25 = {task: STEPS25 if task in ("cr", "bbc_headlines", "bbc_news") else TENTH for task in TASKS}
    columns = [("EPT, head alone for a tenth", TENTH, "ept"), ("EPT, head alone for 25 steps", steps25, "ept"),
               ("EPT, a tenth and label smoothing 0.1", SMOOTHED, "ept")]
    print("\nAfter the default (seeds 42, 43, 44):\n")
    validation_test_table(columns, SUITE, (42, 43, 44))
    print("\nBBC News, seeds 42-46 (validation / test):")
    for name, folder, _ in columns:
        found = scores(folder_of(folder, "bbc_news"), "bbc_news", "ept", range(42, 47))
        print(f"{name}: {found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])})")


def ablation(baseline: Path, folder: Path, when: str) -> None:
    columns = [("EPT", baseline, "ept"), ("without fusion", folder / "without-fusion", "ept"),
               ("without projections (K = 0)", folder / "without-projections", "ept")]
    print(f"\nAblation at the default, {when} (seeds 42, 43, 44):\n")
    means, probes = validation_test_table(columns, SUITE, (42, 43, 44))
    print_ahead_of_probe([name for name, _, _ in columns], means, probes)
    for name, _, _ in columns:
        validation, test = accuracy_tasks_means(means[name])
        print(f"{name}: the five accuracy tasks' mean validation / test {validation:.4f} / {test:.4f}")


def clipping() -> None:
    columns = [("EPT, clipping the whole gradient in the head-only steps (before)", TENTH, "ept"),
               ("EPT, clipping the head's gradient alone (now)", CLIPPED, "ept"), ("head alone", SUITE, "head")]
    print("\nClipping in the head-only steps (seeds 42, 43, 44):\n")
    means, probes = validation_test_table(columns, SUITE, (42, 43, 44))
    print_ahead_of_probe([name for name, _, _ in columns[:2]], means, probes)


def order() -> None:
    columns = [("EPT", CLIPPED, "ept"), ("DePT", CLIPPED, "dept"), ("PT", CLIPPED, "pt"), ("head alone", SUITE, "head")]
    print("\nThe adapters, clipping the head's gradient alone (seeds 42, 43, 44):\n")
    validation_test_table(columns, SUITE, (42, 43, 44))


def clipped_runs(task: str, method: str, seeds) -> Tuple[float, List[float]]:
    """Mean validation and the test scores of the runs of the clipped suite's time over ``seeds``:
    EPT's are all in its folder; the head alone's and the probe's are in the ten-seed folder on BBC
    News, elsewhere seeds 42-44 in the earlier suite's folder (the same computation) and later
    seeds in the clipped suite's."""
    if method == "ept":
        parts = [(CLIPPED, list(seeds))]
    elif task == "bbc_news":
        parts = [(TEN, list(seeds))]
    else:
        parts = [(SUITE, [seed for seed in seeds if seed < 45]), (CLIPPED, [seed for seed in seeds if seed >= 45])]
    found = [(len(part), scores(folder, task, method, part)) for folder, part in parts if part]
    tests = [test for _, runs in found for test in runs["tests"]]
    return sum(count * runs["validation"] for count, runs in found) / len(tests), tests


def over_seeds(seeds) -> None:
    """EPT now, the head alone and the probe over ``seeds``. The probe's split of a task that comes
    as files is the same at every seed, and so is its score: there its seeds 42-46 stand for all."""
    print(f"\nSeeds {seeds[0]}-{seeds[-1]} (validation / test, test per seed):\n")
    print("| task | EPT now | head alone | probe |\n|---|---|---|---|")
    totals = {method: [] for method in ("ept", "head", "probe")}
    for task in TASKS:
        cells = []
        for method in totals:
            five = method == "probe" and task != "bbc_news"
            run_seeds = range(42, 47) if five else seeds
            validation, tests = clipped_runs(task, method, run_seeds)
            totals[method].append((validation, statistics.mean(tests)))
            cells.append(f"{validation:.4f} / {statistics.mean(tests):.4f} ({listed(tests)})")
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("| mean of the six | " + " | ".join(
        f"{statistics.mean(v for v, _ in found):.4f} / {statistics.mean(t for _, t in found):.4f}"
        for found in totals.values()) + " |")
    ahead = ahead_of_probe([t for _, t in totals["ept"]], [t for _, t in totals["probe"]])
    ept, head = (statistics.mean(t for _, t in totals[method]) for method in ("ept", "head"))
    print(f"EPT ahead of the probe on {len(ahead)} of 6 tasks ({', '.join(ahead)}); EPT minus the head alone on the "
          f"six-task mean test: {100 * (ept - head):+.2f} points")


def headlines_ten() -> None:
    names = {"ept": "EPT", "head": "head alone", "probe": "probe"}
    found = {method: clipped_runs("bbc_headlines", method, range(42, 52))[1] for method in names}
    print("\nBBC headlines, seeds 42-51 (test per seed, mean ± std, against the probe by seed):\n")
    print("| run | test per seed | mean ± std | against the probe |\n|---|---|---|---|")
    for method, name in names.items():
        tests = found[method]
        won, tied, lost = against(tests, found["probe"])
        record = f"{won} won, {tied} tied, {lost} lost" if method != "probe" else ""
        print(f"| {name} | {listed(tests)} | {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f} | {record} |")


if __name__ == "__main__":
    six_tasks()
    bbc_news_ten()
    pilots()
    after_the_default()
    ablation(TENTH, ABLATION, "clipping the whole gradient in the head-only steps")
    clipping()
    order()
    over_seeds(range(42, 47))
    headlines_ten()
    over_seeds(range(42, 52))
    ablation(CLIPPED, CLIPPED_ABLATION, "clipping the head's gradient alone")
