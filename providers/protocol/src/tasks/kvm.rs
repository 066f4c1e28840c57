//! `kvm-*`: virtual machines through libvirt, served by the `kvm` provider (issue #8).
//!
//! A VM is a libvirt domain the provider defines from a [`KvmDefineArgs`]: vCPUs, memory, disks
//! (a ZFS volume made through a `zfs-create` sub-task, or an image file), NICs on a bridge or in
//! a node network namespace, a boot order, and a serial console written to a log file
//! (`kvm-console-log` reads its tail). The virtualisation type is KVM where `/dev/kvm` and the
//! CPU's vmx/svm allow it, otherwise QEMU's TCG; a VM may ask for one explicitly.

use crate::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};

crate::declare_tasks! {
    KvmDefine = "kvm-define", Write, "Define a VM (vCPUs, memory, disks, NICs, boot order, serial log); creates the disks it is asked to, leaves nothing behind on failure", KvmDefineArgs => VmInfo;
    KvmStart = "kvm-start", Write, "Start a defined VM", VmRef => VmInfo;
    KvmShutdown = "kvm-shutdown", Write, "Ask a running VM to power off (ACPI) and wait until it has, up to a timeout", KvmShutdownArgs => VmInfo;
    KvmDestroy = "kvm-destroy", Write, "Hard-stop a running VM (pull the plug)", VmRef => VmInfo;
    KvmUndefine = "kvm-undefine", Write, "Remove a VM's definition; with remove_storage also the disks it created; force stops a running VM first", KvmUndefineArgs => KvmUndefineResult;
    KvmGet = "kvm-get", Read, "State, uptime, resources, disks, NICs and virtualisation type of one VM", VmRef => VmInfo;
    KvmList = "kvm-list", Read, "Every VM on this node with its state", crate::task::NoArgs => KvmListResult;
    KvmConsoleLog = "kvm-console-log", Read, "The tail of a VM's serial console log", KvmConsoleLogArgs => KvmConsoleLogResult;
}

/// Longest VM name accepted.
pub const MAX_VM_NAME_LEN: usize = 64;

crate::names::validated_name!(
    /// A VM's name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit. It names the
    /// libvirt domain and the VM's files, so it carries no `/` and no leading dot.
    VmName,
    VmNameError,
    check_vm_name
);

/// Why a string is not a VM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM name {input:?}: 1 to {MAX_VM_NAME_LEN} of a-z 0-9 - _ . starting with a letter or digit")]
pub struct VmNameError {
    pub input: String,
}

fn check_vm_name(value: String) -> Result<String, VmNameError> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok || value.len() > MAX_VM_NAME_LEN {
        return Err(VmNameError { input: value });
    }
    Ok(value)
}

