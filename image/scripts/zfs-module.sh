#!/usr/bin/env bash
# Builds the OpenZFS kernel modules (zfs-dkms) for the kernel that goes into the image
# (Debian's current linux-image-amd64, not the host's `uname -r`) and caches them under
#   $CACHE_DIR/zfs/<kernel-release>-<zfs-version>/
# Prints that directory on stdout as its last line. A cache hit returns at once.
#
# Needs root and apt: enables the `contrib` component in the existing Debian sources file,
# installs the exact matching linux-headers package and zfs-dkms, and runs `dkms build`.
set -euo pipefail

CACHE_DIR=${CACHE_DIR:-/var/cache/cerana}
SOURCES=${DEBIAN_SOURCES:-/etc/apt/sources.list.d/debian.sources}
log() { echo "zfs-module: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Candidate version of a package as apt sees it, or empty.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true; }

# The kernel release (e.g. 6.1.0-48-amd64) the linux-image-amd64 candidate depends on.
kernel_release() {
  local meta_ver
  meta_ver=$(candidate linux-image-amd64)
  [[ -n $meta_ver ]] || return 1
  apt-cache show "linux-image-amd64=$meta_ver" \
    | sed -n 's/^Depends:.*linux-image-\([0-9][^ ]*-amd64\).*/\1/p' | head -n1
}

enable_contrib() {
  [[ -f $SOURCES ]] || die "$SOURCES not found; cannot enable the contrib component"
  if grep -E '^Components:' "$SOURCES" | grep -vq contrib; then
    [[ $(id -u) -eq 0 ]] || die "contrib is not enabled in $SOURCES and this is not root"
    log "adding contrib to the Components of $SOURCES"
    sed -i -E '/^Components:/{/contrib/!s/$/ contrib/}' "$SOURCES"
    apt-get update -qq
  fi
}

# Usage: zfs-module.sh [KERNEL_RELEASE]; without it, the release linux-image-amd64 depends on.
kver=${1:-}
zfs_ver=$(candidate zfs-dkms)
if [[ -z $zfs_ver && $(id -u) -eq 0 ]]; then
  enable_contrib
  zfs_ver=$(candidate zfs-dkms)
fi
if [[ -z $kver ]]; then
  kver=$(kernel_release || true)
  if [[ -z $kver ]]; then apt-get update -qq; kver=$(kernel_release) || true; fi
  [[ -n $kver ]] || die "cannot tell which kernel linux-image-amd64 depends on"
fi
if [[ -z $zfs_ver ]]; then
  # Not root and no contrib: a cache from an earlier run (any zfs version) is still enough.
  for d in "$CACHE_DIR/zfs/$kver"-*/; do
    if [[ -f $d/zfs.ko && -f $d/spl.ko ]]; then log "cache hit ${d%/}"; echo "${d%/}"; exit 0; fi
  done
  die "zfs-dkms has no candidate (is contrib enabled in $SOURCES?)"
fi

out="$CACHE_DIR/zfs/$kver-$zfs_ver"
if [[ -f $out/zfs.ko && -f $out/spl.ko ]]; then
  log "cache hit $out"
  echo "$out"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the ZFS module needs root (apt-get install, dkms)"
enable_contrib
image_pkg_ver=$(candidate "linux-image-$kver")
headers_ver=$(candidate "linux-headers-$kver")
[[ -n $headers_ver ]] || die "linux-headers-$kver is not available in apt"
if [[ -n $image_pkg_ver && $headers_ver != "$image_pkg_ver" ]]; then
  die "kernel/headers mismatch: linux-image-$kver is $image_pkg_ver but linux-headers-$kver is $headers_ver"
fi

log "kernel $kver ($image_pkg_ver), zfs-dkms $zfs_ver: installing headers and zfs-dkms"
export DEBIAN_FRONTEND=noninteractive
# dkms would otherwise build for every kernel with headers at install time; we build explicitly.
apt-get install -y -qq --no-install-recommends \
  "linux-headers-$kver=$headers_ver" "zfs-dkms=$zfs_ver" dkms build-essential >/dev/null \
  || die "apt-get install of linux-headers-$kver and zfs-dkms failed"

src_ver=${zfs_ver%%-*}      # dkms module version is the upstream part, e.g. 2.1.11
log "dkms build zfs/$src_ver for $kver (about 7 minutes on 2 cores)"
start=$SECONDS
if ! dkms status -m zfs -v "$src_ver" -k "$kver" 2>/dev/null | grep -q -E 'built|installed'; then
  dkms build -m zfs -v "$src_ver" -k "$kver" >&2 || die "dkms build failed; see /var/lib/dkms/zfs/$src_ver/build/make.log"
fi
log "built in $((SECONDS - start)) s"

built="/var/lib/dkms/zfs/$src_ver/$kver/x86_64/module"
[[ -f $built/zfs.ko || -f $built/zfs.ko.xz || -f $built/zfs.ko.zst ]] || die "no zfs.ko under $built"
tmp=$(mktemp -d "$CACHE_DIR/zfs/.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE_DIR/zfs"; mktemp -d "$CACHE_DIR/zfs/.tmp.XXXXXX"; })
for ko in "$built"/*.ko*; do
  case $ko in
    *.ko.xz) xz -dc "$ko" >"$tmp/$(basename "${ko%.xz}")" ;;
    *.ko.zst) zstd -qdc "$ko" >"$tmp/$(basename "${ko%.zst}")" ;;
    *) cp "$ko" "$tmp/" ;;
  esac
done
printf 'kernel=%s\nzfs=%s\nheaders=%s\n' "$kver" "$zfs_ver" "$headers_ver" >"$tmp/VERSIONS"
rm -rf "$out"
chmod 755 "$tmp"
mv "$tmp" "$out"
log "cached $(ls "$out" | tr '\n' ' ')in $out"
echo "$out"
