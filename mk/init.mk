# PID 1 (issue #3): cerana-init (the image's /init) and the init provider.
# Host integration tests run init in a fresh PID namespace and need root and util-linux's
# `unshare`; without them they print why they skip.
APT_PACKAGES += util-linux
TEST_TARGETS += test-init
BENCH_TARGETS += bench-init

INIT_TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

.PHONY: test-init bench-init
test-init:
	$(CARGO) test -p cerana-init

# Time from exec of init to all services of a test table ready, init's own CPU share of that,
# and its RSS after boot (targets: < 50 ms, < 2 MB).
bench-init:
	$(CARGO) build --release -p cerana-init --bins
	$(INIT_TARGET_DIR)/release/cerana-init-testkit bench
