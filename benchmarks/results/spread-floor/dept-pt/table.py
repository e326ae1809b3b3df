"""The rule of PLAN.md for DePT: DePT with `--spread-floor 0.5` against its default (no floor, the
suite's runs) over seeds 42-44, beside the probe.

    python benchmarks/results/spread-floor/dept-pt/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tables import RESULTS, rule_table  # noqa: E402

if __name__ == "__main__":
    rule_table([("DePT (default)", RESULTS / "suite-head-clip", "dept"),
                ("DePT, spread floor 0.5", Path(__file__).resolve().parent, "dept")],
               (42, 43, 44), budget=37_888)
