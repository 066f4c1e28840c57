//! A node's history in a real etcd: an entry a minute as the agent adds them, and what is
//! older than a day dropped as each is added.

use cerana_protocol::tasks::clusterconf::{Node, NODE_HISTORY_KEEP_MS};
use cerana_quorum::presence::record_history;
use cerana_store::{Store, StoreConfig};
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_history_keeps_a_day() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap());
    let store = Store::connect(&StoreConfig::new(etcd.endpoints())).await.expect("store");
    let node = |id: &str, at: u64| Node {
        id: id.into(),
        heartbeat_ms: at,
        memory_total: 1 << 30,
        memory_free: at,
        cpu_cores: 1,
        cpu_load: 0.5,
        disk_total: 0,
        disk_free: 0,
        api_url: None,
        mod_index: 0,
    };
    let minute = 60_000;
    let t0 = 1_800_000_000_000;
    for i in 0..5 {
        record_history(&store, &node("n1", t0 + i * minute)).await.expect("record");
    }
    record_history(&store, &node("n2", t0)).await.expect("record");
    let held = |id: &'static str| {
        let store = store.clone();
        async move {
            let prefix = format!("/cerana/v1/nodes-history/{id}/");
            let page = store.list(&prefix, None, 100, false).await.expect("list");
            page.entries
                .iter()
                .map(|e| serde_json::from_str::<Node>(&e.value).unwrap().heartbeat_ms)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(held("n1").await, (0..5).map(|i| t0 + i * minute).collect::<Vec<_>>());

    // A day and two minutes after the first: the first two are older than a day.
    let later = t0 + NODE_HISTORY_KEEP_MS + 2 * minute;
    record_history(&store, &node("n1", later)).await.expect("record");
    let mut want: Vec<u64> = (2..5).map(|i| t0 + i * minute).collect();
    want.push(later);
    assert_eq!(held("n1").await, want, "the day before the newest entry is kept, what is older dropped");
    assert_eq!(held("n2").await, [t0], "another node's history is its own");
}
