//! What the node offers a VM: hardware virtualisation, available memory, bridges, network
//! namespaces; and the veth pairs that put a VM's NIC into a namespace.

use cerana_protocol::tasks::kvm::{Hypervisor, VirtType};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the node's facts are read: `/` on a node, a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct HostProbe {
    root: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self { root: PathBuf::from("/") }
    }
}

/// Why a VM cannot have the hypervisor it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KVM was asked for but is unavailable here: {0}; use virt_type auto or tcg")]
pub struct NoKvm(pub String);

impl HostProbe {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Why KVM cannot be used here, or `None` when it can: the CPU must announce vmx or svm and
    /// `/dev/kvm` must open (a `/dev/kvm` alone is not enough: guests hang without the flags).
    pub fn kvm_unavailable(&self) -> Option<String> {
        let cpuinfo = std::fs::read_to_string(self.path("proc/cpuinfo")).unwrap_or_default();
        if !cpu_has_virt_flags(&cpuinfo) {
            return Some("the CPU has no vmx or svm flag".into());
        }
        let dev = self.path("dev/kvm");
        match std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(_) => None,
            Err(e) => Some(format!("cannot open {}: {e}", dev.display())),
        }
    }

    /// The hypervisor a VM asking for `choice` gets.
    pub fn resolve(&self, choice: VirtType) -> Result<Hypervisor, NoKvm> {
        match (choice, self.kvm_unavailable()) {
            (VirtType::Tcg, _) | (VirtType::Auto, Some(_)) => Ok(Hypervisor::Tcg),
            (VirtType::Auto | VirtType::Kvm, None) => Ok(Hypervisor::Kvm),
            (VirtType::Kvm, Some(why)) => Err(NoKvm(why)),
        }
    }

    /// `MemAvailable` in bytes.
    pub fn available_memory(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("proc/meminfo")).ok()?;
        parse_mem_available(&text)
    }

    pub fn bridge_exists(&self, name: &str) -> bool {
        valid_ifname(name) && self.path(&format!("sys/class/net/{name}/bridge")).is_dir()
    }

    pub fn netns_exists(&self, name: &str) -> bool {
        valid_netns_name(name) && self.path(&format!("run/netns/{name}")).exists()
    }
}

pub fn cpu_has_virt_flags(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace or `:`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// A name under /run/netns: a plain file name.
pub fn valid_netns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Why a veth pair could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error("cannot run ip: {0}")]
    Spawn(std::io::Error),
    #[error("ip {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

fn ip(args: &[&str]) -> Result<(), VethError> {
    let out = Command::new("ip").args(args).output().map_err(VethError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VethError::Failed { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// The node-side interfaces of a NIC in a network namespace: a veth whose far end is in the
/// namespace, enslaved to a bridge of its own that the VM's tap joins. (A macvtap on the veth
/// would save the bridge but needs /dev/tapN nodes, which only udev or devtmpfs provide.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsLink {
    /// `kv<tag>`: the veth's node end.
    pub veth: String,
    /// `kb<tag>`: the bridge the tap joins.
    pub bridge: String,
}

impl NetnsLink {
    /// The interfaces for `tag` (at most 13 bytes).
    pub fn new(tag: &str) -> Self {
        Self { veth: format!("kv{tag}"), bridge: format!("kb{tag}") }
    }

    /// The interfaces of a NIC whose veth end is `veth`.
    pub fn of_veth(veth: &str) -> Self {
        Self::new(veth.strip_prefix("kv").unwrap_or(veth))
    }

    /// Makes the bridge and the veth, its far end `ns_end` directly inside `netns`, all up;
    /// on failure removes what it made.
    pub fn create(&self, netns: &str, ns_end: &str) -> Result<(), VethError> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        let rest = ip(&["link", "add", &self.veth, "type", "veth", "peer", "name", ns_end, "netns", netns])
            .and_then(|()| ip(&["link", "set", &self.veth, "master", &self.bridge, "up"]))
            .and_then(|()| ip(&["link", "set", &self.bridge, "up"]))
            .and_then(|()| ip(&["-n", netns, "link", "set", ns_end, "up"]));
        if let Err(e) = rest {
            let _ = self.delete();
            return Err(e);
        }
        Ok(())
    }

    /// Removes both (the veth takes its peer along); what is already gone is fine.
    pub fn delete(&self) -> Result<(), VethError> {
        let veth = delete_link(&self.veth);
        delete_link(&self.bridge).and(veth)
    }
}

/// Removes a link. A link that is already gone is fine.
pub fn delete_link(name: &str) -> Result<(), VethError> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    ip(&["link", "del", name])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(cpu_flags: &str, with_kvm: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("proc/cpuinfo"), format!("processor\t: 0\nflags\t\t: fpu {cpu_flags} sse\n"))
            .unwrap();
        std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: 1000 kB\nMemAvailable:  512 kB\n").unwrap();
        if with_kvm {
            std::fs::write(dir.path().join("dev/kvm"), "").unwrap();
        }
        dir
    }

    #[test]
    fn kvm_needs_both_the_cpu_flag_and_the_device() {
        let no_flag = fixture("pae", true);
        let probe = HostProbe::at(no_flag.path());
        assert_eq!(probe.resolve(VirtType::Auto), Ok(Hypervisor::Tcg));
        assert_eq!(probe.resolve(VirtType::Tcg), Ok(Hypervisor::Tcg));
        let err = probe.resolve(VirtType::Kvm).unwrap_err();
        assert!(err.to_string().contains("no vmx or svm"), "{err}");

        let no_dev = fixture("vmx", false);
        let err = HostProbe::at(no_dev.path()).resolve(VirtType::Kvm).unwrap_err();
        assert!(err.to_string().contains("dev/kvm"), "{err}");

        let both = fixture("svm", true);
        let probe = HostProbe::at(both.path());
        assert_eq!(probe.resolve(VirtType::Auto), Ok(Hypervisor::Kvm));
        assert_eq!(probe.resolve(VirtType::Tcg), Ok(Hypervisor::Tcg));
        assert_eq!(probe.available_memory(), Some(512 * 1024));
    }

    #[test]
    fn this_machine_has_no_usable_kvm() {
        // /dev/kvm exists here but the CPU announces no vmx/svm: guests must use TCG.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        if !cpu_has_virt_flags(&cpuinfo) {
            assert_eq!(HostProbe::default().resolve(VirtType::Auto), Ok(Hypervisor::Tcg));
        }
        assert!(HostProbe::default().available_memory().unwrap() > 0);
    }

    #[test]
    fn interface_and_namespace_names_are_checked() {
        assert!(valid_ifname("br0") && valid_ifname("kv-0123abcd-1"));
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "..", "eth0:1"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
        assert!(valid_netns_name("tenant-1"));
        assert!(!valid_netns_name("../etc") && !valid_netns_name(".."));
        assert!(!HostProbe::default().bridge_exists("../../x"));
    }
}
