# The zfs provider (issue #5): zfs-* tasks, the pool bootstrap at boot, zvols. Its VM tests and
# benchmark boot the image in QEMU (the host cannot load the ZFS module). See providers/zfs/README.md.
TEST_TARGETS += test-zfs
BENCH_TARGETS += bench-zfs
OWN_TEST_TARGET_CRATES += cerana-zfs

.PHONY: test-zfs bench-zfs
# Unit tests, then tests/vm.rs: one disk (every task and bad input, 256 MiB send/receive, a
# foreign pool, reboot with the same disk) and three disks (raidz), one VM at a time.
test-zfs: image
	$(CARGO) test -p cerana-zfs --lib --bins
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-zfs --test vm -- --test-threads=1 --nocapture

# Task API vs the zfs command in the same guest; prints the ratios. Both sides are timed inside
# the guest, so the host side needs no release build.
bench-zfs: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) run -q -p cerana-zfs --example zfs-bench
