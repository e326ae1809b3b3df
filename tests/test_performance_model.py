"""docs/performance.md's table is what benchmarks/performance_model.py computes."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import performance_model  # noqa: E402


def test_the_documented_table_is_the_models():
    assert performance_model.table() in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")


def test_the_eager_reference_is_modelled_from_its_own_ops():
    forward, backward = performance_model.ept_prompt_cells(*performance_model.PROMPT)
    assert (forward.eager_launches, backward.eager_launches) == (22, 41)
    assert (forward.launches, backward.launches) == (3, 3)  # the compile check holds the kernels to these
    assert forward.eager_bytes > forward.bytes_fused  # the reference writes every intermediate


def test_the_bandwidth_prediction_is_bounded_by_a_copy():
    forward, _ = performance_model.assemble_inputs_cells(*performance_model.BANDWIDTH, 1024, 30, 60, eager=False)
    fraction = performance_model.copy_us(forward.bytes_min) / forward.fused_us
    assert 0.7 <= fraction <= 1.0
