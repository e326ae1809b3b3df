"""The tables of docs/results.md's head-only section, from the runs' metrics.json files: EPT with
the head trained alone for the first tenth or fifth of the steps against EPT from the first step
(the suite's runs), the head alone and the probe; BBC News over ten seeds; the pilots (a warm-up
of the adapter after the head-only steps among them); the two candidates after the default (the
head alone for 25 steps, label smoothing); the ablation of fusion and of the projections at the
default; the suite again once the head-only steps clip the head's gradient alone (EPT against
the earlier clipping, the adapters' order, and EPT, the head alone and the probe over five seeds).

    python benchmarks/results/head-only/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import (  # noqa: E402
    RESULTS,
    TASKS,
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


def over_seeds(last: int) -> None:
    """EPT now, the head alone and the probe over seeds 42 to ``last``: seeds 45 on of the head
    and the probe ran beside EPT's (BBC News': in the ten-seed folder). The probe's split of a
    task that comes as files is the same at every seed, so is its score: there its seeds 42-46
    stand for all."""
    seeds = range(42, last + 1)
    print(f"\nSeeds 42-{last} (validation / test, test per seed):\n")
    print("| task | EPT now | head alone | probe |\n|---|---|---|---|")
    totals = {method: [] for method in ("ept", "head", "probe")}
    for task in TASKS:
        cells = []
        for method in totals:
            first = CLIPPED if method == "ept" else TEN if task == "bbc_news" else SUITE
            later = TEN if task == "bbc_news" and method != "ept" else CLIPPED
            rest = seeds[3:] if method != "probe" or task == "bbc_news" else range(45, 47)
            parts = [scores(first, task, method, (42, 43, 44)), scores(later, task, method, rest)]
            tests = parts[0]["tests"] + parts[1]["tests"]
            validation = (3 * parts[0]["validation"] + len(rest) * parts[1]["validation"]) / len(tests)
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
    """BBC headlines over seeds 42-51: the head alone's and the probe's seeds 42-44 are the earlier
    suite's, every other run is in the clipped suite's folder."""
    ten = range(42, 52)
    probe = scores(SUITE, "bbc_headlines", "probe", (42, 43, 44))["tests"] + \
        scores(CLIPPED, "bbc_headlines", "probe", range(45, 52))["tests"]
    print("\nBBC headlines, seeds 42-51 (test per seed, mean ± std, against the probe by seed):\n")
    print("| run | test per seed | mean ± std | against the probe |\n|---|---|---|---|")
    for name, method in (("EPT", "ept"), ("head alone", "head"), ("probe", "probe")):
        tests = scores(CLIPPED, "bbc_headlines", "ept", ten)["tests"] if method == "ept" else \
            scores(SUITE, "bbc_headlines", method, (42, 43, 44))["tests"] + \
            scores(CLIPPED, "bbc_headlines", method, range(45, 52))["tests"]
        won, tied, lost = against(tests, probe)
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
    over_seeds(46)
    headlines_ten()
    ablation(CLIPPED, CLIPPED_ABLATION, "clipping the head's gradient alone")
