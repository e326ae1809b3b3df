"""``benchmarks/gpu_check.sh`` in its dry-run mode (CPU, tiny shapes, kernels in the
interpreter): the GPU machine's one command runs every phase here too, so it cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_runs_every_phase_and_writes_its_report(tmp_path):
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--dry-run"], cwd=ROOT,  # any order
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = report["phases"]
    assert report["dry_run"] and list(phases) == ["cuda_tests", "kernels", "compile_check", "training_step",
                                                  "mixed_serving"]
    assert not [name for name, phase in phases.items() if "error" in phase]
    assert phases["cuda_tests"]["returncode"] == 0 and "skipped" in phases["cuda_tests"]["summary"]
    (prompt,) = phases["kernels"]["ept_prompt"]
    assert all(prompt[f"{name}_ms"] > 0 for name in ("fused", "eager", "compile", "predicted_fused", "predicted_eager"))
    assert all(0 < row["predicted_fraction_of_copy"] <= 1 for row in phases["kernels"]["assemble_inputs"])
    assert [row["dtype"] for row in phases["kernels"]["assemble_inputs"]] == ["float32", "bfloat16"]
    assert phases["compile_check"]["returncode"] == 0 and phases["compile_check"]["violations"] == []
    assert {row["kernel"] for row in phases["compile_check"]["rows"]} >= {"_mix_kernel", "_assemble_bwd_kernel"}
    steps = {(row["method"], row["prompt"], row.get("compiled", False)) for row in phases["training_step"]["rows"]}
    assert steps == {(method, prompt, False) for method in ("ept", "dept", "pt") for prompt in ("fused", "eager")} | {
        ("ept", "fused", True)}
    assert phases["training_step"]["predicted_pt_over_ept"] > 1
    serving = {(row["what"], row["backend"], row["prompts"]) for row in phases["mixed_serving"]["rows"]}
    assert serving == {("assembly", "torch", "same-m"), ("assembly", "torch", "m-differs")}
    assert all(row["mixed_ms"] > 0 and row["loop_ms"] > 0 for row in phases["mixed_serving"]["rows"])
    assert (tmp_path / "gpu_check.png").stat().st_size > 10_000
    assert "T5 step ept" in done.stdout  # the summary table comes last


def test_bad_arguments_get_the_usage():
    for arguments, message in (([], "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR"),
                               (["out", "--fast"], "gpu_check.sh: unknown option --fast"),
                               (["a", "b"], "gpu_check.sh: one OUT_DIR, got a and b")):
        done = subprocess.run(["bash", "benchmarks/gpu_check.sh", *arguments], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, (arguments, done.stderr)

