"""The table of docs/results.md's prompt-length section, from the runs' metrics.json files: EPT at
its budget with m = 4, 8 and 40 prompt rows against the default m = 20 (the suite's runs), the
rule of PLAN.md applied to their mean validation scores, and their mean training time by task.

    python benchmarks/results/prompt-length/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, rule_table  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    candidates = [(f"m = {m}, r = {r}", HERE / f"m{m}", "ept") for m, r in ((4, 56), (8, 53), (40, 29))]
    rule_table([("m = 20, r = 44 (default)", RESULTS / "suite-head-clip", "ept"), *candidates], (42, 43, 44),
               budget=37_893)


if __name__ == "__main__":
    main()
