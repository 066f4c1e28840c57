# The cluster store (issue #16): the store library (cluster/store), the kv and clusterconf providers
# (cluster/providers/) and the ticks (issue #18, cluster/ticks), tested against a real 3-member
# etcd on loopback. etcd-client builds its gRPC code with protoc, which needs the well-known
# types (libprotobuf-dev, only recommended).
APT_PACKAGES += etcd-server etcd-client protobuf-compiler libprotobuf-dev
TEST_TARGETS += test-kv
OWN_TEST_TARGET_CRATES += cerana-store cerana-kv cerana-clusterconf cerana-membership cerana-quorum cerana-ticks

.PHONY: test-kv
test-kv:
	$(CARGO) test -p cerana-store -p cerana-kv -p cerana-clusterconf -p cerana-membership -p cerana-quorum -p cerana-ticks

# kv-set/-get/-update through the task API beside etcd-client directly, same etcd, same run.
BENCH_TARGETS += bench-kv
.PHONY: bench-kv
bench-kv:
	$(CARGO) run --release -q -p cerana-kv --example kv-bench

# The bundle planner over 1k/5k/10k bundles on 1,000 simulated nodes, and 1,000 nodes'
# heartbeats against a real 3-member etcd beside its measured write capacity (issue #18).
BENCH_TARGETS += bench-ticks
.PHONY: bench-ticks
bench-ticks:
	$(CARGO) run --release -q -p cerana-planner --example ticks-bench
