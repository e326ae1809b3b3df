"""The bars of issue 20 at today's defaults, the spread floor EPT's since ce5feab: EPT's runs here
(seeds 42-46) and the confirmation's (seeds 47-51, the same option from the same training code)
against the probe and the head alone of the suite's folders, and against DePT and prompt tuning,
whose defaults did not change.

    python benchmarks/results/spread-floor/default/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tables import RESULTS, TASKS, against, ahead_of_probe, listed, scores, validation_test_table  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIRM = HERE.parent / "confirm"
SUITE, CLIPPED, TEN = RESULTS / "suite-embedding", RESULTS / "suite-head-clip", RESULTS / "bbc-news-5seeds"


def floor_folder(task: str, seed: int) -> Path:
    """EPT with the floor: seeds 42-46 here, 47-51 in the confirmation."""
    return HERE if seed < 47 else CONFIRM


def head_folder(task: str, seed: int) -> Path:
    """The head alone: seeds 42-44 in the suite, 45-51 beside the clipped suite; BBC News' ten in TEN."""
    return TEN if task == "bbc_news" else SUITE if seed < 45 else CLIPPED


def runs_of(task: str, method: str, seeds) -> list:
    """Test scores of ``method`` on ``task`` over ``seeds``, from the folder each seed's run is in."""
    folder = floor_folder if method == "ept" else head_folder
    return [scores(folder(task, seed), task, method, [seed])["test"] for seed in seeds]


def three_seeds() -> None:
    columns = [("EPT, spread floor (default)", HERE, "ept"), ("EPT before the floor", CLIPPED, "ept"),
               ("DePT", CLIPPED, "dept"), ("PT", CLIPPED, "pt"), ("head alone", SUITE, "head")]
    means, probes = validation_test_table(columns, SUITE, (42, 43, 44))
    tests = {name: [found["test"] for found in found_by_task] for name, found_by_task in means.items()}
    for name in ("EPT, spread floor (default)", "EPT before the floor"):
        ahead = ahead_of_probe(tests[name], probes)
        over_head = 100 * (statistics.mean(tests[name]) - statistics.mean(tests["head alone"]))
        print(f"\n{name}: ahead of the probe on {len(ahead)} of 6 tasks ({', '.join(ahead)}); over the head "
              f"alone on the six-task mean by {over_head:+.2f} points")
    order = sorted(tests, key=lambda name: -statistics.mean(tests[name]))
    print("Order of the six-task mean test score: " + " >= ".join(
        f"{name} {statistics.mean(tests[name]):.4f}" for name in order if name != "EPT before the floor"))


def over_seeds(seeds) -> None:
    """EPT with the floor against the head alone, mean test score by task and over the six for
    ``seeds`` (the seeds both have on every task: 42-44 and the confirmation's 47-51)."""
    print(f"\nEPT (spread floor) against the head alone, seeds {', '.join(map(str, seeds))}:\n")
    print("| task | EPT, spread floor | head alone | difference |\n|---|---|---|---|")
    ept_means, head_means = [], []
    for task in TASKS:
        ept, head = statistics.mean(runs_of(task, "ept", seeds)), statistics.mean(runs_of(task, "head", seeds))
        ept_means.append(ept)
        head_means.append(head)
        print(f"| {task} | {ept:.4f} | {head:.4f} | {ept - head:+.4f} |")
    ept, head = statistics.mean(ept_means), statistics.mean(head_means)
    print(f"| mean of the six | {ept:.4f} | {head:.4f} | {100 * (ept - head):+.2f} points |")


def bbc_news_ten() -> None:
    ten = range(42, 52)
    probe = scores(TEN, "bbc_news", "probe", ten)["tests"]
    print("\nBBC News, seeds 42-51:\n")
    print("| run | test per seed | mean ± std | against the probe, by seed |\n|---|---|---|---|")
    for name, tests in (("EPT, spread floor (default)", runs_of("bbc_news", "ept", ten)),
                        ("EPT before the floor", scores(CLIPPED, "bbc_news", "ept", ten)["tests"]),
                        ("head alone", runs_of("bbc_news", "head", ten)), ("probe", probe)):
        won, tied, lost = against(tests, probe)
        record = f"{won} won, {tied} tied, {lost} lost" if name != "probe" else ""
        print(f"| {name} | {listed(tests)} | {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f} | {record} |")


if __name__ == "__main__":
    three_seeds()
    bbc_news_ten()
    over_seeds((42, 43, 44, 47, 48, 49, 50, 51))
