#!/usr/bin/env bash
# Checks a kernel .config against the CeranaOS fragment:
#   check.sh KERNEL_CONFIG [FRAGMENT]
# `=y` in the fragment must be built in; `=m` may be a module or built in. Names every option
# that is missing or has the wrong value, and fails if there is one.
set -euo pipefail
config=${1:?usage: check.sh KERNEL_CONFIG [FRAGMENT]}
fragment=${2:-$(dirname "$0")/cerana.config}
[[ -r $config ]] || { echo "check-kernel-config: cannot read $config" >&2; exit 2; }
[[ -r $fragment ]] || { echo "check-kernel-config: cannot read $fragment" >&2; exit 2; }
missing=0 checked=0
while IFS= read -r line; do
  [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=([ym])$ ]] || continue
  opt=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
  checked=$((checked + 1))
  have=$(sed -n "s/^$opt=\\(.*\\)$/\\1/p" "$config" | tail -n1)
  if [[ -z $have ]]; then
    echo "missing: $opt (want $want, not set)"
    missing=$((missing + 1))
  elif [[ $want == y && $have != y ]]; then
    echo "missing: $opt (want y built in, have $have)"
    missing=$((missing + 1))
  elif [[ $want == m && $have != y && $have != m ]]; then
    echo "missing: $opt (want m or y, have $have)"
    missing=$((missing + 1))
  fi
done <"$fragment"
if ((missing)); then
  echo "check-kernel-config: $config lacks $missing of $checked options" >&2
  exit 1
fi
echo "check-kernel-config: $config has all $checked options"
