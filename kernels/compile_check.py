"""Compile every kernel for Hopper (sm_90a) through the ops' own launch code, on any machine.

    python -m ept_fast.kernels.compile_check [--json PATH] [--quick]

Triton's NVIDIA backend runs on a CPU. A stand-in Triton driver whose target is cuda:90 and
whose launcher records the grid and launches nothing lets ``fused_ept_prompt`` and
``fused_assemble_inputs`` run forward and backward on CPU tensors: every kernel is compiled
with exactly the block sizes, warps, stages and constexprs a CUDA launch picks, and Triton
raises ``OutOfResources`` where a real H100 would. For each compiled kernel this reports
the shared memory it asks for (``metadata.shared``), the registers and spill bytes from
``ptxas -v`` (the log of the compile itself, read through Triton's ``dump_ptxas_log``), and
whether its dots run on the tensor cores (``wgmma`` / ``mma`` in the PTX) or on FMA units.

The same recorder runs on a real GPU (``record_compiles(stand_in=False)``), where it reports
the compiles of the real launches; ``benchmarks/gpu_check.py`` uses it that way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import re
import sys
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase

from . import _launch, assemble_inputs, ept_prompt

SHARED_MEMORY_LIMIT = 232_448  # bytes a block may use on an H100 / H200
HOPPER_MULTIPROCESSORS = 132  # H100 SXM and H200
KERNEL_MODULES = (ept_prompt, assemble_inputs)


@dataclasses.dataclass(frozen=True)
class Case:
    """One op at one shape and dtype. ``shape`` is (m, d, n, r, K, h) for ``ept_prompt`` and
    (b, T, d, n, r, m) for ``assemble_inputs``; ``dtype`` is the parameters' dtype for the
    prompt generator and the word-embedding table's for the assembly."""

    op: str
    shape: Tuple[int, ...]
    dtype: str
    label: str = ""
    no_spills: bool = False  # the defaults: any spill is a failure

    def run(self, device: torch.device) -> None:
        """Forward and backward of the fused op on random inputs."""
        runner = _run_prompt if self.op == "ept_prompt" else _run_assembly
        runner(self.shape, getattr(torch, self.dtype), device)


