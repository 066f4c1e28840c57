//! The `node-info` provider: `node-info` reads the node's facts from /proc; `node-echo` returns
//! its argument (a no-op for measuring the task path).

use cerana_protocol::tasks::node::{
    CpuFacts, DiskFacts, EchoArgs, FirmwareFacts, MemoryFacts, NicFacts, NodeEcho, NodeFacts, NodeInfo, OsFacts,
};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_provider_sdk::Provider;
use std::path::{Path, PathBuf};

/// Why the node's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has no {field}")]
    Missing { path: PathBuf, field: &'static str },
    #[error("{path}: {field} is not a number: {value:?}")]
    NotANumber { path: PathBuf, field: &'static str, value: String },
}

/// Where to read facts from: `/` on a node, a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct FactSource {
    root: PathBuf,
}

impl Default for FactSource {
    fn default() -> Self {
        Self { root: PathBuf::from("/") }
    }
}

impl FactSource {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read(&self, rel: &str) -> Result<(PathBuf, String), FactsError> {
        let path = self.path(rel);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(FactsError::Read { path, source }),
        }
    }

    pub fn collect(&self) -> Result<NodeFacts, FactsError> {
        let (_, hostname) = self.read("proc/sys/kernel/hostname")?;
        let (_, release) = self.read("proc/sys/kernel/osrelease")?;
        let (_, version) = self.read("proc/sys/kernel/version")?;
        let machine_id =
            self.read("etc/machine-id").ok().map(|(_, id)| id.trim().to_owned()).filter(|id| !id.is_empty());
        let (path, uptime) = self.read("proc/uptime")?;
        let uptime_seconds = first_number(&path, "uptime", &uptime)?;
        let (path, loadavg) = self.read("proc/loadavg")?;
        let mut loads = loadavg.split_whitespace();
        let mut load = |field| -> Result<f64, FactsError> {
            let value = loads.next().ok_or_else(|| FactsError::Missing { path: path.clone(), field })?;
            value.parse().map_err(|_| FactsError::NotANumber { path: path.clone(), field, value: value.to_owned() })
        };
        let (load_1m, load_5m, load_15m) = (load("1-minute load")?, load("5-minute load")?, load("15-minute load")?);
        let (_, cpuinfo) = self.read("proc/cpuinfo")?;
        let (model, count) = parse_cpuinfo(&cpuinfo);
        let (path, meminfo) = self.read("proc/meminfo")?;
        Ok(NodeFacts {
            hostname: hostname.trim().to_owned(),
            kernel_release: release.trim().to_owned(),
            kernel_version: version.trim().to_owned(),
            machine_id,
            uptime_seconds,
            cpu: CpuFacts { model, count, load_1m, load_5m, load_15m },
            memory: parse_meminfo(&path, &meminfo)?,
            init_rss_bytes: self.read("proc/1/status").ok().and_then(|(_, status)| parse_vm_rss(&status)),
            disks: self.disks(),
            nics: self.nics(),
            firmware: self.firmware(),
            os: self.os(),
        })
    }

    /// A one-line sysfs attribute, trimmed; None when absent or empty.
    fn attribute(&self, rel: &str) -> Option<String> {
        self.read(rel).ok().map(|(_, text)| text.trim().to_owned()).filter(|t| !t.is_empty())
    }

    /// The names under a sysfs directory, sorted, at most [`MAX_DEVICES`].
    fn entries(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|dir| dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).take(MAX_DEVICES).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn disks(&self) -> Vec<DiskFacts> {
        self.entries("sys/block")
            .into_iter()
            // A disk has a device behind it; loop, RAM and device-mapper disks do not.
            .filter(|name| self.path(&format!("sys/block/{name}/device")).exists())
            .map(|name| {
                let at = |attr: &str| self.attribute(&format!("sys/block/{name}/{attr}"));
                let sectors: u64 = at("size").and_then(|s| s.parse().ok()).unwrap_or(0);
                DiskFacts {
                    size_bytes: sectors * 512,
                    model: at("device/model"),
                    serial: at("device/serial").or_else(|| at("serial")),
                    rotational: at("queue/rotational").map(|r| r == "1"),
                    name,
                }
            })
            .collect()
    }

    fn nics(&self) -> Vec<NicFacts> {
        self.entries("sys/class/net")
            .into_iter()
            .filter(|name| self.path(&format!("sys/class/net/{name}/device")).exists())
            .map(|name| {
                let at = |attr: &str| self.attribute(&format!("sys/class/net/{name}/{attr}"));
                NicFacts {
                    mac: at("address").unwrap_or_default(),
                    state: at("operstate").unwrap_or_else(|| "unknown".into()),
                    // -1 (or an error reading it) while the link is down.
                    speed_mbps: at("speed").and_then(|s| s.parse::<i64>().ok()).and_then(|s| u32::try_from(s).ok()),
                    name,
                }
            })
            .collect()
    }

    fn firmware(&self) -> FirmwareFacts {
        let dmi = |attr: &str| self.attribute(&format!("sys/class/dmi/id/{attr}"));
        FirmwareFacts {
            kind: if self.path("sys/firmware/efi").exists() { "uefi" } else { "bios" }.into(),
            vendor: dmi("sys_vendor"),
            product: dmi("product_name"),
            bios_version: dmi("bios_version"),
        }
    }

    fn os(&self) -> OsFacts {
        let release = self.read("etc/os-release").map(|(_, t)| t).unwrap_or_default();
        let field = |key: &str| {
            release.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim_matches('"').to_owned())
        };
        let cmdline = self.read("proc/cmdline").map(|(_, t)| t).unwrap_or_default();
        OsFacts {
            name: field("PRETTY_NAME").or_else(|| field("NAME")).unwrap_or_default(),
            version: field("VERSION_ID"),
            initrd_hash: cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cerana.initrd_hash="))
                .filter(|h| h.len() <= 100 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                .map(str::to_owned),
        }
    }
}

