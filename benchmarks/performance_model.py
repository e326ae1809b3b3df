"""A model of every kernel at the speed targets' shapes, on an H100, from three measured
figures: a device-to-device copy moves ~3.0 TB/s (bytes read + written), a kernel launch
costs ~5 µs end to end, and the tensor cores multiply TF32 at ~400 TFLOP/s in practice
(tf32x3 takes three products; small tiles on mma.sync reach perhaps half of that).

    python benchmarks/performance_model.py        # the table of docs/performance.md

For each op and phase it gives the bytes that must move (each input read once, each output
written once), the bytes the fused kernels move, the FLOPs, the launches and the predicted
time. The eager reference is modelled from its own ops, counted by the same dispatch-mode
recorder as the kernels (kernels/recording.py), on CPU tensors of the target shapes:
launches = its device ops, bytes = what they read and write. torch.compile is not modelled
beyond its launches: see docs/performance.md. ``benchmarks/gpu_check.py`` prints each
prediction next to its measurement.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Dict, List

import torch

COPY_BYTES_PER_S = 3.0e12
LAUNCH_S = 5e-6
TF32X3_FLOPS_PER_S = 400e12 / 3 / 2  # of the real FLOPs: three products each, half the rate on small mma.sync tiles
HOST_S_PER_LAUNCH = 8e-6  # Python: Triton's launcher binding a kernel's arguments
HOST_S_PER_CUSTOM_OP = 15e-6  # Python: a torch.library custom op's dispatch (forward or backward)
HOST_S_PER_EAGER_OP = 5e-6  # an eager aten op's dispatch

PROMPT = (60, 768, 256, 30, 4, 8)  # (m, d, n, r, K, h), the spec default
ASSEMBLY = (32, 256, 768)  # (b, T, d) of the eager-ratio target, with n = 256, r = 30, m = 60
BANDWIDTH = (16, 1024, 4096)  # (b, T, d) of the bandwidth target, with n = 1024


@dataclasses.dataclass
class Cell:
    op: str
    shape: str
    phase: str
    bytes_min: float
    bytes_fused: float
    flops: float
    launches: int
    eager_launches: int = 0
    eager_bytes: float = 0.0

    @property
    def fused_us(self) -> float:
        """GPU time: launches in a row, each at least its launch cost, plus the traffic or the
        products, whichever is longer (they overlap); the host (Python) time runs ahead of it
        unless it is longer, and then it is the time."""
        work = max(self.bytes_fused / COPY_BYTES_PER_S, self.flops / TF32X3_FLOPS_PER_S)
        gpu = self.launches * LAUNCH_S + work
        host = self.launches * HOST_S_PER_LAUNCH + HOST_S_PER_CUSTOM_OP
        return 1e6 * max(gpu, host)

    @property
    def eager_us(self) -> float:
        gpu = self.eager_launches * LAUNCH_S + self.eager_bytes / COPY_BYTES_PER_S
        return 1e6 * max(gpu, self.eager_launches * HOST_S_PER_EAGER_OP)


def _eager_profile(run) -> Dict[str, float]:
    """Launches and bytes of the reference's device ops in ``run``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ept_fast.kernels.recording import HOST_SYNC, LAUNCH_NOTHING

    class Traffic(TorchDispatchMode):
        launches, bytes = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if (func.overloadpacket not in LAUNCH_NOTHING | HOST_SYNC
                    and func.overloadpacket is not torch.ops.aten.promote_types):
                tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                           if isinstance(t, torch.Tensor)]
                Traffic.launches += 1
                Traffic.bytes += sum(t.numel() * t.element_size() for t in tensors)
            return out

    with Traffic():
        run()
    return {"launches": Traffic.launches, "bytes": Traffic.bytes}


def _prompt_leaves(m, d, n, r, K, h):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).requires_grad_() for s in ((m, d), (n, r), (r, d), (), (K, d, h), (K, h, d),
                                                                  (d, K), (K,))]


def _eager_phases(forward, leaves) -> Dict[str, Dict[str, float]]:
    holder = {}
    fwd = _eager_profile(lambda: holder.setdefault("out", forward()))
    grad = torch.ones_like(holder["out"])
    return {"forward": fwd, "backward": _eager_profile(lambda: torch.autograd.grad(holder["out"], leaves, grad))}


