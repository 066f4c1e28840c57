//! The node's pool `data`: imported or created at start-up (`cerana.zfs_config`), its standard
//! datasets, the per-boot log directory, and its status.

use crate::error::ZfsError;
use crate::runner::{checked, Runner};
use cerana_protocol::tasks::zfs::{BootstrapReport, DiskReport, PoolConfigMode, PoolLayout, PoolStatus};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The node's pool.
pub const POOL: &str = "data";
/// Datasets every node has under the pool.
pub const LAYOUT_DATASETS: &[&str] = &["datasets", "running-clones", "config", "services", "logs", "platform"];
/// Per-boot log directories kept under /data/logs.
pub const KEEP_BOOT_LOGS: usize = 10;
/// A disk with this serial carries the cluster bootstrap's kernel and initrd (init/services.base.toml).
const BOOT_IMAGE_SERIAL: &str = "cerana-boot";

/// `cerana.zfs_config` from a kernel command line; `None` when absent or not auto/manual.
pub fn mode_from_cmdline(cmdline: &str) -> Option<PoolConfigMode> {
    cmdline.split_whitespace().rev().find_map(|word| match word.strip_prefix("cerana.zfs_config=")?.trim_matches('"') {
        "auto" => Some(PoolConfigMode::Auto),
        "manual" => Some(PoolConfigMode::Manual),
        _ => None,
    })
}

/// `zpool create` arguments for the auto layout of `disks`.
pub fn create_args(disks: &[String]) -> Option<Vec<String>> {
    let layout = PoolLayout::for_disks(disks.len())?;
    let mut args: Vec<String> = ["create", "-m", "/data", "-O", "compression=lz4", "-O", "atime=off", POOL]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    match layout {
        PoolLayout::Stripe => {}
        PoolLayout::Mirror => args.push("mirror".into()),
        PoolLayout::Raidz1 => args.push("raidz1".into()),
        PoolLayout::Raidz2 => args.push("raidz2".into()),
    }
    args.extend(disks.iter().cloned());
    Some(args)
}

/// What `zdb -l` says a device carries: the pool's name and the hostid that last used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub pool: String,
    pub hostid: Option<u64>,
    pub hostname: Option<String>,
}

pub fn parse_zdb_label(text: &str) -> Option<Label> {
    let field = |key: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().trim_matches('\'').to_owned()))
    };
    Some(Label {
        pool: field("name:")?,
        hostid: field("hostid:").and_then(|h| h.parse().ok()),
        hostname: field("hostname:"),
    })
}

/// A signature of other data in the first 68 KiB of a disk, if any.
pub fn foreign_signature(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(512, b"EFI PART") {
        return Some("a GPT partition table");
    }
    if at(510, &[0x55, 0xaa]) {
        return Some("an MBR partition table or boot sector");
    }
    if at(257, b"ustar") {
        return Some("a tar archive");
    }
    if at(1080, &[0x53, 0xef]) {
        return Some("an ext2/3/4 filesystem");
    }
    if at(0, b"XFSB") {
        return Some("an XFS filesystem");
    }
    if at(512, b"LABELONE") {
        return Some("an LVM physical volume");
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Some("swap space");
    }
    if at(32769, b"CD001") {
        return Some("an ISO 9660 filesystem");
    }
    if at(65600, b"_BHRfS_M") {
        return Some("a btrfs filesystem");
    }
    None
}

/// A whole disk as the kernel lists it in /sys/block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub device: PathBuf,
    pub size_bytes: u64,
    pub partitions: Vec<String>,
    pub serial: Option<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Writable, fixed, non-empty disks (virtio, SCSI/SATA, NVMe, Xen) under `sys_block`.
