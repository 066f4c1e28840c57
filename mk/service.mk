# The service provider (issue #7, part 1): services in containers through youki's libcontainer.
# Host tests run containers as root on a busybox-static root filesystem (Debian's package,
# downloaded and unpacked by providers/service/scripts/test-rootfs.sh, not installed: it
# conflicts with busybox); without root or cgroup controllers they print why they skip. The
# benchmark compares service-create with crun on the same bundle. See providers/service/README.md.
APT_PACKAGES += crun iproute2 dpkg
TEST_TARGETS += test-service
BENCH_TARGETS += bench-service
OWN_TEST_TARGET_CRATES += cerana-service

.PHONY: test-service bench-service
test-service:
	$(CARGO) test -p cerana-service --all-targets

# service-create (task path) until the process runs vs `crun run -d` on the same bundle; ratio.
bench-service:
	$(CARGO) build --release -q -p cerana-service -p cerana-coordinator
	$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/cerana-service-bench
