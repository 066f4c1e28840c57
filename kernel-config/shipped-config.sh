#!/usr/bin/env bash
# Prints the path of the shipped kernel's config (/boot/config-<release> from the
# linux-image package the image uses), fetched with apt-get download into $CACHE_DIR/debs.
set -euo pipefail
CACHE_DIR=${CACHE_DIR:-/var/cache/cerana}
meta=$(apt-cache policy linux-image-amd64 | awk '/Candidate:/ {print $2}')
[[ -n $meta && $meta != "(none)" ]] || { echo "shipped-config: linux-image-amd64 unknown to apt" >&2; exit 1; }
kver=$(apt-cache show "linux-image-amd64=$meta" | sed -n 's/^Depends:.*linux-image-\([0-9][^ ]*-amd64\).*/\1/p' | head -n1)
ver=$(apt-cache policy "linux-image-$kver" | awk '/Candidate:/ {print $2}')
out="$CACHE_DIR/kernel-config/config-$kver-$ver"
if [[ ! -s $out ]]; then
  mkdir -p "$CACHE_DIR/debs" "$CACHE_DIR/kernel-config"
  deb=$(ls "$CACHE_DIR/debs/linux-image-${kver}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
  if [[ -z $deb ]]; then
    (cd "$CACHE_DIR/debs" && apt-get download "linux-image-$kver=$ver" >/dev/null 2>&1)
    deb=$(ls "$CACHE_DIR/debs/linux-image-${kver}_${ver//:/%3a}_"*.deb | head -n1)
  fi
  dpkg-deb --fsys-tarfile "$deb" | tar -xO "./boot/config-$kver" >"$out.tmp"
  mv "$out.tmp" "$out"
fi
echo "$out"
