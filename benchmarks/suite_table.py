"""Tables of the six-task suite (``benchmarks/probe_suite.sh``) from the runs' ``metrics.json``,
finished tasks and seeds only, as Markdown: per task the test score of every method (mean ±
std, every seed), then the mean over the tasks every method has finished, and the issue's
bars (EPT against the linear probe per task, against the head alone on the mean).

    python benchmarks/suite_table.py OUT_DIR [MORE_DIRS...] [--methods ept dept pt head probe]

With several folders, a method's runs of a task come from the first folder that has them (a rerun
of some methods beside the suite's other runs).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Dict, List

TASKS = ("cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news")
RUN = re.compile(r"(?P<method>[a-z_]+)-seed(?P<seed>\d+)$")


def collect(root: Path) -> Dict[str, Dict[str, Dict[int, dict]]]:
    """task -> method -> seed -> the run's metrics.json, for every finished run under ``root``;
    a probe that reports its test score at C = 1 (scikit-learn's default, what a user tries
    first) also gives the method "probe_C1"."""
    runs: Dict[str, Dict[str, Dict[int, dict]]] = {}
    for path in sorted(root.glob("*/*/metrics.json")):
        match = RUN.match(path.parent.name)
        if match:
            summary = json.loads(path.read_text(encoding="utf-8"))
            task, seed = runs.setdefault(path.parent.parent.name, {}), int(match["seed"])
            task.setdefault(match["method"], {})[seed] = summary
            if "1.0" in summary.get("test_by_C", {}):
                at_default = {**summary, "test": {summary["metric_for_best_model"]: summary["test_by_C"]["1.0"]}}
                task.setdefault("probe_C1", {})[seed] = at_default
    return runs


def score(summary: dict) -> float:
    return summary["test"][summary["metric_for_best_model"]]


def _cell(values: List[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f} ({', '.join(f'{v:.4f}' for v in values)})"


def tables(runs, methods: List[str]) -> str:
    lines = []
    means: Dict[str, Dict[str, float]] = {}
    for task in [t for t in TASKS if t in runs] + sorted(set(runs) - set(TASKS)):
        by_method = runs[task]
        seeds = sorted(set.intersection(*(set(by_method.get(m, {})) for m in methods)))
        if not seeds:
            continue
        first = by_method[methods[0]][seeds[0]]
        lines += [f"**{task}** (test {first['metric_for_best_model']}, seeds {', '.join(map(str, seeds))})", "",
                  "| method | adapter params | mean ± std (per seed) | train s / run |", "|---|---|---|---|"]
        for method in methods:
            values = [score(by_method[method][seed]) for seed in seeds]
            means.setdefault(method, {})[task] = statistics.mean(values)
            seconds = statistics.mean(by_method[method][seed]["train_time_s"] for seed in seeds)
            lines.append(f"| {method} | {by_method[method][seeds[0]]['adapter_parameters']:,} | {_cell(values)} | "
                         f"{seconds:.0f} |")
        lines.append("")
    finished = [task for task in means.get(methods[0], {}) if all(task in means[m] for m in methods)]
    if finished:
        tasks = f"{len(finished)} task{'s' * (len(finished) > 1)}"
        lines += [f"**Mean over {tasks}** ({', '.join(finished)})", "", "| method | mean |", "|---|---|"]
        overall = {m: statistics.mean(means[m][t] for t in finished) for m in methods}
        lines += [f"| {m} | {overall[m]:.4f} |" for m in methods]
        lines.append("")
        if "ept" in methods and "probe" in methods:
            beats = [t for t in finished if means["ept"][t] > means["probe"][t]]
            named = f" ({', '.join(beats)})" if beats else ""
            lines.append(f"EPT beats the linear probe on {len(beats)} of {len(finished)} tasks{named}.")
        if "ept" in methods and "head" in methods:
            gain = 100 * (overall["ept"] - overall["head"])
            lines.append(f"EPT minus the head alone, on the mean: {gain:+.2f} points.")
    return "\n".join(lines)


def collect_first(roots: List[Path]) -> Dict[str, Dict[str, Dict[int, dict]]]:
    """``collect`` over several folders: each task's method from the first folder that ran it."""
    runs: Dict[str, Dict[str, Dict[int, dict]]] = {}
    for root in roots:
        for task, by_method in collect(root).items():
            for method, by_seed in by_method.items():
                runs.setdefault(task, {}).setdefault(method, by_seed)
    return runs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--methods", nargs="+", default=["ept", "dept", "pt", "head", "probe"])
    options = parser.parse_args()
    print(tables(collect_first(options.roots), options.methods))
