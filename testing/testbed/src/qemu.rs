//! The one place a QEMU command line is put together: every guest the tests, the benchmarks
//! and `make cluster` start gets its program, accelerator, firmware and NIC from here.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accel::Accel;

/// The QEMU system emulator every guest runs in.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";
/// Debian's `ovmf` as a single flash image for `-bios`: a UEFI PXE client needs no variable store.
pub const OVMF_BIOS: &str = "/usr/share/ovmf/OVMF.fd";

/// Which firmware a network-booted guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the NIC's iPXE option ROM.
    Bios,
    /// OVMF's own virtio-net driver and PXE client (no option ROM), then snponly.efi.
    Uefi,
}

/// A QEMU command line under construction.
#[derive(Debug, Clone)]
pub struct QemuCommand {
    program: String,
    netns: Option<String>,
    args: Vec<String>,
}

impl QemuCommand {
    /// No default devices, no display, the accelerator this CPU allows ([`Accel::detect`]),
    /// `memory_mib` of RAM and `cpus` vCPUs.
    pub fn new(program: &str, memory_mib: u32, cpus: u32) -> Self {
        let mut args: Vec<String> = ["-nodefaults", "-display", "none"].map(String::from).into();
        args.extend(Accel::detect().qemu_args());
        args.extend(["-m".into(), memory_mib.to_string(), "-smp".into(), cpus.to_string()]);
        Self { program: program.into(), netns: None, args }
    }

    /// Runs QEMU inside this network namespace (`ip netns exec`), where its taps are.
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.into());
        self
    }

    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A virtio NIC on tap `ifname` (netdev `n0`). `pxe` makes it the first boot device: BIOS
    /// boots through its iPXE ROM, UEFI through OVMF's PXE (the ROM left out). Without `pxe`
    /// the NIC has no ROM at all, so a directly booted guest never tries the network first.
    pub fn tap_nic(&mut self, ifname: &str, mac: &str, pxe: Option<Firmware>) -> &mut Self {
        self.args(["-netdev".into(), format!("tap,id=n0,ifname={ifname},script=no,downscript=no")]);
        let device = match pxe {
            Some(Firmware::Bios) => format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            Some(Firmware::Uefi) => format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
            None => format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
        };
        self.args(["-device".into(), device])
    }

    /// Boots OVMF as the system firmware (`-bios`), for guests that PXE-boot on UEFI.
    pub fn uefi_bios(&mut self) -> Result<&mut Self, MissingFile> {
        require_file(Path::new(OVMF_BIOS), "Debian package ovmf")?;
        Ok(self.args(["-bios", OVMF_BIOS]))
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    pub fn arguments(&self) -> &[String] {
        &self.args
    }

    /// The process to spawn: QEMU itself, or `ip netns exec <ns> qemu…`.
    pub fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, &self.program]).args(&self.args);
                cmd
            }
            None => {
                let mut cmd = Command::new(&self.program);
                cmd.args(&self.args);
                cmd
            }
        }
    }
}

/// A file a guest needs that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{path} not found ({hint})")]
pub struct MissingFile {
    pub path: PathBuf,
    pub hint: String,
}

/// `Ok` when `path` exists; otherwise an error naming it and what provides it.
pub fn require_file(path: &Path, hint: &str) -> Result<(), MissingFile> {
    if path.exists() {
        Ok(())
    } else {
        Err(MissingFile { path: path.into(), hint: hint.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_gets_the_detected_accelerator_and_no_default_devices() {
        let q = QemuCommand::new(QEMU_SYSTEM, 512, 2);
        let args = q.arguments().join(" ");
        assert!(args.starts_with("-nodefaults -display none -accel "), "{args}");
        assert!(args.ends_with("-m 512 -smp 2"), "{args}");
        assert!(args.contains(&Accel::detect().qemu_args().join(" ")), "{args}");
    }

    #[test]
    fn a_namespaced_guest_runs_through_ip_netns_exec() {
        let mut q = QemuCommand::new(QEMU_SYSTEM, 256, 1).in_netns("lab0");
        q.tap_nic("tap1", "52:54:00:00:00:01", Some(Firmware::Uefi));
        let cmd = q.command();
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&args[..4], ["netns", "exec", "lab0", QEMU_SYSTEM]);
        assert!(args.contains(&"virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile=,bootindex=1".to_string()));
    }

    #[test]
    fn a_missing_firmware_file_is_named() {
        let err = require_file(Path::new("/nonexistent/OVMF.fd"), "Debian package ovmf").unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/OVMF.fd not found (Debian package ovmf)");
    }
}
