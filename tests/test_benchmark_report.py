"""benchmarks/report.py tables a pytest-benchmark JSON of either kind: the kernel suite and the
mixed-serving benchmark (mixed batch against the loop over adapters)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import report  # noqa: E402


def _bench(median_s, **info):
    return {"stats": {"median": median_s}, "extra_info": info}


def _serving(group, backend, prompts, strategy, median_s):
    return _bench(median_s, group=group, backend=backend, prompts=prompts, strategy=strategy, examples=64, adapters=8)


MACHINE = {"gpu": "none", "torch": "2", "triton": "3", "ept_fast": "0.1.0", "commit": "abc"}


def test_mixed_serving_rows_pair_the_strategies():
    data = {"machine_info": MACHINE, "benchmarks": [
        _serving("assembly", "torch", "same-m", "mixed", 0.002), _serving("assembly", "torch", "same-m", "loop", 0.003),
        _serving("serving", "model on cpu", "same-m", "mixed", 1.0),  # its loop did not run: no row
    ]}
    (row,) = report.serving_rows(data)
    assert row == {"what": "assembly", "backend": "torch", "prompts": "same-m", "examples": 64, "mixed_ms": 2.0,
                   "loop_ms": 3.0, "speedup": 1.5}
    text = report.summarise(data)
    assert "| assembly | torch | same-m | 2.00 ms (32,000 examples/s) | 3.00 ms (21,333 examples/s) | 1.50x |" in text
    assert "| op | shape |" not in text  # no kernel rows, no kernel table


def test_kernel_rows_and_serving_rows_in_one_report():
    kernel = dict(op="assemble_inputs", b=2, T=8, d=32, dtype="float32", mode="forward")
    data = {"machine_info": MACHINE, "benchmarks": [
        _bench(0.001, provider="triton", **kernel), _bench(0.004, provider="eager", **kernel),
        _serving("assembly", "triton", "m-differs", "mixed", 0.001), _serving("assembly", "triton", "m-differs", "loop",
                                                                              0.004),
    ]}
    text = report.summarise(data)
    assert "| assemble_inputs | b=2 T=8 d=32 float32 | forward | 1.0000 | 4.0000 | - | 4.00x |" in text
    assert "| assembly | triton | m-differs |" in text and "| 4.00x |" in text
