"""Compile every kernel for Hopper (sm_90a) through the ops' own launch code, on any machine.

    python -m ept_fast.kernels.compile_check [--json PATH] [--quick]

Triton's NVIDIA backend runs on a CPU. A stand-in Triton driver whose target is cuda:90 and
whose launcher records the grid and launches nothing (``recording.HopperStandIn``) lets
``fused_ept_prompt`` and ``fused_assemble_inputs`` run forward and backward on CPU tensors:
every kernel is compiled with exactly the block sizes, warps, stages and constexprs a CUDA
launch picks, and Triton raises ``OutOfResources`` where a real H100 would. For each launch
this reports the grid and what the kernel asks of the GPU (shared memory, registers and
spill bytes from ``ptxas -v``, whether its dots run on the tensor cores); for each forward
and backward, the launches and the other device ops (docs/performance.md holds them to its
model). It fails where a kernel needs more than an H100's shared memory, where the defaults
spill, or where the defaults break the launch budget of the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import triton

from . import assemble_inputs, ept_prompt
from .recording import HOPPER_MULTIPROCESSORS, SHARED_MEMORY_LIMIT, DeviceOps, KernelStats, record_compiles

PHASES = ("forward", "backward")
# The model's launches per forward and backward (docs/performance.md); other device ops: none.
LAUNCHES = {"ept_prompt": {"forward": 3, "backward": 3}, "assemble_inputs": {"forward": 1, "backward": 2},
            "assemble_inputs_mixed": {"forward": 1, "backward": 2}}
# The model's least programs per launch at the spec defaults: the prompt generator's reductions
# over d spread over many programs; the assembly fills a wave of the multiprocessors.
MIN_PROGRAMS = {"_reduce_over_d_kernel": 16, "_assemble_fwd_kernel": HOPPER_MULTIPROCESSORS,
                "_assemble_bwd_kernel": HOPPER_MULTIPROCESSORS}


@dataclasses.dataclass(frozen=True)
class Case:
    """One op at one shape and dtype. ``shape`` is (m, d, n, r, K, h) for ``ept_prompt``,
    (b, T, d, n, r, m) for ``assemble_inputs`` and (b, T, d, n, r, m, N, left) for
    ``assemble_inputs_mixed`` (N adapters, rows assigned in turn, left = 1 for left padding); ``dtype`` is the
    parameters' dtype for the prompt generator and the word-embedding table's for the assembly. The spec and CLI
    defaults (``defaults``) must not spill and must keep to the model's launch budget."""

    op: str
    shape: Tuple[int, ...]
    dtype: str
    label: str = ""
    defaults: bool = False

    def workload(self, device: torch.device) -> Tuple[Callable[[], torch.Tensor], List[torch.Tensor]]:
        """The op's forward on random inputs, and the tensors it is differentiated in."""
        make = {"ept_prompt": _prompt_workload, "assemble_inputs": _assembly_workload,
                "assemble_inputs_mixed": _mixed_assembly_workload}[self.op]
        return make(self.shape, getattr(torch, self.dtype), device)


