//! A lab for the bootserver: two network namespaces joined by a veth pair, the server binary
//! running in one, clients in the other. Everything is torn down in Drop, even when a test
//! fails; nothing touches the machine's own interfaces.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    if !cerana_testbed::require::is_root() {
        return Some("needs root (network namespaces)".into());
    }
    cerana_testbed::require::missing_program(&[&["ip"], tools].concat())
}

/// Returns early from a test when the lab cannot run: it fails under `make test`, saying why,
/// and skips elsewhere (`cerana_testbed::require`).
#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        cerana_testbed::require!(common::skip_reason(&[$($tool),*]));
    };
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

pub fn must(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Polls `check` every 100 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two namespaces and a veth pair between them.
pub struct Lab {
    pub srv: String,
    pub cli: String,
    pub srv_if: String,
    pub cli_if: String,
    pub dir: tempfile::TempDir,
    server: Option<Child>,
    extra_children: Vec<Child>,
}

impl Lab {
    /// `client_ip`: give the client end 10.77.0.2/24 (relay and proxy tests) or leave it bare (DHCP clients).
    pub fn new(client_ip: bool) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let lab = Lab {
            srv: format!("cbs-{pid}-{n}-srv"),
            cli: format!("cbs-{pid}-{n}-cli"),
            srv_if: format!("bs{pid}x{n}s"),
            cli_if: format!("bs{pid}x{n}c"),
            dir: tempfile::tempdir().expect("tempdir"),
            server: None,
            extra_children: Vec::new(),
        };
        must(&["ip", "netns", "add", &lab.srv]);
        must(&["ip", "netns", "add", &lab.cli]);
        must(&[
            "ip",
            "link",
            "add",
            &lab.srv_if,
            "netns",
            &lab.srv,
            "type",
            "veth",
            "peer",
            "name",
            &lab.cli_if,
            "netns",
            &lab.cli,
        ]);
        for (ns, ifname) in [(&lab.srv, &lab.srv_if), (&lab.cli, &lab.cli_if)] {
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            // No duplicate address detection: link-local addresses (router advertisements) at once.
            run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{ifname}.accept_dad=0")]);
        }
        must(&["ip", "-n", &lab.srv, "addr", "add", &format!("{SERVER_IP}/24"), "dev", &lab.srv_if]);
        if client_ip {
            must(&["ip", "-n", &lab.cli, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", &lab.cli_if]);
        }
        must(&["ip", "-n", &lab.srv, "link", "set", &lab.srv_if, "up"]);
        must(&["ip", "-n", &lab.cli, "link", "set", &lab.cli_if, "up"]);
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the TFTP root (a fake loader plus a symlink pointing out of it) and two image
    /// files; returns the config text with `extra` appended.
    pub fn config(&self, dhcp: &str, extra: &str) -> String {
        let tftp = self.path("tftp");
        std::fs::create_dir_all(tftp.join("efi")).unwrap();
        std::fs::write(tftp.join("undionly.kpxe"), pattern(70_001)).unwrap();
        std::fs::write(tftp.join("efi/snponly.efi"), pattern(3000)).unwrap();
        std::fs::write(self.path("secret"), b"outside the root").unwrap();
        let _ = std::os::unix::fs::symlink("../secret", tftp.join("escape"));
        std::fs::write(self.path("vmlinuz"), pattern(100_000)).unwrap();
        std::fs::write(self.path("initrd"), pattern(1_000_003)).unwrap();
        format!(
            r#"interface = "{iface}"
tftp_root = "{tftp}"
state_dir = "{state}"
[dhcp]
{dhcp}
[boot]
cluster_ips = ["10.77.0.1", "10.77.0.9"]
[images.cerana]
kernel = "{dir}/vmlinuz"
initrd = "{dir}/initrd"
cmdline = "cerana.zfs_config=auto"
[http_limits]
header_timeout_secs = 2
body_timeout_secs = 2
max_body_bytes = 1024
{extra}"#,
            iface = self.srv_if,
            tftp = tftp.display(),
            state = self.path("state").display(),
            dir = self.dir.path().display(),
        )
    }

    /// Starts the server binary inside the server namespace and waits for `/health`.
    pub fn start_server(&mut self, config: &str) {
        self.start_server_with(config, &[]);
    }

    /// [`Lab::start_server`] with more arguments for the server (e.g. `--coordinator`).
    pub fn start_server_with(&mut self, config: &str, args: &[&str]) {
        let cfg = self.path("bootserver.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = File::create(self.path("server.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv, env!("CARGO_BIN_EXE_cerana-bootserver"), "--config"])
            .arg(&cfg)
            .args(["--log", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cerana-bootserver");
        self.server = Some(child);
        let up = wait_for(Duration::from_secs(15), || {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                panic!("bootserver exited with {status}:\n{}", self.server_log());
            }
            self.curl_from_server(&["-sf", "--max-time", "1", &format!("http://{SERVER_IP}/health")])
                .status
                .success()
                .then_some(())
        });
        assert!(up.is_some(), "bootserver did not come up:\n{}", self.server_log());
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    /// Runs a command in the client namespace.
    pub fn in_client(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.cli];
        full.extend_from_slice(args);
        run(&full)
    }

    pub fn curl(&self, args: &[&str]) -> Output {
        let mut full = vec!["curl"];
        full.extend_from_slice(args);
        self.in_client(&full)
    }

    /// curl inside the server namespace (works before the client has an address).
    pub fn curl_from_server(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.srv, "curl"];
        full.extend_from_slice(args);
        run(&full)
    }

    /// GET from the server as text (from inside the server namespace).
    pub fn get(&self, path: &str) -> String {
        let out = self.curl_from_server(&["-sS", "--max-time", "5", &format!("http://{SERVER_IP}{path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let text = self.get(path);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// Keeps a child (killed in Drop).
    pub fn adopt(&mut self, child: Child) -> &mut Child {
        self.extra_children.push(child);
        self.extra_children.last_mut().unwrap()
    }

    /// Runs `f` on a thread that has entered the client namespace (sockets it opens stay there).
    pub fn with_client_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_and_run(&self.cli, f)
    }

    pub fn with_server_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_and_run(&self.srv, f)
    }
}

fn enter_and_run<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(format!("/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.extra_children.iter_mut().chain(self.server.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- bootserver log ({}) ---\n{}", self.srv, self.server_log());
        }
        let _ = run(&["ip", "netns", "del", &self.srv]);
        let _ = run(&["ip", "netns", "del", &self.cli]);
    }
}

/// Deterministic non-repeating-ish content.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) % 256) as u8).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A UDP socket on `iface` in the current thread's namespace.
pub fn udp(iface: &str, bind: SocketAddrV4) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(iface.as_bytes())).unwrap();
    s.bind(&SocketAddr::V4(bind).into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// Receives datagrams for up to `limit` and returns the first one `accept` takes.
pub fn recv_matching<T>(
    s: &UdpSocket,
    limit: Duration,
    mut accept: impl FnMut(&[u8], SocketAddr) -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if let Some(v) = accept(&buf[..n], from) {
                return Some(v);
            }
        }
    }
    None
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}
