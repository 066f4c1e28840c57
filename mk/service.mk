# The service provider (issue #7, part 1): services in containers through youki's libcontainer.
# Host tests run containers as root on a busybox-static root filesystem (Debian's package,
# downloaded and unpacked by providers/service/scripts/test-rootfs.sh, not installed: it
# conflicts with busybox); without root or cgroup controllers they print why they skip. The
# benchmark compares service-create with libcontainer directly and crun on the same bundle. See
# providers/service/README.md.
APT_PACKAGES += crun iproute2 dpkg
TEST_TARGETS += test-service test-service-vm
BENCH_TARGETS += bench-service
OWN_TEST_TARGET_CRATES += cerana-service

.PHONY: test-service test-service-vm bench-service
test-service:
	$(CARGO) test -p cerana-service --lib --bins --test containers

# On a booted node with a ZFS pool: a service on a clone of a dataset, restarted on a fresh
# clone, removed with its clone (tests/vm.rs).
test-service-vm: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-service --test vm -- --nocapture

# service-create (task path) until the process runs vs libcontainer directly (the shim alone) and
# `crun run -d` on the same bundle; prints the ratio (target <= 1.3).
bench-service:
	$(CARGO) build --release -q -p cerana-service -p cerana-coordinator
	$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/cerana-service-bench
