#!/usr/bin/env bash
# Builds gpufleet's images on the local Docker engine and prints their sizes: `make images`.
#   hack/images.sh [operator] [worker-cpu] [worker-cuda]      (default: all three)
#
#   gpufleet-operator:dev      operator/Dockerfile
#   gpufleet-worker:dev-cpu    worker_image/Dockerfile, VARIANT=cpu   (NumPy only: dev fleets, CI)
#   gpufleet-worker:dev-cuda   worker_image/Dockerfile, VARIANT=cuda  (CuPy and the CUDA 12 wheels)
#
# No registry is needed: the base is made from Debian's packages (hack/base-images.sh) unless
# GPUFLEET_BASE_IMAGE names one (e.g. python:3.11-slim-bookworm, the Dockerfiles' default, where it can be
# pulled). Python wheels are downloaded once per lock into ~/.cache/gpufleet/wheels and handed to the build as
# a wheelhouse image, so a rebuild downloads nothing, and the CUDA wheels (1.8 GB) never enter the build context.
# GPUFLEET_NO_CACHE=1 builds every layer again (Debian's updates; a cold build's time).
set -euo pipefail
# A failure inside $(...) (the wheelhouse, the base) must stop the script too.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet"
LOGS="$CACHE/images/logs"
say() { echo "images: $*" >&2; }
die() { say "$*"; exit 1; }
human() { numfmt --to=iec --format='%.1f' "$1"; }

# The Dockerfiles mount the wheelhouse with RUN --mount, which needs BuildKit: a docker CLI with buildx, or
# a CLI older than 23 (Debian's docker.io 20.10), whose own BuildKit client talks to the engine's builder.
build_cli() {
  if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
  local cli version
  for cli in docker /usr/bin/docker; do
    version=$("$cli" version -f '{{.Client.Version}}' 2>/dev/null) || continue
    if [[ ${version%%.*} -lt 23 ]]; then echo "$cli"; return; fi
  done
  die "no docker client that builds with BuildKit: install the buildx plugin, or Debian's docker.io"
}