pub fn list_disks(sys_block: &Path, dev: &Path) -> Vec<Disk> {
    let Ok(entries) = std::fs::read_dir(sys_block) else { return Vec::new() };
    let mut disks: Vec<Disk> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind_ok = ["vd", "sd", "xvd", "nvme"].iter().any(|p| name.starts_with(p));
            let dir = entry.path();
            let flag = |f: &str| read_trimmed(&dir.join(f)).as_deref() == Some("1");
            if !kind_ok || flag("ro") || flag("removable") {
                return None;
            }
            let size_bytes = read_trimmed(&dir.join("size")).and_then(|s| s.parse::<u64>().ok())? * 512;
            if size_bytes == 0 {
                return None;
            }
            let mut partitions: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            partitions.sort();
            let serial = read_trimmed(&dir.join("serial"))
                .or_else(|| read_trimmed(&dir.join("device/serial")))
                .filter(|s| !s.is_empty());
            Some(Disk { device: dev.join(&name), name, size_bytes, partitions, serial })
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// The bootstrap's view of the machine: where sysfs, /dev and the command line are.
#[derive(Debug, Clone)]
pub struct Machine {
    pub sys_block: PathBuf,
    pub dev: PathBuf,
    pub cmdline: PathBuf,
    /// Where the pool's `logs` dataset is mounted.
    pub logs_dir: PathBuf,
    /// Where the report of the last bootstrap is kept for `zfs-pool-status`.
    pub report_file: PathBuf,
    /// OpenZFS's per-pool kstat directories: `<pool>/state` exists while the pool is imported.
    pub pool_kstats: PathBuf,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            sys_block: "/sys/block".into(),
            dev: "/dev".into(),
            cmdline: "/proc/cmdline".into(),
            logs_dir: "/data/logs".into(),
            report_file: "/run/cerana/zfs-bootstrap.json".into(),
            pool_kstats: "/proc/spl/kstat/zfs".into(),
        }
    }
}

fn strings<const N: usize>(fixed: [&str; N]) -> Vec<String> {
    fixed.iter().map(|s| (*s).to_owned()).collect()
}

