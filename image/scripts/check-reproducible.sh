#!/usr/bin/env bash
# Builds the base image and the ISO twice from the same inputs (caches warm, one
# SOURCE_DATE_EPOCH for both) and compares their hashes; fails naming what differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-$PWD/out}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
iso=$OUT_DIR/iso/cerana.iso
first=$(mktemp -d)
trap 'rm -rf "$first"' EXIT
make --no-print-directory iso IMAGE_PROFILE=base
cat "$OUT_DIR/image/base/SHA256SUMS" "$iso.sha256" >"$first/sums"
cp "$OUT_DIR/image/base/contents.txt" "$first/contents.txt"
make --no-print-directory iso IMAGE_PROFILE=base
if ! diff -u "$first/sums" <(cat "$OUT_DIR/image/base/SHA256SUMS" "$iso.sha256"); then
  echo "check-reproducible: two builds differ (above); contents that changed:" >&2
  diff "$first/contents.txt" "$OUT_DIR/image/base/contents.txt" | head -20 >&2 || true
  exit 1
fi
echo "check-reproducible: two builds of the image and the ISO are identical:"
cat "$first/sums"
