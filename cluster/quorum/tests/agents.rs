//! Four quorum agents on loopback, each running its own real etcd: the bootstrap node starts
//! the cluster, two more become voters by themselves, a fourth stays a client; a voter killed
//! is replaced by the client within the grace period; a member restarted on its data rejoins
//! as the same member; one whose data is gone is removed and added afresh. Peers and clients
//! speak mutual TLS: the bootstrap node's agent makes the cluster CA, the others get their
//! certificates from it (as the boot server's check-in gives them), and a client without one,
//! or with one from another CA, is refused. Each agent copies the cluster's API tokens to its
//! node's tokens file.

use cerana_membership::Desired;
use cerana_pki::{ClusterCa, NodeTls};
use cerana_protocol::tasks::auth::{Role, TokenCreateArgs, TOKENS_PREFIX};
use cerana_quorum::launch::{Listen, Me};
use cerana_quorum::{run, Authority, Config, Coordinators};
use cerana_store::{Store, StoreConfig, StoreMember, StoreTls};
use cerana_testbed::require_ok;
use std::path::Path;
use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    config: Config,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    fn new(root: &Path, etcd: &Path, name: &str, bootstrap: bool, seeds: Vec<String>) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let me = Me {
            name: name.into(),
            peer_url: format!("https://127.0.0.1:{}", free_port()),
            client_url: format!("https://127.0.0.1:{}", free_port()),
        };
        let authority = bootstrap.then(|| Authority {
            ca_dir: root.join("ca"),
            published: Some(root.join("ca-link")),
            addresses: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        });
        let config = Config {
            me,
            listen: Listen { local_client_url: None, metrics_url: None, tls: Some(NodeTls::new(dir.join("tls"))) },
            bootstrap,
            seeds,
            desired: Desired { voters: 3, grace: GRACE },
            data_dir: dir.join("etcd"),
            endpoints_file: dir.join("store-endpoints"),
            known_file: Some(dir.join("known-endpoints")),
            etcd: etcd.to_path_buf(),
            pid_file: dir.join("etcd.pid"),
            store_timeout: Duration::from_secs(2),
            authority,
            coordinators: Some(Coordinators {
                own_url: format!("http://{name}.test:8080"),
                seeds: vec![],
                file: dir.join("cluster-peers"),
                tokens_file: dir.join("api-tokens"),
            }),
        };
        Self { config, task: None }
    }

    fn tls(&self) -> &NodeTls {
        self.config.listen.tls.as_ref().unwrap()
    }

    /// What the boot server's check-in does for a node it booted.
    fn get_certificate(&self, root: &Path) {
        let ca = ClusterCa::load(&root.join("ca-link")).unwrap();
        self.tls().issue_own(&ca, &self.config.me.name, &[std::net::Ipv4Addr::LOCALHOST.into()]).unwrap();
    }

    fn store_tls(&self) -> StoreTls {
        let tls = self.tls();
        StoreTls::from_files(&tls.ca(), &tls.cert(), &tls.key()).unwrap()
    }

    fn start(&mut self) {
        let config = self.config.clone();
        self.task = Some(tokio::spawn(async move {
            let _ = run(config).await;
        }));
    }

    /// Stops the agent and its etcd at once, as a power cut would.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // An aborted agent's etcd is killed when its child handle drops; this catches a race.
        if let Some(pid) = std::fs::read_to_string(&self.config.pid_file).ok().and_then(|p| p.trim().parse().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn members(store: &Store) -> Vec<StoreMember> {
    store.members().await.unwrap_or_default()
}

/// Waits until the voters are exactly `names` (all started), with no learner left.
async fn wait_voters(store: &Store, names: &[&str], within: Duration) -> (Vec<StoreMember>, Duration) {
    let start = Instant::now();
    loop {
        let now = members(store).await;
        let mut voters: Vec<&str> = now.iter().filter(|m| !m.learner).map(|m| m.name.as_str()).collect();
        voters.sort();
        let mut want = names.to_vec();
        want.sort();
        if voters == want && now.len() == names.len() {
            return (now, start.elapsed());
        }
        assert!(start.elapsed() < within, "voters {voters:?}, want {want:?} within {within:?}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn id_of(members: &[StoreMember], name: &str) -> u64 {
    members.iter().find(|m| m.name == name).map(|m| m.id).unwrap_or_else(|| panic!("{name} in {members:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_form_keep_and_repair_their_quorum() {
    let _ = tracing_subscriber::fmt().with_env_filter("cerana_quorum=info").with_test_writer().try_init();
    let etcd = require_ok!(cerana_testbed::find_in_path("etcd").ok_or("needs etcd (Debian's etcd-server)"));
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), &etcd, "node-a", true, vec![]);
    let seeds = vec![a.config.me.client_url.clone()];
    let mut b = Node::new(root.path(), &etcd, "node-b", false, seeds.clone());
    let mut c = Node::new(root.path(), &etcd, "node-c", false, seeds.clone());
    let mut d = Node::new(root.path(), &etcd, "node-d", false, seeds.clone());
    let all: Vec<String> = [&a, &b, &c, &d].iter().map(|n| n.config.me.client_url.clone()).collect();

    a.start();
    let start = Instant::now();
    while !a.tls().is_complete() {
        assert!(start.elapsed() < Duration::from_secs(10), "the bootstrap agent made no CA and certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store =
        Store::connect(&StoreConfig { tls: Some(a.store_tls()), ..StoreConfig::new(all.clone()) }).await.unwrap();
    let (one, took) = wait_voters(&store, &["node-a"], Duration::from_secs(30)).await;
    eprintln!("bootstrap member up in {took:?}");
    assert_eq!(one.len(), 1);

    // Without a certificate from the cluster CA, no way in.
    let a_url = vec![a.config.me.client_url.clone()];
    let short =
        |endpoints: Vec<String>| StoreConfig { op_timeout: Duration::from_secs(2), ..StoreConfig::new(endpoints) };
    let plain = Store::connect(&short(vec![a_url[0].replacen("https", "http", 1)])).await;
    assert!(plain.is_err() || plain.unwrap().get("/x").await.is_err(), "plain HTTP is refused");
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = ClusterCa::load_or_create(&stranger.path().join("ca")).unwrap();
    let other = NodeTls::new(stranger.path().join("tls"));
    other.issue_own(&other_ca, "intruder", &[std::net::Ipv4Addr::LOCALHOST.into()]).unwrap();
    let other_tls = StoreTls::from_files(&other.ca(), &other.cert(), &other.key()).unwrap();
    let intruder = Store::connect(&StoreConfig { tls: Some(other_tls), ..short(a_url.clone()) }).await;
    assert!(intruder.is_err() || intruder.unwrap().get("/x").await.is_err(), "another CA's certificate is refused");
    let stranger_tls = StoreTls {
        key_pem: std::fs::read(other.key()).unwrap(),
        cert_pem: std::fs::read(other.cert()).unwrap(),
        ..a.store_tls()
    };
    let mixed = Store::connect(&StoreConfig { tls: Some(stranger_tls), ..short(a_url) }).await;
    assert!(
        mixed.is_err() || mixed.unwrap().get("/x").await.is_err(),
        "a client certificate from another CA is refused"
    );

    for node in [&b, &c, &d] {
        node.get_certificate(root.path());
    }
    b.start();
    c.start();
    let (_, took) = wait_voters(&store, &["node-a", "node-b", "node-c"], Duration::from_secs(60)).await;
    eprintln!("3 voters in {took:?}");
    // Each node's store clients are told where the voters are (at the agent's next round).
    for node in [&a, &b, &c] {
        let start = Instant::now();
        loop {
            let published = std::fs::read_to_string(&node.config.endpoints_file).unwrap_or_default();
            if published.lines().count() == 3 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{}: {published:?}", node.config.me.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    d.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(members(&store).await.len(), 3, "node-d stays a client while there are 3 voters");
    let candidates = store.list("/cerana/v1/quorum/candidates/", None, 10, false).await.unwrap();
    assert_eq!(candidates.entries.len(), 1, "{candidates:?}");
    assert!(candidates.entries[0].key.ends_with("/node-d"));
    // Every node, member or client, has its entry for list-nodes.
    let nodes = store.list("/cerana/v1/nodes/", None, 10, false).await.unwrap();
    let names: Vec<&str> = nodes.entries.iter().filter_map(|e| e.key.rsplit('/').next()).collect();
    assert_eq!(names, ["node-a", "node-b", "node-c", "node-d"], "{nodes:?}");
    // And every node's coordinator is told the members' coordinators it may forward to.
    for node in [&a, &b, &c, &d] {
        let file = &node.config.coordinators.as_ref().unwrap().file;
        let start = Instant::now();
        loop {
            let listed = std::fs::read_to_string(file).unwrap_or_default();
            if listed.lines().count() == 4 && listed.contains("http://node-d.test:8080") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{}: {listed:?}", node.config.me.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A token minted anywhere reaches every node's tokens file; an expired one never does, and
    // a revoked one leaves it.
    let now = cerana_credentials::unix_now();
    let mint = |ttl: u64, at: u64| {
        let token = cerana_credentials::ApiToken::mint().unwrap();
        let args = TokenCreateArgs { role: Role::Read, ttl_seconds: ttl, description: None };
        (token.clone(), token.record(&args, at))
    };
    let (live, live_record) = mint(600, now);
    let (_, old_record) = mint(60, now - 3_600);
    for record in [&live_record, &old_record] {
        store.put(&format!("{TOKENS_PREFIX}/{}", record.id), &serde_json::to_string(record).unwrap()).await.unwrap();
    }
    let tokens_of =
        |node: &Node| cerana_credentials::TokensFile::new(&node.config.coordinators.as_ref().unwrap().tokens_file);
    for node in [&a, &b, &c, &d] {
        let file = tokens_of(node);
        let start = Instant::now();
        while file.table().map(|t| t.len()).unwrap_or(0) != 1 {
            assert!(start.elapsed() < Duration::from_secs(10), "{}: no tokens file", node.config.me.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(file.table().unwrap().verify(&live.reveal(), now).unwrap().role, Role::Read);
    }
    store.delete(&format!("{TOKENS_PREFIX}/{}", live_record.id), false).await.unwrap();
    let file = tokens_of(&d);
    let start = Instant::now();
    while !file.table().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the revoked token stays in node-d's file");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A voter lost: the client node takes its place, never below quorum.
    c.kill().await;
    let (after, took) = wait_voters(&store, &["node-a", "node-b", "node-d"], GRACE + Duration::from_secs(30)).await;
    eprintln!("node-c replaced by node-d in {took:?} (grace {GRACE:?})");
    store.put("/quorum-test/after-replacement", "ok").await.expect("writes go on");
    let plan = store.get("/cerana/v1/quorum/plan").await.unwrap().expect("the leader says what it did");
    assert!(plan.value.contains("leader"), "{}", plan.value);

    // A member restarted on its data rejoins as the same member.
    let id_b = id_of(&after, "node-b");
    b.kill().await;
    b.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (again, _) = wait_voters(&store, &["node-a", "node-b", "node-d"], Duration::from_secs(60)).await;
    assert_eq!(id_of(&again, "node-b"), id_b, "node-b rejoined as the same member");
    assert_eq!(store.get("/quorum-test/after-replacement").await.unwrap().unwrap().value, "ok");

    // The removed node-c comes back with its old data: it is set aside and node-c waits as a
    // client (3 voters already).
    c.start();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(c.config.data_dir.with_extension("removed").is_dir(), "node-c's old member data set aside");
    let now = members(&store).await;
    assert!(now.iter().all(|m| m.name != "node-c"), "{now:?}");

    // node-d loses its data (a new disk): its stale member is removed and it is added afresh.
    let id_d = id_of(&again, "node-d");
    d.kill().await;
    std::fs::remove_dir_all(&d.config.data_dir).unwrap();
    d.start();
    let start = Instant::now();
    loop {
        let now = members(&store).await;
        let voters = now.iter().filter(|m| !m.learner && !m.name.is_empty()).count();
        // node-d (new id) or node-c filled the place again.
        if now.len() == 3 && voters == 3 && now.iter().all(|m| m.id != id_d) {
            eprintln!(
                "stale member replaced in {:?}: {:?}",
                start.elapsed(),
                now.iter().map(|m| &m.name).collect::<Vec<_>>()
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the stale member was not replaced: {now:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for node in [&mut a, &mut b, &mut c, &mut d] {
        node.kill().await;
    }
}
