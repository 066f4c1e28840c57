# The CeranaOS image (kernel + initramfs, ISO/USB), the kernel config check and the QEMU VM
# tests (issue #4). See image/README.md and testing/testbed/README.md.
APT_PACKAGES += qemu-system-x86 ovmf xorriso grub-pc-bin grub-efi-amd64-bin grub-common mtools \
	zstd xz-utils cpio binutils kmod dkms
TEST_TARGETS += check-kernel-config test-image test-vm
BENCH_TARGETS += bench-boot

IMAGE_PROFILE ?= base
# Every file in the initramfs and the ISO gets this mtime: the last commit's time, so builds
# repeat. Passed only to the image steps: exported to every recipe, it would make the cc crate
# (ring) rebuild after each commit.
IMAGE_EPOCH := $(or $(SOURCE_DATE_EPOCH),$(shell git log -1 --format=%ct 2>/dev/null),0)
IMAGE_DIR = $(OUT_DIR)/image/$(IMAGE_PROFILE)
CERANA_IMAGE = $(CARGO) run -q --release -p cerana-image --

.PHONY: image image-full zfs-module iso check-kernel-config kernel test-image test-vm bench-boot

# The OpenZFS modules for the image's kernel, cached under $(CACHE_DIR)/zfs (~7 min the first time).
zfs-module: deps
	image/scripts/zfs-module.sh

# /init is the static, size-optimised cerana-init from mk/init.mk (`make init-static`).
image: deps init-static
	$(CERANA_IMAGE) build --profile $(IMAGE_PROFILE) --workspace $(CURDIR) --out-dir $(OUT_DIR) \
	  --cache-dir $(CACHE_DIR) --init $(INIT_STATIC) --source-date-epoch $(IMAGE_EPOCH)

image-full:
	$(MAKE) --no-print-directory image IMAGE_PROFILE=full

# The builder's unit tests, then two builds of the base image must give identical hashes.
test-image: deps
	$(CARGO) test -q -p cerana-image
	image/scripts/check-reproducible.sh

ISO = $(OUT_DIR)/iso/cerana.iso
# The hybrid BIOS/UEFI ISO (CD, or USB stick via dd) of the base image, with its boot menu.
iso: image
	SOURCE_DATE_EPOCH=$(IMAGE_EPOCH) image/scripts/make-iso.sh $(IMAGE_DIR) $(ISO)

# The harness's unit tests, then boots the image (direct, ISO on BIOS, ISO on UEFI) to node_ready, runs node-info through the
# API from the host and powers off; one VM at a time (2 cores, TCG).
test-vm: iso
	CERANA_IMAGE_DIR=$(IMAGE_DIR) CERANA_ISO=$(ISO) $(CARGO) test -p cerana-testbed --lib --bins --test vm -- --test-threads=1

# The shipped kernel (Debian's linux-image the image takes) against kernel-config/cerana.config,
# after the checker's own test (a config lacking an option fails, naming it).
check-kernel-config: deps
	kernel-config/test-check.sh
	kernel-config/check.sh "$$(kernel-config/shipped-config.sh)"

# Optional, not in CI: a custom kernel from Debian's linux-source with the fragment merged.
kernel:
	kernel-config/build-kernel.sh $(OUT_DIR)/kernel

# Time to node_ready vs the busybox-only floor (same kernel, same QEMU), sizes vs budget.
bench-boot: deps
	$(MAKE) --no-print-directory image IMAGE_PROFILE=floor
	$(MAKE) --no-print-directory image IMAGE_PROFILE=base
	$(CARGO) run -q --release -p cerana-testbed --bin cerana-boot-bench -- \
	  --base $(OUT_DIR)/image/base --floor $(OUT_DIR)/image/floor
