################################################################################
#
# cerana: the project's Rust binaries, built from the checkout this tree lives in
#
################################################################################

CERANA_VERSION = local
CERANA_SITE = $(BR2_EXTERNAL_CERANA_PATH)/..
CERANA_SITE_METHOD = local
CERANA_LICENSE = Apache-2.0
# Binaries to install (those missing from the workspace are skipped, as in image/manifest.toml).
CERANA_BINARIES = cerana-coordinator cerana cerana-node-info cerana-init-provider

CERANA_CARGO_BUILD_OPTS = --workspace --bins

define CERANA_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/cerana-init $(TARGET_DIR)/init
	$(foreach b,$(CERANA_BINARIES),\
		if [ -f $(@D)/target/$(RUSTC_TARGET_NAME)/release/$(b) ]; then \
			$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/$(b) $(TARGET_DIR)/usr/bin/$(b); \
		fi$(sep))
	$(INSTALL) -D -m 0644 $(@D)/init/services.base.toml $(TARGET_DIR)/etc/cerana/services.toml
endef

$(eval $(cargo-package))
