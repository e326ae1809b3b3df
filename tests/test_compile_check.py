"""The sm_90a compile check: every kernel, at the shapes an H100 will see, compiled on this
machine by Triton's NVIDIA backend through the ops' own launch code."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from ept_fast.kernels import compile_check
from ept_fast.kernels.compile_check import KernelStats

KERNELS = {  # per phase, in launch order
    "ept_prompt": {"forward": ["_reduce_over_d_kernel", "_mix_kernel", "_combine_kernel"],
                   "backward": ["_reduce_over_d_kernel", "_mix_backward_kernel", "_scatter_kernel"]},
    "assemble_inputs": {"forward": ["_assemble_fwd_kernel"],
                        "backward": ["_assemble_bwd_kernel", "_assemble_bwd_finish_kernel"]},
}
KERNELS["assemble_inputs_mixed"] = KERNELS["assemble_inputs"]  # the same kernels, with an adapter per row
ADDS_ONLY = {"_assemble_bwd_finish_kernel"}  # sums partials: no products


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run of the command, in a process of its own (the kernels must be compiled, not
    interpreted, so TRITON_INTERPRET is off there)."""
    path = tmp_path_factory.mktemp("compile-check") / "report.json"
    done = subprocess.run([sys.executable, "-m", "ept_fast.kernels.compile_check", "--json", str(path)],
                          env={**os.environ, "TRITON_INTERPRET": "0"}, capture_output=True, text=True, timeout=1800)
    assert path.exists(), f"the compile check wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done, json.loads(path.read_text())


def _of(case, entries):
    return [entry for entry in entries
            if (entry["op"], tuple(entry["shape"]), entry["dtype"]) == (case.op, case.shape, case.dtype)]


def test_the_command_passes_and_prints_a_row_per_kernel(report):
    done, data = report
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert data["violations"] == [] and data["target"] == "sm_90a"
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    kernels = [line for line in lines if line.count("|") == 14][1:]  # without the header
    phases = [line for line in lines if line.count("|") == 9][1:]
    assert len(kernels) == len(data["rows"]) and len(phases) == len(data["profiles"]) == 2 * len(compile_check.CASES)
    assert done.stdout.strip().splitlines()[-1].startswith(f"compile check: passed: {len(data['rows'])} launches of ")


@pytest.mark.parametrize("case", compile_check.CASES, ids=lambda c: f"{c.op}-{c.shape}-{c.dtype}")
def test_every_kernel_of_every_case_compiles_and_fits(report, case):
    rows = _of(case, report[1]["rows"])
    assert [(row["phase"], row["kernel"]) for row in rows] == [
        (phase, kernel) for phase in ("forward", "backward") for kernel in KERNELS[case.op][phase]]
    for row in rows:
        assert row["grid"] is not None, f"{row['kernel']}: launch refused"
        assert row["shared"] <= compile_check.SHARED_MEMORY_LIMIT, row
        assert row["registers"] is not None, row
        expected = "none" if row["kernel"] in ADDS_ONLY else ("mma", "wgmma")
        assert row["dots"] in expected, f"{row['kernel']}: dots on {row['dots']}, not the tensor cores"
        if case.defaults:
            assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row


@pytest.mark.parametrize("case", compile_check.CASES, ids=lambda c: f"{c.op}-{c.shape}-{c.dtype}")
def test_each_phase_runs_the_models_launches_and_nothing_else(report, case):
    """docs/performance.md: 3 launches each way for ept_prompt, 1 + 2 for assemble_inputs, no
    other device op (no sums, copies or zeros, inside the custom ops or from autograd) and no
    host sync, at every size."""
    for profile in _of(case, report[1]["profiles"]):
        assert len(profile["launches"]) == compile_check.LAUNCHES[case.op][profile["phase"]], profile
        assert profile["device_ops"] == [] and profile["host_syncs"] == [], profile