def _run_prompt(shape, dtype, device) -> None:
    m, d, n, r, K, h = shape
    g = torch.Generator().manual_seed(0)
    leaves = [
        (0.1 * torch.randn(size, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device).requires_grad_()
        for size in ((m, d), (n, r), (r, d), (), (K, d, h), (K, h, d), (d, K), (K,))
    ]
    out = ept_prompt.fused_ept_prompt(*leaves, 8.0 / math.sqrt(r) if r else 0.0)
    torch.autograd.grad(out, leaves, torch.ones_like(out))


def _run_assembly(shape, table_dtype, device) -> None:
    b, T, d, n, r, m = shape
    vocab = 1000
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(vocab, (b, T), generator=g).to(device)
    attention_mask = torch.ones(b, T, dtype=torch.long)
    attention_mask[b // 2:, T - T // 4:] = 0  # right padding in half of the rows
    table = torch.randn(vocab, d, generator=g).to(dtype=table_dtype, device=device)
    leaves = [(0.1 * torch.randn(size, generator=g)).to(device).requires_grad_() for size in ((m, d), (n, r), (r, d))]
    out, _ = assemble_inputs.fused_assemble_inputs(input_ids, attention_mask.to(device), table, *leaves,
                                                  8.0 / math.sqrt(r) if r else 0.0)
    torch.autograd.grad(out, leaves, torch.ones_like(out))


def _cases() -> List[Case]:
    prompt, assembly = "ept_prompt", "assemble_inputs"
    spec, cli = "spec default", "CLI default"
    cases = [
        # (m, d, n, r, K, h)
        Case(prompt, (60, 768, 256, 30, 4, 8), "float32", spec, no_spills=True),
        Case(prompt, (60, 768, 256, 30, 4, 8), "float64", spec, no_spills=True),
        Case(prompt, (20, 384, 128, 8, 4, 8), "float32", cli, no_spills=True),
        Case(prompt, (60, 4096, 256, 30, 4, 8), "float32", "d=4096"),
        Case(prompt, (100, 1024, 512, 128, 4, 8), "float32", "large"),
        Case(prompt, (60, 768, 256, 30, 16, 64), "float32", "K*h=1024"),
        # the corners of the sizes the fused prompt generator takes (kernels/ept_prompt.py: unsupported)
        Case(prompt, (512, 768, 256, 256, 4, 8), "float32", "largest m, r"),
        Case(prompt, (512, 768, 256, 128, 4, 8), "float64", "largest m, r"),
        Case(prompt, (256, 768, 256, 256, 4, 8), "float64", "largest m, r"),
    ]
    for shape, label, no_spills in [  # (b, T, d, n, r, m)
        ((32, 256, 768, 256, 30, 60), spec, True),
        ((16, 1024, 4096, 1024, 30, 60), "d=4096", False),
        ((8, 128, 384, 128, 8, 20), cli, True),
        ((32, 256, 768, 256, 128, 60), "r=128", False),
    ]:
        cases += [Case(assembly, shape, dtype, label, no_spills) for dtype in ("float32", "bfloat16")]
    return cases


CASES = _cases()
QUICK_CASES = [case for case in CASES if case.label == "CLI default"]


@dataclasses.dataclass
class KernelStats:
    """What one compiled kernel asks of the GPU."""

    kernel: str
    num_warps: int
    num_stages: int
    shared: int
    registers: Optional[int]
    spill_stores: Optional[int]
    spill_loads: Optional[int]
    stack: Optional[int]
    dots: str  # "wgmma", "mma" (tensor cores), "fma" (dots on FMA units) or "none"


@dataclasses.dataclass
class Row:
    """One kernel launched by one case."""

    op: str
    label: str
    shape: Tuple[int, ...]
    dtype: str
    grid: Optional[Tuple[int, int, int]]
    stats: KernelStats
    no_spills: bool

    @property
    def programs(self) -> Optional[int]:
        return None if self.grid is None else self.grid[0] * self.grid[1] * self.grid[2]

    def to_dict(self) -> dict:
        return {"op": self.op, "label": self.label, "shape": list(self.shape), "dtype": self.dtype,
                "grid": None if self.grid is None else list(self.grid), "programs": self.programs,
                **dataclasses.asdict(self.stats)}


def _ptxas_report(log: str, kernel: str) -> Dict[str, Optional[int]]:
    """Registers, stack and spill bytes of ``kernel`` from a ``ptxas -v`` log."""
    block = log[log.find(f"Function properties for {kernel}"):]
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
    registers = re.search(r"Used (\d+) registers", block)
    if frame is None or registers is None:
        return dict(registers=None, spill_stores=None, spill_loads=None, stack=None)
    return dict(registers=int(registers.group(1)), stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                spill_loads=int(frame.group(3)))


def _dot_units(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "fma" if re.search(r"\bfma\.rn\.f(32|64)", ptx) else "none"


class _RecordingLauncher:
    """Stands in for Triton's CUDA launcher: records the grid, launches nothing."""

    def __init__(self, recorder: "CompileRecorder", metadata):
        self.recorder, self.hash = recorder, metadata.hash

    def __call__(self, grid_x, grid_y, grid_z, *args):
        self.recorder.launches.append((self.hash, (grid_x, grid_y, grid_z)))


class _HopperUtils:
    def get_device_properties(self, device):
        return {"max_shared_mem": SHARED_MEMORY_LIMIT, "multiprocessor_count": HOPPER_MULTIPROCESSORS,
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    def load_binary(self, name, kernel, shared, device):
        return None, None, 0, 0, 1024  # module, function, registers, spills, max threads per block

    def unload_module(self, module):
        pass


class HopperStandIn(DriverBase):
    """A Triton driver for an H100 that is not there: target cuda:90, 132 multiprocessors,
    the H100's shared-memory limit, and a launcher that only records."""

    def __init__(self, recorder: "CompileRecorder"):
        super().__init__()
        self.utils = _HopperUtils()
        self.launcher_cls = lambda src, metadata: _RecordingLauncher(recorder, metadata)

    @classmethod
    def is_active(cls):
        return False

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("the Hopper stand-in compiles kernels; it cannot time them")

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def set_current_device(self, device):
        pass

    def get_device_capability(self, device=None):
        return (9, 0)


class CompileRecorder:
    """Collects ``KernelStats`` for every kernel the project compiles while it is active, and
    (with the stand-in) the grid of every launch."""

    def __init__(self):
        self.stats: Dict[str, KernelStats] = {}  # by compiled-kernel hash, in compile order
        self.launches: List[Tuple[str, Tuple[int, int, int]]] = []
        self._log = io.StringIO()

    def _on_compile(self, *, key, fn, compile, **_):
        log = self._log.getvalue()
        self._log.seek(0)
        self._log.truncate()
        compiled = fn.jit_function.device_caches[compile["device"]][0][key]
        name = compiled.metadata.name
        self.stats[compiled.metadata.hash] = KernelStats(
            kernel=name, num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
            shared=compiled.metadata.shared, dots=_dot_units(compiled.asm.get("ptx", "")), **_ptxas_report(log, name),
        )


def _project_kernels():
    return [value for module in KERNEL_MODULES for value in vars(module).values()
            if isinstance(value, triton.runtime.jit.JITFunction)]


@contextlib.contextmanager
def record_compiles(stand_in: bool) -> Iterator[CompileRecorder]:
    """Record the kernels compiled inside the block (a fresh Triton cache, so every kernel is
    compiled and its ``ptxas -v`` log is read). ``stand_in=True`` compiles for an H100 that
    is not there and launches nothing; ``False`` records real launches on the current GPU."""
    if _launch.interpreting():
        raise RuntimeError("compile checks need Triton's compiler: unset TRITON_INTERPRET (the interpreter "
                           "compiles nothing)")
    recorder = CompileRecorder()
    kernels = _project_kernels()
    active = triton.runtime.driver._active
    with tempfile.TemporaryDirectory(prefix="ept-fast-triton-cache-") as cache, knobs.cache.scope(), \
            knobs.nvidia.scope(), knobs.runtime.scope(), contextlib.redirect_stdout(recorder._log):
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        knobs.runtime.jit_post_compile_hook = recorder._on_compile
        for kernel in kernels:  # compiled kernels are cached per device index, stand-in or not
            kernel.device_caches.clear()
        if stand_in:
            triton.runtime.driver.set_active(HopperStandIn(recorder))
        try:
            yield recorder
        finally:
            triton.runtime.driver._active = active
            for kernel in kernels:
                kernel.device_caches.clear()


def check(cases: Sequence[Case], stand_in: bool = True, device: str = "cpu") -> List[Row]:
    """Run every case through the recorder; one row per kernel launch of each case."""
    rows: List[Row] = []
    with record_compiles(stand_in) as recorder:
        for case in cases:
            first = len(recorder.launches)
            try:
                case.run(torch.device(device))
                refused = None
            except triton.runtime.errors.OutOfResources as error:  # raised before the launch, as on a GPU
                refused = list(recorder.stats)[-1]
                print(f"{case.op} {case.shape} {case.dtype}: {error}", file=sys.stderr)
            for kernel_hash, grid in recorder.launches[first:]:
                rows.append(Row(case.op, case.label, case.shape, case.dtype, grid, recorder.stats[kernel_hash],
                                case.no_spills))
            if refused is not None:  # the case stops at the refused launch
                rows.append(Row(case.op, case.label, case.shape, case.dtype, None, recorder.stats[refused],
                                case.no_spills))
    return rows


def violations(rows: Sequence[Row]) -> List[str]:
    """What would fail or be slow on an H100: shared memory over the limit, a kernel whose
    ptxas report could not be read, spills at the defaults."""
    found = []
    for row in rows:
        where = f"{row.stats.kernel} at {row.op} {row.shape} {row.dtype}"
        if row.stats.shared > SHARED_MEMORY_LIMIT:
            found.append(f"{where}: {row.stats.shared} B of shared memory > {SHARED_MEMORY_LIMIT} B")
        if row.stats.registers is None:
            found.append(f"{where}: no ptxas report")
        elif row.no_spills and (row.stats.spill_stores or row.stats.spill_loads):
            found.append(f"{where}: spills {row.stats.spill_stores} B stores / {row.stats.spill_loads} B loads")
    return found


def format_table(rows: Sequence[Row]) -> str:
    header = ("| op | case | shape | dtype | kernel | grid | warps | stages | shared B | registers | "
              "spill B (st/ld) | dots |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        s = row.stats
        grid = "-" if row.grid is None else "x".join(map(str, row.grid))
        shape = "(" + ", ".join(map(str, row.shape)) + ")"
        lines.append(f"| {row.op} | {row.label} | {shape} | {row.dtype} | {s.kernel} | {grid} | {s.num_warps} | "
                     f"{s.num_stages} | {s.shared} | {s.registers} | {s.spill_stores}/{s.spill_loads} | {s.dots} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ept_fast.kernels.compile_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows and any violations as JSON")
    parser.add_argument("--quick", action="store_true", help="only the CLI-default shapes (a smoke test)")
    args = parser.parse_args(argv)
    rows = check(QUICK_CASES if args.quick else CASES)
    found = violations(rows)
    print(f"Triton {triton.__version__}, target sm_90a, shared-memory limit {SHARED_MEMORY_LIMIT} B per block")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"triton": triton.__version__, "target": "sm_90a", "shared_limit": SHARED_MEMORY_LIMIT,
                       "rows": [row.to_dict() for row in rows], "violations": found}, handle, indent=1)
    for problem in found:
        print("FAIL:", problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
