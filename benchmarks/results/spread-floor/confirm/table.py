"""The confirmation of CONFIRM.md: EPT with `--spread-floor 0.5` against the default (the suite's
runs) over the fresh seeds 47-51, with the rule CONFIRM.md fixed before the runs applied to the
mean validation scores. The probe is left out: its runs of these seeds were not made.

    python benchmarks/results/spread-floor/confirm/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tables import RESULTS, rule_table  # noqa: E402

if __name__ == "__main__":
    rule_table([("EPT (default)", RESULTS / "suite-head-clip", "ept"),
                ("EPT, spread floor 0.5", Path(__file__).resolve().parent, "ept")],
               (47, 48, 49, 50, 51), budget=37_893, probe_folder=None)
