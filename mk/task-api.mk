# The Task API: protocol, coordinator, provider SDK, CLI (issue #2).
TEST_TARGETS += test-workspace test-task-api-fuzz
# Seconds each Task API fuzz target runs in `make test` (frames, task arguments, HTTP requests).
TASK_API_FUZZ_SECS ?= 20
BENCH_TARGETS += bench-task-api

.PHONY: test-workspace bench-task-api build
build:
	$(CARGO) build --workspace --release --bins

# Unit tests beside the code and integration tests under each crate's tests/, for every crate
# that no other target tests (bootserver, init, image and the VM harness have their own targets).
# Tests that need root check for it themselves and say why they skip.
OWN_TEST_TARGET_CRATES += cerana-bootserver cerana-init cerana-init-provider cerana-image cerana-testbed
test-workspace:
	$(CARGO) test --workspace $(addprefix --exclude ,$(OWN_TEST_TARGET_CRATES)) --all-targets

bench-task-api:
	$(CARGO) build --release -p cerana-bench -p cerana-coordinator -p cerana-node-info
	$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/cerana-bench task-api

# cargo-fuzz comes from mk/boot.mk's pinned install (CARGO_FUZZ_ROOT).
test-task-api-fuzz: export PATH := $(PATH):$(CARGO_FUZZ_ROOT)/bin
test-task-api-fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(CARGO_FUZZ_ROOT)
	scripts/fuzz-run coordinator/fuzz $(TASK_API_FUZZ_SECS) frame task_args http
