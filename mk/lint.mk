# Gates that run first in `make test` (issue #14): the tree is formatted (rustfmt.toml) and
# clippy-clean with every warning an error, the workspace lints included.
TEST_TARGETS += check-format check-clippy

.PHONY: check-format check-clippy
check-format:
	$(CARGO) fmt --all --check

check-clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
