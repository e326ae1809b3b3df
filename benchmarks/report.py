"""Summarise a pytest-benchmark JSON of this suite as Markdown: times, speed-ups of the
fused kernels over the eager reference and torch.compile, peak memory, and the assembly's
bandwidth against the device-to-device copy measured in the same run; for the mixed-serving
benchmark, the mixed batch against the loop over adapters.

    python benchmarks/report.py benchmarks/results.json > docs/benchmarks-run.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _milliseconds(bench) -> float:
    info = bench["extra_info"]
    return info.get("do_bench_ms_p50", bench["stats"]["median"] * 1e3)


def _key(info):
    if info["op"] == "ept_prompt":
        return ("ept_prompt", f"m={info['m']} d={info['d']}", info["mode"])
    return ("assemble_inputs", f"b={info['b']} T={info['T']} d={info['d']} {info['dtype']}", info["mode"])


def summarise(data) -> str:
    rows = defaultdict(dict)
    copies = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "strategy" in info:  # the mixed-serving benchmark: its own table
            continue
        if info["op"] == "device_copy":
            copies[f"b={info['b']} T={info['T']} d={info['d']} {info['dtype']}"] = info["bytes"] / _milliseconds(bench)
            continue
        rows[_key(info)][info["provider"]] = (_milliseconds(bench), info)

    machine = data["machine_info"]
    lines = [
        f"GPU: {machine.get('gpu')}; torch {machine.get('torch')}, triton {machine.get('triton')}, "
        f"ept_fast {machine.get('ept_fast')}, commit {machine.get('commit', '')[:10]}",
        "",
    ]
    if serving_rows(data):
        lines += _serving_table(data) + [""]
    if not rows:
        return "\n".join(lines) + "\n"
    lines += [
        "| op | shape | mode | triton ms | eager ms | compile ms | eager/triton | compile/triton "
        "| triton peak MB | bandwidth vs copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, shape, mode), by_provider in sorted(rows.items()):
        def cell(provider):
            return f"{by_provider[provider][0]:.4f}" if provider in by_provider else "-"

        def ratio(provider):
            if provider in by_provider and "triton" in by_provider:
                return f"{by_provider[provider][0] / by_provider['triton'][0]:.2f}x"
            return "-"

        peak = by_provider.get("triton", (0, {}))[1].get("peak_memory_mb")
        bandwidth = "-"
        if op == "assemble_inputs" and "triton" in by_provider and shape in copies:
            ms, info = by_provider["triton"]
            bandwidth = f"{(info['bytes'] / ms) / copies[shape]:.0%}"
        lines.append(
            f"| {op} | {shape} | {mode} | {cell('triton')} | {cell('eager')} | {cell('compile')} | {ratio('eager')} | "
            f"{ratio('compile')} | {'-' if peak is None else f'{peak:.1f}'} | {bandwidth} |"
        )
    return "\n".join(lines) + "\n"


def serving_rows(data) -> list:
    """The mixed-serving benchmark's pairs: one dict per (what, backend, prompts) that ran both
    the mixed batch and the loop, with both times (median ms) and the mixed batch's speed-up."""
    runs, examples = defaultdict(dict), {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "strategy" in info:  # benchmarks/test_mixed_serving_speed.py
            key = (info["group"], info["backend"], info["prompts"])
            runs[key][info["strategy"]], examples[key] = _milliseconds(bench), info["examples"]
    return [{"what": key[0], "backend": key[1], "prompts": key[2], "examples": examples[key],
             "mixed_ms": times["mixed"], "loop_ms": times["loop"], "speedup": times["loop"] / times["mixed"]}
            for key, times in sorted(runs.items()) if {"mixed", "loop"} <= times.keys()]


def _serving_table(data) -> list:
    lines = ["| what | backend | prompts | mixed batch | loop over adapters | speed-up of the mixed batch |",
             "|---|---|---|---|---|---|"]
    for row in serving_rows(data):
        def cell(ms):
            return f"{ms:.2f} ms ({row['examples'] / ms * 1e3:,.0f} examples/s)"

        lines.append(f"| {row['what']} | {row['backend']} | {row['prompts']} | {cell(row['mixed_ms'])} | "
                     f"{cell(row['loop_ms'])} | {row['speedup']:.2f}x |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/report.py RESULTS.json")
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.stdout.write(summarise(json.load(handle)))
