#!/usr/bin/env bash
# The base image the Dockerfiles build FROM when no registry is reachable: Debian bookworm (minbase) with its
# python3 (3.11, like the public python:3.11-slim-bookworm the Dockerfiles name by default), made with
# debootstrap and `docker import`. Prints the image's name on stdout.
#
# The tag is a hash of the recipe below, so the image is made once and made again only when the recipe
# changes (about a minute: debootstrap, the downloaded .debs kept in ~/.cache/gpufleet/debootstrap).
# Needs root (debootstrap) and a Docker engine (hack/docker-engine.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
# netbase and ca-certificates: what python:3.11-slim-bookworm has beside Python, so both bases behave alike.
PACKAGES=python3,python3-venv,python-is-python3,netbase,ca-certificates
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet"
say() { echo "base-images: $*" >&2; }

# The Debian mirror apt already uses here (a machine may only reach its own), else Debian's CDN.
mirror() {
  [[ -n ${GPUFLEET_DEBIAN_MIRROR:-} ]] && { echo "$GPUFLEET_DEBIAN_MIRROR"; return; }
  apt-cache policy 2>/dev/null | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:/ { print $2; exit }' |
    grep . || echo http://deb.debian.org/debian
}

# Everything that decides the image's content; its hash is the tag. (The mirror is not: any mirror serves
# the same suite.)
recipe() {
  local root=$1
  debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debootstrap" \
    "$SUITE" "$root" "$(mirror)" >&2
  # What no container reads: package caches and indexes, documentation, translations.
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
  # And so for what a Dockerfile installs later, as in Debian's slim images: apt keeps no caches, dpkg
  # unpacks no documentation.
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-slim"
}
IMPORT_CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'CMD ["python3"]'
)
hash=$( (declare -f recipe; echo "$SUITE $PACKAGES"; printf '%s\n' "${IMPORT_CHANGES[@]}") | sha256sum | cut -c1-12)
image="gpufleet-base-python:3.11-$SUITE-$hash"

if docker image inspect "$image" >/dev/null 2>&1; then
  say "$image is there"
  echo "$image"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || { say "making $image needs root (debootstrap)"; exit 1; }
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null
fi
mkdir -p "$CACHE/debootstrap"
root=$(mktemp -d "${TMPDIR:-/var/tmp}/gpufleet-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
say "making $image with debootstrap ($SUITE, minbase + $PACKAGES)"
started=$SECONDS
recipe "$root"
changes=()
for change in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$change"); done
tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" \
  --message "hack/base-images.sh: debootstrap $SUITE minbase + $PACKAGES" - "$image" >/dev/null
say "made $image in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
# The bases of older recipes: untagged, their layers go once no image built on them is left.
docker image ls --format '{{.Repository}}:{{.Tag}}' "${image%%:*}" | grep -vxF "$image" | xargs -r docker image rm >/dev/null || true
echo "$image"
