"""The tables of docs/results.md's spread-floor section, from the runs' metrics.json files: EPT
trained with a floor under the spread of what its head reads (VICReg's variance term) against
the default (the suite's runs), with the rule of PLAN.md applied to the mean validation scores:
the seed-42 pilot, then seeds 42-44.

    python benchmarks/results/spread-floor/table.py   (from the repository root)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tables import RESULTS, rule_table  # noqa: E402

HERE = Path(__file__).resolve().parent
COLUMNS = [("EPT (default)", RESULTS / "suite-head-clip", "ept"), ("EPT, spread floor", HERE, "ept")]

if __name__ == "__main__":
    print("The pilot, seed 42:\n")
    rule_table(COLUMNS, (42,), budget=37_893)
    seeds = (42, 43, 44)
    if all((HERE / "cola" / f"ept-seed{seed}" / "metrics.json").is_file() for seed in seeds):
        print("\nSeeds 42-44:\n")
        rule_table(COLUMNS, seeds, budget=37_893)
