#!/usr/bin/env bash
# `make test`: everything CI runs, as timed phases, ending with a table of each phase and its wall time (on
# failure too). The exit status is the first failing phase's; the phases after it do not run.
#
# The Go builds (the local control plane's binaries, then kind's and its node image) start at once in the
# background, at a lower priority, while the phases that need none of them run: the virtualenv, the Docker
# engine, lint, the images and the tests that need no cluster. The cluster phases wait for what they need;
# the background steps' log is shown when one fails. Warm, every build step finds its result and takes seconds.
#
#   hack/test.sh                 all phases
#   hack/test.sh --builds DIR    (internal) the background build steps, each leaving DIR/<step>.rc and .secs
set -uo pipefail
cd "$(dirname "$0")/.."

# One background build step: its output goes to DIR/builds.log, its exit status and seconds to DIR/<name>.*
build_step() { # DIR NAME COMMAND...
  local dir=$1 name=$2 start=$SECONDS rc; shift 2
  echo "=== $name: $*" >>"$dir/builds.log"
  "$@" >>"$dir/builds.log" 2>&1
  rc=$?
  echo $((SECONDS - start)) >"$dir/$name.secs"
  echo "$rc" >"$dir/$name.rc"
  return "$rc"
}

if [[ "${1:-}" == "--builds" ]]; then
  dir=$2
  build_step "$dir" "control plane binaries" hack/build-k8s.sh || exit
  build_step "$dir" "kind binaries" hack/build-k8s.sh --kind || exit
  [[ -n "${GPUFLEET_KIND_NODE_IMAGE:-}" ]] && exit 0
  # The node image's last step imports it into the Docker engine, which the foreground starts. Its debootstrap
  # is installed here, waiting for dpkg's lock: the images phase (hack/base-images.sh) may be installing it too.
  while [[ ! -f $dir/docker.ready ]]; do sleep 1; done
  command -v debootstrap >/dev/null ||
    build_step "$dir" "debootstrap" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap || exit
  build_step "$dir" "kind node image" hack/kind-node-image.sh || exit
  # The DRA example driver's kubelet plugin, for tests/e2e/test_kind_dra.py (which builds it if this did not).
  build_step "$dir" "DRA example driver" hack/dra-example-driver.sh --binary
  exit
fi

RUN="$(mktemp -d "${TMPDIR:-/tmp}/gpufleet-test.XXXXXX")"
NAMES=() SECS=() STATES=()
FAILED=0
BUILDS_PID=""
TOTAL_START=$SECONDS

record() { NAMES+=("$1"); SECS+=("$2"); STATES+=("$3"); }

table() {
  local i total=$((SECONDS - TOTAL_START))
  # The background steps that finished, with their own times (they overlapped the phases above them).
  for name in "control plane binaries" "kind binaries" "kind node image" "DRA example driver" "pytest: chaos"; do
    if [[ -f "$RUN/$name.rc" ]]; then
      local state="background"
      [[ $(<"$RUN/$name.rc") == 0 ]] || state="background, FAILED (exit $(<"$RUN/$name.rc"))"
      record "  $name" "$(<"$RUN/$name.secs")" "$state"
    fi
  done
  echo
  echo "make test: phases (wall time)"
  row() { printf '  %-40s %5s s  %5s  %s\n' "$1" "$2" "$([[ $2 == - ]] && echo - || printf '%d:%02d' $(($2 / 60)) $(($2 % 60)))" "$3"; }
  for i in "${!NAMES[@]}"; do row "${NAMES[i]}" "${SECS[i]}" "${STATES[i]}"; done
  row total "$total" "$([[ $FAILED == 0 ]] && echo ok || echo "FAILED (exit $FAILED)")"
}

finish() {
  [[ -z $CHAOS_PID ]] || { kill -- -"$CHAOS_PID" 2>/dev/null; wait "$CHAOS_PID" 2>/dev/null; }
  if [[ -n $BUILDS_PID ]] && kill -0 "$BUILDS_PID" 2>/dev/null; then
    # Its own process group (setsid): the Go builds under it stop with it.
    kill -- -"$BUILDS_PID" 2>/dev/null
    wait "$BUILDS_PID" 2>/dev/null
  fi
  table
  rm -rf "$RUN"
  exit "$FAILED"
}
trap finish EXIT
trap 'FAILED=130; exit' INT TERM

