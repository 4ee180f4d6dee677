#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and driver (no Docker, no CUDA toolkit needed):
#   hack/gpu-check.sh [pytest arguments]          (make gpu-check)
# A fresh virtualenv gets the CUDA worker image's stack exactly (worker_image/requirements-cuda.txt: CuPy and
# its CUDA 12 wheels, pinned), then gpufleet[gpu,test]; then the `gpu` tests run (pytest -m gpu) and
# benchmarks/worker_gpu.py prints its figures. Fails, rather than skips, where no CUDA device is usable.
set -euo pipefail
cd "$(dirname "$0")/.."

# CUDA 12 minor version compatibility: any driver of the 12.x family runs the pinned 12.9 wheels.
MIN_DRIVER=525.60.13
say() { echo "gpu-check: $*" >&2; }
die() { say "$*"; exit 1; }

if command -v nvidia-smi >/dev/null; then
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
  say "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), driver $driver"
  [[ $(printf '%s\n' "$MIN_DRIVER" "$driver" | sort -V | head -n 1) == "$MIN_DRIVER" ]] ||
    die "driver $driver is older than $MIN_DRIVER, the oldest that runs CUDA 12 wheels"
else
  say "nvidia-smi is not on PATH; trying CUDA anyway"
fi
if ! command -v redis-server >/dev/null; then
  say "installing redis-server (the tests start their own)"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

venv=${GPUFLEET_GPU_VENV:-$(mktemp -d "${TMPDIR:-/tmp}/gpufleet-gpu.XXXXXX")}
say "a fresh virtualenv in $venv"
"${PYTHON:-python3}" -m venv --clear "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check install --quiet)
# The lock first and alone, as the image installs it; gpufleet[gpu,test] then finds CuPy's pins satisfied.
"${pip[@]}" --no-deps -r worker_image/requirements-cuda.txt
"${pip[@]}" -e ".[gpu,test]"
"$venv/bin/python" -m pip check
# The worker's own probe: it names a missing driver as such (CUDA calls it an insufficient one).
"$venv/bin/python" -c 'import sys; from gpufleet_worker import device; n, why = device.probe_gpu_count()
sys.exit(0 if n else f"gpu-check: no usable CUDA device: {why}")'

"$venv/bin/python" -m pytest -p no:cacheprovider -m gpu "$@"
"$venv/bin/python" benchmarks/worker_gpu.py
