#!/usr/bin/env bash
# Makes a fresh machine ready to run gpufleet's demo and tests: redis-server (Debian package), a virtualenv
# with gpufleet and its test dependencies, the Go-built control-plane binaries (cached outside the repo), and a
# running Docker engine.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*" >&2; }

if ! command -v redis-server >/dev/null; then
  say "installing redis-server (Debian package)"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package starts a system-wide server on 6379 that nobody here asked for: the demo and the tests start
  # their own on free ports. Stop the one this install started; a redis-server that was there before is left
  # alone.
  if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    $SUDO systemctl stop redis-server || true
  fi
fi

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.gpufleet-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  say "installing gpufleet[test] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi

if [[ "${GPUFLEET_SKIP_K8S_BUILD:-}" != "1" ]]; then
  if [[ ! -x "$(hack/build-k8s.sh --print)/kube-apiserver" ]]; then
    say "first run: building the Kubernetes control plane from Go modules, once (about 10 minutes on 2 cores;"
    say "about 10 GB in Go's module and build caches and ~/.cache/gpufleet). Later runs find it built."
  fi
  hack/build-k8s.sh >/dev/null
fi

# A Docker engine for the image tests and kind: the one already running, else Debian's, started in the
# background (hack/docker-engine.sh; `make unit` skips it).
if [[ "${GPUFLEET_SKIP_DOCKER:-}" != "1" ]]; then
  hack/docker-engine.sh start
fi
# `hack/bootstrap.sh kind` (make e2e-kind): kind and its node binaries, and the node image made without a registry
# unless GPUFLEET_KIND_NODE_IMAGE names another (minutes once, nothing after).
if [[ " $* " == *" kind "* ]]; then
  hack/build-k8s.sh --kind >/dev/null
  [[ -n "${GPUFLEET_KIND_NODE_IMAGE:-}" ]] || hack/kind-node-image.sh >/dev/null
fi
say "ready"