# phase NAME COMMAND...: runs it in the foreground unless an earlier phase failed.
phase() {
  local name=$1 start=$SECONDS rc; shift
  if [[ $FAILED != 0 ]]; then record "$name" - "not run"; return; fi
  echo ">>> make test: $name" >&2
  "$@"
  rc=$?
  if [[ $rc == 0 ]]; then
    record "$name" $((SECONDS - start)) ok
  else
    record "$name" $((SECONDS - start)) "FAILED (exit $rc)"
    FAILED=$rc
  fi
}

# Waits for a background build step; on its failure shows the builds' log and fails with its status.
wait_build() { # NAME
  local name=$1
  while [[ ! -f "$RUN/$name.rc" ]]; do
    if ! kill -0 "$BUILDS_PID" 2>/dev/null && [[ ! -f "$RUN/$name.rc" ]]; then
      echo "make test: the background builds ended before '$name'" >&2
      tail -n 80 "$RUN/builds.log" >&2
      return 1
    fi
    sleep 1
  done
  local rc
  rc=$(<"$RUN/$name.rc")
  if [[ $rc != 0 ]]; then
    echo "make test: background build step '$name' failed (exit $rc); its log:" >&2
    tail -n 80 "$RUN/builds.log" >&2
  fi
  return "$rc"
}

start_builds() {
  setsid nice -n 10 "$0" --builds "$RUN" </dev/null &
  BUILDS_PID=$!
}

docker_engine() { hack/docker-engine.sh start && touch "$RUN/docker.ready"; }

PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider --durations=25)
# The local e2e suite: each xdist worker starts a control plane of its own for its session, and gets whole files
# (a file's module fixtures are made once). Its tests wait on pods, workers and ticks far more than on the CPU.
CLUSTER_WORKERS="${GPUFLEET_CLUSTER_WORKERS:-2}"

# The fault suite runs on a control plane of its own (tests/e2e/test_faults.py), so it runs beside the local e2e
# suite; its output (the figures of each fault) is shown whole once it ends.
CHAOS_PID=""
start_chaos() {
  setsid bash -c '"$@"; rc=$?; echo $SECONDS >"$0/pytest: chaos.secs"; echo $rc >"$0/pytest: chaos.rc"; exit $rc' "$RUN" \
    "${PYTEST[@]}" -m chaos -rA -s tests/e2e/test_faults.py </dev/null >"$RUN/chaos.log" 2>&1 &
  CHAOS_PID=$!
}
chaos_result() {
  wait "$CHAOS_PID"
  local rc=$?
  CHAOS_PID=""
  cat "$RUN/chaos.log"
  return "$rc"
}
# The tests that need no cluster wait mostly on real workers and Redis, not on the CPU: four at a time, handed out
# one by one, the slow ones first (tests/conftest.py), so that the four end together.
NO_CLUSTER_WORKERS="${GPUFLEET_TEST_WORKERS:-4}"

start_builds
phase "bootstrap: redis-server, .venv" env GPUFLEET_SKIP_K8S_BUILD=1 GPUFLEET_SKIP_DOCKER=1 hack/bootstrap.sh
phase "bootstrap: Docker engine" docker_engine
phase "lint" make --no-print-directory lint
phase "images" hack/images.sh
phase "pytest: no cluster (-n $NO_CLUSTER_WORKERS)" "${PYTEST[@]}" -n "$NO_CLUSTER_WORKERS" --maxschedchunk 1 \
  -m "not cluster and not binaries and not chaos"
phase "wait: control plane binaries" wait_build "control plane binaries"
phase "pytest: chaos, started beside the next" start_chaos
phase "pytest: local control plane, helm (-n $CLUSTER_WORKERS)" "${PYTEST[@]}" -n "$CLUSTER_WORKERS" --dist loadfile \
  -m "(cluster or binaries) and not chaos"
phase "wait: chaos" chaos_result
phase "wait: kind binaries" wait_build "kind binaries"
if [[ -z "${GPUFLEET_KIND_NODE_IMAGE:-}" ]]; then phase "wait: kind node image" wait_build "kind node image"; fi
phase "pytest: kind" env GPUFLEET_E2E_PROVIDER=kind "${PYTEST[@]}" -m cluster -rA tests/e2e
