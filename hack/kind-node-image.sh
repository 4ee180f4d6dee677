#!/usr/bin/env bash
# Builds, without any registry, a kind node image for the Kubernetes release hack/build-k8s.sh builds: for
# machines where kind's public node image cannot be pulled (with internet, keep kind's own image). It holds
#   - a Debian bookworm system (debootstrap): systemd, Debian's containerd and runc, the CNI plugins, iptables,
#     conntrack, ethtool, socat, ...; the kubelet, kubeadm, kubectl and crictl;
#   - what kind reads or runs in a node: /kind/version, /kind/manifests/default-cni.yaml (podnet), the kubelet
#     unit and kubeadm's drop-in, containerd's config, the entrypoint (all in hack/kind/node);
#   - every image kubeadm and that manifest ask for, made here from the same binaries (FROM scratch, or on a
#     small Debian layer where iptables is needed) and imported into the node's containerd under the names
#     kubeadm lists (`kubeadm config images list`);
#   - runc-capfix, through which containerd runs runc (hack/kind/cmd/runc-capfix).
# Its name carries a hash of the recipe (this script, hack/kind/, the versions): it is rebuilt only when that
# changes. Parts are cached in ~/.cache/gpufleet/kind-node; the image itself lives in the Docker engine.
#
#   hack/kind-node-image.sh           build what is missing (the last step needs a Docker engine), print the name
#   hack/kind-node-image.sh --print   print the name, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(hack/build-k8s.sh --env)"
CACHE="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}/kind-node"
SUITE=bookworm
# The node: what kind's own base image has that Debian packages (and dbus, for the systemd cgroup driver).
NODE_PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,conntrack,ethtool,socat,iproute2,kmod,util-linux,mount,procps,ca-certificates,libseccomp2
# The layer under kube-proxy and podnet, which run iptables (and ip) in their own containers.
SLIM_PACKAGES=iptables,conntrack,iproute2

recipe_hash() {
  {
    hack/build-k8s.sh --env | grep -v BIN=
    echo "$SUITE $NODE_PACKAGES $SLIM_PACKAGES"
    cat "$0"
    (cd hack/kind && find . -type f -print0 | sort -z | xargs -0 stat -c '%n %a' && find . -type f -print0 | sort -z | xargs -0 cat)
  } | sha256sum | cut -c1-12
}
IMAGE="gpufleet-kind-node:$K8S_VERSION-$(recipe_hash)"
if [[ "${1:-}" == "--print" ]]; then echo "$IMAGE"; exit 0; fi

