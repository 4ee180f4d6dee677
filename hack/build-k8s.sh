#!/usr/bin/env bash
# Builds, once, the binaries of the local control plane used by the e2e tests and the demo:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd, kwok and helm.
# They are cached OUTSIDE the repository; a second run finds them and costs nothing.
#
#   hack/build-k8s.sh            build what is missing, print the bin directory
#   hack/build-k8s.sh --print    print the bin directory, build nothing
set -euo pipefail

K8S_VERSION="${GPUFLEET_K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${GPUFLEET_ETCD_VERSION:-v3.5.21}"   # >= 3.5.13: the apiserver's consistent reads from cache need it
KWOK_VERSION="${GPUFLEET_KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${GPUFLEET_HELM_VERSION:-v3.19.0}"

CACHE="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}"
BIN="$CACHE/k8s/$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-helm$HELM_VERSION/bin"
WANTED=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

if [[ "${1:-}" == "--print" ]]; then echo "$BIN"; exit 0; fi

missing=()
for b in "${WANTED[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "build-k8s: Go is needed (https://go.dev/doc/install)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$BIN"
# One build at a time (make test's bootstrap and a dev-cluster up may start together); whoever waited finds the
# binaries built and returns at once.
exec 9>"$BIN/.lock"
flock 9
missing=()
for b in "${WANTED[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then echo "$BIN"; exit 0; fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
log() { echo "build-k8s: $*" >&2; }
start=$SECONDS

need() { for b in "$@"; do [[ -x "$BIN/$b" ]] || return 0; done; return 1; }

if need kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "kubernetes $K8S_VERSION: wrapper module (k/k's go.mod points its staging modules at ./staging)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"; patch="${K8S_VERSION##*.}"
  staging_version="v0.$minor.$patch"
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  mkdir -p "$work/k8s"
  {
    echo "module gpufleet.local/k8sbuild"
    echo
    grep -E '^go [0-9.]+' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module k/k requires at v0.0.0, replaced by its published release.
    grep -E '^\s+k8s\.io/[A-Za-z0-9._-]+ v0\.0\.0$' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > "$work/k8s/go.mod"
  cat > "$work/k8s/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  (cd "$work/k8s" && go mod tidy >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; exit 1; })
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$b" ]] && continue
    log "building $b"
    (cd "$work/k8s" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b") && mv "$BIN/$b.tmp" "$BIN/$b"
  done
fi

if need etcd; then
  log "etcd $ETCD_VERSION: wrapper main around etcdmain.Main (its server module has replace lines too)"
  mkdir -p "$work/etcd"
  printf 'module gpufleet.local/etcdbuild\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$work/etcd/go.mod"
  cat > "$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$work/etcd" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .) && mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

if need kwok; then log "kwok $KWOK_VERSION"; GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"; fi
if need helm; then
  log "helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

for b in "${WANTED[@]}"; do [[ -x "$BIN/$b" ]] || { log "missing after build: $b"; exit 1; }; done
log "done in $((SECONDS - start)) s"
echo "$BIN"
