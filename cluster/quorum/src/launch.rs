//! How this node's etcd member starts, decided from what it has and what the cluster says
//! (pure), and the etcd command line for each way.

use cerana_store::StoreMember;
use std::path::Path;

/// This node as an etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
}

/// What the cluster says about its members, as far as this node can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// No member answered.
    Unreachable,
    Members(Vec<StoreMember>),
}

/// How to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The first member of a new cluster.
    New,
    /// Restart the member from its data: it rejoins as the member it was.
    FromData,
    /// This node's member lost its data: remove it from the cluster, then be added afresh.
    RemoveStale { id: u64 },
    /// This node's data belongs to a member the cluster has removed: set it aside.
    Discard,
    /// Not a member: offer this node, and start once the leader has added it.
    Candidate,
    /// Nothing to go on yet.
    Wait(String),
}

/// See [`Start`]. A node with member data always starts from it when the cluster cannot be
/// asked: after a whole-cluster power cut nobody answers until the members start.
pub fn decide(me: &Me, bootstrap: bool, has_data: bool, view: &View) -> Start {
    let members = match view {
        View::Unreachable if has_data => return Start::FromData,
        View::Unreachable if bootstrap => return Start::New,
        View::Unreachable => return Start::Wait("no member of the cluster answers yet".into()),
        View::Members(members) => members,
    };
    let mine = members.iter().find(|m| m.name == me.name || m.peer_urls.contains(&me.peer_url));
    match (mine, has_data) {
        (Some(m), true) if m.peer_urls.contains(&me.peer_url) => Start::FromData,
        // The same name at another address: that member is gone with the old address.
        (Some(m), _) if !m.name.is_empty() => Start::RemoveStale { id: m.id },
        // Added by the leader but not started yet: the candidate's join says how to start.
        (Some(_), _) => Start::Candidate,
        (None, true) => Start::Discard,
        (None, false) => Start::Candidate,
    }
}

/// Whether `data_dir` holds an etcd member's data.
pub fn has_member_data(data_dir: &Path) -> bool {
    data_dir.join("member").join("snap").is_dir()
}

/// How the member is started: `initial` is `None` to start from existing data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    New,
    /// Joining a running cluster: every member's `name=peer_url`.
    Existing(String),
}

/// Raft timing for machines on one LAN that may be slow (the cluster tests run nodes under
/// emulation): heartbeat 250 ms, election 2.5 s.
const HEARTBEAT_MS: u32 = 250;
const ELECTION_MS: u32 = 2500;

/// Where the member listens besides its advertised URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Another client URL, for the node's own clients (`http://127.0.0.1:2379`).
    pub local_client_url: Option<String>,
    /// etcd's /metrics and /health (`http://127.0.0.1:2381`).
    pub metrics_url: Option<String>,
    /// Mutual TLS on the advertised URLs, peers and clients alike: the cluster CA and this
    /// node's certificate. A peer or client without a certificate from the CA is refused.
    pub tls: Option<cerana_pki::NodeTls>,
}

