# The bootserver (issue #6): DHCP/TFTP/HTTP/iPXE. See boot/README.md.
# Host tests build network namespaces with veth pairs (root); real clients: busybox udhcpc,
# curl (HTTP, tftp://), tftp-hpa; QEMU guests (BIOS iPXE ROM, OVMF PXE). Debian's ipxe package
# provides undionly.kpxe / snponly.efi.
APT_PACKAGES += busybox isc-dhcp-client curl tftp-hpa ipxe iproute2 qemu-system-x86 ovmf
TEST_TARGETS += test-boot test-boot-fuzz
# Peers of the network benchmark (perfdhcp is in kea-admin). Their packaged services are not
# used: the benchmark runs each one itself inside its own network namespaces. test-boot runs it
# briefly too (boot/bootserver/tests/bench_net.rs), so they are needed by `make test`.
APT_PACKAGES += kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa nginx-light
BENCH_TARGETS += bench-boot-net
BOOT_TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

# Seconds each fuzz target runs in `make test`.
BOOT_FUZZ_SECS ?= 20
BOOT_FUZZ_DIR = boot/bootserver/fuzz
# One build directory for every fuzz workspace (test-task-api-fuzz too): they share most of
# their dependencies, which are then built once.
FUZZ_TARGET_DIR ?= $(BOOT_TARGET_DIR)/fuzz
export FUZZ_TARGET_DIR

.PHONY: test-boot test-boot-fuzz bench-boot-net
test-boot: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-bootserver

# libFuzzer through cargo-fuzz (how: scripts/fuzz-run). Seeds in $(BOOT_FUZZ_DIR)/seeds.
# cargo-fuzz is installed once per version under $(CACHE_DIR) unless one is on PATH already.
CARGO_FUZZ_VERSION = 0.13.2
CARGO_FUZZ_ROOT = $(CACHE_DIR)/tools/cargo-fuzz-$(CARGO_FUZZ_VERSION)
test-boot-fuzz: export PATH := $(PATH):$(CARGO_FUZZ_ROOT)/bin
test-boot-fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(CARGO_FUZZ_ROOT)
	scripts/fuzz-run $(BOOT_FUZZ_DIR) $(BOOT_FUZZ_SECS) dhcp tftp

# DHCP DORA/s vs dnsmasq and Kea (leases persisted, then in memory), TFTP and HTTP initrd
# MB/s vs tftpd-hpa and nginx; prints a table with the ratios. See boot/bench/net.sh.
bench-boot-net:
	$(CARGO) build --release -p cerana-bootserver
	boot/bench/net.sh $(BOOT_TARGET_DIR)/release/cerana-bootserver
	LEASES=memory PARTS=dhcp boot/bench/net.sh $(BOOT_TARGET_DIR)/release/cerana-bootserver