# A lock and the files it includes (-r), as one text: what the wheelhouse is a function of.
lock_text() {
  local lock=$1 line
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^-r[[:space:]]+(.+)$ ]]; then lock_text "$(dirname "$lock")/${BASH_REMATCH[1]}"; else echo "$line"; fi
  done <"$lock"
}
normalize() { tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/-/g'; }

# The host's pip settings, for the pip that downloads in a container: a private index, a proxy, and the CA
# bundle that a TLS-inspecting proxy needs (without it, certificate verification fails in the container).
pip_settings() {
  local var ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT \
    HTTPS_PROXY HTTP_PROXY NO_PROXY https_proxy http_proxy no_proxy; do
    if [[ -n ${!var:-} ]]; then printf '%s\n' -e "$var"; fi
  done
  if [[ -n $ca && -f $ca ]]; then printf '%s\n' -v "$ca:/etc/gpufleet-pip-ca.pem:ro" -e PIP_CERT=/etc/gpufleet-pip-ca.pem; fi
}

# Echoes the name of an image holding, at its root, the wheels of LOCK and of any further requirements,
# resolved by the base's own Python (markers such as python_full_version are those of the interpreter the
# image runs). Made once per lock.
wheelhouse() {
  local name=$1 lock=$2 extra=${3:-}
  local hash set image
  hash=$( { lock_text "$lock"; echo "$extra"; echo "$BASE"; } | sha256sum | cut -c1-12)
  set="$CACHE/wheels/$name-$hash"
  image="gpufleet-wheelhouse:$name-$hash"
  if [[ ! -d $set ]]; then
    local partial="$set.partial" pins wheel key
    rm -rf "$partial" && mkdir -p "$partial"
    # Wheels that earlier sets already hold and this lock pins: hard links, so pip downloads only the rest.
    pins=$(lock_text "$lock" | sed -nE 's/^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;#]+).*/\1 \2/p' |
      while read -r n v; do echo "$(normalize <<<"$n")==$v"; done)
    for wheel in "$CACHE"/wheels/*/*.whl; do
      [[ -e $wheel ]] || continue
      key=$(basename "$wheel")
      key="$(normalize <<<"${key%%-*}")==$(cut -d- -f2 <<<"$key")"
      if grep -qxF "$key" <<<"$pins"; then ln -f "$wheel" "$partial/" 2>/dev/null || cp "$wheel" "$partial/"; fi
    done
    say "downloading the wheels of $lock into $set"
    local started=$SECONDS settings
    mapfile -t settings < <(pip_settings)
    # $EXTRA unquoted in the container's shell: one word per requirement.
    docker run --rm --network host "${settings[@]}" -e EXTRA="$extra" -v "$partial:/wheels" \
      -v "$PWD/$(dirname "$lock"):/locks:ro" "$BASE" sh -c \
      "python -m venv /tmp/venv && /tmp/venv/bin/pip download --disable-pip-version-check --quiet \
       --only-binary=:all: --dest /wheels -r /locks/$(basename "$lock") \$EXTRA" >&2
    mv "$partial" "$set"
    say "$name wheels: $(du -sh "$set" | cut -f1) in $((SECONDS - started)) s"
    # Older sets of this lock: their wheels still in use are hard links in the new one.
    find "$CACHE/wheels" -mindepth 1 -maxdepth 1 -name "$name-*" ! -path "$set" -exec rm -rf {} +
  fi
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    printf 'FROM scratch\nCOPY . /\n' | DOCKER_BUILDKIT=1 "$CLI" build --quiet -t "$image" -f - "$set" >/dev/null
    docker image ls --format '{{.Repository}}:{{.Tag}}' gpufleet-wheelhouse |
      awk -v old="gpufleet-wheelhouse:$name-" -v new="$image" 'index($0, old) == 1 && $0 != new' |
      xargs -r docker image rm >/dev/null
  fi
  echo "$image"
}

build() {
  local image=$1 dockerfile=$2 started=$SECONDS
  shift 2
  local log="$LOGS/${image//[:\/]/_}.log"
  say "building $image (log: $log)"
  local no_cache=()
  [[ ${GPUFLEET_NO_CACHE:-} != 1 ]] || no_cache=(--no-cache)
  if ! DOCKER_BUILDKIT=1 "$CLI" build --progress=plain "${no_cache[@]}" -f "$dockerfile" -t "$image" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg REVISION="$REVISION" --build-arg PIP_NO_INDEX=1 "$@" . \
    >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "building $image failed; the end of its log is above"
  fi
  BUILT+=("$image $((SECONDS - started))")
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(operator worker-cpu worker-cuda)
for t in "${targets[@]}"; do
  [[ $t =~ ^(operator|worker-cpu|worker-cuda)$ ]] || die "unknown image '$t': expected operator, worker-cpu or worker-cuda"
done

hack/docker-engine.sh start
CLI=$(build_cli)
BASE=${GPUFLEET_BASE_IMAGE:-$(hack/base-images.sh)}
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p "$LOGS"
BUILT=()
for t in "${targets[@]}"; do
  # Assignments, so that a failure to make the wheelhouse stops the script (set -e ignores one inside an argument).
  case $t in
    operator)
      # `pip install .` in the image builds the package: the wheelhouse holds pyproject.toml's build backend too.
      backend=$(python3 -c 'import sys, tomllib; print(*tomllib.load(sys.stdin.buffer)["build-system"]["requires"])' <pyproject.toml)
      wheels=$(wheelhouse operator operator/requirements.txt "$backend")
      build gpufleet-operator:dev operator/Dockerfile --build-arg WHEELHOUSE="$wheels" ;;
    worker-cpu)
      wheels=$(wheelhouse worker-cpu worker_image/requirements.txt)
      build gpufleet-worker:dev-cpu worker_image/Dockerfile --build-arg VARIANT=cpu --build-arg WHEELHOUSE="$wheels" ;;
    worker-cuda)
      wheels=$(wheelhouse worker-cuda worker_image/requirements-cuda.txt)
      build gpufleet-worker:dev-cuda worker_image/Dockerfile --build-arg VARIANT=cuda --build-arg WHEELHOUSE="$wheels" ;;
  esac
done

echo "image                      size     build"
for entry in "${BUILT[@]}"; do
  read -r image seconds <<<"$entry"
  printf '%-26s %-8s %s s\n' "$image" "$(human "$(docker image inspect -f '{{.Size}}' "$image")")" "$seconds"
done
echo "base: $BASE"
