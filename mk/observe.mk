# The metrics and health providers (issue #7, parts 3 and 4) and the coordinator's /metrics.
# See providers/metrics/README.md and providers/health/README.md. Their tests are quick
# (loopback, temp sockets; the cgroup uptime test needs root and says so when it skips) and run
# in test-workspace; test-observe runs only them.

.PHONY: test-observe
test-observe:
	$(CARGO) test -p cerana-observe -p cerana-metrics -p cerana-health

# A booted node (QEMU, about a minute under TCG): init starts both providers from the multi-call
# binary; their tasks answer through the node's API and /metrics parses with the node's part.
TEST_TARGETS += test-observe-vm
test-observe-vm: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-metrics --test vm -- --nocapture