/// etcd's arguments for this member.
pub fn etcd_args(me: &Me, listen: &Listen, data_dir: &Path, initial: Option<&Initial>) -> Vec<String> {
    let client_urls = match &listen.local_client_url {
        Some(local) => format!("{},{local}", me.client_url),
        None => me.client_url.clone(),
    };
    let mut args = vec![
        format!("--name={}", me.name),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-peer-urls={}", me.peer_url),
        format!("--initial-advertise-peer-urls={}", me.peer_url),
        format!("--listen-client-urls={client_urls}"),
        format!("--advertise-client-urls={}", me.client_url),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
        format!("--election-timeout={ELECTION_MS}"),
        // Snapshots more often than the default 100k entries keep a RAM-resident node's
        // memory small; the log is compacted by revision every hour.
        "--snapshot-count=10000".into(),
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=1h".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
        // Its info level logs every raft message exchange: too much for a RAM-resident log.
        "--log-level=warn".into(),
    ];
    if let Some(tls) = &listen.tls {
        let (ca, cert, key) = (tls.ca(), tls.cert(), tls.key());
        args.extend([
            format!("--trusted-ca-file={}", ca.display()),
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            "--client-cert-auth".into(),
            format!("--peer-trusted-ca-file={}", ca.display()),
            format!("--peer-cert-file={}", cert.display()),
            format!("--peer-key-file={}", key.display()),
            "--peer-client-cert-auth".into(),
        ]);
    }
    if let Some(metrics) = &listen.metrics_url {
        args.push(format!("--listen-metrics-urls={metrics}"));
    }
    match initial {
        None => {}
        Some(Initial::New) => args.extend([
            format!("--initial-cluster={}={}", me.name, me.peer_url),
            "--initial-cluster-state=new".into(),
            "--initial-cluster-token=cerana".into(),
        ]),
        Some(Initial::Existing(cluster)) => {
            args.extend([format!("--initial-cluster={cluster}"), "--initial-cluster-state=existing".into()])
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me { name: "node-b".into(), peer_url: "http://10.0.0.2:2380".into(), client_url: "http://10.0.0.2:2379".into() }
    }

    fn member(id: u64, name: &str, ip: &str) -> StoreMember {
        StoreMember {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://{ip}:2380")],
            client_urls: if name.is_empty() { vec![] } else { vec![format!("http://{ip}:2379")] },
            learner: false,
        }
    }

    #[test]
    fn a_node_with_data_rejoins_as_the_member_it_was() {
        let view = View::Members(vec![member(1, "node-a", "10.0.0.1"), member(2, "node-b", "10.0.0.2")]);
        assert_eq!(decide(&me(), false, true, &view), Start::FromData);
        assert_eq!(decide(&me(), false, true, &View::Unreachable), Start::FromData);
    }

    #[test]
    fn a_member_whose_data_is_gone_is_removed_and_added_afresh() {
        let view = View::Members(vec![member(1, "node-a", "10.0.0.1"), member(2, "node-b", "10.0.0.2")]);
        assert_eq!(decide(&me(), false, false, &view), Start::RemoveStale { id: 2 });
        // Same name, new address (a new lease): the old member cannot come back.
        let moved = View::Members(vec![member(1, "node-a", "10.0.0.1"), member(7, "node-b", "10.0.0.9")]);
        assert_eq!(decide(&me(), false, true, &moved), Start::RemoveStale { id: 7 });
    }

    #[test]
    fn data_of_a_removed_member_is_set_aside() {
        let view = View::Members(vec![member(1, "node-a", "10.0.0.1")]);
        assert_eq!(decide(&me(), false, true, &view), Start::Discard);
        assert_eq!(decide(&me(), false, false, &view), Start::Candidate);
    }

    #[test]
    fn an_added_member_not_started_yet_waits_for_its_join() {
        let view = View::Members(vec![member(1, "node-a", "10.0.0.1"), member(2, "", "10.0.0.2")]);
        assert_eq!(decide(&me(), false, false, &view), Start::Candidate);
    }

    #[test]
    fn only_the_bootstrap_node_starts_a_new_cluster() {
        assert_eq!(decide(&me(), true, false, &View::Unreachable), Start::New);
        assert!(matches!(decide(&me(), false, false, &View::Unreachable), Start::Wait(_)));
        // A bootstrap node that finds a cluster joins it like any other.
        let view = View::Members(vec![member(1, "node-a", "10.0.0.1")]);
        assert_eq!(decide(&me(), true, false, &view), Start::Candidate);
    }

    #[test]
    fn etcd_gets_the_initial_cluster_only_when_it_has_no_data() {
        let dir = Path::new("/data/config/etcd");
        let listen = Listen {
            local_client_url: Some("http://127.0.0.1:2379".into()),
            metrics_url: None,
            tls: Some(cerana_pki::NodeTls::new("/run/cerana/tls")),
        };
        let etcd_args = |dir, initial| etcd_args(&me(), &listen, dir, initial);
        let from_data = etcd_args(dir, None);
        assert!(!from_data.iter().any(|a| a.starts_with("--initial-cluster")), "{from_data:?}");
        let new = etcd_args(dir, Some(&Initial::New));
        assert!(new.contains(&"--initial-cluster=node-b=http://10.0.0.2:2380".to_string()));
        assert!(new.contains(&"--initial-cluster-state=new".to_string()));
        let join = etcd_args(dir, Some(&Initial::Existing("a=http://1:2380,node-b=http://2:2380".into())));
        assert!(join.contains(&"--initial-cluster-state=existing".to_string()));
        assert!(join.contains(&"--listen-client-urls=http://10.0.0.2:2379,http://127.0.0.1:2379".to_string()));
        for flag in ["--client-cert-auth", "--peer-client-cert-auth", "--peer-cert-file=/run/cerana/tls/node.crt"] {
            assert!(join.contains(&flag.to_string()), "{flag} in {join:?}");
        }
        let plain = super::etcd_args(&me(), &Listen { tls: None, ..listen.clone() }, dir, None);
        assert!(!plain.iter().any(|a| a.contains("cert")), "{plain:?}");
    }
}
