"""One-off: the trained and the refitted head of each run of the refit snapshot, beside the
probe of the same task and seed.

    python refit_table.py RUNS_DIR PROBE_SUITE_DIR   (e.g. benchmarks/results/suite-embedding)"""
import glob
import json
import os
import sys

TASKS = ["cr", "trec", "subj", "cola", "bbc_headlines", "bbc_news"]


def read_json(path):
    with open(path) as file:
        return json.load(file)


def scores(head, metric):
    return f"val {head['validation'][metric]:.4f} test {head['test'][metric]:.4f}"


def main(root, probes):
    for task in TASKS:
        for path in sorted(glob.glob(f"{root}/{task}/*-seed*/metrics.json")):
            run = read_json(path)
            metric, refit = run["metric_for_best_model"], run.get("refit")
            name = os.path.basename(os.path.dirname(path))
            probe_path = f"{probes}/{task}/probe-seed{name.split('seed')[1]}/metrics.json"
            probe = read_json(probe_path)["test"][metric] if os.path.exists(probe_path) else None
            if refit:
                print(f"{task:14s} {name:12s} trained {scores(refit['trained_head'], metric)} | "
                      f"refit {scores(refit['refit_head'], metric)} C {refit['C']} ({refit['refit_s']:.0f}s) | "
                      f"probe {probe}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
