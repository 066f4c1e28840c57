//! The libvirt domain XML of a VM, and the provider's own record of the VM kept inside it (as
//! JSON in the domain's `<metadata>`), so `kvm-get` and `kvm-undefine` know what `kvm-define`
//! made even after the provider restarts.

use crate::host::NetnsLink;
use cerana_protocol::tasks::kvm::{
    BootDevice, DirectKernel, DiskInfo, Hypervisor, NicAttach, NicInfo, VirtType, VmName,
};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The namespace of the provider's metadata element.
pub const METADATA_URI: &str = "https://cerana.dev/xmlns/kvm/1";
const METADATA_PREFIX: &str = "cerana";

/// What the provider knows about a VM beyond libvirt's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: VmName,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub virt_type: VirtType,
    pub hypervisor: Hypervisor,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    pub boot: Vec<BootDevice>,
    pub direct_kernel: Option<DirectKernel>,
    pub console_log: String,
}

/// `&`, `<`, `>`, `'` and `"` escaped for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape`] for the five predefined entities (libvirt writes no others).
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&apos;", "'").replace("&quot;", "\"").replace("&amp;", "&")
}

impl VmRecord {
    /// The domain XML libvirt defines.
    pub fn domain_xml(&self) -> String {
        let domain_type = match self.hypervisor {
            Hypervisor::Kvm => "kvm",
            Hypervisor::Tcg => "qemu",
        };
        let record = serde_json::to_string(self).expect("a VmRecord always serializes");
        let mut x = String::with_capacity(2048);
        let _ = writeln!(x, "<domain type='{domain_type}'>");
        let _ = writeln!(x, "  <name>{}</name>", escape(self.name.as_str()));
        let _ = writeln!(
            x,
            "  <metadata><{METADATA_PREFIX}:vm xmlns:{METADATA_PREFIX}='{METADATA_URI}'>{}</{METADATA_PREFIX}:vm></metadata>",
            escape(&record)
        );
        let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", self.memory_mib);
        let _ = writeln!(x, "  <vcpu>{}</vcpu>", self.vcpus);
        x.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
        match &self.direct_kernel {
            Some(k) => {
                let _ = writeln!(x, "    <kernel>{}</kernel>", escape(&k.kernel));
                if let Some(initrd) = &k.initrd {
                    let _ = writeln!(x, "    <initrd>{}</initrd>", escape(initrd));
                }
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(&k.cmdline));
            }
            None => {
                for dev in &self.boot {
                    let dev = match dev {
                        BootDevice::Disk => "hd",
                        BootDevice::Network => "network",
                    };
                    let _ = writeln!(x, "    <boot dev='{dev}'/>");
                }
            }
        }
        x.push_str("  </os>\n  <features><acpi/><apic/></features>\n");
        if self.hypervisor == Hypervisor::Kvm {
            x.push_str("  <cpu mode='host-passthrough'/>\n");
        }
        x.push_str("  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
        x.push_str("  <devices>\n");
        for disk in &self.disks {
            let (kind, attr) = if disk.path.starts_with("/dev/") { ("block", "dev") } else { ("file", "file") };
            let _ = writeln!(x, "    <disk type='{kind}' device='disk'>");
            x.push_str("      <driver name='qemu' type='raw'/>\n");
            let _ = writeln!(x, "      <source {attr}='{}'/>", escape(&disk.path));
            let _ = writeln!(x, "      <target dev='{}' bus='virtio'/>", escape(&disk.target));
            if disk.read_only {
                x.push_str("      <readonly/>\n");
            }
            x.push_str("    </disk>\n");
        }
        for nic in &self.nics {
            match (&nic.attach, &nic.host_ifname) {
                (NicAttach::Bridge { bridge }, _) => {
                    x.push_str("    <interface type='bridge'>\n");
                    let _ = writeln!(x, "      <source bridge='{}'/>", escape(bridge));
                }
                (NicAttach::Netns { .. }, host) => {
                    // The NIC's own bridge, whose other port is a veth into the namespace.
                    let link = NetnsLink::of_veth(host.as_deref().unwrap_or_default());
                    x.push_str("    <interface type='bridge'>\n");
                    let _ = writeln!(x, "      <source bridge='{}'/>", escape(&link.bridge));
                }
            }
            let _ = writeln!(x, "      <mac address='{}'/>", nic.mac);
            x.push_str("      <model type='virtio'/>\n    </interface>\n");
        }
        let _ = writeln!(
            x,
            "    <serial type='file'>\n      <source path='{}' append='on'/>\n      <target port='0'/>\n    </serial>",
            escape(&self.console_log)
        );
        x.push_str(
            "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n  </devices>\n</domain>\n",
        );
        x
    }

