# The metrics and health providers (issue #7, parts 3 and 4) and the coordinator's /metrics.
# See providers/metrics/README.md and providers/health/README.md. Their tests are quick
# (loopback, temp sockets; the cgroup uptime test needs root) and run in test-observe, not in
# test-workspace; the VM test boots the image in test-observe-vm.
TEST_TARGETS += test-observe
OWN_TEST_TARGET_CRATES += cerana-metrics cerana-health

.PHONY: test-observe
test-observe:
	$(CARGO) test -p cerana-observe
	$(CARGO) test -p cerana-metrics --lib --bins --test observe
	$(CARGO) test -p cerana-health

# A booted node (QEMU, about a minute under TCG): init starts both providers from the multi-call
# binary; their tasks answer through the node's API and /metrics parses with the node's part.
TEST_TARGETS += test-observe-vm
test-observe-vm: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-metrics --test vm -- --nocapture
