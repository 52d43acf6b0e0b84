#!/usr/bin/env bash
# Before a device run, on the development machine: what the GPU host lacks, in git-ignored
# folders that the device tool carries (64 MiB in all):
#   .whl/      optuna and its database wheels for Python 3.12 (../shared/tools/gpu-wheels.sh)
#   gpu-data/  CIFAR-10 (19 MB) and Imagenette-128 with all 9,469 train and 100 val images
#              per class (the whole archive would not fit beside CIFAR-10)
# Then:  run(command="bash bench/gpu_session.sh", carry=[".whl", "gpu-data"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
grep -qx '/gpu-data/' .git/info/exclude 2>/dev/null || echo '/gpu-data/' >> .git/info/exclude
"$SHARED/tools/gpu-wheels.sh" >/dev/null
mkdir -p gpu-data
cp "$SHARED/data/cifar10-jpeg.tar.gz" gpu-data/
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SHARED/data/imagenette-128.tar.gz" -C "$tmp"
for class in "$tmp"/val/*/; do
    find "$class" -type f | sort | tail -n +101 | xargs -r rm
done
tar -cf gpu-data/imagenette-128-gpu.tar -C "$tmp" train val
total=$(du -cb .whl gpu-data | tail -1 | cut -f1)
echo "carry: $((total / 1048576)) MiB (.whl, gpu-data)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a device run carries" >&2; exit 1; }