    /// The record from what `virDomainGetMetadata` returns for [`METADATA_URI`]: the element,
    /// its text being the escaped JSON.
    pub fn from_metadata(element: &str) -> Result<Self, String> {
        let start = element.find('>').ok_or("metadata element has no content")? + 1;
        let end = element.rfind("</").ok_or("metadata element is not closed")?;
        if end < start {
            return Err("metadata element is empty".into());
        }
        serde_json::from_str(&unescape(&element[start..end])).map_err(|e| format!("metadata is not a VM record: {e}"))
    }
}

/// A stable 32-bit FNV-1a hash: names the VM's host interfaces and its default MACs.
pub fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::boot::MacAddr;
    use cerana_protocol::tasks::kvm::DiskSource;

    fn record() -> VmRecord {
        VmRecord {
            name: VmName::new("web-1").unwrap(),
            vcpus: 2,
            memory_mib: 256,
            virt_type: VirtType::Auto,
            hypervisor: Hypervisor::Tcg,
            disks: vec![
                DiskInfo {
                    target: "vda".into(),
                    source: DiskSource::Zvol { dataset: "tank/vm/web-1".into() },
                    path: "/dev/zvol/tank/vm/web-1".into(),
                    read_only: false,
                    created: true,
                },
                DiskInfo {
                    target: "vdb".into(),
                    source: DiskSource::File { path: "/images/a&b.img".into() },
                    path: "/images/a&b.img".into(),
                    read_only: true,
                    created: false,
                },
            ],
            nics: vec![
                NicInfo {
                    mac: "52:54:00:12:34:56".parse::<MacAddr>().unwrap(),
                    attach: NicAttach::Bridge { bridge: "br0".into() },
                    host_ifname: None,
                },
                NicInfo {
                    mac: "52:54:00:12:34:57".parse().unwrap(),
                    attach: NicAttach::Netns { netns: "tenant".into(), ifname: Some("vm0".into()) },
                    host_ifname: Some("kv0000abcd-1".into()),
                },
            ],
            boot: vec![BootDevice::Network, BootDevice::Disk],
            direct_kernel: None,
            console_log: "/var/log/cerana/kvm/web-1.log".into(),
        }
    }

    #[test]
    fn xml_carries_every_device_escaped() {
        let xml = record().domain_xml();
        assert!(xml.starts_with("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<source dev='/dev/zvol/tank/vm/web-1'/>"));
        assert!(xml.contains("<source file='/images/a&amp;b.img'/>"));
        assert!(xml.contains("<readonly/>"));
        assert!(xml.contains("<source bridge='br0'/>"));
        assert!(xml.contains("<source bridge='kb0000abcd-1'/>"));
        assert!(xml.contains("<mac address='52:54:00:12:34:57'/>"));
        assert!(xml.find("<boot dev='network'/>").unwrap() < xml.find("<boot dev='hd'/>").unwrap());
        assert!(xml.contains("<source path='/var/log/cerana/kvm/web-1.log' append='on'/>"));
        assert!(!xml.contains("host-passthrough"));
        let mut kvm = record();
        kvm.hypervisor = Hypervisor::Kvm;
        kvm.direct_kernel =
            Some(DirectKernel { kernel: "/k".into(), initrd: None, cmdline: "console=ttyS0 a<b".into() });
        let xml = kvm.domain_xml();
        assert!(xml.starts_with("<domain type='kvm'>") && xml.contains("host-passthrough"));
        assert!(xml.contains("<cmdline>console=ttyS0 a&lt;b</cmdline>") && !xml.contains("<boot "));
    }

    #[test]
    fn the_record_survives_the_metadata_round_trip() {
        let rec = record();
        let xml = rec.domain_xml();
        let start = xml.find("<cerana:vm").unwrap();
        let end = xml.find("</metadata>").unwrap();
        assert_eq!(VmRecord::from_metadata(&xml[start..end]).unwrap(), rec);
        assert!(VmRecord::from_metadata("<cerana:vm>{nope</cerana:vm>").unwrap_err().contains("not a VM record"));
        assert!(VmRecord::from_metadata("garbage").is_err());
    }

    #[test]
    fn escape_round_trips() {
        let s = r#"a&b<c>'d'"e" &amp;"#;
        assert_eq!(unescape(&escape(s)), s);
        assert_ne!(fnv1a(&[b"a", b"bc"]), fnv1a(&[b"ab", b"c"]));
    }
}
