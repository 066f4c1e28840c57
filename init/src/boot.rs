//! Early boot on a machine (PID 1): mounts, console, loopback, node identity, the API token,
//! and the last steps of a shutdown (sync, unmount, reboot(2)).
//!
//! Every step reports its failure and the boot goes on: a missing cgroup2 or a read-only /etc
//! must not stop a node.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::cmdline::{ApiToken, Hostname};

struct MountSpec {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const fn m(target: &'static str, fstype: &'static str, flags: MsFlags, data: &'static str) -> MountSpec {
    MountSpec { target, fstype, flags, data }
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Mounts the basic filesystems in order: devtmpfs first (a static binary reads
/// /dev/urandom early, and the console lives there). Returns one message per failed step.
pub fn mount_basics() -> Vec<String> {
    let mounts = [
        m("/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
        m("/proc", "proc", nosuid_nodev_noexec(), ""),
        m("/sys", "sysfs", nosuid_nodev_noexec(), ""),
        m("/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"),
        m("/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777"),
        m("/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0755"),
        m("/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777"),
        m("/sys/fs/cgroup", "cgroup2", nosuid_nodev_noexec(), "nsdelegate"),
    ];
    let mut problems = Vec::new();
    for spec in mounts {
        if let Err(e) = fs::create_dir_all(spec.target) {
            problems.push(format!("mkdir {}: {e}", spec.target));
            continue;
        }
        let data = (!spec.data.is_empty()).then_some(spec.data);
        match mount(Some(spec.fstype), spec.target, Some(spec.fstype), spec.flags, data) {
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => problems.push(format!("mount {} on {}: {e}", spec.fstype, spec.target)),
        }
    }
    // Shared, as systemd leaves it: a container started on this node gets a slave copy of every
    // mount (the root is the initramfs, so its runtime cannot pivot_root away from them), and an
    // unmount here then reaches its copy too. Private, a later container kept every earlier
    // container's ZFS clone mounted and `zfs destroy` found it busy until that container ended.
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SHARED, None::<&str>) {
        problems.push(format!("making / shared: {e}"));
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        match symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => problems.push(format!("symlink {link}: {e}")),
        }
    }
    problems
}

/// The console device a machine uses unless told otherwise.
pub const CONSOLE: &str = "/dev/console";

/// Opens the console (a device, or a file that is appended to) without making it init's
/// controlling terminal.
pub fn open_console(path: &Path) -> io::Result<File> {
    let is_file = fs::metadata(path).map(|m| m.is_file()).unwrap_or(true);
    OpenOptions::new().read(true).write(true).append(is_file).create(is_file).custom_flags(libc::O_NOCTTY).open(path)
}

/// The terminal behind /dev/console (the last of /sys/class/tty/console/active, e.g.
/// /dev/ttyS0). /dev/console itself cannot be a controlling terminal, so an interactive shell
/// gets this one to have job control.
pub fn console_tty(active: &str) -> Option<PathBuf> {
    let name = active.split_whitespace().last()?;
    let valid = name.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then(|| Path::new("/dev").join(name))
}

/// Opens the console and makes it init's stdin, stdout and stderr.
pub fn take_console(path: &Path) -> io::Result<File> {
    let console = open_console(path)?;
    for fd in 0..=2 {
        nix::unistd::dup2(console.as_raw_fd(), fd)?;
    }
    Ok(console)
}

/// Makes sure fds 0-2 are open (the kernel starts init without them when the initramfs has no
/// /dev/console), so no file init opens later lands on them.
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// The node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 32 lower-case hex digits (/etc/machine-id).
    pub machine_id: String,
    /// The ZFS/glibc host id (/etc/hostid), the first 4 bytes of the machine id.
    pub hostid: u32,
    pub hostname: String,
    /// Where the machine id came from, for the console.
    pub source: &'static str,
}

/// A machine id from the SMBIOS product UUID: its 32 hex digits. UUIDs firmware uses as "not
/// set" (all zeros, all ones) are refused.
pub fn machine_id_from_uuid(uuid: &str) -> Option<String> {
    let hex: String = uuid.trim().chars().filter(|c| *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    let valid = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let placeholder = hex.bytes().all(|b| b == b'0') || hex.bytes().all(|b| b == b'f');
    (valid && !placeholder).then_some(hex)
}

impl Identity {
    /// Derives the identity. `product_uuid` is /sys/class/dmi/id/product_uuid; without a usable
    /// one the id comes from `random` (and is not stable across boots).
    pub fn derive(product_uuid: Option<&str>, hostname: Option<&Hostname>, random: [u8; 16]) -> Self {
        let (machine_id, source) = match product_uuid.and_then(machine_id_from_uuid) {
            Some(id) => (id, "the SMBIOS product uuid"),
            None => (
                random.iter().map(|b| format!("{b:02x}")).collect(),
                "random bytes: no SMBIOS product uuid, so not stable across boots",
            ),
        };
        let hostid = u32::from_str_radix(&machine_id[..8], 16).unwrap_or(0);
        let hostname =
            hostname.map(|h| h.as_str().to_string()).unwrap_or_else(|| format!("cerana-{}", &machine_id[..8]));
        Self { machine_id, hostid, hostname, source }
    }

    /// Writes etc/machine-id, etc/hostid (4 bytes, host byte order, as `sethostid` does) and
    /// etc/hostname under `root`.
    pub fn write_files(&self, root: &Path) -> io::Result<()> {
        let etc = root.join("etc");
        fs::create_dir_all(&etc)?;
        write_file(&etc.join("machine-id"), format!("{}\n", self.machine_id).as_bytes(), 0o444)?;
        write_file(&etc.join("hostid"), &self.hostid.to_ne_bytes(), 0o644)?;
        write_file(&etc.join("hostname"), format!("{}\n", self.hostname).as_bytes(), 0o644)
    }
}

/// Reads the SMBIOS product UUID, when the firmware has one.
pub fn read_product_uuid() -> Option<String> {
    fs::read_to_string("/sys/class/dmi/id/product_uuid").ok()
}

/// 16 bytes from the kernel's random pool.
pub fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(data)?;
    // The umask may have narrowed the mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Writes the API token to `<run_dir>/api-token`, mode 0600, for the coordinator.
pub fn write_api_token(run_dir: &Path, token: &ApiToken) -> io::Result<()> {
    fs::create_dir_all(run_dir)?;
    write_file(&run_dir.join("api-token"), format!("{}\n", token.expose()).as_bytes(), 0o600)
}

/// Mount points from /proc/mounts, in mount order.
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| p.replace("\\040", " "))
        .collect()
}

