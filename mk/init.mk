# PID 1 (issue #3): cerana-init (the image's /init) and the init provider.
# Host integration tests run init in a fresh PID namespace and need root and util-linux's
# `unshare`; without them they print why they skip.
APT_PACKAGES += util-linux libc6-dev
TEST_TARGETS += test-init
BENCH_TARGETS += bench-init

INIT_TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# The image's /init: statically linked (no ld.so/libc.so pages mapped into PID 1), optimised
# for size, fat LTO. Built in its own target dir so these profile settings do not invalidate
# the normal release build.
INIT_STATIC = $(INIT_TARGET_DIR)/init-static/release/cerana-init

.PHONY: test-init bench-init init-static
test-init:
	$(CARGO) test -p cerana-init -p cerana-init-provider

init-static:
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	  $(CARGO) rustc --release -p cerana-init --bin cerana-init --target-dir $(INIT_TARGET_DIR)/init-static \
	  -- -C target-feature=+crt-static
	@echo "static init: $(INIT_STATIC)"

# Time from exec of init to all services of a test table ready, init's own CPU share of that,
# and its RSS after boot (targets: < 50 ms CPU, < 2 MB RSS), for the image's static /init.
bench-init: init-static
	$(CARGO) build --release -p cerana-init -p cerana-testbed --bin cerana-init-testkit --bin cerana-init-bench
	$(INIT_TARGET_DIR)/release/cerana-init-bench --init $(INIT_STATIC) --testkit $(INIT_TARGET_DIR)/release/cerana-init-testkit
