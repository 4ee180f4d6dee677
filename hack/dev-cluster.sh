#!/usr/bin/env bash
# The local dev cluster: a real Kubernetes control plane on loopback with fake GPU nodes (kwok), no Docker needed.
#
#   hack/dev-cluster.sh up [--gpu-nodes N] [--gpus-per-node G] [--state-dir DIR]
#   hack/dev-cluster.sh status | down
#
# `up` builds the binaries first if they are not cached (hack/build-k8s.sh: ~12-20 min cold, instant after).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
if [[ "${1:-}" == "up" ]]; then
  GPUFLEET_K8S_BIN="$("$root/hack/build-k8s.sh")"
  export GPUFLEET_K8S_BIN
fi
exec "$python" -m gpufleet_tools.devcluster "$@"
