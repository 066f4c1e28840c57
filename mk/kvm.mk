# The kvm provider (issue #8): virtual machines through libvirt (the `virt` crate 0.4 needs
# libvirt-dev), and the `full` image profile that carries libvirtd and QEMU.
# See providers/kvm/README.md.
APT_PACKAGES += libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	qemu-system-x86 iproute2 zstd cpio
OWN_TEST_TARGET_CRATES += cerana-kvm
TEST_TARGETS += test-kvm
BENCH_TARGETS += bench-kvm

KVM_BASE_IMAGE = $(OUT_DIR)/image/base
KVM_FULL_IMAGE = $(OUT_DIR)/image/full

.PHONY: test-kvm bench-kvm

# Unit tests and the full profile's service table; the libvirt host tests (as root: a private
# libvirtd in a network namespace of their own, a TCG guest on the base image's kernel); then
# the full image booted in QEMU with libvirtd running and kvm-list answering.
test-kvm: deps image
	$(CARGO) test -q -p cerana-kvm --lib
	$(CARGO) test -q -p cerana-init --test services_table
	CERANA_IMAGE_DIR=$(KVM_BASE_IMAGE) $(CARGO) test -q -p cerana-kvm --test libvirt
	$(MAKE) --no-print-directory image IMAGE_PROFILE=full
	CERANA_FULL_IMAGE_DIR=$(KVM_FULL_IMAGE) $(CARGO) test -q -p cerana-kvm --test full_image -- --nocapture

# kvm-define + kvm-start through the task API vs virsh define + virsh start of the same XML.
bench-kvm: deps image
	$(CARGO) build -q --release -p cerana-coordinator -p cerana-kvm
	$(CARGO) run -q --release -p cerana-kvm --bin cerana-kvm-bench -- --image-dir $(KVM_BASE_IMAGE)
