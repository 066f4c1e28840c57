#!/usr/bin/env bash
# Builds the hybrid CeranaOS ISO (BIOS + UEFI, CD and USB via dd) from a built image directory:
#   make-iso.sh IMAGE_DIR OUTPUT.iso
# grub-mkrescue (Debian's grub-pc-bin + grub-efi-amd64-bin, xorriso, mtools) writes an El Torito
# CD with an MBR and an EFI system partition, so the same file boots from a USB stick.
# iPXE for the "join" entry comes from Debian's ipxe package (apt-get download, cached).
set -euo pipefail
image_dir=${1:?usage: make-iso.sh IMAGE_DIR OUTPUT.iso}
output=${2:?usage: make-iso.sh IMAGE_DIR OUTPUT.iso}
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${CACHE_DIR:-/var/cache/cerana}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}

for tool in grub-mkrescue xorriso mformat dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "make-iso: $tool is missing (make deps installs it)" >&2; exit 1; }
done
for f in vmlinuz initrd.img; do
  [[ -f $image_dir/$f ]] || { echo "make-iso: $image_dir/$f is missing; run make image first" >&2; exit 1; }
done
[[ -d /usr/lib/grub/i386-pc && -d /usr/lib/grub/x86_64-efi ]] \
  || { echo "make-iso: grub-pc-bin and grub-efi-amd64-bin are both needed" >&2; exit 1; }

ipxe_ver=$(apt-cache policy ipxe | awk '/Candidate:/ {print $2}')
[[ -n $ipxe_ver && $ipxe_ver != "(none)" ]] || { echo "make-iso: no ipxe package in apt" >&2; exit 1; }
mkdir -p "$CACHE_DIR/debs"
deb=$(ls "$CACHE_DIR/debs/ipxe_${ipxe_ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb ]]; then
  (cd "$CACHE_DIR/debs" && apt-get download "ipxe=$ipxe_ver" >/dev/null)
  deb=$(ls "$CACHE_DIR/debs/ipxe_${ipxe_ver//:/%3a}_"*.deb | head -n1)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/ipxe"
tree="$work/tree"
mkdir -p "$tree/boot/grub"
cp "$image_dir/vmlinuz" "$image_dir/initrd.img" "$tree/boot/"
cp "$work/ipxe/boot/ipxe.lkrn" "$work/ipxe/boot/ipxe.efi" "$tree/boot/"
cp "$here/iso/grub.cfg" "$tree/boot/grub/grub.cfg"
find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$(dirname "$output")"
echo "make-iso: grub-mkrescue -> $output" >&2
# Reproducible: grub-mkrescue formats its EFI image with mformat, which picks a random volume
# serial; a wrapper first in PATH fixes it (mtools takes its dates from SOURCE_DATE_EPOCH).
# xorriso gets fixed dates, a volume UUID from SOURCE_DATE_EPOCH, and GPT GUIDs derived from it.
mkdir -p "$work/bin"
printf '#!/bin/sh\nexec %s -N 43455241 "$@"\n' "$(command -v mformat)" >"$work/bin/mformat"
chmod +x "$work/bin/mformat"
uuid_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)
PATH="$work/bin:$PATH" grub-mkrescue -o "$output.tmp" "$tree" -- -volid CERANAOS \
  -volume_date all_file_dates "=$SOURCE_DATE_EPOCH" -volume_date uuid "$uuid_date" \
  -boot_image any gpt_disk_guid=volume_date_uuid >"$work/mkrescue.log" 2>&1 \
  || { cat "$work/mkrescue.log" >&2; echo "make-iso: grub-mkrescue failed" >&2; exit 1; }
mv "$output.tmp" "$output"
(cd "$(dirname "$output")" && sha256sum "$(basename "$output")" > "$(basename "$output").sha256")
echo "make-iso: $(stat -c %s "$output") bytes, sha256 $(cut -d' ' -f1 "$output.sha256")" >&2
