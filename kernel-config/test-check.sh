#!/usr/bin/env bash
# The checker passes for a config that has every option, and fails naming the option for a
# config lacking one (built in → absent, and built in → module where built in is required).
set -euo pipefail
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -E '^CONFIG_' "$here/cerana.config" | sed 's/=m$/=y/' >"$work/full.config"
"$here/check.sh" "$work/full.config" >/dev/null || { echo "FAIL: a complete config was rejected"; exit 1; }
grep -v '^CONFIG_VETH=' "$work/full.config" >"$work/no-veth.config"
if out=$("$here/check.sh" "$work/no-veth.config" 2>&1); then echo "FAIL: config without CONFIG_VETH passed"; exit 1; fi
grep -q 'missing: CONFIG_VETH' <<<"$out" || { echo "FAIL: CONFIG_VETH not named: $out"; exit 1; }
sed 's/^CONFIG_DEVTMPFS=y/CONFIG_DEVTMPFS=m/' "$work/full.config" >"$work/mod-devtmpfs.config"
if out=$("$here/check.sh" "$work/mod-devtmpfs.config" 2>&1); then echo "FAIL: DEVTMPFS=m passed"; exit 1; fi
grep -q 'missing: CONFIG_DEVTMPFS (want y built in, have m)' <<<"$out" || { echo "FAIL: $out"; exit 1; }
echo "kernel-config checker: 3 passed, 0 failed"
