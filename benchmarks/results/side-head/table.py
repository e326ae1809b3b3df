"""The table of docs/results.md's side-head pilot, from the runs' metrics.json files: EPT whose
head also reads the frozen backbone's sentence embedding through a second linear map that starts
at zero, against the default (the suite's seed-42 runs), with the pilot rule of PLAN.md applied
to the mean validation scores (seed 42 only: the rule stopped the candidate there).

    python benchmarks/results/side-head/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, rule_table  # noqa: E402

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    rule_table([("EPT (default)", RESULTS / "suite-head-clip", "ept"), ("EPT, side head on the frozen features", HERE,
                                                                          "ept")], (42,), budget=37_893)
