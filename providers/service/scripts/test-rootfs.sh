#!/bin/sh
# Prints a directory holding a busybox-static root filesystem for the service tests, made once
# under $CACHE_DIR from Debian's busybox-static (downloaded, not installed: the package
# conflicts with the busybox that other tests install).
set -eu
cache=${CACHE_DIR:-/var/cache/cerana}
find_deb() { ls "$cache"/debs/busybox-static_*.deb 2>/dev/null | sort | tail -n1; }
deb=$(find_deb)
if [ -z "$deb" ]; then
    mkdir -p "$cache/debs"
    (cd "$cache/debs" && apt-get download busybox-static >&2)
    deb=$(find_deb)
fi
version=$(dpkg-deb -f "$deb" Version | tr ':~+' '___')
root="$cache/service-rootfs/$version"
if [ ! -x "$root/bin/busybox" ]; then
    mkdir -p "$cache/service-rootfs"
    tmp=$(mktemp -d "$cache/service-rootfs/.new.XXXXXX")
    dpkg-deb -x "$deb" "$tmp/deb"
    mkdir -p "$tmp/root/bin" "$tmp/root/proc" "$tmp/root/sys" "$tmp/root/dev" "$tmp/root/tmp" "$tmp/root/etc"
    cp "$tmp/deb/bin/busybox" "$tmp/root/bin/busybox"
    for applet in $("$tmp/root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$tmp/root/bin/$applet"
    done
    rm -rf "$root"
    mv "$tmp/root" "$root"
    rm -rf "$tmp"
fi
echo "$root"
