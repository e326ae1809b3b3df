"""Recording what the kernels ask of a GPU: a Triton driver that stands in for an H100 (it
compiles for sm_90a and records launches instead of making them), the compile stats of every
kernel compiled (``ptxas -v``'s registers and spills, shared memory, the dot units in the
PTX), and the device ops an op runs besides its kernels. ``compile_check`` uses it on any
machine; ``benchmarks/gpu_check.py`` uses ``record_compiles(stand_in=False)`` on a real GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase

from . import _launch, assemble_inputs, ept_prompt

SHARED_MEMORY_LIMIT = 232_448  # bytes a block may use on an H100 / H200
HOPPER_MULTIPROCESSORS = 132  # H100 SXM and H200
KERNEL_MODULES = (ept_prompt, assemble_inputs)


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


aten = torch.ops.aten
# Ops that launch nothing on a device: allocations without a fill, views, metadata.
LAUNCH_NOTHING = {
    aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.detach,
    aten.alias, aten.view, aten._unsafe_view, aten._reshape_alias, aten.as_strided, aten.t, aten.transpose,
    aten.permute, aten.expand, aten.unsqueeze, aten.squeeze, aten.slice, aten.select, aten.lift_fresh,
    aten.sym_size, aten.sym_stride, aten.sym_numel, aten.is_same_size,
}
HOST_SYNC = {aten._local_scalar_dense}  # .item(), .tolist(), bool(tensor): the host waits for the device
# The Python bodies of the project's custom ops, so that the recorder also sees what runs inside them.
OP_BODIES = {
    torch.ops.ept_fast.ept_prompt.default: ept_prompt.ept_prompt_forward,
    torch.ops.ept_fast.ept_prompt_backward.default: ept_prompt.ept_prompt_backward,
    torch.ops.ept_fast.assemble_inputs.default: assemble_inputs.assemble_inputs_forward,
    torch.ops.ept_fast.assemble_inputs_backward.default: assemble_inputs.assemble_inputs_backward,
    torch.ops.ept_fast.assemble_inputs_mixed.default: assemble_inputs.assemble_inputs_mixed_forward,
    torch.ops.ept_fast.assemble_inputs_mixed_backward.default: assemble_inputs.assemble_inputs_mixed_backward,
}


class DeviceOps(TorchDispatchMode):
    """Records the aten ops run inside the block that launch device work (``ops``) or make
    the host wait for the device (``host_syncs``), looking inside the project's custom ops."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []
        self.host_syncs: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        body = OP_BODIES.get(func)
        if body is not None:
            with self:  # the body's own ops come back here
                return body(*args, **kwargs)
        if func.overloadpacket in HOST_SYNC:
            self.host_syncs.append(str(func))
        elif func.overloadpacket not in LAUNCH_NOTHING:
            self.ops.append(str(func))
        return func(*args, **kwargs)
