"""The sm_90a compile check: every kernel, at the shapes an H100 will see, compiled on this
machine by Triton's NVIDIA backend through the ops' own launch code."""

import json
import os
import subprocess
import sys

import pytest

from ept_fast.kernels import compile_check
from ept_fast.kernels.compile_check import KernelStats, Row

PROMPT_KERNELS = ["_reduce_over_d_kernel", "_mix_kernel", "_combine_kernel",  # forward
                  "_reduce_over_d_kernel", "_mix_backward_kernel", "_scatter_kernel"]  # backward
ASSEMBLY_KERNELS = ["_assemble_fwd_kernel", "_assemble_bwd_kernel"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run of the command, in a process of its own (the kernels must be compiled, not
    interpreted, so TRITON_INTERPRET is off there)."""
    path = tmp_path_factory.mktemp("compile-check") / "report.json"
    done = subprocess.run([sys.executable, "-m", "ept_fast.kernels.compile_check", "--json", str(path)],
                          env={**os.environ, "TRITON_INTERPRET": "0"}, capture_output=True, text=True, timeout=1800)
    assert path.exists(), f"the compile check wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done, json.loads(path.read_text())


def _case_rows(report, case):
    return [row for row in report[1]["rows"]
            if (row["op"], tuple(row["shape"]), row["dtype"]) == (case.op, case.shape, case.dtype)]


def test_the_command_passes_and_prints_a_row_per_kernel(report):
    done, data = report
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert data["violations"] == [] and data["target"] == "sm_90a"
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(data["rows"])


@pytest.mark.parametrize("case", compile_check.CASES, ids=lambda c: f"{c.op}-{c.shape}-{c.dtype}")
def test_every_kernel_of_every_case_compiles_and_fits(report, case):
    rows = _case_rows(report, case)
    expected = PROMPT_KERNELS if case.op == "ept_prompt" else ASSEMBLY_KERNELS
    assert [row["kernel"] for row in rows] == expected
    for row in rows:
        assert row["grid"] is not None, f"{row['kernel']}: launch refused"
        assert row["shared"] <= compile_check.SHARED_MEMORY_LIMIT, row
        assert row["registers"] is not None, row
        assert row["dots"] in ("mma", "wgmma"), f"{row['kernel']}: dots on {row['dots']}, not the tensor cores"
        if case.no_spills:
            assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row


def test_the_defaults_are_checked_for_spills():
    labels = {(case.op, case.label) for case in compile_check.CASES if case.no_spills}
    assert labels == {(op, label) for op in ("ept_prompt", "assemble_inputs") for label in ("spec default", "CLI default")}


def _row(shared=1024, spills=0, registers=128, no_spills=True):
    stats = KernelStats("k", 4, 1, shared, registers, spills, spills, spills, "mma")
    return Row("ept_prompt", "spec default", (60, 768, 256, 30, 4, 8), "float32", (4, 1, 1), stats, no_spills)


def test_violations_name_what_an_h100_would_refuse_or_spill():
    assert compile_check.violations([_row()]) == []
    assert compile_check.violations([_row(spills=8, no_spills=False)]) == []
    too_big = compile_check.violations([_row(shared=compile_check.SHARED_MEMORY_LIMIT + 1)])
    assert too_big == ["k at ept_prompt (60, 768, 256, 30, 4, 8) float32: 232449 B of shared memory > 232448 B"]
    assert "spills 8 B stores / 8 B loads" in compile_check.violations([_row(spills=8)])[0]
    assert "no ptxas report" in compile_check.violations([_row(registers=None)])[0]


def test_the_check_refuses_to_run_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="compile checks need Triton's compiler: unset TRITON_INTERPRET"):
        compile_check.check(compile_check.QUICK_CASES)
