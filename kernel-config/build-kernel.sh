#!/usr/bin/env bash
# Optional (not in CI; about an hour on 2 cores): builds a custom kernel from Debian's
# linux-source with Debian's config plus cerana.config merged, then checks the result.
#   build-kernel.sh OUTPUT_DIR
set -euo pipefail
out=${1:?usage: build-kernel.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
src_pkg=$(apt-cache search --names-only '^linux-source-[0-9.]+$' | awk '{print $1}' | sort -V | tail -n1)
[[ -n $src_pkg ]] || { echo "kernel: no linux-source package in apt" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "$src_pkg" bc bison flex libelf-dev libssl-dev dwarves rsync >/dev/null
mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
tar -xf /usr/src/"$src_pkg".tar.xz -C "$work"
cd "$work/$src_pkg"
cp "$("$here/shipped-config.sh")" .config
# Debian's config names its signing key; a local build signs with a throwaway key instead.
scripts/config --set-str SYSTEM_TRUSTED_KEYS "" --set-str MODULE_SIG_KEY "certs/signing_key.pem"
scripts/kconfig/merge_config.sh -m .config "$here/cerana.config"
make olddefconfig
"$here/check.sh" .config
make -j"$(nproc)" bzImage modules
cp arch/x86/boot/bzImage "$out/vmlinuz"
cp .config "$out/config"
echo "kernel: $out/vmlinuz"
