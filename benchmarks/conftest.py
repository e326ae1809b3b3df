"""Shared machinery of the speed runs: device, providers, synchronised timing, machine info.

Run on a CUDA machine:  pytest benchmarks/ --benchmark-json=benchmarks/results.json
then:                   python benchmarks/report.py benchmarks/results.json
Without a GPU only the eager PyTorch reference is timed (the Triton interpreter is not a
product path, and torch.compile of the reference is a GPU baseline); the others are skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import triton

import ept_fast

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
PROVIDERS = [
    p if CUDA or p == "eager" else pytest.param(p, marks=pytest.mark.skip(reason="CPU run: reference only"))
    for p in ("triton", "eager", "compile")
]
MODES = ["forward", "backward", "full"]


def pytest_benchmark_update_machine_info(config, machine_info):
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    machine_info.update(
        gpu=torch.cuda.get_device_name() if CUDA else "none (CPU run: eager reference only)",
        torch=torch.__version__, triton=triton.__version__, ept_fast=ept_fast.__version__, commit=commit,
        cuda=torch.version.cuda,
    )


def sync():
    if CUDA:
        torch.cuda.synchronize()


def step(fn, leaves, mode):
    """The timed callable for ``mode``: forward, backward of a kept graph, or both."""
    if mode == "forward":
        def run():
            fn()
    elif mode == "backward":
        out = fn()
        grad = torch.randn_like(out)

        def run():
            torch.autograd.grad(out, leaves, grad, retain_graph=True)
    else:
        grad = None

        def run():
            nonlocal grad
            out = fn()
            grad = torch.randn_like(out) if grad is None else grad
            torch.autograd.grad(out, leaves, grad)
    return run


@pytest.fixture
def measure(benchmark):
    """Time ``run`` with pytest-benchmark (synchronised inside), plus do_bench quantiles and
    peak memory on CUDA, stored in ``extra_info``."""

    def _measure(run, **info):
        benchmark.extra_info.update(info)
        run()  # warm-up: compilation and autotuning stay out of the timings
        sync()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            sync()
            benchmark.extra_info["peak_memory_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            p50, p20, p80 = triton.testing.do_bench(run, quantiles=[0.5, 0.2, 0.8])
            benchmark.extra_info.update(do_bench_ms_p50=p50, do_bench_ms_p20=p20, do_bench_ms_p80=p80)

        def timed():
            run()
            sync()

        benchmark(timed)

    return _measure
