#!/bin/sh
# /init while cerana-init is not built (and the busybox-only floor of `make bench-boot`):
# mounts the basics, says so on the console, then powers off when asked on the command line
# (cerana.fallback=poweroff) or opens a rescue shell.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "CERANA-FALLBACK-INIT userspace up at $(/bin/busybox cut -d' ' -f1 /proc/uptime) s" >/dev/console
case " $(cat /proc/cmdline) " in
  *" cerana.fallback=poweroff "*) /bin/busybox poweroff -f ;;
esac
exec /bin/busybox setsid -c /bin/sh -l </dev/console >/dev/console 2>&1