/// Disks or interfaces listed at most.
const MAX_DEVICES: usize = 256;

fn first_number(path: &Path, field: &'static str, text: &str) -> Result<f64, FactsError> {
    let value = text.split_whitespace().next().ok_or_else(|| FactsError::Missing { path: path.to_owned(), field })?;
    value.parse().map_err(|_| FactsError::NotANumber { path: path.to_owned(), field, value: value.to_owned() })
}

/// The CPU model and the number of logical CPUs.
pub fn parse_cpuinfo(text: &str) -> (String, u32) {
    let count = text.lines().filter(|l| l.starts_with("processor")).count() as u32;
    let model = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    (model, count.max(1))
}

/// `VmRSS` of a `/proc/PID/status` in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Total, free and available memory in bytes.
pub fn parse_meminfo(path: &Path, text: &str) -> Result<MemoryFacts, FactsError> {
    let field = |name: &'static str| -> Result<u64, FactsError> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| FactsError::Missing { path: path.to_owned(), field: name })?;
        let value = line.split_whitespace().nth(1).unwrap_or_default();
        let kib: u64 = value.parse().map_err(|_| FactsError::NotANumber {
            path: path.to_owned(),
            field: name,
            value: value.to_owned(),
        })?;
        Ok(kib * 1024)
    };
    Ok(MemoryFacts {
        total_bytes: field("MemTotal")?,
        free_bytes: field("MemFree")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// The whole `cerana-node-info` program (see [`Provider::main`]).
pub fn main() -> std::process::ExitCode {
    provider().main()
}

/// The provider with its handlers, reading facts from `/`.
pub fn provider() -> Provider {
    provider_reading(FactSource::default())
}

/// The provider reading facts from `source`.
pub fn provider_reading(source: FactSource) -> Provider {
    Provider::new("node-info", env!("CARGO_PKG_VERSION"))
        .task::<NodeInfo, _, _>(move |_ctx, _args| {
            let source = source.clone();
            async move { source.collect().map_err(|e| TaskError::new(ErrorCode::Failed, e.to_string())) }
        })
        .task::<NodeEcho, _, _>(|_ctx, args: EchoArgs| async move { Ok(args) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_from_the_live_system() {
        let facts = FactSource::default().collect().unwrap();
        assert!(!facts.hostname.is_empty());
        assert!(facts.cpu.count >= 1);
        assert!(facts.memory.total_bytes > facts.memory.free_bytes);
        assert!(facts.uptime_seconds > 0.0);
    }

    #[test]
    fn facts_come_from_a_fixture_tree_and_bad_files_are_named() {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/sys/kernel/hostname", "node-7\n");
        write("proc/sys/kernel/osrelease", "6.1.0-1-amd64\n");
        write("proc/sys/kernel/version", "#1 SMP\n");
        write("proc/uptime", "12.50 20.00\n");
        write("proc/loadavg", "0.10 0.20 0.30 1/100 42\n");
        write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Test CPU\n\nprocessor\t: 1\nmodel name\t: Test CPU\n");
        write("proc/meminfo", "MemTotal:  2048 kB\nMemFree:  1024 kB\nMemAvailable:  1536 kB\n");
        write("proc/1/status", "Name:\tinit\nVmRSS:\t    1852 kB\n");
        write("sys/block/vda/size", "2097152\n");
        write("sys/block/vda/device/model", "QEMU HARDDISK\n");
        write("sys/block/vda/device/serial", "cerana-data\n");
        write("sys/block/vda/queue/rotational", "1\n");
        write("sys/block/loop0/size", "100\n");
        write("sys/class/net/eth0/address", "52:54:00:c1:00:02\n");
        write("sys/class/net/eth0/operstate", "up\n");
        write("sys/class/net/eth0/speed", "-1\n");
        write("sys/class/net/eth0/device/vendor", "0x1af4\n");
        write("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write("sys/class/dmi/id/sys_vendor", "QEMU\n");
        write("sys/firmware/efi/fw_platform_size", "64\n");
        write("etc/os-release", "NAME=CeranaOS\nID=cerana\nPRETTY_NAME=\"CeranaOS\"\nVERSION_ID=0.1.0\n");
        write("proc/cmdline", "console=ttyS0 cerana.initrd_hash=sha256-abc cerana.x=1\n");
        let facts = FactSource::at(root.path()).collect().unwrap();
        assert_eq!(facts.init_rss_bytes, Some(1852 * 1024));
        let disk = DiskFacts {
            name: "vda".into(),
            size_bytes: 1 << 30,
            model: Some("QEMU HARDDISK".into()),
            serial: Some("cerana-data".into()),
            rotational: Some(true),
        };
        assert_eq!(facts.disks, [disk], "loop0 has no device behind it");
        let nic =
            NicFacts { name: "eth0".into(), mac: "52:54:00:c1:00:02".into(), state: "up".into(), speed_mbps: None };
        assert_eq!(facts.nics, [nic]);
        assert_eq!((facts.firmware.kind.as_str(), facts.firmware.vendor.as_deref()), ("uefi", Some("QEMU")));
        assert_eq!(facts.os.name, "CeranaOS");
        assert_eq!((facts.os.version.as_deref(), facts.os.initrd_hash.as_deref()), (Some("0.1.0"), Some("sha256-abc")));
        assert_eq!(facts.hostname, "node-7");
        assert_eq!(facts.machine_id, None);
        assert_eq!(facts.cpu.count, 2);
        assert_eq!(facts.cpu.model, "Test CPU");
        assert_eq!(facts.cpu.load_15m, 0.30);
        assert_eq!(facts.memory.available_bytes, 1536 * 1024);

        write("proc/meminfo", "MemTotal:  lots kB\n");
        let err = FactSource::at(root.path()).collect().unwrap_err();
        assert!(err.to_string().contains("MemTotal is not a number"), "{err}");
        std::fs::remove_file(root.path().join("proc/uptime")).unwrap();
        let err = FactSource::at(root.path()).collect().unwrap_err();
        assert!(err.to_string().contains("proc/uptime"), "{err}");
    }
}
