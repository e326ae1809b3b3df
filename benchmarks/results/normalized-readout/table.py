"""The tables of docs/results.md's normalized-readout section, from the runs' metrics.json files:
EPT with its head reading the sentence embedding divided by its length against the default
readout (the suite's runs), the rule of PLAN.md applied to their mean validation scores, EPT's
mean training time by task, and the head alone under both readouts, with EPT's lead over it on
the six-task mean test score.

    python benchmarks/results/normalized-readout/table.py   (from the repository root)
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, rule_table, validation_test_table  # noqa: E402

HERE, SEEDS = Path(__file__).resolve().parent, (42, 43, 44)


def six_task_test(found) -> float:
    return statistics.mean(task["test"] for task in found)


def main() -> None:
    ept = rule_table([("EPT, sentence embedding (default)", RESULTS / "suite-head-clip", "ept"),
                      ("EPT, normalized", HERE, "ept")], SEEDS, budget=37_893)
    print("\nThe head alone:\n")
    head, _ = validation_test_table([("head alone, sentence embedding", RESULTS / "suite-embedding", "head"),
                                     ("head alone, normalized", HERE, "head")], RESULTS / "suite-embedding", SEEDS)
    print()
    for (ept_name, ept_found), (head_name, head_found) in zip(ept.items(), head.items()):
        lead = 100 * (six_task_test(ept_found) - six_task_test(head_found))
        print(f"{ept_name} minus {head_name}, six-task mean test: {lead:+.2f} points")


if __name__ == "__main__":
    main()
