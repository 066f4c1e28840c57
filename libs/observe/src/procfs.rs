//! Parsers for the /proc files the metrics come from. Each takes the file's text, so tests feed
//! them fixtures; the metrics provider's `Source` reads the files.

use cerana_protocol::tasks::metrics::{CpuInfo, CpuTimes, DiskIo, InterfaceCounters, LoadAverage, RamUsage, SwapUsage};

/// A file's text did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct ParseError {
    pub what: String,
}

fn parse_error(what: impl Into<String>) -> ParseError {
    ParseError { what: what.into() }
}

fn number<T: std::str::FromStr>(field: &str, value: Option<&str>) -> Result<T, ParseError> {
    let value = value.ok_or_else(|| parse_error(format!("{field} is missing")))?;
    value.parse().map_err(|_| parse_error(format!("{field} is not a number: {value:?}")))
}

/// `/proc/stat`'s `cpu` lines in seconds (the first is the sum, "all"), and `btime`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub times: Vec<CpuTimes>,
    pub boot_time: u64,
}

pub fn parse_stat(text: &str, ticks_per_second: f64) -> Result<Stat, ParseError> {
    let mut times = Vec::new();
    let mut boot_time = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if key == "btime" {
            boot_time = Some(number("btime", fields.next())?);
        } else if let Some(which) = key.strip_prefix("cpu") {
            let cpu = if which.is_empty() { "all".to_owned() } else { key.to_owned() };
            let mut next = |mode: &str| -> Result<f64, ParseError> {
                // Older kernels stop before steal; absent columns are zero.
                match fields.next() {
                    None => Ok(0.0),
                    value => Ok(number::<u64>(&format!("{key} {mode}"), value)? as f64 / ticks_per_second),
                }
            };
            times.push(CpuTimes {
                user: next("user")?,
                nice: next("nice")?,
                system: next("system")?,
                idle: next("idle")?,
                iowait: next("iowait")?,
                irq: next("irq")?,
                softirq: next("softirq")?,
                steal: next("steal")?,
                cpu,
            });
        }
    }
    if times.first().is_none_or(|t| t.cpu != "all") {
        return Err(parse_error("the first line is not the cpu total"));
    }
    Ok(Stat { times, boot_time: boot_time.ok_or_else(|| parse_error("btime is missing"))? })
}

/// Model, logical CPU count and the first CPU's clock from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let logical_cpus = text.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count() as u32;
    CpuInfo {
        // x86 says "model name"; some arm64 kernels only "CPU part" or nothing.
        model: value("model name").or_else(|| value("Model")).unwrap_or_else(|| "unknown".into()),
        logical_cpus: logical_cpus.max(1),
        mhz: value("cpu MHz").and_then(|v| v.parse().ok()),
    }
}

pub fn parse_loadavg(text: &str) -> Result<LoadAverage, ParseError> {
    let mut fields = text.split_whitespace();
    Ok(LoadAverage {
        load_1m: number("1-minute load", fields.next())?,
        load_5m: number("5-minute load", fields.next())?,
        load_15m: number("15-minute load", fields.next())?,
    })
}

/// The first number of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    number("uptime", text.split_whitespace().next())
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn parse_meminfo(text: &str) -> Result<(RamUsage, SwapUsage), ParseError> {
    let field = |name: &str| -> Option<Result<u64, ParseError>> {
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        Some(number::<u64>(name, line.split_whitespace().nth(1)).map(|kib| kib * 1024))
    };
    let required = |name: &str| field(name).unwrap_or_else(|| Err(parse_error(format!("{name} is missing"))));
    let optional = |name: &str| field(name).unwrap_or(Ok(0));
    let total = required("MemTotal")?;
    let free = required("MemFree")?;
    // MemAvailable appeared in 3.14; before it, free + cache is the usual estimate.
    let buffers = optional("Buffers")?;
    let cached = optional("Cached")? + optional("SReclaimable")?;
    let available = field("MemAvailable").unwrap_or(Ok(free + buffers + cached))?;
    let swap_total = optional("SwapTotal")?;
    let swap_free = optional("SwapFree")?;
    let swap_used = swap_total.saturating_sub(swap_free);
    Ok((
        RamUsage {
            total_bytes: total,
            available_bytes: available,
            used_bytes: total.saturating_sub(free + buffers + cached),
            free_bytes: free,
            buffers_bytes: buffers,
            cached_bytes: cached,
            shared_bytes: optional("Shmem")?,
            used_percent: percent(total.saturating_sub(available), total),
        },
        SwapUsage {
            total_bytes: swap_total,
            free_bytes: swap_free,
            used_bytes: swap_used,
            used_percent: percent(swap_used, swap_total),
        },
    ))
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub read_only: bool,
}

