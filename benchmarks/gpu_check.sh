#!/usr/bin/env bash
# One prepared script for a GPU session: check the GPU against the CPU, then run the whole benchmark.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine: results into $OUT
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --device cpu --quick   # its CPU path, as a smoke run here
#
# Steps (each under its own timeout; together well under 8 minutes):
#   1. Python: the first of $PYTHON, .venv/bin/python (a venv carried along), python3 that imports torch.
#      Nothing is downloaded. If torch is missing everywhere, it tries `pip install -c constraints-cpu.txt
#      -e .` (works only where a package registry is reachable; a GPU machine has none, so bring torch).
#      SimpleITK: if the interpreter lacks it, wheels in .whl/ (carried, git-ignored) are installed with
#      --no-index into /tmp/site. Fetch them here beforehand with
#        echo /.whl/ >> .git/info/exclude
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl SimpleITK==2.5.7
#      and name .whl in the device tool's `carry`.
#   2. Testing/benchmarks/check_device.py: the same model and input through the engine on the CPU and
#      on the device: segmentation equal (<= 1e-4 of voxels), maps close, normalised AULA within 1e-3,
#      strict fp32 (cuDNN TF32 off), one-window and sliding-window cases, also after recombination.
#   3. Testing/benchmarks/run_benchmark.py --device cuda: every method and size with CUDA events and
#      torch.cuda.max_memory_allocated, bounded by --time-budget so that step 3 ends by itself.
# Output in $OUT (default benchmarks/gpu): check.json, check.md, check.log, results.json, results.md,
# benchmark.log. Copy them into benchmarks/gpu/ and commit. Exit status: 0 all good, 1 the check
# failed (the benchmark still ran), 3 no usable Python.
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) EXTRA+=(--quick); shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-benchmarks/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
    if [ -n "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then PY="$candidate"; break; fi
done
if [ -z "$PY" ]; then
    echo "no Python with torch; trying the project's install (needs a package registry)" >&2
    python3 -m pip install -q -c constraints-cpu.txt -e . && PY=python3 || { echo "no usable Python" >&2; exit 3; }
fi
if ! "$PY" -c "import SimpleITK" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "could not install the carried wheels" >&2; exit 3; }
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "SimpleITK is missing and no wheels were carried in .whl/ (see this script's header)" >&2
        exit 3
    fi
fi
export PYTHONPATH="$PWD/LayerEnsemblesSegmentation${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, SimpleITK; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv

status=0
timeout 150 "$PY" Testing/benchmarks/check_device.py --device "$DEVICE" --out "$OUT" "${EXTRA[@]}" 2>&1 \
    | tee "$OUT/check.log" || status=1
timeout 330 "$PY" Testing/benchmarks/run_benchmark.py --device "$DEVICE" --out "$OUT" --time-budget 270 \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/benchmark.log"
bench=$?
[ "$bench" -ne 0 ] && echo "benchmark exited with $bench (see $OUT/benchmark.log)" >&2
exit "$status"
