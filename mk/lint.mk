# Gates that run first in `make test` (issue #14): the tree is formatted (rustfmt.toml),
# clippy-clean with every warning an error (the workspace lints included), and layered one way.
TEST_TARGETS += check-format check-clippy check-layering

.PHONY: check-format check-clippy check-layering
check-format:
	$(CARGO) fmt --all --check

check-clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# No provider on the PID-1 crate, no daemon on a provider (scripts/check-layering), and QEMU
# started only by the test infrastructure crate, which picks the accelerator.
check-layering:
	scripts/check-layering
	@if grep -rn --include='*.rs' -e 'qemu-system-x86_64' -e '"-accel", "tcg"' . --exclude-dir=target --exclude-dir=testbed; then \
	  echo "check-layering: QEMU is started outside testing/testbed (above)"; exit 1; fi