log() { echo "kind-node-image: $*" >&2; }
engine() { docker info >/dev/null 2>&1; }
if engine && docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "$IMAGE"; exit 0; fi
[[ $(id -u) -eq 0 ]] || { log "needs root (debootstrap, and containerd to import the images)"; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
start=$SECONDS
tarball="$CACHE/${IMAGE#*:}.tar"

if [[ ! -f $tarball ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  hack/build-k8s.sh --kind >/dev/null

  # ---- Debian systems: debootstrap, cached as tarballs keyed by what they hold ----------------------------------
  # The mirror apt uses here (a machine may reach only its own), else Debian's CDN; the .debs are kept in
  # ~/.cache/gpufleet/debootstrap, shared with hack/base-images.sh.
  mirror="${GPUFLEET_DEBIAN_MIRROR:-$(apt-cache policy 2>/dev/null | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}')}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  debs="${CACHE%/*}/debootstrap"
  debian() { # NAME PACKAGES -> path of a cached tarball of that system
    local name=$1 packages=$2 key out
    key="$(echo "$SUITE $packages" | sha256sum | cut -c1-12)"
    out="$CACHE/debian-$name-$key.tar"
    if [[ ! -f $out ]]; then
      command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
      log "debootstrap $SUITE ($name: $packages)"
      local dir="$work/debootstrap-$name"
      mkdir -p "$debs"
      debootstrap --variant=minbase --include="$packages" --cache-dir="$debs" "$SUITE" "$dir" "$mirror" \
        >"$work/debootstrap-$name.log" 2>&1 \
        || { tail -20 "$work/debootstrap-$name.log" >&2; exit 1; }
      rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/man "$dir"/usr/share/locale
      tar --numeric-owner --xattrs --xattrs-include='security.*' -C "$dir" -cf "$out.tmp" . && mv "$out.tmp" "$out"
      rm -rf "$dir"
    fi
    echo "$out"
  }
  node_tar="$(debian node "$NODE_PACKAGES")"
  slim_tar="$(debian slim "$SLIM_PACKAGES")"

  # ---- our own programs -----------------------------------------------------------------------------------------
  log "building runc-capfix, pause and podnet (hack/kind)"
  (cd hack/kind && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$work/gobin/" ./cmd/...)

  # ---- component images, as one docker-archive for `ctr images import` -------------------------------------------
  # Each layer is a tar of a directory; the archive's manifest.json names each image's config and layers.
  archive="$work/archive"
  mkdir -p "$archive"
  declare -A digest # layer name -> sha256:... (uncompressed: a layer's blob digest is its diff id)
  layer() { # NAME DIR [tar options]
    local name=$1 dir=$2; shift 2
    tar --sort=name --numeric-owner --mtime=@0 --format=gnu "$@" -C "$dir" -cf "$archive/$name.tar" .
    digest[$name]="sha256:$(sha256sum "$archive/$name.tar" | cut -d' ' -f1)"
  }
  json_list() { local IFS=,; echo "[$*]"; }
  quoted() { local q=() x; for x in "$@"; do q+=("\"$x\""); done; json_list "${q[@]}"; }
  manifest=()
  image() { # REF USER ENTRYPOINT(json) LAYER... (layer names, written by layer())
    local ref=$1 user=$2 entrypoint=$3; shift 3
    local diffs=() l config
    for l in "$@"; do diffs+=("\"${digest[$l]}\""); done
    config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"User\":\"$user\",\"Entrypoint\":$entrypoint,"
    config+="\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"WorkingDir\":\"/\"},"
    config+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":$(json_list "${diffs[@]}")}}"
    local name="config-${#manifest[@]}.json"
    echo "$config" >"$archive/$name"
    local files=(); for l in "$@"; do files+=("$l.tar"); done
    manifest+=("{\"Config\":\"$name\",\"RepoTags\":[\"$ref\"],\"Layers\":$(quoted "${files[@]}")}")
  }

  # What every image from static binaries has besides them: users, name lookup, a /tmp.
  files="$work/files"
  mkdir -p "$files/etc" "$files/tmp"
  chmod 1777 "$files/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$files/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$files/etc/group"
  printf 'hosts: files dns\n' >"$files/etc/nsswitch.conf"
  layer files "$files" --owner=0 --group=0

  binary_layer() { # NAME SOURCE PATH_IN_IMAGE
    local dir="$work/layer-$1"
    install -D -m 0755 "$2" "$dir$3"
    layer "$1" "$dir" --owner=0 --group=0
  }
  mkdir -p "$work/slim"
  tar -C "$work/slim" -xf "$slim_tar"
  cp -a hack/kind/slim/. "$work/slim/"
  for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf /usr/local/sbin/iptables-auto "$work/slim/usr/sbin/$name"
  done
  layer slim "$work/slim"

  # The names and tags kubeadm asks for, from kubeadm itself: each must be made below.
  mapfile -t wanted < <("$KIND_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
  [[ ${#wanted[@]} -gt 0 ]] || { log "kubeadm config images list gave nothing"; exit 1; }
  for ref in "${wanted[@]}"; do
    component="${ref#registry.k8s.io/}"; component="${component%%:*}"; tag="${ref##*:}"
    case "$component" in
      kube-apiserver | kube-controller-manager | kube-scheduler)
        binary_layer "$component" "$BIN/$component" "/usr/local/bin/$component"
        image "$ref" 0 "[\"/usr/local/bin/$component\"]" files "$component" ;;
      kube-proxy)
        binary_layer kube-proxy "$KIND_BIN/kube-proxy" /usr/local/bin/kube-proxy
        image "$ref" 0 '["/usr/local/bin/kube-proxy"]' slim kube-proxy ;;
      etcd)
        [[ $tag == "${NODE_ETCD_VERSION#v}-"* ]] || { log "kubeadm wants $ref; build-k8s.sh builds etcd $NODE_ETCD_VERSION"; exit 1; }
        binary_layer etcd "$KIND_BIN/etcd" /usr/local/bin/etcd
        image "$ref" 0 '["/usr/local/bin/etcd"]' files etcd ;;
      coredns/coredns)
        [[ $tag == "$COREDNS_VERSION" ]] || { log "kubeadm wants $ref; build-k8s.sh builds CoreDNS $COREDNS_VERSION"; exit 1; }
        # As root: kubeadm's Deployment drops every capability but NET_BIND_SERVICE, for port 53.
        binary_layer coredns "$KIND_BIN/coredns" /coredns
        image "$ref" 0 '["/coredns"]' files coredns ;;
      pause)
        grep -q "sandbox_image = \"$ref\"" hack/kind/node/etc/containerd/config.toml \
          || { log "containerd's sandbox_image is not $ref (hack/kind/node/etc/containerd/config.toml)"; exit 1; }
        binary_layer pause "$work/gobin/pause" /pause
        image "$ref" 65535:65535 '["/pause"]' files pause ;;
      *) log "kubeadm wants $ref, which this script cannot make"; exit 1 ;;
    esac
  done
  podnet_image="gpufleet.local/podnet:$(sha256sum "$work/gobin/podnet" | cut -c1-12)"
  binary_layer podnet "$work/gobin/podnet" /usr/local/bin/podnet
  image "$podnet_image" 0 '["/usr/local/bin/podnet"]' slim podnet
  json_list "${manifest[@]}" >"$archive/manifest.json"
  tar -C "$archive" -cf "$work/images.tar" .
  rm -rf "$archive"

  # ---- the node's file system ---------------------------------------------------------------------------------
  log "assembling the node"
  root="$work/rootfs"
  mkdir -p "$root"
  tar --numeric-owner --xattrs --xattrs-include='security.*' -C "$root" -xf "$node_tar"
  cp -a hack/kind/node/. "$root/"
  sed -i "s|@PODNET_IMAGE@|$podnet_image|" "$root/kind/manifests/default-cni.yaml"
  echo "$K8S_VERSION" >"$root/kind/version"
  install -m 0755 "$KIND_BIN/kubelet" "$KIND_BIN/kubeadm" "$BIN/kubectl" "$root/usr/bin/"
  install -m 0755 "$KIND_BIN/crictl" "$root/usr/local/bin/"
  install -D -m 0755 "$work/gobin/runc-capfix" "$root/usr/local/sbin/runc-capfix"
  # Debian installs the CNI plugins in /usr/lib/cni; CNI daemons that bring their own install into /opt/cni/bin.
  mkdir -p "$root/opt/cni/bin" "$root/etc/cni/net.d" "$root/etc/kubernetes/manifests"
  for plugin in "$root"/usr/lib/cni/*; do ln -s "/usr/lib/cni/${plugin##*/}" "$root/opt/cni/bin/"; done
  rm -f "$root/etc/containerd/config.toml.dpkg-dist"
  # systemd in a container: the kubelet on; no gettys, timers or host-wide services (binfmt_misc is the kernel's).
  ln -sf /etc/systemd/system/kubelet.service "$root/etc/systemd/system/multi-user.target.wants/kubelet.service"
  rm -rf "$root"/etc/systemd/system/{getty.target.wants,timers.target.wants,sysinit.target.wants}
  rm -f "$root/etc/systemd/system/multi-user.target.wants/"{e2scrub_reap.service,remote-fs.target}
  ln -sf /dev/null "$root/etc/systemd/system/systemd-binfmt.service"
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\n# The kernel log is the host'"'"'s, not this node'"'"'s.\nReadKMsg=no\n' >"$root/etc/systemd/journald.conf.d/10-node.conf"

  # ---- the images, imported into the node's containerd -----------------------------------------------------------
  # Debian's containerd from the node itself, on this machine, in a mount namespace of its own, storing into the
  # node's /var/lib/containerd. The layer blobs go once unpacked (containerd's CRI discards them the same way).
  log "importing ${#manifest[@]} images into the node's containerd"
  mkdir -p "$work/containerd"
  cat >"$work/containerd/config.toml" <<EOF
version = 2
root = "$root/var/lib/containerd"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd/sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/containerd/opt"
EOF
  unshare --mount --propagation private "$root/usr/bin/containerd" --config "$work/containerd/config.toml" \
    >"$work/containerd/log" 2>&1 &
  containerd_pid=$!
  ctr() { "$root/usr/bin/ctr" --address "$work/containerd/sock" --namespace k8s.io "$@"; }
  for _ in $(seq 100); do [[ -S $work/containerd/sock ]] && ctr version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr images import --snapshotter overlayfs "$work/images.tar" >/dev/null \
    || { tail -20 "$work/containerd/log" >&2; kill "$containerd_pid"; exit 1; }
  # Manifests and configs stay; the layers are unpacked into snapshots, which is all a container needs.
  ctr content rm "${digest[@]}" >/dev/null
  imported="$(ctr images ls -q | sort)"
  kill "$containerd_pid"
  wait "$containerd_pid" || true
  for ref in "${wanted[@]}" "$podnet_image"; do
    grep -qx "$ref" <<<"$imported" || { log "$ref was not imported"; exit 1; }
  done

  log "writing $tarball"
  tar --numeric-owner --xattrs --xattrs-include='security.*' -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  trap - EXIT
  # Older recipes' tarballs go.
  find "$CACHE" -maxdepth 1 -name "$K8S_VERSION-*.tar" ! -name "${tarball##*/}" -delete
fi

engine || { log "$tarball is built; \`docker import\` needs a running Docker engine"; exit 1; }
log "docker import $IMAGE"
# What kind's node images declare: systemd as the command after our entrypoint, stopped with its own signal
# (which `docker import --change` does not take on every engine: a one-line build adds it).
docker import "$tarball" "$IMAGE-rootfs" >/dev/null
printf '%s\n' "FROM $IMAGE-rootfs" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' | docker build -q -t "$IMAGE" - >/dev/null
docker rmi "$IMAGE-rootfs" >/dev/null
log "done in $((SECONDS - start)) s"
echo "$IMAGE"
