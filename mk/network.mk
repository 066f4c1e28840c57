# Bundle networks (issue #19): a bundle's network set up on a node through the ticks' code
# against the same steps as `ip`/`nft` commands, and TCP throughput between two bundle replicas
# on different nodes against the bare management link between them; prints both ratios. Needs
# root; runs inside a network namespace made for it and always deleted, so the machine's own
# network is not touched (the binary refuses to run in it).
BENCH_TARGETS += bench-network
NETWORK_BENCH = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/examples/network-bench
NETWORK_BENCH_NETNS = cerana-bench-node

.PHONY: bench-network
bench-network:
	$(CARGO) build --release -q -p cerana-ticks --example network-bench
	ip netns add $(NETWORK_BENCH_NETNS) && { ip netns exec $(NETWORK_BENCH_NETNS) $(NETWORK_BENCH); rc=$$?; ip netns delete $(NETWORK_BENCH_NETNS); exit $$rc; }
