//! A QEMU cluster of CeranaOS nodes (`make cluster`): a network namespace holding a bridge and
//! one tap per VM, plus a veth whose host end gets `<subnet>.1` so the host reaches the nodes.
//! Node 1 boots the image directly with `cerana.cluster_bootstrap` and a small virtio disk
//! (serial `cerana-boot`, a plain tar of vmlinuz and initrd.img) from which its bootserver
//! serves the same image; nodes 2..N boot from the network (BIOS: the NIC's iPXE ROM; UEFI:
//! OVMF's PXE, then snponly.efi). Every QEMU is daemonised with a pidfile in the state dir,
//! so the cluster outlives the command; [`Cluster::down`] ends it from that directory alone.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::TlsClient;

use crate::qemu::{require_file, Firmware, QemuCommand, OVMF_BIOS, QEMU_SYSTEM};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("node {node} not ready within {secs} s; its console (last lines):\n{tail}")]
    NotReady { node: usize, secs: u64, tail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Io(what, e)
}

/// Runs a command, failing with its stderr.
fn run(args: &[&str]) -> Result<String, ClusterError> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(io(args[0]))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            what: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How one cluster is laid out; two layouts with different names and subnets can run at once.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Network namespace; the bridge `br0` and taps `tap1..` live in it.
    pub netns: String,
    /// The veth's host end (the other end is on the bridge).
    pub host_if: String,
    /// First three octets of the /24: host `.1`, node 1 `.2`, leases `.100`-`.249`.
    pub subnet: String,
    pub nodes: usize,
    /// Nodes (1-based, never 1) that PXE-boot on UEFI (OVMF) rather than BIOS.
    pub uefi_nodes: Vec<usize>,
    pub memory_mb: u32,
    /// Size of each node's data disk (0: none). With disks, node 1 boots with
    /// `cerana.zfs_config=auto` and its bootserver passes that on, so every node makes (or, on a
    /// later `make cluster`, imports) its pool `data` on it. The disk files stay in the state
    /// dir across `cluster-down`: a node's datasets outlive its RAM-resident system.
    pub data_disk_mb: u64,
    pub image_dir: PathBuf,
    pub state_dir: PathBuf,
    /// More `cerana.*` settings for node 1, which its bootserver passes on where it does
    /// (`cerana.etcd_members`, `cerana.etcd_grace`).
    pub bootstrap_args: Vec<String>,
}

impl Layout {
    pub fn mac(&self, node: usize) -> String {
        format!("52:54:00:c1:00:{node:02x}")
    }
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }
    pub fn bootstrap_ip(&self) -> String {
        format!("{}.2", self.subnet)
    }
    pub fn console(&self, node: usize) -> PathBuf {
        self.state_dir.join(format!("node{node}.log"))
    }
    fn pidfile(&self, node: usize) -> PathBuf {
        self.state_dir.join(format!("node{node}.pid"))
    }
    pub fn token_file(&self) -> PathBuf {
        self.state_dir.join("api-token")
    }
    /// The admin credential that works on every node (a scoped token minted on node 1).
    pub fn admin_token_file(&self) -> PathBuf {
        self.state_dir.join("admin-token")
    }
    /// The cluster CA's certificate, fetched from node 1 and checked against its console.
    pub fn ca_file(&self) -> PathBuf {
        self.state_dir.join("ca.crt")
    }
    /// The `cerana` CLI's configuration for this cluster (`CERANA_CONFIG`).
    pub fn cli_config(&self) -> PathBuf {
        self.state_dir.join("cerana.toml")
    }
    pub fn data_disk(&self, node: usize) -> PathBuf {
        self.state_dir.join(format!("node{node}-data.img"))
    }
    /// A fixed SMBIOS UUID per node: init derives the machine id, hostname and ZFS hostid
    /// from its first 8 hex digits, so those differ per node, and a node that boots again
    /// finds its pool its own and imports it cleanly.
    pub fn uuid(&self, node: usize) -> String {
        format!("c3a0{node:04x}-0000-4000-8000-000000000000")
    }
}

