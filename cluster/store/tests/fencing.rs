//! Fenced writes against a real 3-member etcd (issue #18): a leader writes only while its
//! election key is the one it created. A leader whose lease ran out while it was paused (a GC
//! pause, a stalled VM) comes back believing it leads; its late write is refused, and the new
//! leader's writes go through.

use cerana_store::{Store, StoreConfig, StoreError};
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;
use std::time::Duration;

const ELECTION: &str = "/test/ticks/leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_write_is_refused() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap());
    let config = StoreConfig { op_timeout: Duration::from_secs(5), ..StoreConfig::new(etcd.endpoints()) };
    let (a, b) = (Store::connect(&config).await.unwrap(), Store::connect(&config).await.unwrap());

    let first = a.campaign(ELECTION, "node-a", 2, Duration::ZERO).await.expect("node-a leads");
    a.put_fenced(&first, "/test/ticks/plan", "from node-a").await.expect("the leader writes");
    assert!(a.still_leads(&first).await.unwrap());
    let held = b.campaign(ELECTION, "node-b", 2, Duration::ZERO).await.unwrap_err();
    assert!(matches!(held, StoreError::Held { .. }), "{held}");
    // node-b's withdrawn campaign must not count as leading, nor be able to write.
    let pretender = cerana_store::Holder { key: format!("{ELECTION}/1"), value: "node-b".into(), lease: 1, token: 1 };
    assert!(matches!(b.put_fenced(&pretender, "/test/ticks/plan", "x").await, Err(StoreError::Deposed { .. })));

    // node-a stops renewing (paused): its lease runs out, node-b takes over.
    let took_over = b.campaign(ELECTION, "node-b", 30, Duration::from_secs(10)).await.expect("node-b leads next");
    assert!(took_over.token > first.token, "terms grow: {} then {}", first.token, took_over.token);
    assert!(!a.still_leads(&first).await.unwrap());

    // node-a wakes up and writes as if it still led: refused, nothing written.
    let late = a.put_fenced(&first, "/test/ticks/plan", "late, from node-a").await.unwrap_err();
    assert_eq!(late, StoreError::Deposed { key: first.key.clone(), term: first.token });
    assert!(late.to_string().contains("no longer leads"), "{late}");
    let late = a.delete_fenced(&first, "/test/ticks/plan").await.unwrap_err();
    assert!(matches!(late, StoreError::Deposed { .. }), "{late}");
    assert_eq!(a.get("/test/ticks/plan").await.unwrap().unwrap().value, "from node-a");

    b.put_fenced(&took_over, "/test/ticks/plan", "from node-b").await.expect("the new leader writes");
    b.delete_fenced(&took_over, "/test/ticks/other").await.expect("a fenced delete of nothing is no error");
    assert_eq!(a.get("/test/ticks/plan").await.unwrap().unwrap().value, "from node-b");
}
