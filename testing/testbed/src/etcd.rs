//! A real etcd cluster on loopback for host tests and benchmarks: `n` members of Debian's
//! `etcd` on free 127.0.0.1 ports, each in its own data directory, members that can be killed
//! and restarted. Everything (processes, data) goes when the [`EtcdCluster`] is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("`etcd` is not installed (make deps installs etcd-server)")]
    NotInstalled,
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("member {member} never became healthy within {secs} s; its log:\n{log}")]
    Unhealthy { member: usize, secs: u64, log: String },
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// For a member that joins a running cluster: the members it starts with.
    initial_cluster: Option<String>,
}

/// See the module docs.
pub struct EtcdCluster {
    root: PathBuf,
    initial_cluster: String,
    token: String,
    members: Vec<Member>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster").field("root", &self.root).field("endpoints", &self.endpoints()).finish()
    }
}

fn free_port() -> Result<SocketAddr, EtcdError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|source| EtcdError::Io { what: "find a free loopback port".into(), source })?;
    listener.local_addr().map_err(|source| EtcdError::Io { what: "read a port".into(), source })
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (has a leader).
    pub fn start(n: usize) -> Result<Self, EtcdError> {
        if crate::find_in_path("etcd").is_none() {
            return Err(EtcdError::NotInstalled);
        }
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let root = std::env::temp_dir().join(format!("cerana-etcd-{unique}"));
        std::fs::create_dir_all(&root)
            .map_err(|source| EtcdError::Io { what: format!("create {}", root.display()), source })?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("m{i}");
            members.push(Member {
                data: root.join(&name),
                log: root.join(format!("{name}.log")),
                name,
                client: free_port()?,
                peer: free_port()?,
                child: None,
                initial_cluster: None,
            });
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { root, initial_cluster, token: format!("cerana-test-{unique}"), members };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// Reserves ports for a new member `name` (not started): add it to the cluster, then
    /// [`EtcdCluster::start_joining`] it. Returns its index.
    pub fn reserve(&mut self, name: &str) -> Result<usize, EtcdError> {
        self.members.push(Member {
            data: self.root.join(name),
            log: self.root.join(format!("{name}.log")),
            name: name.to_owned(),
            client: free_port()?,
            peer: free_port()?,
            child: None,
            initial_cluster: None,
        });
        Ok(self.members.len() - 1)
    }

    /// Starts reserved member `i` into the running cluster whose members (itself included) are
    /// `initial_cluster` (`name=peer_url,...`, as the member-add answer gives them).
    pub fn start_joining(&mut self, i: usize, initial_cluster: &str) -> Result<(), EtcdError> {
        self.members[i].initial_cluster = Some(initial_cluster.to_owned());
        self.spawn(i)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("http://{}", self.members[i].peer)
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdError> {
        let m = &self.members[i];
        let (initial_cluster, state) = match &m.initial_cluster {
            Some(joining) => (joining.as_str(), "existing"),
            None => (self.initial_cluster.as_str(), "new"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|source| EtcdError::Io { what: format!("open {}", m.log.display()), source })?;
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state, "--initial-cluster-token", &self.token])
            // Loopback: fast heartbeats keep elections (and the tests) short, with room for a
            // loaded machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdError::Io { what: "start etcd".into(), source })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` as healthy.
    pub fn wait_healthy(&self, i: usize, within: Duration) -> Result<(), EtcdError> {
        let deadline = Instant::now() + within;
        loop {
            if self.is_healthy(i) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
                let tail: String =
                    log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(EtcdError::Unhealthy { member: i, secs: within.as_secs(), log: tail });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether member `i` is up and has a leader.
    pub fn is_healthy(&self, i: usize) -> bool {
        crate::http::request(self.members[i].client, "GET", "/health", None, &[], Duration::from_secs(2))
            .is_ok_and(|r| r.status == 200 && String::from_utf8_lossy(&r.body).contains("\"true\""))
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}", m.client)).collect()
    }

    /// Kills member `i` outright (SIGKILL), as a power cut would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<(), EtcdError> {
        self.kill(i);
        self.spawn(i)
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
