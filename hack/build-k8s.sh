#!/usr/bin/env bash
# Builds, once, the binaries of the local control plane used by the e2e tests and the demo:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd, kwok and helm.
# With --kind, also what a kind cluster needs offline (hack/kind-node-image.sh puts them into its node image):
# kind, kubelet, kubeadm, kube-proxy (the same Kubernetes release), crictl, and the etcd and CoreDNS that this
# kubeadm deploys. They are cached OUTSIDE the repository; a second run finds them and costs nothing.
#
#   hack/build-k8s.sh [--kind]           build what is missing, print the bin directory (--kind: kind's)
#   hack/build-k8s.sh [--kind] --print   print that bin directory, build nothing
#   hack/build-k8s.sh --env              print the versions and both bin directories as shell assignments
set -euo pipefail

# Kubernetes 1.35: Dynamic Resource Allocation (resource.k8s.io/v1) is GA and on by default from 1.34. The Go proxy
# here serves v1.35.4 as the one 1.35 release of k8s.io/kubernetes (its staging modules at v0.35.4).
K8S_VERSION="${GPUFLEET_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${GPUFLEET_ETCD_VERSION:-v3.5.21}"   # >= 3.5.13: the apiserver's consistent reads from cache need it
KWOK_VERSION="${GPUFLEET_KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${GPUFLEET_HELM_VERSION:-v3.19.0}"
KIND_VERSION="${GPUFLEET_KIND_VERSION:-v0.33.0}"
CRICTL_VERSION="${GPUFLEET_CRICTL_VERSION:-v1.34.0}"   # a CRI v1 client (the Go proxy here serves no v1.35.x)
# What kubeadm $K8S_VERSION deploys (`kubeadm config images list`): registry.k8s.io/etcd:3.6.6-0,
# registry.k8s.io/coredns/coredns:v1.13.1 and registry.k8s.io/pause:3.10.1. hack/kind-node-image.sh checks them
# against that list.
NODE_ETCD_VERSION="${GPUFLEET_NODE_ETCD_VERSION:-v3.6.6}"
COREDNS_VERSION="${GPUFLEET_COREDNS_VERSION:-v1.13.1}"

CACHE="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}"
BIN="$CACHE/k8s/$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-helm$HELM_VERSION/bin"
WANTED=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
KIND_BIN="$CACHE/kind/$K8S_VERSION-kind$KIND_VERSION-crictl$CRICTL_VERSION-etcd$NODE_ETCD_VERSION-coredns$COREDNS_VERSION/bin"
KIND_WANTED=(kind kubelet kubeadm kube-proxy crictl etcd coredns)

kind=0 print=0
for arg in "$@"; do
  case "$arg" in
    --kind) kind=1 ;;
    --print) print=1 ;;
    --env)
      for v in K8S_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION KIND_VERSION CRICTL_VERSION NODE_ETCD_VERSION \
        COREDNS_VERSION BIN KIND_BIN; do printf '%s=%q\n' "$v" "${!v}"; done
      exit 0 ;;
    *) echo "usage: $0 [--kind] [--print] | --env" >&2; exit 2 ;;
  esac
done
result="$BIN"; [[ $kind == 1 ]] && result="$KIND_BIN"
if [[ $print == 1 ]]; then echo "$result"; exit 0; fi

missing_in() { # DIR NAME... -> the names not built in DIR
  local dir=$1 b; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || echo "$b"; done
}
all_built() { [[ -z "$(missing_in "$BIN" "${WANTED[@]}")" ]] && { [[ $kind == 0 ]] || [[ -z "$(missing_in "$KIND_BIN" "${KIND_WANTED[@]}")" ]]; }; }
if all_built; then echo "$result"; exit 0; fi

