//! What a test needs and cannot find. A plain `cargo test` may skip such a test, saying why;
//! under `make test` (the Makefile exports [`STRICT_ENV`]) it fails and names what is missing,
//! so a broken image path or an uninstalled tool never shows as `ok` in CI.

/// Set (to anything but `0`) by the Makefile for every target it runs.
pub const STRICT_ENV: &str = "CERANA_TEST_STRICT";

/// Whether a missing component fails the test rather than skipping it.
pub fn strict() -> bool {
    std::env::var_os(STRICT_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports that `test` cannot run because of `why`: panics under `make test`, else prints
/// `SKIP` and returns, so the caller returns too.
#[track_caller]
pub fn missing(test: &str, why: &str) {
    if strict() {
        panic!("{test} cannot run: {why} ({STRICT_ENV} is set: under `make test` nothing is skipped)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Whether the effective user is root (namespaces, taps, cgroups).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The first of `programs` not found in `PATH`, with what installs it.
pub fn missing_program(programs: &[&str]) -> Option<String> {
    programs
        .iter()
        .find(|p| crate::find_in_path(p).is_none())
        .map(|p| format!("`{p}` is not installed (make deps installs it)"))
}

/// `require!(reason)`: when `reason` (an `Option` of something printable) is `Some`, the test
/// fails under `make test` or skips elsewhere, and returns.
#[macro_export]
macro_rules! require {
    ($reason:expr) => {
        if let Some(why) = $reason {
            $crate::require::missing(module_path!(), &why.to_string());
            return;
        }
    };
}

/// `require_ok!(result)`: the value of an `Ok`, or (for an `Err`) fail under `make test` /
/// skip elsewhere, and return.
#[macro_export]
macro_rules! require_ok {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(why) => {
                $crate::require::missing(module_path!(), &why.to_string());
                return;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_set_nonzero_variable_is_strict() {
        // Read the environment only: tests run in parallel threads of one process.
        let expected = std::env::var(STRICT_ENV).map(|v| !v.is_empty() && v != "0").unwrap_or(false);
        assert_eq!(strict(), expected);
    }

    #[test]
    fn a_missing_program_is_named() {
        let why = missing_program(&["sh", "no-such-tool-cerana"]).unwrap();
        assert!(why.contains("no-such-tool-cerana"), "{why}");
        assert_eq!(missing_program(&["sh"]), None);
    }
}
