//! The CeranaOS QEMU harness: boot a node by direct kernel+initrd or from the ISO (BIOS or
//! UEFI), capture its serial console, wait for its lifecycle events, run tasks through its
//! coordinator API from the host (user-mode networking, loopback port forward, bearer token),
//! and power it off. Everything QEMU-related is killed and removed when a [`Vm`] is dropped;
//! the console logs stay. Also the rest of what the tests stand on: where the images are, what
//! a test needs ([`require!`]: loud under `make test`), task helpers, and multi-node clusters
//! on a bridge inside a network namespace ([`cluster`]); [`init`] runs a built `cerana-init` in a PID namespace. See testing/testbed/README.md.

pub mod accel;
pub mod archive;
pub mod chaos;
pub mod cluster;
pub mod console;
pub mod etcd;
pub mod http;
pub mod image;
pub mod init;
pub mod qemu;
pub mod qmp;
pub mod require;
pub mod task;
pub mod vm;

pub use accel::Accel;
pub use image::{image_dir, image_dir_from};
pub use qemu::{Firmware, QemuCommand, QEMU_SYSTEM};
pub use task::TaskFailure;
pub use vm::{Boot, Network, Vm, VmConfig, VmError};

/// `program` as found in `PATH`.
pub fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|c| c.is_file())
}

/// Where the VM console logs go: `$OUT_DIR/vm-logs`, or `out/vm-logs` in the checkout.
pub fn default_log_dir() -> std::path::PathBuf {
    let out = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| workspace_root().join("out"));
    out.join("vm-logs")
}

/// The checkout this crate lives in.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
