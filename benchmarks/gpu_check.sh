#!/usr/bin/env bash
# One prepared script for a GPU session: check the GPU against the CPU, then run the whole benchmark.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine: results into $OUT
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --device cpu --quick   # its CPU path, as a smoke run here
#
# Steps (each under its own timeout; together under 10 minutes, the device tool's limit per command):
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
#   4. Testing/benchmarks/run_throughput.py --device cuda (issue 15): hippocampus cases/s and a
#      160x192x160 volume at 1, 4 and 16 windows per pass; a 256x256x160 file to segmentation, maps
#      and report (target <= 1.5 s); bf16 autocast against fp32 (time and equality); blending on the
#      GPU against the CPU.
#   5. Two ranks on torchrun over 8 hippocampus cases when the machine has two GPUs (skipped otherwise):
#      summary.csv equal to one process's.
# Output in $OUT (default benchmarks/gpu): check.json, check.md, check.log, results.json, results.md,
# benchmark.log, throughput.json, throughput.md, throughput.log (and ranks.log). Copy them into
# benchmarks/gpu/ and commit. Exit status: 0 all good, 1 the check failed (the benchmarks still ran),
# 3 no usable Python.
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
timeout 270 "$PY" Testing/benchmarks/run_benchmark.py --device "$DEVICE" --out "$OUT" --time-budget 220 \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/benchmark.log"
bench=$?
[ "$bench" -ne 0 ] && echo "benchmark exited with $bench (see $OUT/benchmark.log)" >&2
timeout 120 "$PY" Testing/benchmarks/run_throughput.py --device "$DEVICE" --out "$OUT" "${EXTRA[@]}" 2>&1 \
    | tee "$OUT/throughput.log"
if [ "$DEVICE" = cuda ] && [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    cases=$(ls ../shared/data/Task04_Hippocampus_dev/imagesTr/*.nii.gz 2>/dev/null | head -8)
    if [ -n "$cases" ]; then
        model=LayerEnsemblesSegmentation/Resources/Models/hippocampus_le3d.pt
        ranks_dir=$(mktemp -d)
        { timeout 50 "$PY" -m LayerEnsemblesLib.cli segment $cases --model "$model" --out "$ranks_dir/one" --quiet \
          && timeout 50 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m LayerEnsemblesLib.cli \
             segment $cases --model "$model" --out "$ranks_dir/two" --quiet \
          && cmp "$ranks_dir/one/summary.csv" "$ranks_dir/two/summary.csv" && echo "2 GPU ranks: summary equal"; } \
          2>&1 | tee "$OUT/ranks.log"
    fi
fi
exit "$status"
