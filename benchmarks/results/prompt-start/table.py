"""The table of docs/results.md's prompt-start section, from the runs' metrics.json files: EPT with
its prompt started at small random rows and at random vocabulary rows against the default start,
the task's text (the suite's runs), the rule of PLAN.md applied to their mean validation scores,
and their mean training time by task.

    python benchmarks/results/prompt-start/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, rule_table  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    rule_table([("TEXT (default)", RESULTS / "suite-head-clip", "ept"), ("RANDOM", HERE / "random", "ept"),
                ("RANDOM_VOCAB", HERE / "random_vocab", "ept")], (42, 43, 44), budget=37_893)


if __name__ == "__main__":
    main()