/// Why a disk may not be used, if it may not.
async fn disk_in_use(runner: &dyn Runner, disk: &Disk) -> Option<String> {
    if disk.serial.as_deref() == Some(BOOT_IMAGE_SERIAL) {
        return Some("the cluster bootstrap's boot-image disk".into());
    }
    let devices =
        std::iter::once(disk.device.clone()).chain(disk.partitions.iter().map(|p| disk.device.with_file_name(p)));
    for device in devices {
        let out = runner.run("zdb", &["-l".into(), device.display().to_string()]).await.ok()?;
        if let Some(label) = parse_zdb_label(&out.stdout) {
            let host = match (&label.hostname, label.hostid) {
                (Some(name), Some(id)) => format!(" (last used by {name}, hostid {id:08x})"),
                (None, Some(id)) => format!(" (last used by hostid {id:08x})"),
                _ => String::new(),
            };
            return Some(format!("carries ZFS pool {:?} on {}{host}", label.pool, device.display()));
        }
    }
    if !disk.partitions.is_empty() {
        return Some(format!("has partitions ({})", disk.partitions.join(", ")));
    }
    let mut head = vec![0u8; 68 * 1024];
    let read = std::fs::File::open(&disk.device).and_then(|mut f| {
        let mut filled = 0;
        while filled < head.len() {
            match f.read(&mut head[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    });
    match read {
        Ok(n) => foreign_signature(&head[..n]).map(|what| format!("holds {what}")),
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

/// Imports the pool, or in `auto` mode creates it from the unused disks, then lays out its
/// datasets and this boot's log directory. Never fails: what went wrong is in the report.
pub async fn bootstrap(runner: &dyn Runner, machine: &Machine, mode: PoolConfigMode) -> BootstrapReport {
    let mut report = BootstrapReport { mode, action: "none".into(), disks: Vec::new(), problems: Vec::new() };
    let zpool = |a: Vec<String>| async move { checked(runner, "zpool", &a).await };
    // The provider restarted within this boot (its report is in /run, which every boot starts
    // empty) and the pool is still imported: the boot's bootstrap stands. Its report and boot
    // log are kept, and the provider serves again at once: the pool's kstat says it is
    // imported without running `zpool` (an exec that costs most of a restart under TCG).
    let earlier: Option<BootstrapReport> =
        std::fs::read(&machine.report_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let kstat_says_imported = machine.pool_kstats.join(POOL).join("state").exists();
    let already_imported = kstat_says_imported || zpool(strings(["list", "-H", "-o", "name", POOL])).await.is_ok();
    if let (true, Some(earlier)) = (already_imported, earlier) {
        tracing::info!("pool {POOL} is imported and was set up at boot; bootstrap skipped");
        return earlier;
    }
    let imported = if already_imported {
        report.action = "already-imported".into();
        true
    } else {
        match zpool(strings(["import", POOL])).await {
            Ok(_) => {
                report.action = "imported".into();
                true
            }
            Err(e) if e.message.contains("no such pool") => false,
            Err(e) => {
                report.problems.push(format!("pool {POOL:?} was found but not imported: {}", e.message));
                false
            }
        }
    };
    for disk in list_disks(&machine.sys_block, &machine.dev) {
        let in_use = disk_in_use(runner, &disk).await;
        report.disks.push(DiskReport {
            device: disk.device.display().to_string(),
            size_bytes: disk.size_bytes,
            in_use,
        });
    }
    let found_elsewhere = !report.problems.is_empty();
    let mut ready = imported;
    if !imported && !found_elsewhere {
        let free: Vec<String> = report.disks.iter().filter(|d| d.in_use.is_none()).map(|d| d.device.clone()).collect();
        match (mode, create_args(&free)) {
            (PoolConfigMode::Manual, _) => {
                report.problems.push(format!("no pool {POOL:?} found; cerana.zfs_config=manual: nothing is created"));
            }
            (PoolConfigMode::Auto, None) => {
                report.problems.push(format!("no pool {POOL:?} found and no unused disk to create it on"))
            }
            (PoolConfigMode::Auto, Some(args)) => match zpool(args).await {
                Ok(_) => {
                    report.action = "created".into();
                    ready = true;
                }
                Err(e) => report.problems.push(format!("creating pool {POOL:?} failed: {}", e.message)),
            },
        }
    }
    if ready {
        if let Err(e) = lay_out(runner).await {
            report.problems.push(format!("laying out {POOL}/*: {}", e.message));
        }
        if let Err(e) = start_boot_log(&machine.logs_dir, &report) {
            report.problems.push(format!("boot log directory under {}: {e}", machine.logs_dir.display()));
        }
    }
    for problem in &report.problems {
        tracing::warn!("pool bootstrap: {problem}");
    }
    tracing::info!(action = %report.action, "pool bootstrap done");
    if let Some(dir) = machine.report_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(json) = serde_json::to_vec_pretty(&report) {
        let _ = std::fs::write(&machine.report_file, json);
    }
    report
}

/// Creates the standard datasets that are missing and mounts everything.
async fn lay_out(runner: &dyn Runner) -> Result<(), ZfsError> {
    for child in LAYOUT_DATASETS {
        let name = format!("{POOL}/{child}");
        if checked(runner, "zfs", &strings(["list", "-H", "-o", "name", &name])).await.is_err() {
            checked(runner, "zfs", &strings(["create", &name])).await?;
        }
    }
    checked(runner, "zfs", &strings(["mount", "-a"])).await.map(|_| ())
}

/// A new numbered directory for this boot under `logs`, keeping the newest [`KEEP_BOOT_LOGS`];
/// `bootstrap.json` in it. Returns the directory.
pub fn start_boot_log(logs: &Path, report: &BootstrapReport) -> std::io::Result<PathBuf> {
    let mut boots: Vec<(u64, PathBuf)> = std::fs::read_dir(logs)?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix("boot-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    boots.sort();
    let next = boots.last().map_or(1, |(n, _)| n + 1);
    let dir = logs.join(format!("boot-{next:06}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bootstrap.json"), serde_json::to_vec_pretty(report).unwrap_or_default())?;
    let excess = (boots.len() + 1).saturating_sub(KEEP_BOOT_LOGS);
    for (_, old) in boots.iter().take(excess) {
        std::fs::remove_dir_all(old)?;
    }
    Ok(dir)
}

/// `zpool status -P` of one pool: its layout and disks.
pub fn parse_status_layout(text: &str) -> (Option<PoolLayout>, Vec<String>) {
    let mut layout = None;
    let mut disks = Vec::new();
    let mut in_config = false;
    for line in text.lines() {
        let word = line.split_whitespace().next().unwrap_or_default();
        if word == "NAME" {
            in_config = true;
            continue;
        }
        if !in_config {
            continue;
        }
        if word.is_empty() || word == "errors:" || matches!(word, "logs" | "cache" | "spares" | "special" | "dedup") {
            break;
        }
        if word.starts_with("raidz2") {
            layout = Some(PoolLayout::Raidz2);
        } else if word.starts_with("raidz") {
            layout = Some(PoolLayout::Raidz1);
        } else if word.starts_with("mirror") {
            layout = Some(PoolLayout::Mirror);
        } else if word.starts_with('/') {
            disks.push(word.to_owned());
        }
    }
    if layout.is_none() && !disks.is_empty() {
        layout = Some(PoolLayout::Stripe);
    }
    (layout, disks)
}

/// The pool's status, with the report of the last bootstrap when there is one.
pub async fn status(runner: &dyn Runner, machine: &Machine) -> PoolStatus {
    let bootstrap = std::fs::read(&machine.report_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut status = PoolStatus {
        imported: false,
        name: POOL.into(),
        health: None,
        layout: None,
        disks: Vec::new(),
        size_bytes: None,
        free_bytes: None,
        bootstrap,
    };
    let Ok(line) = checked(runner, "zpool", &strings(["list", "-Hp", "-o", "size,free,health", POOL])).await else {
        return status;
    };
    status.imported = true;
    let mut cols = line.trim().split('\t');
    status.size_bytes = cols.next().and_then(|s| s.parse().ok());
    status.free_bytes = cols.next().and_then(|s| s.parse().ok());
    status.health = cols.next().map(str::to_owned);
    if let Ok(text) = checked(runner, "zpool", &strings(["status", "-P", POOL])).await {
        (status.layout, status.disks) = parse_status_layout(&text);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    #[test]
    fn the_mode_comes_from_the_command_line() {
        assert_eq!(mode_from_cmdline("console=ttyS0 cerana.zfs_config=auto quiet"), Some(PoolConfigMode::Auto));
        assert_eq!(mode_from_cmdline("cerana.zfs_config=auto cerana.zfs_config=manual"), Some(PoolConfigMode::Manual));
        assert_eq!(mode_from_cmdline("cerana.zfs_config=\"manual\""), Some(PoolConfigMode::Manual));
        assert_eq!(mode_from_cmdline("cerana.zfs_config=maybe"), None);
        assert_eq!(mode_from_cmdline("console=ttyS0"), None);
    }

    #[test]
    fn the_auto_layout_follows_the_disk_count() {
        let disks = |n: usize| (0..n).map(|i| format!("/dev/vd{}", (b'a' + i as u8) as char)).collect::<Vec<_>>();
        assert_eq!(create_args(&[]), None);
        let one = create_args(&disks(1)).unwrap();
        assert_eq!(one.join(" "), "create -m /data -O compression=lz4 -O atime=off data /dev/vda");
        assert!(create_args(&disks(2)).unwrap().join(" ").ends_with("data mirror /dev/vda /dev/vdb"));
        for n in 3..=5 {
            let args = create_args(&disks(n)).unwrap();
            assert_eq!(args[8], "raidz1", "{n} disks");
            assert_eq!(args.len(), 9 + n);
        }
        assert_eq!(create_args(&disks(6)).unwrap()[8], "raidz2");
        assert!(!create_args(&disks(3)).unwrap().contains(&"-f".to_owned()), "never forces over existing labels");
    }

    #[test]
    fn zdb_labels_name_the_pool_and_host() {
        let text = "------------------------------------\nLABEL 0\n------------------------------------\n    version: 5000\n    name: 'data'\n    state: 0\n    txg: 40\n    pool_guid: 1234\n    errata: 0\n    hostid: 3735928559\n    hostname: 'cerana-deadbeef'\n";
        let label = parse_zdb_label(text).unwrap();
        assert_eq!(
            label,
            Label { pool: "data".into(), hostid: Some(0xdeadbeef), hostname: Some("cerana-deadbeef".into()) }
        );
        assert_eq!(parse_zdb_label("failed to unpack label 0\nfailed to unpack label 1\n"), None);
    }

    #[test]
    fn other_data_on_a_disk_is_recognised() {
        let mut head = vec![0u8; 68 * 1024];
        assert_eq!(foreign_signature(&head), None);
        head[257..262].copy_from_slice(b"ustar");
        assert_eq!(foreign_signature(&head), Some("a tar archive"));
        let mut gpt = vec![0u8; 1024];
        gpt[510] = 0x55;
        gpt[511] = 0xaa;
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(foreign_signature(&gpt), Some("a GPT partition table"));
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xef;
        assert_eq!(foreign_signature(&ext), Some("an ext2/3/4 filesystem"));
        assert_eq!(foreign_signature(&[]), None);
    }

    #[test]
    fn zpool_status_gives_layout_and_disks() {
        let raidz = "  pool: data\n state: ONLINE\nconfig:\n\n\tNAME           STATE     READ WRITE CKSUM\n\tdata           ONLINE       0     0     0\n\t  raidz1-0     ONLINE       0     0     0\n\t    /dev/vda1  ONLINE       0     0     0\n\t    /dev/vdb1  ONLINE       0     0     0\n\t    /dev/vdc1  ONLINE       0     0     0\n\nerrors: No known data errors\n";
        assert_eq!(
            parse_status_layout(raidz),
            (Some(PoolLayout::Raidz1), vec!["/dev/vda1".into(), "/dev/vdb1".into(), "/dev/vdc1".into()])
        );
        let stripe = "config:\n\n\tNAME         STATE     READ WRITE CKSUM\n\tdata         ONLINE       0     0     0\n\t  /dev/vda1  ONLINE       0     0     0\n\nerrors: No known data errors\n";
        assert_eq!(parse_status_layout(stripe), (Some(PoolLayout::Stripe), vec!["/dev/vda1".into()]));
        let mirror = "\tNAME\n\tdata\n\t  mirror-0\n\t    /dev/vda1\n\t    /dev/vdb1\n\tcache\n\t  /dev/vdc1\n";
        assert_eq!(parse_status_layout(mirror).0, Some(PoolLayout::Mirror));
        assert_eq!(parse_status_layout(mirror).1.len(), 2);
        assert_eq!(parse_status_layout("\tNAME\n\tdata\n\t  raidz2-0\n\t    /dev/a\n").0, Some(PoolLayout::Raidz2));
    }

    fn fake_disk(sys: &Path, name: &str, sectors: u64, extra: &[(&str, &str)]) {
        let dir = sys.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        for (file, content) in extra {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    #[test]
    fn disks_are_listed_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        fake_disk(sys, "vdb", 2048, &[("vdb1/partition", "1")]);
        fake_disk(sys, "vda", 4096, &[("serial", "cerana-boot\n")]);
        fake_disk(sys, "sr0", 100, &[]);
        fake_disk(sys, "loop0", 100, &[]);
        fake_disk(sys, "zd0", 100, &[]);
        fake_disk(sys, "vdc", 0, &[]);
        fake_disk(sys, "vdd", 100, &[("ro", "1")]);
        fake_disk(sys, "sda", 100, &[("removable", "1")]);
        fake_disk(sys, "nvme0n1", 8, &[]);
        let disks = list_disks(sys, Path::new("/dev"));
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vda", "vdb"]);
        assert_eq!(disks[1].serial.as_deref(), Some("cerana-boot"));
        assert_eq!(disks[1].size_bytes, 4096 * 512);
        assert_eq!(disks[2].partitions, ["vdb1"]);
        assert_eq!(disks[2].device, Path::new("/dev/vdb"));
    }

    fn machine(tmp: &Path) -> Machine {
        Machine {
            sys_block: tmp.join("sys"),
            dev: tmp.join("dev"),
            cmdline: tmp.join("cmdline"),
            logs_dir: tmp.join("logs"),
            report_file: tmp.join("run/report.json"),
            pool_kstats: tmp.join("kstat"),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn auto_creates_on_unused_disks_only_and_lays_out() {
        let tmp = tempfile::tempdir().unwrap();
        let m = machine(tmp.path());
        std::fs::create_dir_all(&m.dev).unwrap();
        std::fs::create_dir_all(&m.logs_dir).unwrap();
        for (name, content) in [("vda", vec![0u8; 70_000]), ("vdb", vec![0u8; 70_000]), ("vdc", vec![0u8; 70_000])] {
            fake_disk(&m.sys_block, name, 4096, &[]);
            std::fs::write(m.dev.join(name), content).unwrap();
        }
        // vdc carries another machine's pool.
        let vdc = m.dev.join("vdc").display().to_string();
        let r = ScriptedRunner::new()
            .reply("zpool list -H -o name data", false, "", "cannot open 'data': no such pool")
            .reply("zpool import data", false, "", "cannot import 'data': no such pool available")
            .reply(&format!("zdb -l {vdc}"), true, "    name: 'tank'\n    hostid: 16\n", "")
            .reply("zdb -l", false, "failed to unpack label 0\n", "")
            .reply("zpool create", true, "", "")
            .reply("zfs list", false, "", "dataset does not exist")
            .reply("zfs create", true, "", "")
            .reply("zfs mount -a", true, "", "");
        let report = block_on(bootstrap(&r, &m, PoolConfigMode::Auto));
        assert_eq!(report.action, "created", "{report:?}");
        assert!(report.disks[2].in_use.as_deref().unwrap().contains("\"tank\""), "{report:?}");
        let calls = r.calls();
        let create = calls.iter().find(|c| c.starts_with("zpool create")).unwrap();
        assert!(
            create.ends_with(&format!("data mirror {} {}", m.dev.join("vda").display(), m.dev.join("vdb").display())),
            "{create}"
        );
        for child in LAYOUT_DATASETS {
            assert!(calls.contains(&format!("zfs create data/{child}")), "{calls:?}");
        }
        assert!(m.logs_dir.join("boot-000001/bootstrap.json").exists());
        assert!(m.report_file.exists());
    }

    #[test]
    fn a_restart_within_the_boot_keeps_the_boot_time_bootstrap() {
        let tmp = tempfile::tempdir().unwrap();
        let m = machine(tmp.path());
        std::fs::create_dir_all(&m.dev).unwrap();
        std::fs::create_dir_all(&m.logs_dir).unwrap();
        fake_disk(&m.sys_block, "vda", 4096, &[]);
        std::fs::write(m.dev.join("vda"), vec![0u8; 70_000]).unwrap();
        let at_boot = ScriptedRunner::new()
            .reply("zpool list -H -o name data", false, "", "cannot open 'data': no such pool")
            .reply("zpool import data", true, "", "")
            .reply("zdb -l", true, "    name: 'data'\n", "")
            .reply("zfs list", true, "", "")
            .reply("zfs mount -a", true, "", "");
        let first = block_on(bootstrap(&at_boot, &m, PoolConfigMode::Auto));
        assert_eq!(first.action, "imported", "{first:?}");
        // Killed and started again: no command at all (the pool's kstat says it is imported),
        // the same report, no second boot log.
        std::fs::create_dir_all(m.pool_kstats.join("data")).unwrap();
        std::fs::write(m.pool_kstats.join("data/state"), "ONLINE\n").unwrap();
        let restarted = ScriptedRunner::new();
        let again = block_on(bootstrap(&restarted, &m, PoolConfigMode::Auto));
        assert_eq!(again, first);
        assert_eq!(restarted.calls(), Vec::<String>::new());
        assert!(!m.logs_dir.join("boot-000002").exists());
        // Without the kstat (another ZFS version), `zpool list` tells.
        std::fs::remove_dir_all(&m.pool_kstats).unwrap();
        let asked = ScriptedRunner::new().reply("zpool list -H -o name data", true, "data\n", "");
        assert_eq!(block_on(bootstrap(&asked, &m, PoolConfigMode::Auto)), first);
        assert_eq!(asked.calls(), ["zpool list -H -o name data"]);
        // A pool gone since (exported by hand) gets the whole bootstrap again.
        let gone = ScriptedRunner::new()
            .reply("zpool list -H -o name data", false, "", "cannot open 'data': no such pool")
            .reply("zpool import data", true, "", "")
            .reply("zdb -l", true, "    name: 'data'\n", "")
            .reply("zfs list", true, "", "")
            .reply("zfs mount -a", true, "", "");
        assert_eq!(block_on(bootstrap(&gone, &m, PoolConfigMode::Auto)).action, "imported");
        assert!(gone.calls().iter().any(|c| c == "zpool import data"));
    }

    #[test]
    fn a_foreign_pool_or_manual_mode_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let m = machine(tmp.path());
        std::fs::create_dir_all(&m.dev).unwrap();
        fake_disk(&m.sys_block, "vda", 4096, &[]);
        std::fs::write(m.dev.join("vda"), vec![0u8; 70_000]).unwrap();
        let foreign = ScriptedRunner::new()
            .reply("zpool list", false, "", "no such pool")
            .reply(
                "zpool import data",
                false,
                "",
                "cannot import 'data': pool was previously in use from another system.",
            )
            .reply("zdb -l", false, "", "");
        let report = block_on(bootstrap(&foreign, &m, PoolConfigMode::Auto));
        assert_eq!(report.action, "none");
        assert!(report.problems[0].contains("another system"), "{report:?}");
        assert!(!foreign.calls().iter().any(|c| c.starts_with("zpool create")));
        let manual = ScriptedRunner::new()
            .reply("zpool list", false, "", "no such pool")
            .reply("zpool import data", false, "", "cannot import 'data': no such pool available")
            .reply("zdb -l", false, "", "");
        let report = block_on(bootstrap(&manual, &m, PoolConfigMode::Manual));
        assert_eq!((report.action.as_str(), report.disks.len()), ("none", 1));
        assert!(report.disks[0].in_use.is_none());
        assert!(report.problems[0].contains("manual"), "{report:?}");
        assert!(!manual.calls().iter().any(|c| c.starts_with("zpool create")));
    }

    #[test]
    fn boot_logs_keep_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let report =
            BootstrapReport { mode: PoolConfigMode::Auto, action: "imported".into(), disks: vec![], problems: vec![] };
        for _ in 0..KEEP_BOOT_LOGS + 3 {
            start_boot_log(tmp.path(), &report).unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names.len(), KEEP_BOOT_LOGS);
        assert_eq!(names.first().unwrap(), "boot-000004");
        assert_eq!(names.last().unwrap(), &format!("boot-{:06}", KEEP_BOOT_LOGS + 3));
    }
}
