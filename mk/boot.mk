# The bootserver (issue #6): DHCP/TFTP/HTTP/iPXE. See boot/README.md.
# Host tests build network namespaces with veth pairs (root); real clients: busybox udhcpc,
# curl (HTTP, tftp://), tftp-hpa. Debian's ipxe package provides undionly.kpxe / snponly.efi.
APT_PACKAGES += busybox isc-dhcp-client curl tftp-hpa ipxe iproute2
TEST_TARGETS += test-boot

.PHONY: test-boot
test-boot:
	$(CARGO) test -p cerana-bootserver
