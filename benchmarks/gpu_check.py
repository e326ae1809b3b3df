"""Everything a GPU machine should check, in one offline run that writes one JSON and one PNG.

    python benchmarks/gpu_check.py OUT_DIR             # on a CUDA machine (bash benchmarks/gpu_check.sh OUT_DIR)
    python benchmarks/gpu_check.py --dry-run OUT_DIR   # anywhere: tiny shapes, kernels in Triton's interpreter

Phases (one failing phase does not lose the others' numbers):
  1. the ``cuda``-marked tests (sharded with pytest-xdist where it is installed, time-limited);
  2. the kernel targets: fused vs eager (and ``torch.compile`` where a target names it),
     forward + backward, and the assembly's bandwidth against a device-to-device copy
     measured in the same run; on a GPU the kernels compile inside ``record_compiles``, so
     the shared memory, registers, spills and dot units reported are those of these launches;
  3. the sm_90a compile check of the CLI default on the Hopper stand-in (CPU-side);
  4. one training step of a randomly initialised T5-base-sized model: EPT m=60 vs DePT m=60
     vs prompt tuning m=100, with the prompt on the fused kernels vs the eager reference;
  5. serving 8 adapters: a mixed batch against a loop over the adapters
     (benchmarks/test_mixed_serving_speed.py: the assembly on both backends, and the packaged
     MiniLM classifier where it is installed).
The card and the versions head the report.
The dry run exercises the same code on tiny shapes so that the script cannot rot; its
times are the interpreter's and mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json, gpu_check.png and the logs")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, kernels in the interpreter")
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds for the cuda tests (default: 240)")
    parser.add_argument("--serving-timeout", type=int, default=300,
                        help="seconds for the mixed-serving benchmark (default: 300)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --dry-run for the CPU rehearsal")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "machine": machine_info(), "phases": {}}
    phases = [("cuda_tests", lambda: cuda_tests(args)), ("kernels", lambda: kernel_timings(args.dry_run)),
              ("compile_check", lambda: compile_check(args)), ("training_step", lambda: training_step(args.dry_run)),
              ("mixed_serving", lambda: mixed_serving(args))]
    for name, run in phases:
        started = time.perf_counter()
        try:
            result = run()
        except Exception as error:  # noqa: BLE001 - one failed phase must not lose the others' numbers
            result = {"error": f"{type(error).__name__}: {error}"}
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["phases"][name] = result
        print(f"[gpu_check] {name}: {result['seconds']} s{' ERROR ' + result['error'] if 'error' in result else ''}",
              flush=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(report, args.out_dir / "gpu_check.png")
    print(summary(report))
    failed = [name for name, result in report["phases"].items() if "error" in result or result.get("returncode")]
    return 1 if failed else 0


def machine_info() -> dict:
    import torch
    import transformers
    import triton

    import ept_fast

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "ept_fast": ept_fast.__version__, "commit": commit,
            "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    print(f"[gpu_check] {info}", flush=True)
    return info


def cuda_tests(args) -> dict:
    """The cuda-marked tests, sharded over 8 workers where pytest-xdist is installed."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests", "-q", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist") is not None:
        command += ["-n", "8"]
    done = _run_logged(command, args.out_dir / "cuda_tests.log", args.test_timeout)
    if "error" in done:
        return done
    last = [line for line in done["stdout"].splitlines() if line.strip()][-1:] or [""]
    return {"returncode": done["returncode"], "summary": last[0], "command": done["command"]}


def _run_logged(command, log: Path, timeout: int) -> dict:
    """Run ``command`` in the checkout with its output kept in ``log`` (also when it times out):
    {returncode, stdout, command}, or {error, command}."""
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        log.write_text(output, encoding="utf-8")
        return {"error": f"timed out after {timeout} s", "command": " ".join(command)}
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    return {"returncode": done.returncode, "stdout": done.stdout, "command": " ".join(command)}


def _timer(dry_run: bool):
    """Median milliseconds of a callable: CUDA events through do_bench on a GPU, a few
    wall-clock repeats in a dry run."""
    import torch

    if dry_run:
        def measure(fn):
            fn()
            times = []
            for _ in range(3):
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1e3)
            return statistics.median(times)
        return measure

    import triton.testing

    def measure(fn):
        fn()
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return measure


def _forward_backward(fn, leaves):
    import torch

    def run():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, leaves, torch.ones_like(out))
    return run