/// Whether a console log holds the `node_ready` lifecycle event.
pub fn console_is_ready(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_end_matches('\r').starts_with("CERANA-EVENT ") && l.contains("\"event\":\"node_ready\""))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP exchange with a JSON answer (any status: the body says what went wrong), over TLS
/// when `tls` is given.
fn http_json(
    addr: &str,
    tls: Option<&TlsClient>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<serde_json::Value, ClusterError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let what = format!("{method} {scheme}://{addr}{path}");
    let sockaddr = addr.parse().map_err(|e| ClusterError::Invalid(format!("{addr}: {e}")))?;
    let body = body.unwrap_or_default().as_bytes();
    let response = crate::http::request_over(sockaddr, tls, method, path, token, body, Duration::from_secs(60))
        .map_err(|e| ClusterError::Invalid(format!("{what}: {e}")))?;
    serde_json::from_slice(&response.body)
        .map_err(|e| ClusterError::Invalid(format!("{what}: {e}: {}", String::from_utf8_lossy(&response.body))))
}

/// The console line node 1's quorum agent writes once the cluster CA is made.
const CA_FINGERPRINT: &str = "cluster CA sha256=";

/// The fingerprint of the cluster CA that `console` announces.
pub fn announced_ca_fingerprint(console: &str) -> Option<String> {
    console.lines().find_map(|l| {
        let at = l.find(CA_FINGERPRINT)? + CA_FINGERPRINT.len();
        let hex: String = l[at..].chars().take_while(char::is_ascii_hexdigit).collect();
        (hex.len() == 64).then_some(hex)
    })
}

#[derive(Debug)]
pub struct Cluster {
    pub layout: Layout,
    pub token: String,
    /// HTTPS to the nodes, trusting the cluster CA, once it is known.
    tls: Mutex<Option<TlsClient>>,
    /// The admin token for the nodes other than node 1, once minted.
    admin: Mutex<Option<String>>,
}

impl Cluster {
    /// Creates the network and starts node 1; [`Cluster::down`] undoes whatever was done even
    /// when this fails half-way.
    pub fn up(layout: Layout) -> Result<Self, ClusterError> {
        if layout.nodes == 0 || layout.nodes > 99 {
            return Err(ClusterError::Invalid(format!("{} nodes: between 1 and 99", layout.nodes)));
        }
        for f in ["vmlinuz", "initrd.img"] {
            if !layout.image_dir.join(f).is_file() {
                return Err(ClusterError::Invalid(format!("no {f} in {} (make image)", layout.image_dir.display())));
            }
        }
        if !layout.uefi_nodes.is_empty() {
            require_file(Path::new(OVMF_BIOS), "UEFI nodes need Debian's ovmf")
                .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        }
        std::fs::create_dir_all(&layout.state_dir).map_err(io(layout.state_dir.display().to_string()))?;
        std::fs::write(layout.state_dir.join("netns"), format!("{}\n{}\n", layout.netns, layout.host_if))
            .map_err(io("state"))?;
        let token = crate::vm::random_token().map_err(|e| ClusterError::Invalid(e.to_string()))?;
        write_secret(&layout.token_file(), &token)?;
        let cluster = Cluster { layout, token, tls: Mutex::new(None), admin: Mutex::new(None) };
        cluster.network()?;
        cluster.start_bootstrap()?;
        Ok(cluster)
    }