command -v go >/dev/null || { echo "build-k8s: Go is needed (https://go.dev/doc/install)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$BIN"
# One build at a time (make test's bootstrap and a dev-cluster up may start together); whoever waited finds the
# binaries built and returns at once.
exec 9>"$BIN/.lock"
flock 9
if all_built; then echo "$result"; exit 0; fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
log() { echo "build-k8s: $*" >&2; }
start=$SECONDS

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

# k8s.io/kubernetes commands, through a wrapper module: k/k's go.mod points its staging modules at ./staging, so
# `go install k8s.io/kubernetes/cmd/x@v` is refused; the wrapper replaces each by its published release.
build_kubernetes() { # DEST_DIR COMMAND...
  local dest=$1 mod="$work/k8s-$RANDOM" b; shift
  [[ -n "$(missing_in "$dest" "$@")" ]] || return 0
  log "kubernetes $K8S_VERSION: wrapper module (k/k's go.mod points its staging modules at ./staging)"
  local patch="${K8S_VERSION##*.}" gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  mkdir -p "$mod"
  {
    echo "module gpufleet.local/k8sbuild"
    echo
    grep -E '^go [0-9.]+' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module k/k requires at v0.0.0, replaced by its published release.
    grep -E '^\s+k8s\.io/[A-Za-z0-9._-]+ v0\.0\.0$' "$gomod" | awk -v v="v0.$minor.$patch" '{print "replace " $1 " => " $1 " " v}'
  } > "$mod/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')\n'
  } > "$mod/tools.go"
  (cd "$mod" && go mod tidy >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; exit 1; })
  # One `go build` for all of them: the packages they share are loaded and compiled once, and they link side by
  # side. (Built beside DEST, each then renamed into it whole.)
  local missing=() out="$dest/.build-$$"
  for b in "$@"; do [[ -x "$dest/$b" ]] || missing+=("$b"); done
  log "building ${missing[*]}"
  (cd "$mod" && go build -trimpath -ldflags "$k8s_ldflags" -o "$out/" "${missing[@]/#/k8s.io/kubernetes/cmd/}")
  for b in "${missing[@]}"; do mv "$out/$b" "$dest/$b"; done
  rmdir "$out"
}

build_etcd() { # VERSION DEST_DIR
  local version=$1 dest=$2 mod="$work/etcd-$1"
  [[ -x "$dest/etcd" ]] && return 0
  log "etcd $version: wrapper main around etcdmain.Main (its server module has replace lines too)"
  mkdir -p "$mod"
  printf 'module gpufleet.local/etcdbuild\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$version" > "$mod/go.mod"
  cat > "$mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$dest/etcd.tmp" .) && mv "$dest/etcd.tmp" "$dest/etcd"
}

# CoreDNS with the plugins of the Corefile kubeadm writes (and log): CoreDNS's own main takes every plugin in, the
# clouds' SDKs and tracers with them, which would be most of its build time.
COREDNS_PLUGINS=(errors health ready kubernetes metrics forward cache loop reload loadbalance log)
build_coredns() { # DEST_DIR
  local dest=$1 mod="$work/coredns" p
  [[ -x "$dest/coredns" ]] && return 0
  log "coredns $COREDNS_VERSION (plugins: ${COREDNS_PLUGINS[*]})"
  mkdir -p "$mod"
  printf 'module gpufleet.local/corednsbuild\n\ngo 1.23\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" >"$mod/go.mod"
  {
    printf 'package main\n\nimport (\n'
    for p in "${COREDNS_PLUGINS[@]}"; do printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$p"; done
    printf '\n\t"github.com/coredns/coredns/coremain"\n)\n\nfunc main() { coremain.Run() }\n'
  } >"$mod/main.go"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$dest/coredns.tmp" .) && mv "$dest/coredns.tmp" "$dest/coredns"
}

build_kubernetes "$BIN" kube-apiserver kube-controller-manager kube-scheduler kubectl
build_etcd "$ETCD_VERSION" "$BIN"
if [[ ! -x "$BIN/kwok" ]]; then log "kwok $KWOK_VERSION"; GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"; fi
if [[ ! -x "$BIN/helm" ]]; then
  log "helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
for b in $(missing_in "$BIN" "${WANTED[@]}"); do log "missing after build: $b"; exit 1; done

if [[ $kind == 1 ]]; then
  mkdir -p "$KIND_BIN"
  build_kubernetes "$KIND_BIN" kubelet kubeadm kube-proxy
  build_etcd "$NODE_ETCD_VERSION" "$KIND_BIN"
  if [[ ! -x "$KIND_BIN/kind" ]]; then log "kind $KIND_VERSION"; GOBIN="$KIND_BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"; fi
  if [[ ! -x "$KIND_BIN/crictl" ]]; then
    log "crictl $CRICTL_VERSION"
    GOBIN="$KIND_BIN" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  fi
  build_coredns "$KIND_BIN"
  for b in $(missing_in "$KIND_BIN" "${KIND_WANTED[@]}"); do log "missing after build: $b"; exit 1; done
fi

log "done in $((SECONDS - start)) s"
echo "$result"
