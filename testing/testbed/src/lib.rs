//! The CeranaOS QEMU harness: boot a node by direct kernel+initrd or from the ISO (BIOS or
//! UEFI), capture its serial console, wait for its lifecycle events, run tasks through its
//! coordinator API from the host (user-mode networking, loopback port forward, bearer token),
//! and power it off. Everything QEMU-related is killed and removed when a [`Vm`] is dropped;
//! the console logs stay. [`init`] runs a built `cerana-init` in a PID namespace on the host
//! instead. See testing/testbed/README.md.

pub mod accel;
pub mod console;
pub mod http;
pub mod init;
pub mod qmp;
pub mod vm;

pub use accel::Accel;
pub use vm::{Boot, Vm, VmConfig, VmError};

/// Where the VM console logs go: `$OUT_DIR/vm-logs`, or `out/vm-logs` in the checkout.
pub fn default_log_dir() -> std::path::PathBuf {
    let out = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| workspace_root().join("out"));
    out.join("vm-logs")
}

/// The checkout this crate lives in.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