/// The kernel writes space, tab, newline and backslash in mount fields as `\ooo`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mounts(text: &str) -> Result<Vec<Mount>, ParseError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [device, mountpoint, fstype, options, ..] = fields[..] else {
                return Err(parse_error(format!("mount line {line:?} has fewer than 4 fields")));
            };
            Ok(Mount {
                device: unescape_mount_field(device),
                mountpoint: unescape_mount_field(mountpoint),
                fstype: fstype.to_owned(),
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Filesystems that hold no data of their own; `metrics-disk` leaves them out unless asked.
pub fn is_pseudo_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "cgroup"
            | "cgroup2"
            | "devpts"
            | "devtmpfs"
            | "securityfs"
            | "debugfs"
            | "tracefs"
            | "pstore"
            | "bpf"
            | "mqueue"
            | "hugetlbfs"
            | "configfs"
            | "fusectl"
            | "binfmt_misc"
            | "autofs"
            | "nsfs"
            | "efivarfs"
            | "rpc_pipefs"
            | "selinuxfs"
            | "ramfs"
            | "overlay_internal"
    )
}

/// `/proc/diskstats`, leaving out devices that never did any I/O (unused loop and ram devices).
pub fn parse_diskstats(text: &str) -> Result<Vec<DiskIo>, ParseError> {
    const SECTOR: u64 = 512;
    let mut devices = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 14 {
            return Err(parse_error(format!("diskstats line {line:?} has fewer than 14 fields")));
        }
        let device = fields[2];
        let at = |i: usize, what: &str| number::<u64>(&format!("{device} {what}"), fields.get(i).copied());
        let io = DiskIo {
            device: device.to_owned(),
            reads: at(3, "reads")?,
            read_bytes: at(5, "sectors read")? * SECTOR,
            read_time_ms: at(6, "read time")?,
            writes: at(7, "writes")?,
            written_bytes: at(9, "sectors written")? * SECTOR,
            write_time_ms: at(10, "write time")?,
            in_progress: at(11, "I/Os in progress")?,
            io_time_ms: at(12, "I/O time")?,
        };
        if io.reads + io.writes + io.in_progress > 0 {
            devices.push(io);
        }
    }
    Ok(devices)
}

/// `/proc/net/dev`: counters by interface name.
pub fn parse_net_dev(text: &str) -> Result<Vec<(String, InterfaceCounters)>, ParseError> {
    let mut out = Vec::new();
    // Two header lines; the name ends at its colon, and large counters may touch it.
    for line in text.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let (name, counters) =
            line.split_once(':').ok_or_else(|| parse_error(format!("net/dev line {line:?} has no interface name")))?;
        let name = name.trim();
        let fields: Vec<&str> = counters.split_whitespace().collect();
        if fields.len() < 16 {
            return Err(parse_error(format!("net/dev line for {name} has fewer than 16 counters")));
        }
        let at = |i: usize| number::<u64>(&format!("{name} counter {i}"), Some(fields[i]));
        out.push((
            name.to_owned(),
            InterfaceCounters {
                rx_bytes: at(0)?,
                rx_packets: at(1)?,
                rx_errors: at(2)?,
                rx_dropped: at(3)?,
                tx_bytes: at(8)?,
                tx_packets: at(9)?,
                tx_errors: at(10)?,
                tx_dropped: at(11)?,
            },
        ));
    }
    Ok(out)
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// R, S, D, Z, T, ...
    pub state: char,
    pub user_ticks: u64,
    pub system_ticks: u64,
    pub threads: u64,
    /// Clock ticks after boot at which it started.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl ProcessStat {
    pub fn cpu_seconds(&self, ticks_per_second: f64) -> f64 {
        (self.user_ticks + self.system_ticks) as f64 / ticks_per_second
    }

    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

pub fn parse_process_stat(text: &str) -> Result<ProcessStat, ParseError> {
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let rest =
        text.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| parse_error("no ')' after the command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, numbered as in proc(5) minus 3: state is field 3.
    let at = |n: usize, what: &str| number::<u64>(what, fields.get(n - 3).copied());
    Ok(ProcessStat {
        state: fields.first().and_then(|s| s.chars().next()).ok_or_else(|| parse_error("state is missing"))?,
        user_ticks: at(14, "utime")?,
        system_ticks: at(15, "stime")?,
        threads: at(20, "num_threads")?,
        start_ticks: at(22, "starttime")?,
        rss_pages: at(24, "rss")?,
    })
}

/// `key value` lines (cgroup `cpu.stat`, `memory.events`): the value of `key`.
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        (fields.next() == Some(key)).then(|| fields.next()?.parse().ok()).flatten()
    })
}

