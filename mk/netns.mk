# The netns provider (issue #7, parts 2 and 5): named network namespaces, veth, bridges,
# addresses, routes (rtnetlink), per-bundle nftables firewalls (`nft -j`), namespace-set-user.
# Host tests run as root inside namespaces they create (and remove); without root they print
# why they skip. See providers/netns/README.md.
APT_PACKAGES += iproute2 nftables iputils-ping util-linux
TEST_TARGETS += test-netns test-netns-vm
BENCH_TARGETS += bench-netns
OWN_TEST_TARGET_CRATES += cerana-netns

.PHONY: test-netns test-netns-vm bench-netns
test-netns:
	$(CARGO) test -p cerana-netns --lib --bins --examples --test netns

# A booted node (QEMU, ~1 min under TCG): namespaces, veth, addresses and firewalls with the
# image's own nft and kernel modules.
test-netns-vm: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-netns --test vm -- --nocapture

# The same two-namespace veth setup through tasks and through `ip` commands; prints the ratio.
bench-netns:
	$(CARGO) run --release -q -p cerana-netns --example netns-bench