    fn network(&self) -> Result<(), ClusterError> {
        let l = &self.layout;
        let ns = l.netns.as_str();
        let peer = "veth-host";
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", ns, "link", "set", "br0", "up"])?;
        run(&["ip", "link", "add", &l.host_if, "type", "veth", "peer", "name", peer, "netns", ns])?;
        run(&["ip", "-n", ns, "link", "set", peer, "master", "br0", "up"])?;
        run(&["ip", "addr", "add", &format!("{}/24", l.host_ip()), "dev", &l.host_if])?;
        run(&["ip", "link", "set", &l.host_if, "up"])?;
        for node in 1..=l.nodes {
            let tap = format!("tap{node}");
            run(&["ip", "-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            run(&["ip", "-n", ns, "link", "set", &tap, "master", "br0", "up"])?;
        }
        Ok(())
    }

    /// Starts node `node`'s QEMU, daemonised (the cluster outlives this process), on its tap.
    fn qemu(&self, node: usize, pxe: Option<Firmware>, extra: &[String]) -> Result<(), ClusterError> {
        let l = &self.layout;
        let console = l.console(node);
        let _ = std::fs::remove_file(&console);
        let mut qemu = QemuCommand::new(QEMU_SYSTEM, l.memory_mb, 1).in_netns(&l.netns);
        qemu.args(["-daemonize", "-name", &format!("cerana-node{node}"), "-pidfile"]);
        qemu.arg(l.pidfile(node).display().to_string());
        qemu.arg("-serial").arg(format!("file:{}", console.display()));
        qemu.args(["-uuid", &l.uuid(node)]);
        if pxe == Some(Firmware::Uefi) {
            qemu.uefi_bios().map_err(|e| ClusterError::Invalid(e.to_string()))?;
        }
        qemu.tap_nic(&format!("tap{node}"), &l.mac(node), pxe);
        if l.data_disk_mb > 0 {
            let disk = l.data_disk(node);
            // Sparse; an existing disk keeps its pool (grown if the size asked for is larger).
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&disk)
                .map_err(io(disk.display().to_string()))?;
            let want = l.data_disk_mb << 20;
            if file.metadata().map_err(io(disk.display().to_string()))?.len() < want {
                file.set_len(want).map_err(io(disk.display().to_string()))?;
            }
            qemu.arg("-drive").arg(format!("file={},format=raw,if=none,id=data,cache=unsafe", disk.display()));
            qemu.arg("-device").arg(format!("virtio-blk-pci,drive=data,serial=cerana-data-{node}"));
        }
        qemu.args(extra);
        let out = qemu.command().stdin(std::process::Stdio::null()).output().map_err(io("ip netns exec qemu"))?;
        if !out.status.success() {
            let what = format!("starting node {node}: {} {}", qemu.program(), qemu.arguments().join(" "));
            return Err(ClusterError::Command { what, detail: String::from_utf8_lossy(&out.stderr).trim().into() });
        }
        Ok(())
    }

    fn start_bootstrap(&self) -> Result<(), ClusterError> {
        let l = &self.layout;
        let tar = l.state_dir.join("boot-image.tar");
        let (tar_s, dir) = (tar.display().to_string(), l.image_dir.display().to_string());
        run(&["tar", "--format=ustar", "-cf", &tar_s, "-C", &dir, "vmlinuz", "initrd.img"])?;
        let mut append = format!(
            "console=ttyS0 cerana.cluster_bootstrap cerana.mgmt_ip={}/24 cerana.mgmt_gw={} cerana.api_token={}",
            l.bootstrap_ip(),
            l.host_ip(),
            self.token
        );
        if l.data_disk_mb > 0 {
            append.push_str(" cerana.zfs_config=auto");
        }
        for arg in &l.bootstrap_args {
            append.push(' ');
            append.push_str(arg);
        }
        self.qemu(
            1,
            None,
            &[
                "-kernel".into(),
                format!("{dir}/vmlinuz"),
                "-initrd".into(),
                format!("{dir}/initrd.img"),
                "-append".into(),
                append,
                "-drive".into(),
                format!("file={tar_s},format=raw,if=none,id=bootimg,readonly=on"),
                "-device".into(),
                "virtio-blk-pci,drive=bootimg,serial=cerana-boot".into(),
            ],
        )
    }

    /// Starts nodes 2..N (after node 1's bootserver is up: node_ready means every service is).
    pub fn start_pxe_nodes(&self) -> Result<(), ClusterError> {
        (2..=self.layout.nodes).try_for_each(|node| self.start_pxe_node(node))
    }

    /// Starts one node that boots from the network (BIOS, or UEFI when listed in `uefi_nodes`).
    pub fn start_pxe_node(&self, node: usize) -> Result<(), ClusterError> {
        let l = &self.layout;
        if node < 2 || node > l.nodes {
            return Err(ClusterError::Invalid(format!("node {node}: PXE nodes are 2..={}", l.nodes)));
        }
        let firmware = if l.uefi_nodes.contains(&node) { Firmware::Uefi } else { Firmware::Bios };
        self.qemu(node, Some(firmware), &[])
    }

    /// Cuts node `node`'s power: its QEMU is killed outright (its disks stay as they were).
    pub fn power_off(&self, node: usize) -> Result<(), ClusterError> {
        let pidfile = self.layout.pidfile(node);
        let pid = qemu_pid(&pidfile, &format!("cerana-node{node} ")).ok_or_else(|| {
            ClusterError::Invalid(format!("node {node} is not running (no QEMU in {})", pidfile.display()))
        })?;
        run(&["kill", "-KILL", &pid.to_string()])?;
        wait_gone(&[pid], Duration::from_secs(10));
        let _ = std::fs::remove_file(pidfile);
        Ok(())
    }

    /// Cuts node `node` off the network, its power still on: its tap leaves the cluster's
    /// bridge (inside the cluster's namespace), so nothing it sends reaches anyone.
    pub fn disconnect(&self, node: usize) -> Result<(), ClusterError> {
        self.check_node(node)?;
        run(&["ip", "-n", &self.layout.netns, "link", "set", &format!("tap{node}"), "nomaster"]).map(drop)
    }

    /// Undoes [`Cluster::disconnect`].
    pub fn reconnect(&self, node: usize) -> Result<(), ClusterError> {
        self.check_node(node)?;
        run(&["ip", "-n", &self.layout.netns, "link", "set", &format!("tap{node}"), "master", "br0"]).map(drop)
    }

    fn check_node(&self, node: usize) -> Result<(), ClusterError> {
        if node == 0 || node > self.layout.nodes {
            return Err(ClusterError::Invalid(format!("node {node}: nodes are 1..={}", self.layout.nodes)));
        }
        Ok(())
    }

    /// Waits until every node in `nodes` has reported node_ready on its console.
    pub fn wait_ready(
        &self,
        nodes: impl IntoIterator<Item = usize>,
        limit: Duration,
    ) -> Result<Vec<(usize, Duration)>, ClusterError> {
        let start = Instant::now();
        let mut waiting: Vec<usize> = nodes.into_iter().collect();
        let mut ready = Vec::new();
        loop {
            waiting.retain(|&n| {
                let done = console_is_ready(&String::from_utf8_lossy(
                    &std::fs::read(self.layout.console(n)).unwrap_or_default(),
                ));
                if done {
                    ready.push((n, start.elapsed()));
                }
                !done
            });
            if waiting.is_empty() {
                return Ok(ready);
            }
            if start.elapsed() > limit {
                let n = waiting[0];
                return Err(ClusterError::NotReady {
                    node: n,
                    secs: limit.as_secs(),
                    tail: tail(&self.layout.console(n), 25),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// GET `path` from node 1's bootserver (port 80) through the host's veth.
    pub fn bootserver_get(&self, path: &str) -> Result<serde_json::Value, ClusterError> {
        self.bootserver_get_at(&self.layout.bootstrap_ip(), path)
    }

    /// GET `path` from the bootserver (port 80) of the node at `ip`.
    pub fn bootserver_get_at(&self, ip: &str, path: &str) -> Result<serde_json::Value, ClusterError> {
        http_json(&format!("{ip}:80"), None, "GET", path, None, None)
    }

    /// The address node 1 leased to `node` (2..N), from its `/leases`.
    pub fn leased_ip(&self, node: usize) -> Result<String, ClusterError> {
        let mac = self.layout.mac(node);
        let leases = self.bootserver_get("/leases")?;
        leases
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["mac"] == mac.as_str())
            .and_then(|x| x["ip"].as_str())
            .map(str::to_string)
            .ok_or_else(|| ClusterError::Invalid(format!("node {node} ({mac}) has no lease on node 1: {leases}")))
    }

    /// Runs `task` through the coordinator API (port 8080) of the node at `ip` as an admin
    /// ([`Cluster::request`]); returns the result, or the task's error as [`ClusterError::Invalid`].
    pub fn task(&self, ip: &str, task: &str, args: serde_json::Value) -> Result<serde_json::Value, ClusterError> {
        let response = self.request(ip, &serde_json::json!({ "task": task, "args": args }))?;
        match response.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(ClusterError::Invalid(format!("{task} on {ip}: {response}"))),
        }
    }

    /// HTTPS to the nodes: the cluster CA, fetched from node 1's boot server and accepted only
    /// if its fingerprint is the one node 1's console announced (the console is the channel an
    /// attacker on the network does not hold). Waits up to `limit` for node 1 to make it.
    pub fn https(&self, limit: Duration) -> Result<TlsClient, ClusterError> {
        if let Some(tls) = self.tls.lock().expect("tls lock").clone() {
            return Ok(tls);
        }
        let start = Instant::now();
        let ca_pem = loop {
            let console = std::fs::read_to_string(self.layout.console(1)).unwrap_or_default();
            let fetched = crate::http::request(
                format!("{}:80", self.layout.bootstrap_ip()).parse().expect("an address"),
                "GET",
                "/ca.crt",
                None,
                b"",
                Duration::from_secs(10),
            );
            let last = match (announced_ca_fingerprint(&console), fetched) {
                (Some(announced), Ok(answer)) if answer.status == 200 => {
                    let pem = String::from_utf8_lossy(&answer.body).into_owned();
                    if cerana_pki::fingerprint(&pem).as_deref() != Some(announced.as_str()) {
                        return Err(ClusterError::Invalid(format!(
                            "the CA node 1's boot server sent is not the one its console announced ({announced})"
                        )));
                    }
                    break pem;
                }
                (announced, fetched) => format!("announced {announced:?}, fetched {:?}", fetched.map(|a| a.status)),
            };
            if start.elapsed() > limit {
                return Err(ClusterError::Invalid(format!(
                    "no cluster CA from node 1 within {} s: {last}",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        std::fs::write(self.layout.ca_file(), &ca_pem).map_err(io("ca.crt"))?;
        let tls = TlsClient::trusting(&ca_pem).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        *self.tls.lock().expect("tls lock") = Some(tls.clone());
        Ok(tls)
    }

    /// The admin token the nodes other than node 1 take (a scoped one; the cluster's own token
    /// is node 1's alone), minted on node 1 the first time it is needed, once the store is up.
    pub fn admin_token(&self) -> Result<String, ClusterError> {
        let mut admin = self.admin.lock().expect("admin lock");
        if let Some(token) = admin.clone() {
            return Ok(token);
        }
        let node1 = self.layout.bootstrap_ip();
        let args = serde_json::json!({"role": "admin", "ttl_seconds": 30 * 86_400, "description": "make cluster"});
        let start = Instant::now();
        let created = loop {
            match self.request_as(&node1, &self.token, &serde_json::json!({"task": "auth-token-create", "args": args}))
            {
                Ok(r) if r.get("result").is_some() => break r["result"].clone(),
                last if start.elapsed() > Duration::from_secs(180) => {
                    return Err(ClusterError::Invalid(format!("no admin token from node 1: {last:?}")))
                }
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        let token = created["token"].as_str().ok_or_else(|| ClusterError::Invalid(format!("{created}")))?.to_owned();
        write_secret(&self.layout.admin_token_file(), &token)?;
        *admin = Some(token.clone());
        Ok(token)
    }

    /// Waits until `kv-members` through the node at `ip` lists `voters` voters, every one
    /// healthy, one of them the leader, and no learner; returns the members.
    pub fn wait_quorum(&self, ip: &str, voters: usize, limit: Duration) -> Result<serde_json::Value, ClusterError> {
        let start = Instant::now();
        loop {
            let last = self.task(ip, "kv-members", serde_json::json!({}));
            if let Ok(list) = &last {
                let members = list["members"].as_array().cloned().unwrap_or_default();
                let healthy_voters = members.iter().filter(|m| m["voter"] == true && m["healthy"] == true).count();
                let leaders = members.iter().filter(|m| m["leader"] == true).count();
                if members.len() == voters && healthy_voters == voters && leaders == 1 {
                    return Ok(list.clone());
                }
            }
            if start.elapsed() > limit {
                let last = last.map_or_else(|e| e.to_string(), |l| l.to_string());
                return Err(ClusterError::Invalid(format!(
                    "no quorum of {voters} healthy voters through {ip} after {} s; last kv-members: {last}",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until the cluster, asked through the node at `ip`, has elected a DHCP responder on
    /// the management segment that `wanted` accepts; returns the responder's address. A node's
    /// boot server answers DHCP only once elected, which follows its store coming up.
    pub fn wait_dhcp_responder(
        &self,
        ip: &str,
        wanted: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, ClusterError> {
        let election = format!("/cerana/v1/dhcp/responder/{}.0-24", self.layout.subnet);
        let start = Instant::now();
        loop {
            let last = self.task(ip, "kv-leader", serde_json::json!({ "name": election }));
            if let Some(responder) = last.as_ref().ok().and_then(|l| l["value"].as_str()) {
                if wanted(responder) {
                    return Ok(responder.to_string());
                }
            }
            if start.elapsed() > limit {
                let last = last.map_or_else(|e| e.to_string(), |l| l.to_string());
                return Err(ClusterError::Invalid(format!(
                    "no DHCP responder as wanted through {ip} after {} s; last kv-leader: {last}",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends a whole task request (`{task, args, node?, stream?}`) to the coordinator at `ip`
    /// as an admin (node 1: the cluster's token; any other node: [`Cluster::admin_token`],
    /// waited for until that node has it) and returns the whole response (`result` or `error`,
    /// and `stream`).
    pub fn request(&self, ip: &str, request: &serde_json::Value) -> Result<serde_json::Value, ClusterError> {
        if ip == self.layout.bootstrap_ip() {
            return self.request_as(ip, &self.token, request);
        }
        let token = self.admin_token()?;
        let start = Instant::now();
        loop {
            let response = self.request_as(ip, &token, request)?;
            // The node takes the token once its agent has copied it from the store.
            if response["error"]["code"] != "unauthenticated" || start.elapsed() > Duration::from_secs(120) {
                return Ok(response);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// [`Cluster::request`] with `bytes` as the request's input stream, uploaded to the same
    /// coordinator (`POST /v1/streams/ID`) while the task reads it.
    pub fn request_with_upload(
        &self,
        ip: &str,
        request: &serde_json::Value,
        bytes: Vec<u8>,
    ) -> Result<serde_json::Value, ClusterError> {
        let token = if ip == self.layout.bootstrap_ip() { self.token.clone() } else { self.admin_token()? };
        let tls = self.https(Duration::from_secs(180))?;
        let id = cerana_protocol::StreamId::random().to_string();
        let addr: std::net::SocketAddr =
            format!("{ip}:8080").parse().map_err(|e| ClusterError::Invalid(format!("{ip}: {e}")))?;
        let path = format!("/v1/streams/{id}");
        let upload = std::thread::spawn(move || {
            crate::http::request_over(addr, Some(&tls), "POST", &path, Some(&token), &bytes, Duration::from_secs(600))
                .map(|r| r.status)
        });
        let mut request = request.clone();
        request["stream"] = serde_json::json!({ "id": id });
        let response = self.request(ip, &request);
        let uploaded = upload.join().map_err(|_| ClusterError::Invalid("the upload thread panicked".into()))?;
        if response.as_ref().is_ok_and(|r| r.get("result").is_some()) {
            uploaded.map_err(|e| ClusterError::Invalid(format!("upload to {ip}: {e}")))?;
        }
        response
    }

    /// [`Cluster::request`] with another bearer token (a scoped one, say).
    pub fn request_as(
        &self,
        ip: &str,
        token: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, ClusterError> {
        let tls = self.https(Duration::from_secs(180))?;
        let addr = format!("{ip}:8080");
        // A node loads its certificate within a second of getting it: until then it cannot
        // take HTTPS.
        let start = Instant::now();
        loop {
            match http_json(&addr, Some(&tls), "POST", "/v1/tasks", Some(token), Some(&request.to_string())) {
                Err(e) if start.elapsed() < Duration::from_secs(10) && e.to_string().contains("TLS") => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                other => return other,
            }
        }
    }

    /// Writes the CLI's configuration: the nodes' coordinators (node 1 first, over HTTPS), the
    /// cluster CA and an admin token that every node takes (0600, as the token), so that
    /// `cerana` needs no flags.
    pub fn write_cli_config(&self) -> Result<PathBuf, ClusterError> {
        let l = &self.layout;
        self.https(Duration::from_secs(180))?;
        self.admin_token()?;
        let mut nodes = vec![format!("https://{}:8080", l.bootstrap_ip())];
        nodes.extend((2..=l.nodes).filter_map(|n| self.leased_ip(n).ok()).map(|ip| format!("https://{ip}:8080")));
        let quoted: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
        let text = format!(
            "# Written by make cluster: the cluster's coordinators, its CA and an admin token.\n\
             cluster = \"{}\"\nnodes = [{}]\nca_cert = \"ca.crt\"\ntoken_file = \"admin-token\"\n",
            l.netns,
            quoted.join(", ")
        );
        let path = l.cli_config();
        std::fs::write(&path, text).map_err(io("CLI configuration"))?;
        Ok(path)
    }

    /// How to reach the nodes, for people.
    pub fn usage(&self) -> String {
        let l = &self.layout;
        let config = l.cli_config().display().to_string();
        let mut s = format!(
            "CeranaOS cluster: {} node(s) in network namespace {} (host side {} = {})\n",
            l.nodes,
            l.netns,
            l.host_if,
            l.host_ip()
        );
        s.push_str(&format!(
            "  node 1 (bootstrap, bootserver): {}  console {}\n",
            l.bootstrap_ip(),
            l.console(1).display()
        ));
        for n in 2..=l.nodes {
            let fw = if l.uefi_nodes.contains(&n) { "UEFI" } else { "BIOS" };
            // The address node 1 leased it (and its script gave it as cerana.mgmt_ip).
            let ip = self.leased_ip(n).unwrap_or_else(|_| "(no lease)".into());
            s.push_str(&format!(
                "  node {n} (PXE, {fw}, MAC {}): {ip}  console {}\n",
                l.mac(n),
                l.console(n).display()
            ));
        }
        s.push_str(&format!(
            "\nUse it (cerana: {cli}):\n  export CERANA_CONFIG={config}\n  cerana status\n  cerana kv members\n  cerana task run boot-machines\n  cerana --node https://{ip}:8080 get nodes   # one node in particular\n  curl http://{ip}/leases; curl http://{ip}/machines\n  curl --cacert {ca} -H \"Authorization: Bearer $(cat {admin})\" https://{ip}:8080/v1/providers\nStop it: make cluster-down\n",
            ip = l.bootstrap_ip(),
            ca = l.ca_file().display(),
            admin = l.admin_token_file().display(),
            cli = std::env::var("CERANA_CLI").unwrap_or_else(|_| "cerana".into())
        ));
        s
    }
}

/// Writes a credential readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), ClusterError> {
    cerana_pki::write_file(path, secret.as_bytes(), 0o600).map_err(|e| ClusterError::Invalid(e.to_string()))
}

/// Kills the VMs whose pidfiles are in `state_dir` and deletes the namespace (its bridge, taps
/// and the veth with it). Safe to call on a half-made or already removed cluster.
/// The pid in `pidfile`, if it is a QEMU we started: `name` (`-name cerana-nodeN`) is on its
/// command line.
fn qemu_pid(pidfile: &Path, name: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(pidfile).ok()?.trim().parse::<i32>().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // The command line's arguments are NUL-separated; a space ends the name as well.
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(name).then_some(pid)
}

/// Waits (at most `limit`) until none of `pids` exists any more.
fn wait_gone(pids: &[i32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn down(state_dir: &Path) -> Result<(), ClusterError> {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return Ok(()) };
    let mut pids = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("node") && name.ends_with(".pid") {
            if let Some(pid) = qemu_pid(&e.path(), "cerana-node") {
                let _ = run(&["kill", "-TERM", &pid.to_string()]);
                pids.push(pid);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    wait_gone(&pids, Duration::from_secs(10));
    for p in pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
        let _ = run(&["kill", "-KILL", &p.to_string()]);
    }
    if let Ok(text) = std::fs::read_to_string(state_dir.join("netns")) {
        let mut lines = text.lines();
        if let (Some(ns), Some(host_if)) = (lines.next(), lines.next()) {
            let _ = run(&["ip", "netns", "del", ns]);
            let _ = run(&["ip", "link", "del", host_if]);
        }
        let _ = std::fs::remove_file(state_dir.join("netns"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ready_is_found_only_as_a_lifecycle_event() {
        assert!(console_is_ready("x\r\nCERANA-EVENT {\"event\":\"node_ready\",\"uptime_ms\":5}\r\n"));
        let hex = "ab".repeat(32);
        let line = format!("[quorum] 2026-12-04T10:00:00Z  INFO cerana_quorum: cluster CA sha256={hex}\r\n");
        assert_eq!(announced_ca_fingerprint(&line), Some(hex.clone()));
        assert_eq!(announced_ca_fingerprint(&format!("cluster CA sha256={}\n", &hex[..60])), None, "cut short");
        assert!(!console_is_ready("echo CERANA-EVENT {\"event\":\"node_ready\"}\n"));
        assert!(!console_is_ready("CERANA-EVENT {\"event\":\"service_ready\"}\n"));
    }

    #[test]
    fn addresses_follow_the_subnet() {
        let l = Layout {
            netns: "n".into(),
            host_if: "h".into(),
            subnet: "10.99.0".into(),
            nodes: 3,
            uefi_nodes: vec![3],
            memory_mb: 1024,
            data_disk_mb: 0,
            image_dir: "/i".into(),
            state_dir: "/s".into(),
            bootstrap_args: vec![],
        };
        assert_eq!(
            (l.host_ip(), l.bootstrap_ip(), l.mac(12)),
            ("10.99.0.1".into(), "10.99.0.2".into(), "52:54:00:c1:00:0c".into())
        );
        // init takes the hostname and the ZFS hostid from the first 8 hex digits.
        assert_eq!((&l.uuid(1)[..8], &l.uuid(12)[..8]), ("c3a00001", "c3a0000c"));
    }
}
