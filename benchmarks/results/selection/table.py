"""The tables of docs/results.md's section on which validation chooses the checkpoint, from the
runs' predictions.npz (pack.py): for each criterion of PLAN.md (`metric`, `loss`, `last`), EPT's
split-half validation score and the rule's verdict, then every method's test score with the
checkpoint each criterion keeps, the probe beside them.

    python benchmarks/results/selection/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from sklearn.metrics import accuracy_score, matthews_corrcoef

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, TASKS, listed, run_documents, scores  # noqa: E402

HERE = Path(__file__).resolve().parent
SEEDS = (42, 43, 44)
METHODS = [method for method in ("ept", "dept", "pt", "head") if (HERE / "cola" / f"{method}-seed44").is_dir()]


def metric_of(task: str) -> Callable:
    return matthews_corrcoef if task == "cola" else accuracy_score


def first_best(values: List[float], higher: bool) -> int:
    """The index of the first best value (Trainer keeps a checkpoint only when strictly better)."""
    best = 0
    for i, value in enumerate(values):
        if (value > values[best]) if higher else (value < values[best]):
            best = i
    return best


def choose(criterion: str, score: Callable, labels, predicted, label_log_probability) -> int:
    """The validation (index into the run's steps) that ``criterion`` keeps, judged on these examples."""
    if criterion == "last":
        return len(predicted) - 1
    if criterion == "loss":
        return first_best([-float(row.mean()) for row in label_log_probability], higher=False)
    return first_best([score(labels, row) for row in predicted], higher=True)


CRITERIA = ("metric", "loss", "last")


def run_scores(task: str, method: str, seed: int) -> Dict[str, Dict[str, float]]:
    """Per criterion: its split-half validation score and its test score (choosing on all of
    validation); checks that `metric` keeps the checkpoint the run itself kept, with its test score."""
    folder = HERE / task / f"{method}-seed{seed}"
    run = np.load(folder / "predictions.npz")
    score, labels = metric_of(task), run["validation_labels"]
    predicted, log_probability = run["validation_predicted"], run["validation_label_log_probability"]
    halves = np.array_split(np.random.default_rng(0).permutation(len(labels)), 2)
    out = {}
    for criterion in CRITERIA:
        half_scores = []
        for chosen_on, scored_on in (halves, halves[::-1]):
            kept = choose(criterion, score, labels[chosen_on], predicted[:, chosen_on], log_probability[:, chosen_on])
            half_scores.append(score(labels[scored_on], predicted[kept, scored_on]))
        kept = choose(criterion, score, labels, predicted, log_probability)
        out[criterion] = {"split_half": statistics.mean(half_scores), "step": int(run["steps"][kept]),
                          "test": score(run["test_labels"], run["test_predicted"][kept])}
    document = run_documents(HERE, task, method, [seed])[0]
    if out["metric"]["step"] != document["best_step"]:
        raise SystemExit(f"{folder}: `metric` keeps step {out['metric']['step']}, the run kept {document['best_step']}")
    if out["metric"]["test"] != document["test"][document["metric_for_best_model"]]:
        raise SystemExit(f"{folder}: the kept step's test score is not the one the run reported")
    return out


def mean_over(found: Dict[str, List[float]], tasks) -> float:
    return statistics.mean(statistics.mean(found[task]) for task in tasks)


def main() -> None:
    runs = {(task, method, seed): run_scores(task, method, seed)
            for task in TASKS for method in METHODS for seed in SEEDS}
    accuracy_tasks = [task for task in TASKS if task != "cola"]

    print("EPT, split-half validation score (mean of seeds 42-44; per seed in brackets)\n")
    print("| task | " + " | ".join(CRITERIA) + " |")
    print("|---" * (len(CRITERIA) + 1) + "|")
    halves = {c: {t: [runs[t, "ept", s][c]["split_half"] for s in SEEDS] for t in TASKS} for c in CRITERIA}
    for task in TASKS:
        print(f"| {task} | " + " | ".join(f"{statistics.mean(halves[c][task]):.4f} ({listed(halves[c][task])})"
                                          for c in CRITERIA) + " |")
    six = {c: mean_over(halves[c], TASKS) for c in CRITERIA}
    five = {c: mean_over(halves[c], accuracy_tasks) for c in CRITERIA}
    print("| mean of the six | " + " | ".join(f"{six[c]:.4f}" for c in CRITERIA) + " |")
    print("| mean of the five accuracy tasks | " + " | ".join(f"{five[c]:.4f}" for c in CRITERIA) + " |")
    for c in CRITERIA[1:]:
        passes = six[c] > six["metric"] and five[c] > five["metric"]
        print(f"\n{c}: {'passes' if passes else 'does not pass'} the rule "
              f"(six tasks {six[c]:.4f} against {six['metric']:.4f}; five {five[c]:.4f} against {five['metric']:.4f})")

    probes = {task: scores(RESULTS / "suite-embedding", task, "probe", SEEDS)["test"] for task in TASKS}
    print("\nTest score with the checkpoint each criterion keeps (mean of seeds 42-44; per seed in brackets)\n")
    columns = [(m, c) for m in METHODS for c in CRITERIA]
    print("| task | " + " | ".join(f"{m}, {c}" for m, c in columns) + " | probe |")
    print("|---" * (len(columns) + 2) + "|")
    tests = {(m, c): {t: [runs[t, m, s][c]["test"] for s in SEEDS] for t in TASKS} for m, c in columns}
    for task in TASKS:
        print(f"| {task} | " + " | ".join(f"{statistics.mean(tests[col][task]):.4f} ({listed(tests[col][task])})"
                                          for col in columns) + f" | {probes[task]:.4f} |")
    print("| mean of the six | " + " | ".join(f"{mean_over(tests[col], TASKS):.4f}" for col in columns)
          + f" | {statistics.mean(probes.values()):.4f} |")
    print("| mean of the five accuracy tasks | " + " | ".join(
        f"{mean_over(tests[col], accuracy_tasks):.4f}" for col in columns) + " | |")
    for c in CRITERIA:
        ahead = [t for t in TASKS if statistics.mean(tests["ept", c][t]) > probes[t]]
        lead = 100 * (mean_over(tests["ept", c], TASKS) - mean_over(tests["head", c], TASKS))
        order = sorted(METHODS, key=lambda m: -mean_over(tests[m, c], TASKS))
        print(f"\n{c}: EPT above the probe on {len(ahead)} of 6 ({', '.join(ahead)}); "
              f"EPT minus the head alone {lead:+.2f} points; order {' >= '.join(order)}")


if __name__ == "__main__":
    main()
