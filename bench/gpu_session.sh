#!/usr/bin/env bash
# Every GPU question in one run (<= 9 minutes on an H100/H200), each step under its own time
# limit so that one hang cannot take the others with it:
#   1. pytest -m gpu                          the CUDA-only tests
#   2. bench/full_input.py                    input pipeline old vs new, and the step alone
#   3. bench/proxy_speed.py                   proxy vs reference, ConvMixer-256/8 (acc, wall)
#   4. bench/trials_per_gpu.py                trials per GPU-hour at --trials-per-gpu 1 vs 4
#   5. bench/imagenette_full.py               Imagenette-128 ConvMixer, what the time allows
#
#   bench/gpu_prepare.sh                      first, here: wheels and data into .whl, gpu-data
#   bash bench/gpu_session.sh                 on the device (carry .whl and gpu-data)
#   bash bench/gpu_session.sh --smoke         the same steps, tiny, on the CPU (in the suite)
#
# The GPU host has Python and torch but no optuna (installed from .whl into /tmp/site) and
# no network; MLflow and Ray are not needed (--no-tracking, Optuna backend). JSON results
# and logs go to $OUT (default ./gpu-out); summary.txt lists each step's exit and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...: stdout to NAME.json, stderr to NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || tail -n 5 "$OUT/$name.log" >&2
}
: > "$OUT/summary.txt"
if [ $smoke -eq 1 ]; then
    cifar=../shared/data/cifar10-jpeg.tar.gz
    imagenette=../shared/data/imagenette-128.tar.gz
    device=cpu
else
    export PYTHONPATH="/tmp/site:$PWD"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        | tee -a "$OUT/summary.txt"
    cifar=gpu-data/cifar10-jpeg.tar.gz
    imagenette=gpu-data/imagenette-128-gpu.tar
    device=cuda
fi
"$PY" -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/summary.txt"
ws=$(mktemp -d /tmp/patchnas-gpu.XXXXXX)
data=$ws/imagenette && mkdir -p "$data" && tar -xf "$imagenette" -C "$data"
if [ $smoke -eq 1 ]; then  # 16 train and 4 val images per class
    for class in "$data"/train/*/ "$data"/val/*/; do
        keep=16; case $class in "$data"/val/*) keep=4 ;; esac
        find "$class" -type f | sort | tail -n +$((keep + 1)) | xargs -r rm
    done
fi

if [ $smoke -eq 1 ]; then
    step gpu_tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/trainers/test_proxy.py
    step full_input 240 "$PY" bench/full_input.py --device cpu --images 96 --batch-size 32 --passes 1 \
        --steps 1 --step-batch 2 --archive "$imagenette"
    step proxy_speed 300 "$PY" bench/proxy_speed.py --device cpu --data "$cifar" --subset 256 \
        --ref-epochs 1 --epochs 1 --workers 1 --modes eager --cache "${PATCHNAS_CACHE:-$ws/cache}" --tiny
    step trials_per_gpu 300 "$PY" bench/trials_per_gpu.py --device cpu --data "$cifar" \
        --trials 2 --epochs 1 --subset 256 --val-size 256 --per-gpu 1,2 --workspace "$ws"
    step imagenette_full 240 "$PY" bench/imagenette_full.py --data "$data" --device cpu \
        --epochs 1 --max-steps 2 --batch-size 8 --workers 1
else
    step gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        tests/trainers/test_proxy.py tests/spaces/test_cost.py
    step full_input 60 "$PY" bench/full_input.py --device cuda --images 9469 --passes 1 \
        --batch-size 256 --steps 20 --archive "$imagenette"
    step proxy_speed 150 "$PY" bench/proxy_speed.py --data "$cifar" --cache "${PATCHNAS_CACHE:-$ws/cache}" \
        --workers 12 --modes eager
    step trials_per_gpu 150 "$PY" bench/trials_per_gpu.py --data "$cifar" --workspace "$ws" \
        --per-gpu 1,4
    step imagenette_full 90 "$PY" bench/imagenette_full.py --data "$data" --epochs 10 \
        --workers 14
fi
rm -rf "$ws"
cat "$OUT/summary.txt"
! grep -q "exit [^0]" "$OUT/summary.txt"
