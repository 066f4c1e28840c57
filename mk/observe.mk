# The metrics and health providers (issue #7, parts 3 and 4) and the coordinator's /metrics.
# See providers/metrics/README.md and providers/health/README.md. Their tests are quick
# (loopback, temp sockets; the cgroup uptime test needs root and says so when it skips) and run
# in test-workspace; test-observe runs only them.

.PHONY: test-observe
test-observe:
	$(CARGO) test -p cerana-metrics -p cerana-health
