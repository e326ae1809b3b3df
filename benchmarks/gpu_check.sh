#!/usr/bin/env bash
# The project's one command for a GPU machine (offline, about 8 minutes): install, the card and
# the versions, the cuda-marked tests, the kernel timings, the compile stats of the real launches
# and a T5-base-sized training step, written as OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.png.
#
#   bash benchmarks/gpu_check.sh OUT_DIR             on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR   anywhere: tiny shapes, kernels in Triton's
#                                                    interpreter (CI runs this so the script cannot rot)
# Options may come before or after OUT_DIR. PYTHON names the interpreter (default: python3).
set -euo pipefail
usage="usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR"
mode=()
out=
for argument in "$@"; do
  case $argument in
    --dry-run) mode=(--dry-run) ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $argument; $usage" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_check.sh: one OUT_DIR, got $out and $argument; $usage" >&2; exit 2; }
       out=$argument ;;
  esac
done
[ -n "$out" ] || { echo "$usage" >&2; exit 2; }
case $out in /*) ;; *) out=$PWD/$out ;; esac  # relative to where it was called from, not the checkout
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ${#mode[@]} -eq 0 ]; then
  "$python" -m pip install -q --no-deps --no-build-isolation -e .
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
fi
PYTHONUNBUFFERED=1 "$python" benchmarks/gpu_check.py "${mode[@]}" "$out"
