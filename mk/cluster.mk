# make cluster / cluster-down (issue #6): a QEMU cluster of CeranaOS nodes in a network
# namespace; node 1 boots directly with cerana.cluster_bootstrap, nodes 2..N PXE-boot from its
# bootserver (node 3 on UEFI). Logic in testing/testbed (cerana_testbed::cluster). See boot/README.md.
APT_PACKAGES += qemu-system-x86 ovmf iproute2 tar
TEST_TARGETS += test-cluster

NODES ?= 3
# Voters of the cluster store (1, 3 or 5); empty: the nodes' default, 3.
ETCD_MEMBERS ?=
# Each node's data disk for its ZFS pool (sparse, kept across cluster-down); 0 for none.
DATA_DISK_MB ?= 8192
CLUSTER_DIR = $(OUT_DIR)/cluster
CERANA_CLUSTER = $(CARGO) run -q --release -p cerana-testbed --bin cerana-qemu-cluster --

.PHONY: cluster cluster-down test-cluster
CLI_DIR = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release
cluster: image
	$(CARGO) build -q --release -p cerana-cli
	CERANA_CLI=$(CLI_DIR)/cerana $(CERANA_CLUSTER) --state-dir $(CLUSTER_DIR) up --nodes $(NODES) \
	  --data-disk-mb $(DATA_DISK_MB) --image-dir $(IMAGE_DIR) \
	  $(if $(ETCD_MEMBERS),--bootstrap-arg cerana.etcd_members=$(ETCD_MEMBERS))
	@echo "cerana on PATH: export PATH=$(CLI_DIR):\$$PATH"

cluster-down:
	$(CERANA_CLUSTER) --state-dir $(CLUSTER_DIR) down

test-cluster: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) $(CARGO) test -p cerana-testbed --test cluster -- --nocapture --test-threads=1

# The kill soak (issue #15): the cluster test with 100 SIGKILLs per daemon of node 1 under load;
# prints each daemon's median and worst time back and how every task ended.
BENCH_TARGETS += bench-kill
.PHONY: bench-kill
bench-kill: image
	CERANA_IMAGE_DIR=$(IMAGE_DIR) CERANA_KILL_ROUNDS=100 $(CARGO) test --release -p cerana-testbed --test cluster \
	  three_nodes -- --nocapture --test-threads=1
