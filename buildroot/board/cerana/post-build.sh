#!/bin/sh
# Buildroot post-build script: applies the parts of image/manifest.toml that buildroot's own
# packages do not cover, from the same files the Debian-based builder uses:
#  - /etc/cerana/services.toml from init/services.base.toml (installed by the cerana package;
#    checked here so a missing table fails the build),
#  - /etc/cerana/modules from the `load_at_boot` list of the base profile,
#  - the ZFS modules when BR2_PACKAGE_ZFS is enabled (buildroot's zfs package builds them).
set -eu
TARGET_DIR=$1
TOP=$(dirname "$0")/../../..
MANIFEST=$TOP/image/manifest.toml
test -f "$TARGET_DIR/etc/cerana/services.toml" || { echo "post-build: no services.toml" >&2; exit 1; }
test -x "$TARGET_DIR/init" || { echo "post-build: no /init (cerana-init)" >&2; exit 1; }
mkdir -p "$TARGET_DIR/etc/cerana"
# The load_at_boot array of [profiles.base], one module per line.
awk '/^\[profiles.base\]/{p=1;next} /^\[/{p=0} p && /^load_at_boot/{l=1} l{print; if (/\]/) exit}' "$MANIFEST" \
  | sed 's/#.*//' | grep -o '"[^"]*"' | tr -d '"' > "$TARGET_DIR/etc/cerana/modules"
test -s "$TARGET_DIR/etc/cerana/modules" || { echo "post-build: no load_at_boot list in $MANIFEST" >&2; exit 1; }
printf 'NAME=CeranaOS\nID=cerana\nPRETTY_NAME="CeranaOS (buildroot)"\n' > "$TARGET_DIR/etc/os-release"
