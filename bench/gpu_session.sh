#!/usr/bin/env bash
# The GPU checks and benchmarks for a lent GPU host (Python + torch, no network), in two
# stages because the two data archives together exceed what one call may carry:
#
#   bench/gpu_session.sh cifar        carry .whl (see below) and gpu-data/cifar10-jpeg.tar.gz
#   bench/gpu_session.sh imagenette [EPOCHS]   carry gpu-data/imagenette-128.tar.gz
#
# .whl holds optuna and its database wheels (../shared/tools/gpu-wheels.sh, pinned to the
# versions of the dev environment); MLflow and Ray are not needed (--no-tracking, Optuna
# backend). Logs and JSON results go to $OUT (default ./gpu-out). Each step has its own time
# limit so that one hang cannot take the others with it.
set -uo pipefail
stage=${1:?cifar or imagenette}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
step() {  # step NAME SECONDS CMD...: stdout to NAME.json, stderr to NAME.log (and shown)
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2)
    echo "== $name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/summary.txt"

case $stage in
cifar)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    ws=/tmp/patchnas-ws
    step gpu_tests 90 python3 -m pytest -q -m gpu -p no:cacheprovider \
        tests/trainers/test_proxy.py tests/spaces/test_cost.py
    step trials_per_gpu 240 python3 bench/trials_per_gpu.py --data gpu-data/cifar10-jpeg.tar.gz \
        --workspace "$ws" --per-gpu 1,4
    step proxy_speed 260 python3 bench/proxy_speed.py --data gpu-data/cifar10-jpeg.tar.gz \
        --cache "$ws/cache" --workers 12
    ;;
imagenette)
    mkdir -p /tmp/imagenette && tar -xzf gpu-data/imagenette-128.tar.gz -C /tmp/imagenette
    step imagenette_full "${3:-330}" python3 bench/imagenette_full.py --data /tmp/imagenette \
        --epochs "${2:-30}" --workers 14
    ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
cat "$OUT/summary.txt"
