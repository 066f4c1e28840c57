# CeranaOS top-level build. Each area keeps its targets in mk/<area>.mk and appends to
# APT_PACKAGES, TEST_TARGETS and BENCH_TARGETS; this file only wires them together.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# Heavy, reusable outputs (downloaded .debs, the ZFS module) live outside the checkout,
# keyed by version inside; nothing assumes this directory exists.
CACHE_DIR ?= /var/cache/cerana
export CACHE_DIR
OUT_DIR ?= $(CURDIR)/out
export OUT_DIR
# Every test a target runs must find what it needs: a missing image, tool or privilege fails
# it, naming what is missing (cerana_testbed::require). A plain `cargo test` may skip instead.
export CERANA_TEST_STRICT = 1
# A fresh checkout gains nothing from incremental state, which roughly doubles the size of the
# build directory; set CARGO_INCREMENTAL=1 to keep it while iterating.
CARGO_INCREMENTAL ?= 0
export CARGO_INCREMENTAL

APT_PACKAGES := build-essential pkg-config
TEST_TARGETS :=
BENCH_TARGETS :=

include $(sort $(wildcard mk/*.mk))

.PHONY: help deps test bench clean
help:
	@echo "make cluster       build everything and boot a QEMU cluster (NODES=3)"
	@echo "make test          install what is needed and run every test (unit, integration, VM)"
	@echo "make bench         run the benchmarks and print figures against their peers"
	@echo "make cluster-down  stop the cluster and remove its network namespace"
	@echo "make deps          only install the apt packages and Rust targets the build needs"

deps:
	@scripts/ensure-deps $(sort $(APT_PACKAGES))

# The fmt and clippy gates first, then fast host tests, then the image and the VM tests that
# boot it (the bootserver's PXE test boots the built image too); targets not named here run
# last. The first failure stops.
TEST_ORDER := check-format check-clippy check-layering test-workspace test-kv test-init check-kernel-config test-image test-vm test-boot test-boot-fuzz test-task-api-fuzz test-cluster
ORDERED_TEST_TARGETS = $(filter $(TEST_TARGETS),$(TEST_ORDER)) $(filter-out $(TEST_ORDER),$(TEST_TARGETS))

test: deps
	@set -e; start=$$(date +%s); for t in $(ORDERED_TEST_TARGETS); do \
	  echo "==> make $$t"; t0=$$(date +%s); $(MAKE) --no-print-directory $$t; \
	  echo "==> $$t passed in $$(( $$(date +%s) - t0 )) s; $$(scripts/disk-usage)"; done; \
	echo "==> every test target passed in $$(( $$(date +%s) - start )) s" 

bench: deps
	@set -e; for t in $(BENCH_TARGETS); do echo "==> make $$t"; $(MAKE) --no-print-directory $$t; done

clean:
	$(CARGO) clean
	rm -rf $(OUT_DIR)