/// Names one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRef {
    pub name: VmName,
}

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtType {
    /// KVM when `/dev/kvm` opens and the CPU has vmx or svm, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation (libvirt domain type `kvm`); refused where it is unavailable.
    Kvm,
    /// QEMU's software emulator TCG (libvirt domain type `qemu`); works everywhere, slowly.
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmDefineArgs {
    pub name: VmName,
    /// Virtual CPUs, 1 to 64.
    pub vcpus: u32,
    /// Guest memory in MiB; must fit in the node's available memory.
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Boot devices in order (default: `disk`, then `network` when the VM has a NIC).
    #[serde(default)]
    pub boot: Vec<BootDevice>,
    /// Boot a kernel and initrd from files on the node instead of firmware.
    #[serde(default)]
    pub direct_kernel: Option<DirectKernel>,
    #[serde(default)]
    pub virt_type: VirtType,
}

/// Where a disk's bytes live. `create_bytes` makes it (and `kvm-undefine` with
/// `remove_storage` removes it again); without it the disk must exist. Strict although
/// [`DiskInfo`] returns it: it is part of [`KvmDefineArgs`], where an unknown field must be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskSource {
    /// A ZFS volume (`pool/path`), used as `/dev/zvol/<dataset>`; made through `zfs-create`.
    Zvol { dataset: String },
    /// A raw image file on the node (absolute path); made sparse.
    File { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub source: DiskSource,
    /// Create the volume or file with this size (bytes, a multiple of 512).
    #[serde(default)]
    pub create_bytes: Option<u64>,
    #[serde(default)]
    pub read_only: bool,
}

/// Where a NIC's other end is. Strict although [`NicInfo`] returns it: it is part of
/// [`KvmDefineArgs`], where an unknown field must be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NicAttach {
    /// A tap on an existing Linux bridge.
    Bridge { bridge: String },
    /// A veth whose far end (named `ifname`, default `vm0`) is moved into the named network
    /// namespace (`/run/netns/<netns>`); the guest's frames come out there.
    Netns {
        netns: String,
        #[serde(default)]
        ifname: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub attach: NicAttach,
    /// The guest's MAC; a unicast address. Default: one derived from the VM name (52:54:00:...).
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    Disk,
    Network,
}

/// A kernel booted directly. Strict: part of [`KvmDefineArgs`] (the provider's own VM record
/// keeps one too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectKernel {
    /// Absolute path of the kernel image on the node.
    pub kernel: String,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmShutdownArgs {
    pub name: VmName,
    /// How long to wait for the guest to power off (default 60 s); then the task fails with
    /// `timeout` and the VM keeps running (`kvm-destroy` stops it hard).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmUndefineArgs {
    pub name: VmName,
    /// Also destroy the disks `kvm-define` created (zvols through `zfs-destroy`, files unlinked).
    #[serde(default)]
    pub remove_storage: bool,
    /// Hard-stop a running VM first instead of refusing with `busy`.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmUndefineResult {
    pub name: VmName,
    /// Disks destroyed (dataset names or file paths).
    pub removed_storage: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmConsoleLogArgs {
    pub name: VmName,
    /// At most this many bytes from the end of the log (default 64 KiB, at most 16 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmConsoleLogResult {
    pub name: VmName,
    /// Where the log is on the node.
    pub path: String,
    /// The log's size now.
    pub size_bytes: u64,
    /// The tail (invalid UTF-8 replaced).
    pub text: String,
    /// The tail starts after the log's beginning.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
    Shutoff,
    Crashed,
    Suspended,
    Blocked,
    Other,
}

/// The hypervisor a VM runs (or will run) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hypervisor {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Guest device (vda, vdb, ...).
    pub target: String,
    pub source: DiskSource,
    /// The node path QEMU opens.
    pub path: String,
    pub read_only: bool,
    /// `kvm-define` made it, so `remove_storage` destroys it.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub mac: MacAddr,
    pub attach: NicAttach,
    /// The node-side interface (tap, or the host end of the veth).
    pub host_ifname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: VmName,
    pub uuid: String,
    pub state: VmState,
    /// Seconds since the VM's QEMU process started, while it runs.
    pub uptime_seconds: Option<u64>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The choice the VM was defined with and what it resolved to.
    pub virt_type: VirtType,
    pub hypervisor: Hypervisor,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    pub boot: Vec<BootDevice>,
    pub console_log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub name: VmName,
    pub state: VmState,
    pub hypervisor: Option<Hypervisor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmListResult {
    pub vms: Vec<VmSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_checked() {
        for good in ["a", "vm-1", "web_2.test", "0abc"] {
            VmName::new(good).unwrap();
        }
        for bad in ["", "-x", ".hidden", "a/b", "UPPER", "a b", &"x".repeat(65)] {
            assert!(VmName::new(bad).is_err(), "{bad:?}");
        }
        let err = serde_json::from_str::<VmRef>(r#"{"name":"../etc"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid VM name"), "{err}");
    }

    #[test]
    fn define_args_round_trip_and_refuse_unknown_fields() {
        let json = r#"{"name":"vm1","vcpus":1,"memory_mib":128,
            "disks":[{"source":{"file":{"path":"/var/lib/vm1.img"}},"create_bytes":1048576}],
            "nics":[{"attach":{"bridge":{"bridge":"br0"}},"mac":"52:54:00:00:00:01"},
                    {"attach":{"netns":{"netns":"tenant"}}}],
            "boot":["network","disk"],"virt_type":"tcg"}"#;
        let args: KvmDefineArgs = serde_json::from_str(json).unwrap();
        assert_eq!(args.virt_type, VirtType::Tcg);
        assert_eq!(args.nics[1].attach, NicAttach::Netns { netns: "tenant".into(), ifname: None });
        let back: KvmDefineArgs = serde_json::from_str(&serde_json::to_string(&args).unwrap()).unwrap();
        assert_eq!(back, args);
        let bad = json.replace("\"vcpus\":1", "\"vcpus\":1,\"cpus\":2");
        assert!(serde_json::from_str::<KvmDefineArgs>(&bad).unwrap_err().to_string().contains("unknown field"));
        let bad_mac = json.replace("52:54:00:00:00:01", "52:54:00:00:01");
        assert!(serde_json::from_str::<KvmDefineArgs>(&bad_mac).is_err());
    }
}