def _prompt_workload(shape, dtype, device):
    m, d, n, r, K, h = shape
    g = torch.Generator().manual_seed(0)
    leaves = [
        (0.1 * torch.randn(size, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device).requires_grad_()
        for size in ((m, d), (n, r), (r, d), (), (K, d, h), (K, h, d), (d, K), (K,))
    ]
    return lambda: ept_prompt.fused_ept_prompt(*leaves, 8.0 / math.sqrt(r) if r else 0.0), leaves


def _token_batch(b, T, d, table_dtype, device, g):
    vocab = 1000
    input_ids = torch.randint(vocab, (b, T), generator=g).to(device)
    attention_mask = torch.ones(b, T, dtype=torch.long)
    attention_mask[b // 2:, T - T // 4:] = 0  # right padding in half of the rows
    table = torch.randn(vocab, d, generator=g).to(dtype=table_dtype, device=device)
    return input_ids, attention_mask.to(device), table


def _assembly_workload(shape, table_dtype, device):
    b, T, d, n, r, m = shape
    g = torch.Generator().manual_seed(0)
    input_ids, attention_mask, table = _token_batch(b, T, d, table_dtype, device, g)
    leaves = [(0.1 * torch.randn(size, generator=g)).to(device).requires_grad_() for size in ((m, d), (n, r), (r, d))]
    scaling = 8.0 / math.sqrt(r) if r else 0.0
    return lambda: assemble_inputs.fused_assemble_inputs(input_ids, attention_mask, table, *leaves, scaling)[0], leaves


def _mixed_assembly_workload(shape, table_dtype, device):
    b, T, d, n, r, m, adapters, left = shape
    g = torch.Generator().manual_seed(0)
    input_ids, attention_mask, table = _token_batch(b, T, d, table_dtype, device, g)
    leaves = [(0.1 * torch.randn(size, generator=g)).to(device).requires_grad_()
              for size in ((adapters, m, d), (adapters, n, r), (adapters, r, d))]
    routing = (torch.randint(1, m + 1, (adapters,), generator=g).to(device),
               torch.full((adapters,), 8.0 / math.sqrt(r) if r else 0.0, device=device),
               (torch.arange(b) % adapters).to(device))
    prompts, lora_a, lora_b = leaves
    return lambda: assemble_inputs.fused_assemble_inputs_mixed(
        input_ids, attention_mask, table, prompts, routing[0], lora_a, lora_b, *routing[1:],
        padding_side="left" if left else "right")[0], leaves


def _cases() -> List[Case]:
    prompt, assembly = "ept_prompt", "assemble_inputs"
    spec, cli = "spec default", "CLI default"
    cases = [
        # (m, d, n, r, K, h)
        Case(prompt, (60, 768, 256, 30, 4, 8), "float32", spec, defaults=True),
        Case(prompt, (60, 768, 256, 30, 4, 8), "float64", spec, defaults=True),
        Case(prompt, (20, 384, 128, 44, 4, 2), "float32", cli, defaults=True),
        Case(prompt, (60, 4096, 256, 30, 4, 8), "float32", "d=4096"),
        Case(prompt, (100, 1024, 512, 128, 4, 8), "float32", "large"),
        Case(prompt, (60, 768, 256, 30, 16, 64), "float32", "K*h=1024"),
        # the corners of the sizes the fused prompt generator takes (kernels/ept_prompt.py: unsupported)
        Case(prompt, (512, 768, 256, 256, 4, 8), "float32", "largest m, r"),
        Case(prompt, (512, 768, 256, 128, 4, 8), "float64", "largest m, r"),
        Case(prompt, (256, 768, 256, 256, 4, 8), "float64", "largest m, r"),
    ]
    for shape, label, defaults in [  # (b, T, d, n, r, m)
        ((32, 256, 768, 256, 30, 60), spec, True),
        ((16, 1024, 4096, 1024, 30, 60), "d=4096", False),
        ((16, 128, 384, 128, 44, 20), cli, True),
        ((32, 256, 768, 256, 128, 60), "r=128", False),
    ]:
        cases += [Case(assembly, shape, dtype, label, defaults) for dtype in ("float32", "bfloat16")]
    # (b, T, d, n, r, m, N, left): a served batch of 8 adapters, padded after the tokens or before the prompts
    cases += [Case("assemble_inputs_mixed", (64, 256, 768, 256, 30, 60, 8, left), dtype, "8 adapters")
              for left in (0, 1) for dtype in ("float32", "bfloat16")]
    return cases


CASES = _cases()
QUICK_CASES = [case for case in CASES if case.label == "CLI default"]


@dataclasses.dataclass
class Row:
    """One kernel launch of one phase (forward or backward) of one case."""

    case: Case
    phase: str
    grid: Optional[Tuple[int, int, int]]  # None: the launch was refused
    stats: KernelStats

    @property
    def programs(self) -> Optional[int]:
        return None if self.grid is None else self.grid[0] * self.grid[1] * self.grid[2]

    def to_dict(self) -> dict:
        return {"op": self.case.op, "label": self.case.label, "shape": list(self.case.shape), "dtype": self.case.dtype,
                "phase": self.phase, "grid": None if self.grid is None else list(self.grid),
                "programs": self.programs, **dataclasses.asdict(self.stats)}


@dataclasses.dataclass
class Profile:
    """What one phase of one case runs on the device besides its own allocations."""

    case: Case
    phase: str
    launches: List[str]
    device_ops: List[str]  # aten ops other than the kernels (inside the custom ops too)
    host_syncs: List[str]

    def to_dict(self) -> dict:
        return {"op": self.case.op, "label": self.case.label, "shape": list(self.case.shape), "dtype": self.case.dtype,
                "phase": self.phase, "launches": self.launches, "device_ops": self.device_ops,
                "host_syncs": self.host_syncs}


def check(cases: Sequence[Case], stand_in: bool = True, device: str = "cpu") -> Tuple[List[Row], List[Profile]]:
    """Run every case's forward and backward through the recorder: a row per kernel launch,
    a profile per phase."""
    rows: List[Row] = []
    profiles: List[Profile] = []
    with record_compiles(stand_in) as recorder:
        for case in cases:
            forward, leaves = case.workload(torch.device(device))
            out = None
            for phase in PHASES:
                first = len(recorder.launches)
                grad = None if out is None else torch.ones_like(out)
                try:
                    with DeviceOps() as ops:
                        if phase == "forward":
                            out = forward()
                        else:
                            torch.autograd.grad(out, leaves, grad)
                except triton.runtime.errors.OutOfResources as error:  # raised before the launch, as on a GPU
                    print(f"{case.op} {case.shape} {case.dtype} {phase}: {error}", file=sys.stderr)
                    rows.append(Row(case, phase, None, list(recorder.stats.values())[-1]))
                    break
                launched = recorder.launches[first:]
                rows += [Row(case, phase, grid, recorder.stats[kernel_hash]) for kernel_hash, grid in launched]
                profiles.append(Profile(case, phase, [recorder.stats[h].kernel for h, _ in launched], ops.ops,
                                        ops.host_syncs))
    return rows, profiles


def violations(rows: Sequence[Row], profiles: Sequence[Profile] = ()) -> List[str]:
    """What would fail or be slow on an H100: shared memory over the limit, a refused launch,
    a kernel whose ptxas report could not be read, and at the defaults: spills, more launches
    or device ops than the model, too few programs; anywhere: a host sync."""
    found = []
    for row in rows:
        where = f"{row.stats.kernel} at {row.case.op} {row.case.shape} {row.case.dtype}"
        if row.stats.shared > SHARED_MEMORY_LIMIT:
            found.append(f"{where}: {row.stats.shared} B of shared memory > {SHARED_MEMORY_LIMIT} B")
        if row.stats.registers is None:
            found.append(f"{where}: no ptxas report")
        elif row.case.defaults and (row.stats.spill_stores or row.stats.spill_loads):
            found.append(f"{where}: spills {row.stats.spill_stores} B stores / {row.stats.spill_loads} B loads")
        least = MIN_PROGRAMS.get(row.stats.kernel, 0)
        if row.case.label == "spec default" and row.programs is not None and row.programs < least:
            found.append(f"{where}: {row.programs} programs, fewer than the model's {least}")
    for profile in profiles:
        where = f"{profile.case.op} {profile.case.shape} {profile.case.dtype} {profile.phase}"
        if profile.host_syncs:
            found.append(f"{where}: host syncs {profile.host_syncs}")
        budget = LAUNCHES[profile.case.op][profile.phase]
        if profile.case.defaults and (len(profile.launches) > budget or profile.device_ops):
            found.append(f"{where}: {len(profile.launches)} launches (model: {budget}) and device ops "
                         f"{profile.device_ops} (model: none)")
    return found


def format_table(rows: Sequence[Row]) -> str:
    header = ("| op | case | shape | dtype | phase | kernel | grid | warps | stages | shared B | registers | "
              "spill B (st/ld) | dots |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        s, case = row.stats, row.case
        grid = "refused" if row.grid is None else "x".join(map(str, row.grid))
        lines.append(f"| {case.op} | {case.label} | ({', '.join(map(str, case.shape))}) | {case.dtype} | {row.phase} | "
                     f"{s.kernel} | {grid} | {s.num_warps} | {s.num_stages} | {s.shared:,} | {s.registers} | "
                     f"{s.spill_stores}/{s.spill_loads} | {s.dots} |")
    return "\n".join(lines)


def format_profiles(profiles: Sequence[Profile]) -> str:
    lines = ["| op | case | shape | dtype | phase | launches | other device ops | host syncs |",
             "|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        lines.append(f"| {p.case.op} | {p.case.label} | ({', '.join(map(str, p.case.shape))}) | {p.case.dtype} | "
                     f"{p.phase} | {len(p.launches)} | {', '.join(p.device_ops) or 'none'} | {len(p.host_syncs)} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ept_fast.kernels.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows, the profiles and any violations as JSON")
    parser.add_argument("--quick", action="store_true", help="only the CLI-default shapes (a smoke test)")
    args = parser.parse_args(argv)
    rows, profiles = check(QUICK_CASES if args.quick else CASES)
    found = violations(rows, profiles)
    print(f"Triton {triton.__version__}, target sm_90a, shared-memory limit {SHARED_MEMORY_LIMIT} B per block")
    print(format_table(rows))
    print()
    print(format_profiles(profiles))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"triton": triton.__version__, "target": "sm_90a", "shared_limit": SHARED_MEMORY_LIMIT,
                       "rows": [row.to_dict() for row in rows], "profiles": [p.to_dict() for p in profiles],
                       "violations": found}, handle, indent=1)
    for problem in found:
        print("FAIL:", problem)
    kernels = len({row.stats.kernel for row in rows})
    print(f"compile check: {'FAILED, ' + str(len(found)) + ' violation(s) above' if found else 'passed'}: "
          f"{len(rows)} launches of {kernels} kernels in {len(profiles)} op phases compiled for sm_90a"
          + ("" if found else "; shared memory within the limit, no spills at the defaults, launch budgets kept"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