/// Read and written bytes summed over the devices of a cgroup's `io.stat`.
pub fn parse_io_stat(text: &str) -> (u64, u64) {
    let mut read = 0;
    let mut written = 0;
    for pair in text.split_whitespace() {
        if let Some(v) = pair.strip_prefix("rbytes=").and_then(|v| v.parse::<u64>().ok()) {
            read += v;
        } else if let Some(v) = pair.strip_prefix("wbytes=").and_then(|v| v.parse::<u64>().ok()) {
            written += v;
        }
    }
    (read, written)
}

/// A cgroup limit file (`memory.max`, `pids.max`): "max" is no limit.
pub fn parse_limit(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        value => number("limit", Some(value)).map(Some),
    }
}

/// `KEY=value` lines of /etc/os-release; quotes removed.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  1000 20 300 40000 50 0 6 7 0 0\n\
                        cpu0 600 10 200 20000 25 0 3 4 0 0\n\
                        cpu1 400 10 100 20000 25 0 3 3 0 0\n\
                        intr 123 4 5\nctxt 999\nbtime 1700000000\nprocesses 4242\n";

    #[test]
    fn stat_gives_seconds_per_mode_and_boot_time() {
        let stat = parse_stat(STAT, 100.0).unwrap();
        assert_eq!(stat.boot_time, 1_700_000_000);
        assert_eq!(stat.times.len(), 3);
        assert_eq!(stat.times[0].cpu, "all");
        assert_eq!(stat.times[0].user, 10.0);
        assert_eq!(stat.times[0].idle, 400.0);
        assert_eq!(stat.times[2].cpu, "cpu1");
        assert_eq!(stat.times[2].steal, 0.03);
        // An old kernel without the steal column.
        let old = parse_stat("cpu 1 2 3 4 5 6 7\nbtime 5\n", 100.0).unwrap();
        assert_eq!(old.times[0].steal, 0.0);
        assert!(parse_stat("cpu 1 x 3\nbtime 5\n", 100.0).unwrap_err().what.contains("cpu nice"));
        assert!(parse_stat("cpu 1 2 3\n", 100.0).unwrap_err().what.contains("btime"));
        assert!(parse_stat("", 100.0).is_err());
    }

    #[test]
    fn cpuinfo_loadavg_and_uptime() {
        let info = parse_cpuinfo("processor\t: 0\nmodel name\t: Test CPU @ 2GHz\ncpu MHz\t\t: 1999.5\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 2GHz\n");
        assert_eq!(info, CpuInfo { model: "Test CPU @ 2GHz".into(), logical_cpus: 2, mhz: Some(1999.5) });
        assert_eq!(parse_cpuinfo("").logical_cpus, 1);
        assert_eq!(parse_loadavg("0.50 0.25 0.10 2/345 6789\n").unwrap().load_15m, 0.10);
        assert!(parse_loadavg("0.5 zero").is_err());
        assert_eq!(parse_uptime("350735.47 234388.90\n").unwrap(), 350735.47);
        assert!(parse_uptime("").is_err());
    }

    #[test]
    fn meminfo_gives_bytes_and_percentages() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\nBuffers:          50 kB\n\
                    Cached:          300 kB\nSwapCached:        0 kB\nShmem:            20 kB\nSReclaimable:     50 kB\n\
                    SwapTotal:       200 kB\nSwapFree:        150 kB\n";
        let (ram, swap) = parse_meminfo(text).unwrap();
        assert_eq!(ram.total_bytes, 1_024_000);
        assert_eq!(ram.cached_bytes, 350 * 1024);
        assert_eq!(ram.used_bytes, 500 * 1024);
        assert_eq!(ram.shared_bytes, 20 * 1024);
        assert_eq!(ram.used_percent, 40.0);
        assert_eq!(swap.used_bytes, 50 * 1024);
        assert_eq!(swap.used_percent, 25.0);
        let (ram, swap) = parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nCached: 20 kB\n").unwrap();
        assert_eq!(ram.available_bytes, 30 * 1024, "estimated without MemAvailable");
        assert_eq!(swap.used_percent, 0.0);
        assert!(parse_meminfo("MemFree: 1 kB\n").unwrap_err().what.contains("MemTotal is missing"));
        assert!(parse_meminfo("MemTotal: lots kB\nMemFree: 1 kB\n").unwrap_err().what.contains("not a number"));
    }

    #[test]
    fn mounts_are_unescaped_and_pseudo_filesystems_known() {
        let text =
            "rootfs / rootfs rw 0 0\n/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0\nproc /proc proc rw,nosuid 0 0\n";
        let mounts = parse_mounts(text).unwrap();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].mountpoint, "/mnt/my disk");
        assert!(mounts[1].read_only);
        assert!(!mounts[0].read_only);
        assert!(is_pseudo_fs(&mounts[2].fstype));
        assert!(!is_pseudo_fs("tmpfs") && !is_pseudo_fs("zfs"));
        assert_eq!(unescape_mount_field("a\\134b\\011c\\9"), "a\\b\tc\\9");
        assert!(parse_mounts("/dev/sda1 /mnt\n").is_err());
    }

    #[test]
    fn diskstats_skip_idle_devices_and_count_bytes() {
        let text = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
                    253       0 vda 1000 5 8000 400 200 3 1600 90 1 300 490 0 0 0 0 0 0\n";
        let io = parse_diskstats(text).unwrap();
        assert_eq!(io.len(), 1);
        assert_eq!(io[0].device, "vda");
        assert_eq!(io[0].read_bytes, 8000 * 512);
        assert_eq!(io[0].written_bytes, 1600 * 512);
        assert_eq!(io[0].io_time_ms, 300);
        assert_eq!(io[0].in_progress, 1);
        assert!(parse_diskstats("8 0 sda 1 2 3\n").is_err());
    }

    #[test]
    fn net_dev_counters_even_when_they_touch_the_name() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:  315447    3248    0    0    0     0          0         0   315447    3248    0    0    0     0       0          0\n  \
                    eth0:12345678901 10 1 2 0 0 0 0 999 9 3 4 0 0 0 0\n";
        let counters = parse_net_dev(text).unwrap();
        assert_eq!(counters.len(), 2);
        assert_eq!(counters[0].0, "lo");
        assert_eq!(counters[0].1.rx_bytes, 315447);
        assert_eq!(
            counters[1].1,
            InterfaceCounters {
                rx_bytes: 12345678901,
                rx_packets: 10,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 999,
                tx_packets: 9,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
        assert!(parse_net_dev("h\nh\neth0 1 2 3\n").is_err());
        assert!(parse_net_dev("h\nh\neth0: 1 2 3\n").is_err());
    }

    #[test]
    fn process_stat_survives_odd_command_names() {
        let text = "5732 (my (odd) prog) S 5727 5727 23270 0 -1 4194304 101 0 0 0 250 50 0 0 20 0 3 0 1145170 3133440 416 18446744073709551615 0\n";
        let stat = parse_process_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.user_ticks, 250);
        assert_eq!(stat.system_ticks, 50);
        assert_eq!(stat.threads, 3);
        assert_eq!(stat.start_ticks, 1145170);
        assert_eq!(stat.rss_pages, 416);
        assert_eq!(stat.cpu_seconds(100.0), 3.0);
        assert!(!stat.is_zombie());
        assert!(parse_process_stat("5732 (x) Z 1 2").is_err());
        assert!(parse_process_stat("garbage").is_err());
    }

    #[test]
    fn cgroup_files() {
        assert_eq!(
            keyed_value("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n", "user_usec"),
            Some(1_000_000)
        );
        assert_eq!(keyed_value("low 0\noom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(keyed_value("oom 1\n", "oom_kill"), None);
        assert_eq!(
            parse_io_stat("8:0 rbytes=100 wbytes=50 rios=1 wios=1\n253:0 rbytes=1 wbytes=2 dbytes=0\n"),
            (101, 52)
        );
        assert_eq!(parse_limit("max\n").unwrap(), None);
        assert_eq!(parse_limit("1048576\n").unwrap(), Some(1_048_576));
        assert!(parse_limit("lots").is_err());
        assert_eq!(
            os_release_value("NAME=x\nPRETTY_NAME=\"CeranaOS 0.1\"\n", "PRETTY_NAME").as_deref(),
            Some("CeranaOS 0.1")
        );
        assert_eq!(os_release_value("NAME=x\n", "PRETTY_NAME"), None);
    }
}
