//! The cluster's DHCP leases (issue #19), through the boot server's real store client: the
//! node's coordinator socket, the `cerana-kv` provider, a 3-member etcd. Two boot servers that
//! both believe they answer never lease one address twice; the elected responder's term is
//! checked before each answer; a new responder takes over every lease and offer; a node's file
//! leases are imported once; a member that does not answer keeps its copy current.

mod common;

use cerana_bootserver::cluster_dhcp::{
    self, import_file_leases, refresh_copy, ClusterLeaseStore, Term, LEASES, OFFERS,
};
use cerana_bootserver::config::PoolConfig;
use cerana_bootserver::kv_tasks::KvTasks;
use cerana_bootserver::lease::{AllocError, Allocator, FileLeaseStore, Lease, LeaseStore, LeaseStoreError};
use cerana_protocol::tasks::boot::MacAddr;
use cerana_protocol::tasks::kv::{CampaignArgs, KvCampaign, KvKey, KvResign, KvValue, ResignArgs, TtlMs};
use cerana_protocol::ErrorCode;
use cerana_testbed::require_ok;
use common::{etcdctl, Lab};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ELECTION: &str = "/cerana/v1/dhcp/responder/10.77.0.0-24";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn pool() -> PoolConfig {
    PoolConfig {
        net: "10.77.0.0/24".parse().unwrap(),
        range: [Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::new(10, 77, 0, 19)],
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns: vec![],
        lease_secs: 3600,
    }
}

fn mac(server: u8, n: u8) -> MacAddr {
    format!("52:54:00:d7:{server:02x}:{n:02x}").parse().unwrap()
}

async fn campaign(lab: &Lab, who: &str, wait_ms: u64) -> Result<Term, ErrorCode> {
    let args = CampaignArgs {
        name: KvKey::new(ELECTION.to_string()).unwrap(),
        value: KvValue::new(who.to_string()).unwrap(),
        ttl_ms: TtlMs::new(10_000).unwrap(),
        wait_ms,
    };
    match lab.run::<KvCampaign>(&args).await {
        Ok(led) => Ok(Term { election: ELECTION.to_string(), lease: led.lease }),
        Err(e) => Err(e.code),
    }
}

async fn allocator(kv: &Arc<KvTasks>, term: Term) -> Arc<Mutex<Allocator>> {
    allocator_keeping(kv, term, None).await
}

/// An allocator whose node keeps its copy of the cluster's leases in `copy`.
async fn allocator_keeping(kv: &Arc<KvTasks>, term: Term, copy: Option<&std::path::Path>) -> Arc<Mutex<Allocator>> {
    let store = ClusterLeaseStore::load(kv.clone(), Some(term), copy).await.expect("leases load");
    Arc::new(Mutex::new(Allocator::new(pool(), Box::new(store), vec![Ipv4Addr::new(10, 77, 0, 2)])))
}

/// DISCOVER then REQUEST for `mac`, on a blocking thread as the DHCP loop runs it.
async fn lease(allocator: &Arc<Mutex<Allocator>>, mac: MacAddr) -> Result<Lease, AllocError> {
    let allocator = allocator.clone();
    tokio::task::spawn_blocking(move || {
        let mut a = allocator.lock().unwrap();
        let ip = a.offer(mac, None, now())?;
        a.commit(mac, ip, now())
    })
    .await
    .unwrap()
}

