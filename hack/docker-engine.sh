#!/usr/bin/env bash
# A Docker engine for the image tests (and kind): hack/docker-engine.sh start|stop|status
#
# start   If an engine already answers `docker info`, use it as it is and change nothing. Otherwise install
#         Debian's docker.io (and jq) when dockerd is missing, and start dockerd in the background (no systemd)
#         with its own config file, data root, pid file and log in the state directory. That config registers
#         a runc wrapper as the default runtime: this VM's capability bounding set lacks CAP_SYS_RESOURCE, and a
#         privileged container asks for every capability, so `docker run --privileged` (kind's nodes) fails
#         with "unable to apply caps" unless the wrapper drops that one capability (../shared/CONTAINERS.md).
# stop    Stop the dockerd this script started (and only it); its data root is kept.
# status  Say which engine answers, if any; exit 0 when one does, 3 when none does.
#
# State: $GPUFLEET_DOCKER_STATE, default ~/.cache/gpufleet/docker (dockerd.pid, dockerd.log, daemon.json,
# runc-wrapper, data/).
set -euo pipefail

STATE="${GPUFLEET_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/docker}"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
SOCKET=/var/run/docker.sock

say() { echo "docker-engine: $*" >&2; }
die() { say "$*"; exit 1; }

answers() { timeout 20 docker info >/dev/null 2>&1; }

# The pid of the dockerd this script started, if it still runs.
our_pid() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(<"$PIDFILE")
  [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == dockerd ]] || return 1
  echo "$pid"
}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_engine() {
  say "installing Debian's docker.io and jq"
  # No init script may start a daemon during the install: an engine started that way would answer
  # `docker info` without the runtime wrapper, and `start` would then take it as the user's own.
  local policy=/usr/sbin/policy-rc.d added=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    added=1
  fi
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends docker.io jq >/dev/null
  [[ -z $added ]] || as_root rm -f "$policy"
}

write_runtime_wrapper() {
  local runc
  runc=$(command -v runc) || die "runc is not installed (it comes with docker.io)"
  # A wrapper per runc path, so that the daemon config names a file that really execs that runc.
  cat >"$STATE/runc-wrapper.new" <<EOF
#!/usr/bin/env bash
# runc without CAP_SYS_RESOURCE, which this machine's bounding set lacks (written by hack/docker-engine.sh).
# It edits the two places a capability list reaches runc: the bundle's config.json (create/run) and the
# process file of an exec. Every other call goes to runc untouched.
set -euo pipefail
strip() {
  local file=\$1 path=\$2
  [[ -f \$file ]] || return 0
  jq "\$path |= (if . == null then . else with_entries(.value |= (if type == \"array\" then map(select(. != \"CAP_SYS_RESOURCE\")) else . end)) end)" \\
    "\$file" >"\$file.gpufleet" && mv "\$file.gpufleet" "\$file"
}
command="" bundle="." process=""
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
  a=\${args[i]}
  case \$a in
    --bundle | -b) bundle=\${args[i + 1]:-.} ;;
    --bundle=*) bundle=\${a#--bundle=} ;;
    --process | -p) process=\${args[i + 1]:-} ;;
    --process=*) process=\${a#--process=} ;;
    create | run | exec) [[ -n \$command ]] || command=\$a ;;
  esac
done
case \$command in
  create | run) strip "\$bundle/config.json" .process.capabilities ;;
  exec) [[ -z \$process ]] || strip "\$process" .capabilities ;;
esac
exec $runc "\$@"
EOF
  chmod +x "$STATE/runc-wrapper.new"
  mv "$STATE/runc-wrapper.new" "$STATE/runc-wrapper"
}

write_daemon_config() {
  # data-root: the images built for the tests live with the rest of the cache, apart from any other engine's.
  jq -n --arg wrapper "$STATE/runc-wrapper" --arg data "$STATE/data" '{
    "data-root": $data,
    "runtimes": {"gpufleet-runc": {"path": $wrapper}},
    "default-runtime": "gpufleet-runc"
  }' >"$STATE/daemon.json"
}

start() {
  if answers; then
    if pid=$(our_pid); then say "running (started by this script, pid $pid)"; else say "using the engine that already answers \`docker info\`; nothing changed"; fi
    return 0
  fi
  if pid=$(our_pid); then
    say "dockerd (pid $pid) runs but does not answer yet; waiting"
  else
    [[ $(id -u) -eq 0 ]] || die "no Docker engine answers, and starting one needs root"
    command -v dockerd >/dev/null && command -v docker >/dev/null && command -v jq >/dev/null || install_engine
    mkdir -p "$STATE/data"
    write_runtime_wrapper
    write_daemon_config
    # A socket left by an engine that died would make the new dockerd refuse to start.
    [[ ! -S $SOCKET ]] || rm -f "$SOCKET"
    say "starting dockerd (log: $LOG)"
    # setsid: the daemon outlives this script and the make/pytest that called it; stop ends it.
    # 9>&-: the daemon must not inherit (and hold for ever) the lock of `start`.
    setsid dockerd --config-file "$STATE/daemon.json" >>"$LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PIDFILE"
  fi
  for _ in $(seq 1 120); do
    if answers; then
      say "ready: dockerd pid $(<"$PIDFILE"), runtime gpufleet-runc (no CAP_SYS_RESOURCE), data in $STATE/data"
      return 0
    fi
    our_pid >/dev/null || { tail -n 20 "$LOG" >&2; die "dockerd exited; the end of its log is above"; }
    sleep 0.5
  done
  tail -n 20 "$LOG" >&2
  die "dockerd did not answer within 60 s; the end of its log is above"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    say "no dockerd started by this script is running; nothing to stop"
    return 0
  fi
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  # dockerd stops its containers (10 s grace each) and its containerd before it exits.
  for _ in $(seq 1 120); do
    [[ -d /proc/$pid ]] || { rm -f "$PIDFILE"; say "stopped"; return 0; }
    sleep 0.5
  done
  die "dockerd (pid $pid) is still running 60 s after SIGTERM"
}

status() {
  if answers; then
    if pid=$(our_pid); then say "running: dockerd pid $pid started by this script (state in $STATE)"; else say "running: an engine this script did not start"; fi
    return 0
  fi
  if pid=$(our_pid); then say "dockerd pid $pid (started by this script) does not answer"; else say "no engine answers"; fi
  return 3
}

mkdir -p "$STATE"
case "${1:-}" in
  # One start at a time: two callers (bootstrap, a kind test) must not start two daemons.
  start) exec 9>"$STATE/lock" && flock 9 && start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
