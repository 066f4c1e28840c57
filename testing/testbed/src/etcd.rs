//! A real etcd cluster on loopback for host tests and benchmarks: `n` members of Debian's
//! `etcd` on free 127.0.0.1 ports, each in its own data directory, members that can be killed
//! and restarted, plain or with mutual TLS from a CA made for the run ([`EtcdTls`]). Everything
//! (processes, data, keys) goes when the [`EtcdCluster`] is dropped.

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

/// A CA made for one run, a certificate for the members (peer and client, for 127.0.0.1) and
/// one for clients; all PEM files in the cluster's directory.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    fn generate(dir: &Path) -> Result<Self, EtcdError> {
        let tls_err =
            |e: rcgen::Error| EtcdError::Io { what: "make test certificates".into(), source: std::io::Error::other(e) };
        let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cerana test cluster CA");
        let ca = ca_params.self_signed(&ca_key).map_err(tls_err)?;
        let leaf = |name: &str, sans: Vec<String>| -> Result<(String, String), EtcdError> {
            let key = rcgen::KeyPair::generate().map_err(tls_err)?;
            let mut params = rcgen::CertificateParams::new(sans).map_err(tls_err)?;
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &ca, &ca_key).map_err(tls_err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf("etcd", vec!["127.0.0.1".into(), "localhost".into()])?;
        let (client_cert, client_key) = leaf("cerana-test-client", vec!["localhost".into()])?;
        let write = |name: &str, text: &str| -> Result<PathBuf, EtcdError> {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|source| EtcdError::Io { what: format!("write {}", path.display()), source })?;
            Ok(path)
        };
        Ok(EtcdTls {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain HTTP `/health` and `/metrics`, whatever the client port speaks.
    metrics: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// For a member that joins a running cluster: the members it starts with.
    initial_cluster: Option<String>,
}

/// See the module docs.
pub struct EtcdCluster {
    root: PathBuf,
    tls: Option<EtcdTls>,
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
    /// Starts `n` plain members and waits until every one is healthy (has a leader).
    pub fn start(n: usize) -> Result<Self, EtcdError> {
        Self::start_with(n, false)
    }

    /// Starts `n` members speaking mutual TLS, peers and clients alike ([`EtcdCluster::tls`]).
    pub fn start_tls(n: usize) -> Result<Self, EtcdError> {
        Self::start_with(n, true)
    }

    /// Starts the cluster; again, on other ports, when a port found free was taken before
    /// etcd bound it (another test's process got there first).
    fn start_with(n: usize, tls: bool) -> Result<Self, EtcdError> {
        let mut attempt = 1;
        loop {
            match Self::try_start(n, tls) {
                Err(EtcdError::Unhealthy { log, .. }) if log.contains("address already in use") && attempt < 3 => {
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    fn try_start(n: usize, tls: bool) -> Result<Self, EtcdError> {
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
        let tls = if tls { Some(EtcdTls::generate(&root)?) } else { None };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("m{i}");
            members.push(Member {
                data: root.join(&name),
                log: root.join(format!("{name}.log")),
                name,
                client: free_port()?,
                peer: free_port()?,
                metrics: free_port()?,
                child: None,
                initial_cluster: None,
            });
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}={scheme}://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { root, tls, initial_cluster, token: format!("cerana-test-{unique}"), members };
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
            metrics: free_port()?,
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
        format!("{}://{}", self.scheme(), self.members[i].peer)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The certificates of a TLS cluster.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
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
        let scheme = self.scheme();
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&tls.server_cert)
                .arg("--peer-key-file")
                .arg(&tls.server_key)
                .arg("--peer-trusted-ca-file")
                .arg(&tls.ca)
                .arg("--peer-client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &format!("{scheme}://{}", m.client)])
            .args(["--advertise-client-urls", &format!("{scheme}://{}", m.client)])
            .args(["--listen-peer-urls", &format!("{scheme}://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("{scheme}://{}", m.peer)])
            .args(["--listen-metrics-urls", &format!("http://{}", m.metrics)])
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
        crate::http::request(self.members[i].metrics, "GET", "/health", None, &[], Duration::from_secs(2))
            .is_ok_and(|r| r.status == 200 && String::from_utf8_lossy(&r.body).contains("\"true\""))
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}://{}", self.scheme(), m.client)).collect()
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