@pytest.mark.parametrize("op", ["ept_prompt", "assemble_inputs"])
def test_the_grids_at_the_spec_defaults_fill_the_gpu_as_the_model_needs(report, op):
    rows = [row for row in report[1]["rows"] if row["op"] == op and row["label"] == "spec default"]
    for row in rows:
        assert row["programs"] >= compile_check.MIN_PROGRAMS.get(row["kernel"], 1), row
    largest_backward = max(row["programs"] for row in rows if row["phase"] == "backward")
    assert largest_backward >= (132 if op == "assemble_inputs" else 16)


def test_the_defaults_are_checked_for_spills():
    labels = {(case.op, case.label) for case in compile_check.CASES if case.defaults}
    assert labels == {(op, label) for op in ("ept_prompt", "assemble_inputs")
                      for label in ("spec default", "CLI default")}


SPEC = compile_check.Case("ept_prompt", (60, 768, 256, 30, 4, 8), "float32", "spec default", defaults=True)


def _row(shared=1024, spills=0, registers=128, case=SPEC, kernel="k", grid=(4, 4, 4)):
    stats = KernelStats(kernel, 4, 1, shared, registers, spills, spills, spills, "mma")
    return compile_check.Row(case, "forward", grid, stats)


def test_violations_name_what_an_h100_would_refuse_or_what_breaks_the_model():
    assert compile_check.violations([_row()]) == []
    assert compile_check.violations([_row(spills=8, case=dataclasses.replace(SPEC, defaults=False))]) == []
    too_big = compile_check.violations([_row(shared=compile_check.SHARED_MEMORY_LIMIT + 1)])
    assert too_big == ["k at ept_prompt (60, 768, 256, 30, 4, 8) float32: 232449 B of shared memory > 232448 B"]
    assert "spills 8 B stores / 8 B loads" in compile_check.violations([_row(spills=8)])[0]
    assert "no ptxas report" in compile_check.violations([_row(registers=None)])[0]
    narrow = compile_check.violations([_row(kernel="_reduce_over_d_kernel", grid=(3, 4, 1))])
    assert narrow == ["_reduce_over_d_kernel at ept_prompt (60, 768, 256, 30, 4, 8) float32: 12 programs, fewer "
                      "than the model's 16"]
    busy = compile_check.Profile(SPEC, "backward", ["a", "b", "c", "d"], ["aten.sum.dim_IntList"], [])
    assert "4 launches (model: 3) and device ops ['aten.sum.dim_IntList']" in compile_check.violations([], [busy])[0]
    syncing = compile_check.Profile(SPEC, "forward", ["a"], [], ["aten._local_scalar_dense.default"])
    assert "host syncs" in compile_check.violations([], [syncing])[0]


PROFILE_CONTROL = """
import json
import torch
from ept_fast.kernels import fused_assemble_inputs
from ept_fast.kernels.recording import DeviceOps, record_compiles
ids, mask = torch.randint(50, (2, 20)), torch.ones(2, 20, dtype=torch.long)
leaves = [torch.randn(s).requires_grad_() for s in ((3, 32), (24, 4), (4, 32))]
table = torch.randn(32, 50).t()  # not contiguous: the forward's body copies it
with record_compiles(stand_in=True) as recorder, DeviceOps() as ops:
    out, _ = fused_assemble_inputs(ids, mask, table, *leaves, 1.0)
    torch.ones(2).sum().item()
print(json.dumps({"ops": ops.ops, "syncs": ops.host_syncs, "launches": len(recorder.launches)}))
"""


def test_the_profile_sees_inside_the_custom_ops_and_host_syncs():
    done = subprocess.run([sys.executable, "-c", PROFILE_CONTROL], env={**os.environ, "TRITON_INTERPRET": "0"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    copy, *rest = seen["ops"]  # the body's copy of the table (aten.clone, or .contiguous's own op), then ours
    assert copy.startswith(("aten.clone", "aten.contiguous")) and rest == ["aten.ones.default", "aten.sum.default"]
    assert seen["syncs"] == ["aten._local_scalar_dense.default"] and seen["launches"] == 1


def test_the_check_refuses_to_run_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="compile checks need Triton's compiler: unset TRITON_INTERPRET"):
        compile_check.check(compile_check.QUICK_CASES)
