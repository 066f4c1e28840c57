#!/usr/bin/env bash
# Builds the base image and the ISO twice from the same inputs (caches warm) and compares their
# hashes; fails naming what differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-$PWD/out}
iso=$OUT_DIR/iso/cerana.iso
first=$(mktemp)
trap 'rm -f "$first"' EXIT
make --no-print-directory iso IMAGE_PROFILE=base
{ cat "$OUT_DIR/image/base/SHA256SUMS"; cat "$iso.sha256"; } >"$first"
make --no-print-directory iso IMAGE_PROFILE=base
if ! diff -u "$first" <(cat "$OUT_DIR/image/base/SHA256SUMS" "$iso.sha256"); then
  echo "check-reproducible: two builds differ (above)" >&2
  exit 1
fi
echo "check-reproducible: two builds of the image and the ISO are identical:"
cat "$first"