/// Syncs, then unmounts everything but / and /dev in reverse mount order; /dev and what stays
/// busy are remounted read-only. Returns the mount points that could not be unmounted.
pub fn unmount_all() -> Vec<String> {
    fn remount_read_only(point: &str) {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        let _ = mount(None::<&str>, point, None::<&str>, flags, None::<&str>);
    }
    nix::unistd::sync();
    let mut left = Vec::new();
    for point in mount_points().into_iter().rev() {
        match point.as_str() {
            "/" => {}
            // Init's own console stays open on /dev until reboot(2).
            "/dev" => remount_read_only(&point),
            _ if umount2(point.as_str(), MntFlags::empty()).is_ok() => {}
            _ => {
                remount_read_only(&point);
                left.push(point);
            }
        }
    }
    nix::unistd::sync();
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tty_is_the_last_active_console() {
        assert_eq!(console_tty("tty0 ttyS0\n"), Some(PathBuf::from("/dev/ttyS0")));
        assert_eq!(console_tty("hvc0"), Some(PathBuf::from("/dev/hvc0")));
        assert_eq!(console_tty(""), None);
        assert_eq!(console_tty("../etc/passwd"), None);
    }

    #[test]
    fn machine_id_is_the_uuid_and_stable() {
        let uuid = "4C4C4544-0042-3510-8056-B4C04F565931\n";
        let a = Identity::derive(Some(uuid), None, [1; 16]);
        let b = Identity::derive(Some(uuid), None, [2; 16]);
        assert_eq!(a, b, "the same machine gets the same identity on every boot");
        assert_eq!(a.machine_id, "4c4c4544004235108056b4c04f565931");
        assert_eq!(a.hostid, 0x4c4c4544);
        assert_eq!(a.hostname, "cerana-4c4c4544");
        let named: Hostname = "node7".parse().unwrap();
        assert_eq!(Identity::derive(Some(uuid), Some(&named), [0; 16]).hostname, "node7");
    }

    #[test]
    fn placeholder_or_garbage_uuids_fall_back_to_random() {
        for bad in ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "not a uuid", ""] {
            let id = Identity::derive(Some(bad), None, [0xab; 16]);
            assert_eq!(id.machine_id, "ab".repeat(16), "{bad}");
            assert!(id.source.starts_with("random"));
        }
    }

    #[test]
    fn identity_files_and_token_have_the_right_bytes_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::derive(Some("12345678-9abc-def0-1234-56789abcdef0"), None, [0; 16]);
        id.write_files(dir.path()).unwrap();
        let hostid = fs::read(dir.path().join("etc/hostid")).unwrap();
        assert_eq!(hostid, 0x12345678u32.to_ne_bytes());
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/machine-id")).unwrap(),
            "123456789abcdef0123456789abcdef0\n"
        );
        // Rewriting (a second boot over the same files) works.
        id.write_files(dir.path()).unwrap();
        let token: ApiToken = "0123456789abcdef0123".parse().unwrap();
        let run = dir.path().join("run/cerana");
        write_api_token(&run, &token).unwrap();
        let meta = fs::metadata(run.join("api-token")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(run.join("api-token")).unwrap(), "0123456789abcdef0123\n");
    }
}