def kernel_timings(dry_run: bool) -> dict:
    """The speed targets of docs/benchmarks.md: fused vs eager (and vs torch.compile where a
    target names it), forward + backward, and the assembly forward against a copy. On a GPU
    the kernels compile inside ``record_compiles``: their stats are those of these launches."""
    import contextlib

    import torch
    from performance_model import assemble_inputs_cells, copy_us, ept_prompt_cells

    from ept_fast import reference
    from ept_fast.kernels import fused_assemble_inputs, fused_ept_prompt
    from ept_fast.kernels.recording import record_compiles

    device = "cpu" if dry_run else "cuda"
    measure = _timer(dry_run)
    compile_backend = "aot_eager" if dry_run else "inductor"
    results = {"ept_prompt": [], "assemble_inputs": []}
    recording = contextlib.nullcontext() if dry_run else record_compiles(stand_in=False)
    with recording as recorder:
        m, d, n, r, K, h = (8, 32, 16, 4, 2, 4) if dry_run else (60, 768, 256, 30, 4, 8)
        g = torch.Generator().manual_seed(0)
        leaves = [(0.1 * torch.randn(size, generator=g)).to(device).requires_grad_()
                  for size in ((m, d), (n, r), (r, d), (), (K, d, h), (K, h, d), (d, K), (K,))]
        scaling = 8 / r ** 0.5
        eager = functools.partial(reference.ept_prompt, validate=False)
        compiled = torch.compile(eager, backend=compile_backend)
        model = ept_prompt_cells(m, d, n, r, K, h)
        row = {"shape": [m, d, n, r, K, h], "predicted_fused_ms": sum(c.fused_us for c in model) / 1e3,
               "predicted_eager_ms": sum(c.eager_us for c in model) / 1e3}
        for name, fn in (("fused", fused_ept_prompt), ("eager", eager), ("compile", compiled)):
            row[f"{name}_ms"] = measure(_forward_backward(lambda fn=fn: fn(*leaves, scaling), leaves))
        results["ept_prompt"].append(row)

        # (b, T, d): the targets' shapes, with m = 60, r = 30 and n covering T; torch.compile of
        # the reference only for the first (each new shape or dtype is another compile).
        shapes = [(2, 8, 32)] if dry_run else [(32, 256, 768), (16, 1024, 4096)]
        m, r, vocab = (8, 4, 100) if dry_run else (60, 30, 32000)
        eager = functools.partial(reference.assemble_inputs, validate=False)
        compiled = torch.compile(eager, backend=compile_backend)
        for (b, T, d), dtype in [(shape, dtype) for shape in shapes for dtype in (torch.float32, torch.bfloat16)]:
            n = T if dry_run else max(256, T)
            ids = torch.randint(vocab, (b, T), generator=g).to(device)
            mask = torch.ones(b, T, dtype=torch.long)
            mask[b // 2:, T - T // 4:] = 0  # right padding in half of the rows
            mask = mask.to(device)
            table = torch.randn(vocab, d, generator=g).to(device=device, dtype=dtype)
            params = [(0.1 * torch.randn(size, generator=g)).to(device).requires_grad_()
                      for size in ((m, d), (n, r), (r, d))]
            providers = [("fused", fused_assemble_inputs), ("eager", eager)]
            if (b, T, d) == shapes[0] and dtype == torch.float32:
                providers.append(("compile", compiled))
            forward_cell, backward_cell = assemble_inputs_cells(b, T, d, n, r, m, table.element_size(),
                                                                eager=(b, T, d) == shapes[0])
            row = {"shape": [b, T, d], "dtype": str(dtype).split(".")[-1],
                   "predicted_fused_ms": (forward_cell.fused_us + backward_cell.fused_us) / 1e3,
                   "predicted_forward_ms": forward_cell.fused_us / 1e3,
                   "predicted_fraction_of_copy": copy_us(forward_cell.bytes_min) / forward_cell.fused_us}
            if forward_cell.eager_launches:
                row["predicted_eager_ms"] = (forward_cell.eager_us + backward_cell.eager_us) / 1e3
            for name, fn in providers:
                run = lambda fn=fn: fn(ids, mask, table, *params, 8 / r ** 0.5)  # noqa: E731
                row[f"{name}_ms"] = measure(_forward_backward(run, params))
            row["fused_forward_ms"] = measure(lambda: fused_assemble_inputs(ids, mask, table, *params, 8 / r ** 0.5))
            # Minimum traffic of the forward: read the token rows, write the output.
            moved = (b * T * d + b * (m + T) * d) * table.element_size()
            source = torch.empty(moved // 2 // table.element_size(), dtype=dtype, device=device)
            target = torch.empty_like(source)
            copy_ms = measure(lambda: target.copy_(source))
            row.update(copy_ms=copy_ms, copy_gb_s=moved / copy_ms / 1e6,
                       fused_forward_gb_s=moved / row["fused_forward_ms"] / 1e6)
            row["fraction_of_copy"] = row["fused_forward_gb_s"] / row["copy_gb_s"]
            results["assemble_inputs"].append(row)
    if recorder is not None:
        results["compile_stats"] = [dataclasses.asdict(stats) for stats in recorder.stats.values()]
    return results


def compile_check(args) -> dict:
    """The sm_90a compile check of the CLI default on the Hopper stand-in (it compiles on the
    CPU, so it runs the same in a dry run)."""
    path = args.out_dir / "compile_check.json"
    done = subprocess.run([sys.executable, "-m", "ept_fast.kernels.compile_check", "--quick", "--json", str(path)],
                          cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "0"}, capture_output=True, text=True)
    report = json.loads(path.read_text()) if path.exists() else {}
    return {"returncode": done.returncode, "rows": report.get("rows", []), "violations": report.get("violations")}


def training_step(dry_run: bool) -> dict:
    """One optimizer step (forward, backward, AdamW) of a randomly initialised T5-base-sized
    model with the prompt on the fused kernels vs the eager reference."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from ept_fast import EPTConfig, get_ept_model

    device = "cpu" if dry_run else "cuda"
    if dry_run:
        config = T5Config(vocab_size=64, d_model=32, d_ff=48, num_layers=1, num_heads=2, d_kv=16,
                          decoder_start_token_id=0)
        batch, length, target_length, methods = 2, 8, 4, {"ept": (4, 4), "dept": (4, 4), "pt": (6, 0)}
    else:  # t5-base: d_model 768, 12 + 12 layers, d_ff 3072, 12 heads, vocabulary 32128
        config = T5Config(vocab_size=32128, d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64,
                          decoder_start_token_id=0)
        batch, length, target_length, methods = 16, 256, 16, {"ept": (60, 30), "dept": (60, 30), "pt": (100, 0)}
    torch.manual_seed(0)
    backbone = T5ForConditionalGeneration(config).to(device)
    input_ids = torch.randint(2, config.vocab_size, (batch, length), device=device)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(2, config.vocab_size, (batch, target_length), device=device)
    measure = _timer(dry_run)
    rows = []
    for method, (m, r) in methods.items():
        for backend in ("triton", "torch"):
            ept = EPTConfig(task_type="SEQ_2_SEQ_LM", method=method, num_virtual_tokens=m, r=r, max_length=length,
                            prompt_init="RANDOM_VOCAB", backend=backend)
            model = get_ept_model(backbone, ept)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

            def step():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=not dry_run):
                    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                loss.backward()
                optimizer.step()

            rows.append({"method": method, "m": m, "r": r, "prompt": "fused" if backend == "triton" else "eager",
                         "trainable": model.get_nb_trainable_parameters()[0], "step_ms": measure(step)})
            if method == "ept" and backend == "triton":  # and the whole model under torch.compile
                model = torch.compile(model, backend="aot_eager" if dry_run else "inductor")
                rows.append({**rows[-1], "compiled": True, "step_ms": measure(step)})
    steps = {(row["method"], row["prompt"], row.get("compiled", False)): row["step_ms"] for row in rows}
    return {"batch": batch, "length": length, "rows": rows,
            "pt_over_ept": steps[("pt", "fused", False)] / steps[("ept", "fused", False)],
            # The model: the backbone dominates, and its work grows with the positions (m + T).
            "predicted_pt_over_ept": (methods["pt"][0] + length) / (methods["ept"][0] + length)}


def summary(report) -> str:
    lines = [f"gpu_check on {report['machine'].get('gpu') or 'CPU (dry run)'}; torch {report['machine']['torch']}, "
             f"triton {report['machine']['triton']}"]
    phases = report["phases"]
    tests = phases.get("cuda_tests", {})
    lines.append(f"cuda tests: {tests.get('summary', tests.get('error'))}")
    kernels = phases.get("kernels", {})
    for row in kernels.get("ept_prompt", []) + kernels.get("assemble_inputs", []):
        name = "ept_prompt" if "dtype" not in row else f"assemble_inputs {row['dtype']}"
        ratios = ", ".join(f"{provider}/fused {row[f'{provider}_ms'] / row['fused_ms']:.2f}x" + (
            f" (model {row['predicted_eager_ms'] / row['predicted_fused_ms']:.2f}x)" if provider == "eager"
            and "predicted_eager_ms" in row else "") for provider in ("eager", "compile") if f"{provider}_ms" in row)
        line = (f"{name} {row['shape']} fwd+bwd: fused {row['fused_ms']:.3f} ms "
                f"(model {row['predicted_fused_ms']:.3f}), "
                f"{ratios}")
        if "fraction_of_copy" in row:
            line += (f"; forward {row['fused_forward_gb_s']:.0f} GB/s = {row['fraction_of_copy']:.0%} of a copy "
                     f"(model {row['predicted_fraction_of_copy']:.0%})")
        lines.append(line)
    for stats in kernels.get("compile_stats", []):
        lines.append(f"  {stats['kernel']}: {stats['shared']} B shared, {stats['registers']} registers, "
                     f"spills {stats['spill_stores']}/{stats['spill_loads']} B, dots {stats['dots']}")
    check = phases.get("compile_check", {})
    lines.append(f"compile check (stand-in, CLI default): {len(check.get('rows', []))} launches, "
                 f"violations {check.get('violations')}")
    step = phases.get("training_step", {})
    for row in step.get("rows", []):
        lines.append(f"T5 step {row['method']} m={row['m']} r={row['r']} prompt {row['prompt']}"
                     f"{' (torch.compile of the model)' if row.get('compiled') else ''}: {row['step_ms']:.1f} ms")
    if "predicted_pt_over_ept" in step:
        lines.append(f"T5 step, prompt tuning over EPT (fused prompt): {step['pt_over_ept']:.2f}x "
                     f"(model {step['predicted_pt_over_ept']:.2f}x)")
    for row in phases.get("mixed_serving", {}).get("rows", []):
        lines.append(f"8 adapters, {row['what']} on {row['backend']} ({row['prompts']}): "
                     f"mixed {row['mixed_ms']:.3f} ms, "
                     f"loop {row['loop_ms']:.3f} ms: speed-up of the mixed batch {row['speedup']:.2f}x")
    for name, result in phases.items():
        if "error" in result:
            lines.append(f"{name}: ERROR {result['error']}")
    return "\n".join(lines)


def mixed_serving(args) -> dict:
    """benchmarks/test_mixed_serving_speed.py with its JSON kept; the rows as report.py tables
    them (a dry run: the CPU assembly only, one round each)."""
    from report import serving_rows

    path = args.out_dir / "mixed_serving.json"
    command = [sys.executable, "-m", "pytest", "benchmarks/test_mixed_serving_speed.py", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={path}"]
    if args.dry_run:
        command += ["-k", "assembly", "--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off"]
    done = _run_logged(command, args.out_dir / "mixed_serving.log", args.serving_timeout)
    if "error" in done:
        return done
    rows = serving_rows(json.loads(path.read_text())) if path.exists() else []
    return {"returncode": done["returncode"], "rows": rows, "command": done["command"]}


def plot(report, path: Path) -> None:
    """Speed-ups of the kernels and the training step times, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    kernels = report["phases"].get("kernels", {})
    labels, eager, compiled = [], [], []
    for row in kernels.get("ept_prompt", []) + kernels.get("assemble_inputs", []):
        labels.append(" ".join(map(str, row["shape"])) + (f" {row['dtype']}" if "dtype" in row else ""))
        eager.append(row["eager_ms"] / row["fused_ms"])
        compiled.append(row["compile_ms"] / row["fused_ms"] if "compile_ms" in row else 0.0)
    positions = range(len(labels))
    left.bar([p - 0.2 for p in positions], eager, width=0.4, label="eager / fused")
    left.bar([p + 0.2 for p in positions], compiled, width=0.4, label="torch.compile / fused")
    left.axhline(1.0, color="gray", lw=0.8)
    left.set_xticks(list(positions), labels, rotation=20, fontsize=8)
    left.set_title("kernel speed-up, forward + backward")
    left.legend()
    steps = report["phases"].get("training_step", {}).get("rows", [])
    right.bar([f"{row['method']} {row['prompt']}" for row in steps], [row["step_ms"] for row in steps])
    right.set_ylabel("ms per training step")
    right.set_title("T5-base-sized step" + (" (dry run)" if report["dry_run"] else ""))
    right.tick_params(axis="x", rotation=20, labelsize=8)
    figure.suptitle(f"ept_fast gpu_check: {report['machine'].get('gpu') or 'CPU dry run'}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