def ept_prompt_cells(m, d, n, r, K, h) -> List[Cell]:
    """Forward and backward of the fused prompt generator and of the eager reference."""
    from ept_fast import reference

    f32, KH = 4, K * h
    Q, NC, NV = m + r + K + KH, m + r + KH, m + r + K + 2 * KH
    splits = max(1, min(math.ceil(d / 16), math.ceil(264 / (math.ceil((m + r) / 32) * math.ceil(Q / 32)))))
    params = (m * d + n * r + r * d + 2 * K * d * h + d * K + K) * f32
    shape = f"m={m} d={d} n={n} r={r} K={K} h={h}"
    leaves = _prompt_leaves(m, d, n, r, K, h)
    eager = _eager_phases(lambda: reference.ept_prompt(*leaves, 1.46, validate=False), leaves)
    return [
        Cell("ept_prompt", shape, "forward", bytes_min=params + m * d * f32,
             # partial sums of R written and read, R/C/F·X saved, F saved, P* written
             bytes_fused=params + 2 * splits * (m + r) * Q * f32
             + ((m + r) * Q + m * NC + m * (K + KH) + 2 * m * d) * f32,
             flops=2 * (m + r) * Q * d + 4 * m * n * r + 2 * m * NC * d, launches=3,
             eager_launches=eager["forward"]["launches"], eager_bytes=eager["forward"]["bytes"]),
        Cell("ept_prompt", shape, "backward", bytes_min=params + m * d * f32 + params,
             bytes_fused=params + 2 * m * d * f32 + 2 * splits * m * NC * f32 + (m * (m + r) + m * (K + KH)) * f32
             + params,
             flops=2 * m * NC * d + 6 * m * n * r + 2 * NV * d * (Q + m + r + 2 * m), launches=3,
             eager_launches=eager["backward"]["launches"], eager_bytes=eager["backward"]["bytes"]),
    ]


def assemble_inputs_cells(b, T, d, n, r, m, element=4, eager=True) -> List[Cell]:
    """Forward and backward of the fused assembly (a ``element``-byte table), and of the eager
    reference when ``eager``."""
    from ept_fast import reference

    f32 = 4
    tokens, out = b * T * d * element, b * (m + T) * d * element
    shape = f"b={b} T={T} d={d} {'fp32' if element == 4 else 'bf16'}"
    col_blocks = math.ceil(d / 64)
    partials = (col_blocks * n * r + min(math.ceil(n / 16), math.ceil(264 / col_blocks)) * r * d) * f32
    profile = {"forward": {"launches": 0, "bytes": 0.0}, "backward": {"launches": 0, "bytes": 0.0}}
    if eager:
        g = torch.Generator().manual_seed(0)
        ids, mask = torch.randint(1000, (b, T), generator=g), torch.ones(b, T, dtype=torch.long)
        table = torch.randn(1000, d, generator=g).to(torch.float32 if element == 4 else torch.bfloat16)
        leaves = [torch.randn(s, generator=g).requires_grad_() for s in ((m, d), (n, r), (r, d))]
        profile = _eager_phases(lambda: reference.assemble_inputs(ids, mask, table, *leaves, 1.46, validate=False)[0],
                                leaves)
    return [
        Cell("assemble_inputs", shape, "forward", bytes_min=tokens + out, bytes_fused=tokens + out + m * d * f32,
             flops=2 * b * T * r * d, launches=1, eager_launches=profile["forward"]["launches"],
             eager_bytes=profile["forward"]["bytes"]),
        Cell("assemble_inputs", shape, "backward", bytes_min=out, bytes_fused=out + 2 * partials,
             flops=2 * 2 * b * T * r * d, launches=2, eager_launches=profile["backward"]["launches"],
             eager_bytes=profile["backward"]["bytes"]),
    ]


def copy_us(num_bytes: float) -> float:
    """A device-to-device copy of ``num_bytes`` (read + written), launch included."""
    return 1e6 * (LAUNCH_S + num_bytes / COPY_BYTES_PER_S)


def cells() -> List[Cell]:
    return (ept_prompt_cells(*PROMPT) + assemble_inputs_cells(*ASSEMBLY, 256, 30, 60)
            + assemble_inputs_cells(*BANDWIDTH, 1024, 30, 60, eager=False))


def table() -> str:
    lines = ["| op | shape | phase | bytes that must move | bytes the kernels move | GFLOP | launches | "
             "predicted µs | eager launches | eager MB | eager predicted µs |", "|" + "---|" * 11]
    for c in cells():
        eager = (f"{c.eager_launches} | {c.eager_bytes / 1e6:.1f} | {c.eager_us:.0f}" if c.eager_launches
                 else "- | - | -")
        lines.append(f"| {c.op} | {c.shape} | {c.phase} | {c.bytes_min / 1e6:.2f} MB | {c.bytes_fused / 1e6:.2f} MB | "
                     f"{c.flops / 1e9:.3f} | {c.launches} | {c.fused_us:.0f} | {eager} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(table())
