//! The `kv-*` tasks through a coordinator against a real 3-member etcd (issue #16): every task
//! and its errors, member failures, a watch resumed across a provider restart, and no lost
//! update under concurrent compare-and-swap writers.

mod common;

use cerana_protocol::tasks::kv::*;
use cerana_protocol::ErrorCode;
use cerana_testbed::require_ok;
use common::{etcdctl, Lab};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn key(k: &str) -> KvKey {
    KvKey::new(k).unwrap()
}

fn value(v: &str) -> KvValue {
    KvValue::new(v).unwrap()
}

fn ttl(ms: u64) -> TtlMs {
    TtlMs::new(ms).unwrap()
}

fn set_args(k: &str, v: &str) -> SetArgs {
    SetArgs { key: key(k), value: value(v) }
}

fn list_args(prefix: &str, after: Option<&str>, limit: Option<u32>) -> ListArgs {
    ListArgs { prefix: KvPrefix::new(prefix).unwrap(), after: after.map(key), limit }
}

fn current_index(e: &cerana_protocol::TaskError) -> u64 {
    e.details.as_ref().and_then(|d| d["current_index"].as_u64()).unwrap_or_else(|| panic!("no current_index: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_task_and_its_errors() {
    let lab = require_ok!(Lab::start(Duration::from_secs(5)).await);

    // Set, get, compare-and-swap.
    let first = lab.run::<KvSet>(&set_args("/t/a", "1")).await.unwrap().index;
    let got = lab.run::<KvGet>(&KeyArgs { key: key("/t/a") }).await.unwrap();
    assert_eq!((got.value.as_str(), got.index, got.lease), ("1", first, None));
    let err = lab.run::<KvGet>(&KeyArgs { key: key("/t/none") }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    let err = lab
        .run::<KvUpdate>(&UpdateArgs { key: key("/t/a"), value: value("x"), index: 0, ttl_ms: None })
        .await
        .unwrap_err();
    assert_eq!((err.code.clone(), current_index(&err)), (ErrorCode::Conflict, first), "index 0 only creates");
    let second = lab
        .run::<KvUpdate>(&UpdateArgs { key: key("/t/a"), value: value("2"), index: first, ttl_ms: None })
        .await
        .unwrap();
    assert!(second.index > first);
    let err = lab
        .run::<KvUpdate>(&UpdateArgs { key: key("/t/a"), value: value("3"), index: first, ttl_ms: None })
        .await
        .unwrap_err();
    assert_eq!((err.code.clone(), current_index(&err)), (ErrorCode::Conflict, second.index), "a stale index");
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/t/a") }).await.unwrap().value, "2", "nothing written");
    lab.run::<KvUpdate>(&UpdateArgs { key: key("/t/new"), value: value("n"), index: 0, ttl_ms: None }).await.unwrap();

    // Compare-and-swap onto a lease: the key goes with it; a lost swap leaves no lease behind.
    let bound = UpdateArgs { key: key("/t/leased"), value: value("l"), index: 0, ttl_ms: Some(ttl(2000)) };
    let made = lab.run::<KvUpdate>(&bound).await.unwrap();
    let lease = made.lease.expect("a lease");
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/t/leased") }).await.unwrap().lease, Some(lease));
    let err = lab.run::<KvUpdate>(&bound).await.unwrap_err();
    assert_eq!((err.code.clone(), current_index(&err)), (ErrorCode::Conflict, made.index));
    let renewed = UpdateArgs { index: made.index, ttl_ms: Some(ttl(60_000)), ..bound.clone() };
    let renewed = lab.run::<KvUpdate>(&renewed).await.unwrap();
    assert_ne!(renewed.lease, Some(lease), "a new lease each write");
    lab.run::<KvEphemeralDestroy>(&LeaseArgs { lease }).await.unwrap();
    let kept = lab.run::<KvGet>(&KeyArgs { key: key("/t/leased") }).await.unwrap();
    assert_eq!(kept.lease, renewed.lease, "revoking the old lease leaves the key on its new one");
    lab.run::<KvEphemeralDestroy>(&LeaseArgs { lease: renewed.lease.unwrap() }).await.unwrap();
    let err = lab.run::<KvGet>(&KeyArgs { key: key("/t/leased") }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "gone with its lease");

    // Paged listings in key order.
    for i in 0..25 {
        lab.run::<KvSet>(&set_args(&format!("/p/{i:02}"), &i.to_string())).await.unwrap();
    }
    lab.run::<KvSet>(&set_args("/pz", "not under /p/")).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 5, "paging never ended");
        let list = lab.run::<KvGetAll>(&list_args("/p/", after.as_deref(), Some(10))).await.unwrap();
        assert!(list.entries.len() <= 10);
        seen.extend(list.entries.iter().map(|e| (e.key.clone(), e.value.clone())));
        after = list.entries.last().map(|e| e.key.clone());
        if !list.more {
            break;
        }
    }
    let expected: Vec<(String, String)> = (0..25).map(|i| (format!("/p/{i:02}"), i.to_string())).collect();
    assert_eq!(seen, expected);
    let keys = lab.run::<KvKeys>(&list_args("/p/", Some("/p/19"), None)).await.unwrap();
    assert_eq!(keys.keys, ["/p/20", "/p/21", "/p/22", "/p/23", "/p/24"]);
    assert!(!keys.more && keys.index >= second.index);
    let err = lab.run::<KvKeys>(&list_args("/p/", None, Some(MAX_PAGE + 1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");

    // Deletes: plain, recursive (not touching a sibling that merely shares the prefix), and
    // conditional.
    for k in ["/r", "/r/a", "/r/b/c", "/rx"] {
        lab.run::<KvSet>(&set_args(k, "v")).await.unwrap();
    }
    let gone = lab.run::<KvDelete>(&DeleteArgs { key: key("/r"), recursive: true }).await.unwrap();
    assert_eq!(gone.deleted, 3);
    assert!(lab.run::<KvGet>(&KeyArgs { key: key("/rx") }).await.is_ok());
    let gone = lab.run::<KvDelete>(&DeleteArgs { key: key("/rx"), recursive: false }).await.unwrap();
    assert_eq!(gone.deleted, 1);
    let now = lab.run::<KvGet>(&KeyArgs { key: key("/t/a") }).await.unwrap().index;
    let err = lab.run::<KvRemove>(&RemoveArgs { key: key("/t/a"), index: first }).await.unwrap_err();
    assert_eq!((err.code.clone(), current_index(&err)), (ErrorCode::Conflict, now));
    lab.run::<KvRemove>(&RemoveArgs { key: key("/t/a"), index: now }).await.unwrap();
    let err = lab.run::<KvRemove>(&RemoveArgs { key: key("/t/a"), index: now }).await.unwrap_err();
    assert_eq!((err.code.clone(), current_index(&err)), (ErrorCode::Conflict, 0), "gone: index 0");

    // Bad input: a clear error, nothing written.
    let before = lab.run::<KvKeys>(&list_args("", None, None)).await.unwrap().keys;
    let long_key = format!(r#"{{"key":"{}","value":"v"}}"#, "k".repeat(MAX_KEY_BYTES + 1));
    let big_value = format!(r#"{{"key":"/big","value":"{}"}}"#, "v".repeat(MAX_VALUE_BYTES + 1));
    for (task, args, says) in [
        ("kv-set", r#"{"key":"","value":"v"}"#, "may not be empty"),
        ("kv-set", r#"{"key":"/a\u001b[2J","value":"v"}"#, "control characters"),
        ("kv-set", long_key.as_str(), "at most 1024 bytes"),
        ("kv-set", big_value.as_str(), "at most 1048576 bytes"),
        ("kv-set", r#"{"key":"/a","value":7}"#, "invalid type"),
        ("kv-update", r#"{"key":"/a","value":"v"}"#, "missing field `index`"),
        ("kv-delete", r#"{"key":"/a","recurse":true}"#, "unknown field `recurse`"),
        ("kv-lock", r#"{"key":"/l","ttl_ms":5}"#, "ttl_ms must be"),
    ] {
        let err = lab.raw(task, args).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgs, "{task} {args:.60}: {err}");
        assert!(err.message.contains(says), "{task}: {err}");
    }
    let err = lab.raw("kv-campaign", r#"{"name":"/e","value":"v","ttl_ms":5000,"wait_ms":60000}"#).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert_eq!(lab.run::<KvKeys>(&list_args("", None, None)).await.unwrap().keys, before, "nothing was written");
    // A value someone else stored that is not UTF-8.
    let out = etcdctl(&lab, &[OsStr::new("put"), OsStr::new("/t/binary"), OsStr::from_bytes(b"\xff\xfe")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = lab.run::<KvGet>(&KeyArgs { key: key("/t/binary") }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert!(err.message.contains("not UTF-8"), "{err}");

    // Ephemeral keys live as long as their lease.
    let eph = lab
        .run::<KvEphemeralSet>(&EphemeralSetArgs { key: key("/eph/a"), value: value("here"), ttl_ms: ttl(30_000) })
        .await
        .unwrap();
    assert_eq!(eph.ttl_ms, 30_000);
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/eph/a") }).await.unwrap().lease, Some(eph.lease));
    let renewed = lab.run::<KvEphemeralRefresh>(&LeaseArgs { lease: eph.lease }).await.unwrap();
    assert_eq!(renewed.ttl_ms, 30_000);
    lab.run::<KvEphemeralDestroy>(&LeaseArgs { lease: eph.lease }).await.unwrap();
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/eph/a") }).await.unwrap_err().code, ErrorCode::NotFound);
    let err = lab.run::<KvEphemeralRefresh>(&LeaseArgs { lease: eph.lease }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    lab.run::<KvEphemeralSet>(&EphemeralSetArgs { key: key("/eph/b"), value: value("x"), ttl_ms: ttl(1000) })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.run::<KvGet>(&KeyArgs { key: key("/eph/b") }).await.is_ok() {
        assert!(Instant::now() < deadline, "an unrefreshed 1 s key outlived 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Locks with fencing tokens.
    let lock = LockArgs { key: key("/locks/x"), ttl_ms: ttl(10_000) };
    let held = lab.run::<KvLock>(&lock).await.unwrap();
    let err = lab.run::<KvLock>(&lock).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Busy, "{err}");
    assert_eq!(err.details.as_ref().unwrap()["token"], held.token);
    lab.run::<KvRenew>(&LeaseArgs { lease: held.lease }).await.unwrap();
    let err = lab.run::<KvUnlock>(&UnlockArgs { key: key("/locks/x"), token: held.token + 1 }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "a wrong token: {err}");
    lab.run::<KvUnlock>(&UnlockArgs { key: key("/locks/x"), token: held.token }).await.unwrap();
    let err = lab.run::<KvUnlock>(&UnlockArgs { key: key("/locks/x"), token: held.token }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    let err = lab.run::<KvRenew>(&LeaseArgs { lease: held.lease }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "unlock revoked the lease: {err}");
    let again = lab.run::<KvLock>(&lock).await.unwrap();
    assert!(again.token > held.token, "fencing tokens grow");

    // Elections.
    let campaign =
        |v: &str, wait_ms| CampaignArgs { name: key("/elect/tick"), value: value(v), ttl_ms: ttl(10_000), wait_ms };
    let a = lab.run::<KvCampaign>(&campaign("node-a", 0)).await.unwrap();
    let err = lab.run::<KvCampaign>(&campaign("node-b", 0)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Busy, "{err}");
    assert_eq!(err.details.as_ref().unwrap()["holder_lease"], a.lease);
    let leader = lab.run::<KvLeader>(&ElectionArgs { name: key("/elect/tick") }).await.unwrap();
    assert_eq!((leader.value.as_str(), leader.lease), ("node-a", a.lease));
    let is = |lease| ResignArgs { name: key("/elect/tick"), lease };
    assert!(lab.run::<KvIsLeader>(&is(a.lease)).await.unwrap().leader);
    let waiting = {
        let client = lab.client.clone();
        tokio::spawn(async move { client.run::<KvCampaign>(&campaign("node-b", 20_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "node-b leads while node-a still does");
    lab.run::<KvResign>(&is(a.lease)).await.unwrap();
    let b = waiting.await.unwrap().expect("node-b leads once node-a resigns");
    assert!(b.index > a.index);
    assert!(!lab.run::<KvIsLeader>(&is(a.lease)).await.unwrap().leader);
    assert_eq!(lab.run::<KvLeader>(&ElectionArgs { name: key("/elect/tick") }).await.unwrap().value, "node-b");
    assert_eq!(lab.run::<KvResign>(&is(a.lease)).await.unwrap_err().code, ErrorCode::NotFound);
    let err = lab.run::<KvLeader>(&ElectionArgs { name: key("/elect/none") }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);

    // A watch sees puts and deletes in order; a start in compacted history is refused.
    let (start, mut lines) = lab.watch("/w/", None).await.unwrap();
    let put = lab.run::<KvSet>(&set_args("/w/a", "1")).await.unwrap().index;
    lab.run::<KvSet>(&set_args("/other", "not watched")).await.unwrap();
    let del = lab.run::<KvDelete>(&DeleteArgs { key: key("/w/a"), recursive: false }).await.unwrap().index;
    assert!(start <= put);
    let within = Duration::from_secs(10);
    assert_eq!(
        lines.next_change(within).await,
        Some(WatchEvent::Put { key: "/w/a".into(), value: "1".into(), index: put })
    );
    assert_eq!(lines.next_change(within).await, Some(WatchEvent::Delete { key: "/w/a".into(), index: del }));
    let out = etcdctl(&lab, &[OsStr::new("compact"), OsStr::new(&del.to_string())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = lab.watch("/w/", Some(put)).await.err().expect("a watch from compacted history fails");
    assert_eq!(err.code, ErrorCode::Compacted, "{err}");
    assert_eq!(err.details.as_ref().unwrap()["compacted_index"], del - 1);
}

/// 8 clients each do 200 read-then-`kv-update` increments of one counter: every update that
/// succeeded is counted once, and every failure is a typed conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_update_is_lost_under_concurrent_compare_and_swap() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 200;
    let lab = Arc::new(require_ok!(Lab::start(Duration::from_secs(5)).await));
    lab.run::<KvSet>(&set_args("/counter", "0")).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let lab = lab.clone();
        workers.push(tokio::spawn(async move {
            let (mut won, mut lost) = (0u64, 0u64);
            for _ in 0..ROUNDS {
                let read = lab.run::<KvGet>(&KeyArgs { key: key("/counter") }).await.unwrap();
                let next = read.value.parse::<u64>().unwrap() + 1;
                let update = UpdateArgs {
                    key: key("/counter"),
                    value: value(&next.to_string()),
                    index: read.index,
                    ttl_ms: None,
                };
                match lab.run::<KvUpdate>(&update).await {
                    Ok(_) => won += 1,
                    Err(e) if e.code == ErrorCode::Conflict => lost += 1,
                    Err(e) => panic!("an update failed other than by conflict: {e}"),
                }
            }
            (won, lost)
        }));
    }
    let (mut won, mut lost) = (0, 0);
    for worker in workers {
        let (w, l) = worker.await.unwrap();
        won += w;
        lost += l;
    }
    let counter: u64 = lab.run::<KvGet>(&KeyArgs { key: key("/counter") }).await.unwrap().value.parse().unwrap();
    println!("{} attempts: {won} updates, {lost} conflicts; counter {counter}", CLIENTS * ROUNDS);
    assert_eq!(won + lost, (CLIENTS * ROUNDS) as u64);
    assert_eq!(counter, won, "the counter holds exactly the successful updates");
    assert!(won > 0 && lost > 0, "the writers did contend");
}

/// A watch broken by a provider killed mid-stream resumes from the last index seen + 1 and
/// delivers every later change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_provider_restart() {
    const WRITES: u64 = 60;
    let mut lab = require_ok!(Lab::start(Duration::from_secs(5)).await);
    let store = cerana_store::Store::connect(&cerana_store::StoreConfig::new(lab.etcd.endpoints())).await.unwrap();
    let (_, mut lines) = lab.watch("/seq/", None).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..WRITES {
            store.put(&format!("/seq/{}", i % 3), &i.to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let within = Duration::from_secs(15);
    while seen.len() < 15 {
        match lines.next_change(within).await {
            Some(WatchEvent::Put { value, index, .. }) => seen.push((value.parse().unwrap(), index)),
            other => panic!("unexpected before the restart: {other:?}"),
        }
    }
    lab.restart_provider().await;
    // The old stream ends (broken or with an error line); whatever it still delivered counts.
    loop {
        match lines.next(within).await {
            Some(WatchEvent::Put { value, index, .. }) => seen.push((value.parse().unwrap(), index)),
            Some(WatchEvent::Progress { .. }) => {}
            Some(WatchEvent::Error { .. }) | None => break,
            Some(other) => panic!("unexpected: {other:?}"),
        }
    }
    let resume = seen.last().unwrap().1 + 1;
    let (start, mut lines) = lab.watch("/seq/", Some(resume)).await.unwrap();
    assert_eq!(start, resume);
    while seen.last().unwrap().0 < WRITES - 1 {
        match lines.next_change(within).await {
            Some(WatchEvent::Put { value, index, .. }) => seen.push((value.parse().unwrap(), index)),
            other => panic!("unexpected after the restart: {other:?}"),
        }
    }
    writer.await.unwrap();
    let values: Vec<u64> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (0..WRITES).collect::<Vec<_>>(), "every change exactly once, in order");
}

/// One member down: writes go on. Two down: every task answers `unavailable` within the
/// timeout. Members back: the provider recovers by itself, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_members_then_quorum_then_recovering() {
    // Long enough for an election under load (2 cores shared with the rest of the suite).
    let timeout = Duration::from_secs(4);
    let mut lab = require_ok!(Lab::start(timeout).await);
    lab.run::<KvSet>(&set_args("/q/before", "kept")).await.unwrap();
    lab.etcd.kill(0);
    for i in 0..20 {
        let args = set_args(&format!("/q/one-down/{i}"), "v");
        lab.run::<KvSet>(&args).await.unwrap_or_else(|e| panic!("write {i} with one member down: {e}"));
    }
    let read = lab.run::<KvGet>(&KeyArgs { key: key("/q/before") }).await.unwrap();
    let update = UpdateArgs { key: key("/q/before"), value: value("kept"), index: read.index, ttl_ms: None };
    lab.run::<KvUpdate>(&update).await.expect("a compare-and-swap with one member down");
    let members = lab.run::<KvMembers>(&cerana_protocol::NoArgs {}).await.unwrap().members;
    let health: Vec<(bool, bool)> = members.iter().map(|m| (m.voter, m.healthy)).collect();
    assert_eq!(members.len(), 3);
    assert_eq!(health.iter().filter(|(voter, healthy)| *voter && *healthy).count(), 2, "{members:?}");
    let down = members.iter().find(|m| !m.healthy).unwrap();
    assert_eq!(down.name, "m0");
    assert_eq!(members.iter().filter(|m| m.leader).count(), 1, "one leader among the living: {members:?}");
    assert!(!down.leader);
    lab.etcd.kill(1);
    for (task, args) in [
        ("kv-set", r#"{"key":"/q/x","value":"v"}"#),
        ("kv-get", r#"{"key":"/q/before"}"#),
        ("kv-update", r#"{"key":"/q/before","value":"v","index":1}"#),
        ("kv-lock", r#"{"key":"/q/lock","ttl_ms":5000}"#),
        ("kv-getall", r#"{"prefix":"/q/"}"#),
    ] {
        let began = Instant::now();
        let err = lab.raw(task, args).await.unwrap_err();
        let took = began.elapsed();
        assert_eq!(err.code, ErrorCode::Unavailable, "{task} without quorum: {err}");
        assert!(took < timeout + Duration::from_millis(1500), "{task} took {took:?} (timeout {timeout:?})");
        println!("{task} without quorum: unavailable after {} ms", took.as_millis());
    }
    let err = lab.watch("/q/", None).await.err().expect("no watch without quorum");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    lab.etcd.restart(0).unwrap();
    lab.etcd.restart(1).unwrap();
    let began = Instant::now();
    let deadline = began + Duration::from_secs(30);
    // Recovered: a write and a read both answer (a member that has just come back may stall
    // reads for a moment while it catches up).
    loop {
        let write = lab.run::<KvSet>(&set_args("/q/after", "v")).await;
        let read = match write {
            Ok(_) => lab.run::<KvGet>(&KeyArgs { key: key("/q/after") }).await.map(drop),
            Err(e) => Err(e),
        };
        match read {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
                assert!(Instant::now() < deadline, "no recovery within 30 s: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    println!("writes and reads again {} ms after the members restarted", began.elapsed().as_millis());
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/q/before") }).await.unwrap().value, "kept");
    let keys = lab.run::<KvKeys>(&list_args("/q/one-down/", None, None)).await.unwrap().keys;
    assert_eq!(keys.len(), 20);
}

/// Peers and clients over mutual TLS from the cluster's CA: the provider holding a certificate
/// works; a client without one is refused, and one trusting another CA refuses the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_mutual_tls() {
    let lab = require_ok!(Lab::start_tls(Duration::from_secs(5)).await);
    assert!(lab.etcd.endpoints().iter().all(|e| e.starts_with("https://")));
    let index = lab.run::<KvSet>(&set_args("/tls/a", "secret")).await.unwrap().index;
    assert_eq!(lab.run::<KvGet>(&KeyArgs { key: key("/tls/a") }).await.unwrap().index, index);
    let members = lab.run::<KvMembers>(&cerana_protocol::NoArgs {}).await.unwrap().members;
    assert!(members.iter().all(|m| m.healthy && m.peer_urls[0].starts_with("https://")), "{members:?}");

    let tls = lab.etcd.tls().unwrap();
    let mut config = cerana_store::StoreConfig::new(lab.etcd.endpoints());
    config.op_timeout = Duration::from_secs(2);
    let ca = etcd_client::Certificate::from_pem(std::fs::read(&tls.ca).unwrap());
    let anonymous = etcd_client::ConnectOptions::new()
        .with_tls(etcd_client::TlsOptions::new().ca_certificate(ca))
        .with_timeout(Duration::from_secs(2));
    let client = etcd_client::Client::connect(lab.etcd.endpoints(), Some(anonymous)).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), client.kv_client().get("/tls/a", None)).await;
    assert!(!matches!(read, Ok(Ok(_))), "a client without a certificate read the store");
    let other_ca = cerana_testbed::etcd::EtcdCluster::start_tls(1).unwrap();
    let foreign = other_ca.tls().unwrap();
    config.tls =
        Some(cerana_store::StoreTls::from_files(&foreign.ca, &foreign.client_cert, &foreign.client_key).unwrap());
    let stranger = cerana_store::Store::connect(&config).await.unwrap();
    assert!(stranger.get("/tls/a").await.is_err(), "a certificate from another CA was accepted");
}
