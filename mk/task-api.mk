# The Task API: protocol, coordinator, provider SDK, CLI (issue #2).
TEST_TARGETS += test-workspace
BENCH_TARGETS += bench-task-api

.PHONY: test-workspace bench-task-api build
build:
	$(CARGO) build --workspace --release --bins

# Unit tests beside the code and integration tests under each crate's tests/. Tests that need
# root or a VM check for it themselves and say why they skip.
test-workspace:
	$(CARGO) test --workspace --all-targets

bench-task-api:
	$(CARGO) build --release -p cerana-bench -p cerana-coordinator -p cerana-node-info
	$(CURDIR)/target/release/cerana-bench task-api
