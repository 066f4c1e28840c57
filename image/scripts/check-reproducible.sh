#!/usr/bin/env bash
# Builds the base image twice (the second from the same inputs, caches warm) and compares
# SHA256SUMS; fails naming the files that differ.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-$PWD/out}
first=$(mktemp)
trap 'rm -f "$first"' EXIT
make --no-print-directory image IMAGE_PROFILE=base
cp "$OUT_DIR/image/base/SHA256SUMS" "$first"
make --no-print-directory image IMAGE_PROFILE=base
if ! diff -u "$first" "$OUT_DIR/image/base/SHA256SUMS"; then
  echo "check-reproducible: two builds of the base image differ (above)" >&2
  exit 1
fi
echo "check-reproducible: two builds are identical:"
cat "$OUT_DIR/image/base/SHA256SUMS"