/// Every lease record in etcd: address → MAC.
fn stored_leases(lab: &Lab) -> BTreeMap<Ipv4Addr, MacAddr> {
    let out = etcdctl(
        lab,
        &[OsStr::new("get"), OsStr::new("--prefix"), OsStr::new(LEASES), OsStr::new("--print-value-only")],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Lease>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .map(|l| (l.ip, l.mac))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_never_lease_one_address_twice_and_a_new_responder_takes_every_lease_over() {
    let lab = require_ok!(Lab::start(Duration::from_secs(4)).await);
    let kv = Arc::new(KvTasks::new(&lab.socket, "dhcp-leases-test"));

    // Server A is elected; B's campaign does not win while A leads.
    let a_term = campaign(&lab, "10.77.0.2", 0).await.expect("A leads");
    assert_eq!(campaign(&lab, "10.77.0.3", 0).await.unwrap_err(), ErrorCode::Busy);
    // The boot server's own campaign waits its whole round (longer than a plain task's deadline)
    // and ends busy: another server leads, the store is not out of reach.
    let name = KvKey::new(ELECTION.to_string()).unwrap();
    let ttl = TtlMs::new(10_000).unwrap();
    let waited = cluster_dhcp::campaign(&kv, &name, Ipv4Addr::new(10, 77, 0, 3), ttl).await;
    assert_eq!(waited.expect("the store answers").map(drop).unwrap_err().code, ErrorCode::Busy);
    let a = allocator(&kv, a_term.clone()).await;
    let first = lease(&a, mac(1, 1)).await.unwrap();
    assert_eq!(stored_leases(&lab).get(&first.ip), Some(&first.mac));
    let first_key = format!("{LEASES}{}", first.ip);
    let ttl = etcdctl(&lab, &[OsStr::new("get"), OsStr::new(&first_key), OsStr::new("-w"), OsStr::new("json")]);
    assert!(String::from_utf8_lossy(&ttl.stdout).contains("\"lease\":"), "a lease record lives on a store lease");
    let offers =
        etcdctl(&lab, &[OsStr::new("get"), OsStr::new("--prefix"), OsStr::new(OFFERS), OsStr::new("--keys-only")]);
    assert!(String::from_utf8_lossy(&offers.stdout).contains(&first.ip.to_string()), "the offer was held in the store");

    // B, which read the store before A's next leases, answers as if it led too (a stale term
    // check cannot save it here: it shares A's). Both race for the 9 addresses left, 8
    // clients each: every address is leased once, and the losers are told so.
    let b = allocator(&kv, a_term.clone()).await;
    let mut racing = Vec::new();
    for n in 0..8 {
        let (a, b) = (a.clone(), b.clone());
        racing.push(tokio::spawn(async move { lease(&a, mac(1, 10 + n)).await }));
        racing.push(tokio::spawn(async move { lease(&b, mac(2, 10 + n)).await }));
    }
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for task in racing {
        match task.await.unwrap() {
            Ok(l) => won.push(l),
            Err(e) => lost.push(e.to_string()),
        }
    }
    won.push(first.clone());
    eprintln!("racing: {} leases granted, {} refused: {lost:?}", won.len(), lost.len());
    let stored = stored_leases(&lab);
    assert_eq!(stored.len(), won.len(), "every lease granted is in the store, once: {stored:?} {won:?}");
    for l in &won {
        assert_eq!(stored.get(&l.ip), Some(&l.mac), "{} granted to {} is the store's", l.ip, l.mac);
    }
    assert!(won.len() <= 10, "a 10-address pool");
    assert!(lost.len() >= 16 + 1 - 10, "16 clients for 9 addresses: some are refused");
    assert!(
        lost.iter().all(|e| e.contains("given away by another server") || e.contains("no free address")),
        "{lost:?}"
    );

    // A term that ended answers nothing.
    let stale = Term { election: ELECTION.to_string(), lease: a_term.lease + 1 };
    let c = allocator(&kv, stale).await;
    let refused = lease(&c, mac(3, 1)).await.unwrap_err();
    assert!(matches!(refused, AllocError::Store(LeaseStoreError::NotResponder { .. })), "{refused}");

    // A resigns (its node died); B is elected and takes every lease over: A's clients keep
    // their addresses, a new client gets none of theirs.
    let resign = ResignArgs { name: KvKey::new(ELECTION.to_string()).unwrap(), lease: a_term.lease };
    lab.run::<KvResign>(&resign).await.unwrap();
    let b_term = campaign(&lab, "10.77.0.3", 5_000).await.expect("B leads once A is gone");
    let copy = tempfile::tempdir().unwrap();
    let b = allocator_keeping(&kv, b_term, Some(copy.path())).await;
    let again = lease(&b, first.mac).await.unwrap();
    assert_eq!(again.ip, first.ip, "a client keeps its address across responders");
    let before = stored_leases(&lab);
    if before.len() < 10 {
        let fresh = lease(&b, mac(3, 2)).await.unwrap();
        assert!(!before.contains_key(&fresh.ip), "{} was leased already", fresh.ip);
    } else {
        let full = lease(&b, mac(3, 2)).await.unwrap_err();
        assert!(matches!(full, AllocError::PoolExhausted { .. }), "{full}");
    }

    // B's node keeps a copy of every lease. Without the store, it answers from it only the
    // clients holding a lease, with that lease as it is; nobody else.
    let kept = FileLeaseStore::open(copy.path()).unwrap().all().unwrap();
    let mut kept: Vec<(Ipv4Addr, MacAddr)> = kept.iter().map(|l| (l.ip, l.mac)).collect();
    kept.sort();
    assert_eq!(kept, stored_leases(&lab).into_iter().collect::<Vec<_>>(), "the node's copy is the store's");
    let degraded =
        Allocator::new(pool(), Box::new(FileLeaseStore::open(copy.path()).unwrap()), vec![]).known_clients_only();
    let degraded = Arc::new(Mutex::new(degraded));
    let known = lease(&degraded, first.mac).await.unwrap();
    assert_eq!((known.ip, known.expires), (again.ip, again.expires), "the same lease, not extended");
    let unknown = lease(&degraded, mac(5, 1)).await.unwrap_err();
    assert!(matches!(unknown, AllocError::NotKnown { .. }), "{unknown}");

    // A node's file leases are imported once: active ones only, the store's own win.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut file = FileLeaseStore::open(dir.path()).unwrap();
        let taken = Lease { mac: mac(4, 1), ip: first.ip, expires: now() + 600 };
        let free = Lease { mac: mac(4, 2), ip: Ipv4Addr::new(10, 77, 0, 200), expires: now() + 600 };
        let expired = Lease { mac: mac(4, 3), ip: Ipv4Addr::new(10, 77, 0, 201), expires: now() - 10 };
        for l in [taken, free, expired] {
            file.put(l).unwrap();
        }
    }
    assert_eq!(import_file_leases(&kv, dir.path(), now()).await.unwrap(), 1);
    let stored = stored_leases(&lab);
    assert_eq!(stored.get(&first.ip), Some(&first.mac), "the store's lease won");
    assert_eq!(stored.get(&Ipv4Addr::new(10, 77, 0, 200)), Some(&mac(4, 2)));
    assert!(!stored.contains_key(&Ipv4Addr::new(10, 77, 0, 201)));
    assert!(dir.path().join("leases.jsonl.imported").exists());
    assert_eq!(import_file_leases(&kv, dir.path(), now()).await.unwrap(), 0, "once");

    // A member that does not answer brings its copy up to date: what the store dropped goes,
    // what others leased comes.
    let follower = tempfile::tempdir().unwrap();
    let gone = Lease { mac: mac(6, 1), ip: Ipv4Addr::new(10, 77, 0, 230), expires: now() + 600 };
    FileLeaseStore::open(follower.path()).unwrap().put(gone).unwrap();
    let held = refresh_copy(&kv, follower.path().to_path_buf()).await.unwrap();
    let mut kept: Vec<(Ipv4Addr, MacAddr)> =
        FileLeaseStore::read(follower.path()).unwrap().iter().map(|l| (l.ip, l.mac)).collect();
    kept.sort();
    assert_eq!(held, kept.len());
    assert_eq!(kept, stored_leases(&lab).into_iter().collect::<Vec<_>>(), "the follower's copy is the store's");
}
