"""What the table scripts of the result folders share (ema/ema_table.py, head-only/table.py,
prompt-length/table.py, prompt-start/table.py, normalized-readout/table.py): the mean validation
and test score of a method's runs from their metrics.json files, the six-task table of
validation / test scores beside the probe, the means over the five accuracy tasks (CoLA left
out), and the comparison of candidates with a default under the rule their PLAN.md fixed before
the runs."""

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

RESULTS = Path(__file__).resolve().parent
TASKS = ("cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news")


def run_documents(folder: Path, task: str, method: str, seeds) -> List[dict]:
    """The metrics.json documents of ``method``'s runs of ``task`` over ``seeds``."""
    return [json.loads((folder / task / f"{method}-seed{seed}" / "metrics.json").read_text()) for seed in seeds]


def scores(folder: Path, task: str, method: str, seeds) -> dict:
    """Mean validation and test of the task's metric over ``seeds``, the test scores, and the runs'
    metrics.json documents."""
    runs = run_documents(folder, task, method, seeds)
    metric = runs[0]["metric_for_best_model"]
    tests = [run["test"][metric] for run in runs]
    return {"validation": statistics.mean(run["validation"][metric] for run in runs),
            "test": statistics.mean(tests), "tests": tests, "runs": runs}


def accuracy_tasks_means(found: Sequence[dict]) -> Tuple[float, float]:
    """Mean validation and test over the tasks other than CoLA, of ``found`` (``scores`` by task, in
    ``TASKS``' order)."""
    kept = [task_scores for task, task_scores in zip(TASKS, found) if task != "cola"]
    return statistics.mean(f["validation"] for f in kept), statistics.mean(f["test"] for f in kept)


def folder_of(folder, task: str) -> Path:
    """A column's folder for ``task``: the folder, or its entry for the task in a folder by task."""
    return folder[task] if isinstance(folder, dict) else folder


def listed(values) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def ahead_of_probe(tests: Sequence[float], probes: Sequence[float]) -> List[str]:
    """The tasks whose mean test score is above the probe's."""
    return [task for task, test, probe in zip(TASKS, tests, probes) if test > probe]


def against(tests: Sequence[float], reference: Sequence[float]) -> Tuple[int, int, int]:
    """Seeds won, tied and lost against ``reference``, seed by seed."""
    return (sum(a > b for a, b in zip(tests, reference)), sum(a == b for a, b in zip(tests, reference)),
            sum(a < b for a, b in zip(tests, reference)))


def validation_test_table(columns, probe_folder: Optional[Path], seeds) -> Tuple[Dict[str, List[dict]], List[float]]:
    """Print the six tasks' mean validation / test (test per seed) of each (name, folder, method)
    in ``columns`` (a folder, or a folder by task), the probe's test (none when ``probe_folder``
    is None) and the means of the six; return each column's scores by task and the probe's test
    scores."""
    with_probe = probe_folder is not None
    probe_column = " probe (test) |" if with_probe else ""
    print("| task | " + " | ".join(f"{name} (validation / test)" for name, _, _ in columns) + " |" + probe_column)
    print("|---" * (len(columns) + 1 + with_probe) + "|")
    means: Dict[str, List[dict]] = {name: [] for name, _, _ in columns}
    probes = []
    for task in TASKS:
        cells = []
        for name, folder, method in columns:
            found = scores(folder_of(folder, task), task, method, seeds)
            means[name].append(found)
            cells.append(f"{found['validation']:.4f} / {found['test']:.4f} ({listed(found['tests'])})")
        if with_probe:
            probes.append(scores(probe_folder, task, "probe", seeds)["test"])
        print(f"| {task} | " + " | ".join(cells) + " |" + (f" {probes[-1]:.4f} |" if with_probe else ""))
    print("| mean of the six | " + " | ".join(
        f"{statistics.mean(f['validation'] for f in means[name]):.4f} / "
        f"{statistics.mean(f['test'] for f in means[name]):.4f}" for name, _, _ in columns)
        + " |" + (f" {statistics.mean(probes):.4f} |" if with_probe else ""))
    return means, probes


def rule_table(columns, seeds, budget: int, probe_folder: Optional[Path] = RESULTS / "suite-embedding"
               ) -> Dict[str, List[dict]]:
    """Compare candidates with a default, as the PLAN.md of the candidates' folder says: print the
    six-task table of ``columns`` ((name, folder, method), the default first), each column's mean
    validation over the six tasks and over the five accuracy tasks (a candidate passes only if
    it is higher than the default's on both), the five's mean test, and the mean training time
    by task; return each column's scores by task. Fails unless every run has ``budget`` adapter
    parameters. The probe's test scores of ``seeds`` are in ``probe_folder`` (None: no probe column)."""
    sizes = {run["adapter_parameters"] for _, folder, method in columns for task in TASKS
             for run in run_documents(folder_of(folder, task), task, method, seeds)}
    if sizes != {budget}:
        raise SystemExit(f"expected every run at {budget:,} adapter parameters, found {sorted(sizes)}")
    means, _ = validation_test_table(columns, probe_folder, seeds)

    def rule_means(found) -> tuple:
        five_validation, five_test = accuracy_tasks_means(found)
        return statistics.mean(task["validation"] for task in found), five_validation, five_test

    print("\n| run | six-task validation | five accuracy tasks, validation | five accuracy tasks, test |")
    print("|---|---|---|---|")
    default_six, default_five, _ = rule_means(means[columns[0][0]])
    for index, (name, _, _) in enumerate(columns):
        six, five, five_test = rule_means(means[name])
        passes = six > default_six and five > default_five
        verdict = "" if index == 0 else " (passes the rule)" if passes else " (does not pass)"
        print(f"| {name}{verdict} | {six:.4f} | {five:.4f} | {five_test:.4f} |")
    print(f"\nMean training time (s) of seeds {seeds[0]}-{seeds[-1]}:\n")
    print("| run | " + " | ".join(TASKS) + " |\n" + "|---" * (len(TASKS) + 1) + "|")
    for name, found in means.items():
        times = [statistics.mean(run["train_time_s"] for run in task["runs"]) for task in found]
        print(f"| {name} | " + " | ".join(f"{t:.0f}" for t in times) + " |")
    return means
