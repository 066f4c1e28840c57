# The netns provider (issue #7, parts 2 and 5): named network namespaces, veth, bridges,
# addresses, routes (rtnetlink), per-bundle nftables firewalls (`nft -j`), namespace-set-user.
# Host tests run as root inside namespaces they create (and remove); without root they print
# why they skip. See providers/netns/README.md.
APT_PACKAGES += iproute2 nftables iputils-ping util-linux
TEST_TARGETS += test-netns
BENCH_TARGETS += bench-netns
OWN_TEST_TARGET_CRATES += cerana-netns

.PHONY: test-netns bench-netns
test-netns:
	$(CARGO) test -p cerana-netns --all-targets

# The same two-namespace veth setup through tasks and through `ip` commands; prints the ratio.
bench-netns:
	$(CARGO) run --release -q -p cerana-netns --example netns-bench
