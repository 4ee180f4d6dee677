#!/usr/bin/env bash
# The DRA example driver (sigs.k8s.io/dra-example-driver: mock GPUs, published as ResourceSlices and prepared
# through the kubelet plugin API) for the kind e2e suite, without any registry:
#   - its kubelet plugin built from the Go module, like hack/build-k8s.sh builds Kubernetes;
#   - an image of it FROM the Debian base of hack/base-images.sh, tagged with a hash of what is in it;
#   - its Helm chart, read from the same module and rendered offline by our helm with that image.
# Cached in ~/.cache/gpufleet/dra-example-driver; a second run builds nothing.
#
#   hack/dra-example-driver.sh [NAMESPACE [DEVICES_PER_NODE]]
#       build what is missing; print the image, then the path of the rendered manifests
#   hack/dra-example-driver.sh --binary
#       only build the kubelet plugin (no Docker needed), print its path
set -euo pipefail
cd "$(dirname "$0")/.."
binary_only=0
if [[ "${1:-}" == "--binary" ]]; then binary_only=1; shift; fi

VERSION="${GPUFLEET_DRA_DRIVER_VERSION:-v0.4.0}"
NAMESPACE="${1:-dra-example-driver}"
DEVICES="${2:-2}"
MODULE=sigs.k8s.io/dra-example-driver
CACHE="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}/dra-example-driver/$VERSION"
log() { echo "dra-example-driver: $*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$CACHE/bin"
exec 9>"$CACHE/.lock"
flock 9
start=$SECONDS
if [[ ! -x "$CACHE/bin/dra-example-kubeletplugin" ]]; then
  # Through a wrapper module, not `go install ...@$VERSION`: that also asks the proxy for the module's version
  # list (for deprecations), which the proxy here refuses (403) while it serves the version itself. Requiring only
  # the driver, the wrapper builds with the driver's own dependency versions.
  log "building dra-example-kubeletplugin $VERSION from its Go module"
  mod="$(mktemp -d)"
  trap 'rm -rf "$mod"' EXIT
  printf 'module gpufleet.local/drabuild\n\ngo 1.26.0\n\nrequire %s %s\n' "$MODULE" "$VERSION" >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/dra-example-kubeletplugin"\n' "$MODULE" >"$mod/tools.go"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/dra-example-kubeletplugin.tmp" \
    "$MODULE/cmd/dra-example-kubeletplugin")
  mv "$CACHE/bin/dra-example-kubeletplugin.tmp" "$CACHE/bin/dra-example-kubeletplugin"
  rm -rf "$mod"
  trap - EXIT
  log "built in $((SECONDS - start)) s"
fi

if [[ $binary_only == 1 ]]; then echo "$CACHE/bin/dra-example-kubeletplugin"; exit 0; fi

base="$(hack/base-images.sh | tail -1)"
hash="$( (echo "$base"; sha256sum <"$CACHE/bin/dra-example-kubeletplugin") | sha256sum | cut -c1-12)"
image="gpufleet.local/dra-example-driver:$VERSION-$hash"
if ! docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image FROM $base"
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  cp "$CACHE/bin/dra-example-kubeletplugin" "$context/"
  printf '%s\n' "FROM $base" "COPY dra-example-kubeletplugin /usr/bin/dra-example-kubeletplugin" |
    docker build -q -t "$image" -f - "$context" >/dev/null
fi

# The chart is part of the module: rendered from the module cache, with the image above (loaded into the nodes:
# never pulled) and DEVICES mock GPUs per node.
chart="$(go mod download -json "$MODULE@$VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/deployments/helm/dra-example-driver"
HELM="${HELM:-$(hack/build-k8s.sh)/helm}"
out="$CACHE/manifests-$NAMESPACE-$DEVICES-$hash.yaml"
# Offline, helm knows no cluster: the chart picks its resource.k8s.io version from the API versions named here.
eval "$(hack/build-k8s.sh --env | grep '^K8S_VERSION=')"
"$HELM" template dra-example-driver "$chart" --namespace "$NAMESPACE" \
  --kube-version "$K8S_VERSION" --api-versions resource.k8s.io/v1 \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set kubeletPlugin.numDevices="$DEVICES" >"$out.tmp"
mv "$out.tmp" "$out"
echo "$image"
echo "$out"
