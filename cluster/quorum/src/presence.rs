//! The node's entry under `/cerana/v1/nodes/NAME` (what `list-nodes` and `cerana get nodes`
//! show): its current figures, on a lease that goes when the node does; and once a minute the
//! same figures added to the node's history (`get-nodes-history`), which keeps a day.

use cerana_observe::procfs;
use cerana_protocol::tasks::clusterconf::{
    node_history_key, node_history_prefix, Node, NODE_HISTORY_EVERY_MS, NODE_HISTORY_KEEP_MS,
};
use cerana_store::Store;

const TTL_SECS: i64 = 10;

/// The lease the entry is on.
#[derive(Debug, Default)]
pub struct Presence {
    lease: Option<i64>,
    /// When the history last had an entry added.
    history_at: u64,
}

impl Presence {
    /// Writes the entry again with fresh figures (and a new lease if the old one expired).
    pub async fn beat(&mut self, store: &Store, name: &str, api_url: Option<&str>) {
        let node = Node { api_url: api_url.map(str::to_owned), ..figures(name) };
        let value = match serde_json::to_string(&node) {
            Ok(value) => value,
            Err(_) => return,
        };
        let key = format!("/cerana/v1/nodes/{name}");
        let kept = match self.lease {
            Some(lease) => {
                store.keep_alive(lease).await.is_ok() && store.put_on_lease(&key, &value, lease).await.is_ok()
            }
            None => false,
        };
        if !kept {
            self.lease = store.put_ephemeral(&key, &value, TTL_SECS).await.ok().map(|(lease, _)| lease);
        }
        if node.heartbeat_ms >= self.history_at + NODE_HISTORY_EVERY_MS {
            let figures = Node { api_url: None, ..node };
            if record_history(store, &figures).await.is_ok() {
                self.history_at = figures.heartbeat_ms;
            }
        }
    }
}

/// Adds `node` to its history and drops the entries older than the history keeps.
pub async fn record_history(store: &Store, node: &Node) -> Result<(), cerana_store::StoreError> {
    let value = serde_json::to_string(node).map_err(|e| cerana_store::StoreError::Invalid(e.to_string()))?;
    store.put(&node_history_key(&node.id, node.heartbeat_ms), &value).await?;
    let oldest_kept = node_history_key(&node.id, node.heartbeat_ms.saturating_sub(NODE_HISTORY_KEEP_MS));
    store.delete_range(&node_history_prefix(&node.id), &oldest_kept).await?;
    Ok(())
}

/// This node's figures now.
pub fn figures(name: &str) -> Node {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let ram = procfs::parse_meminfo(&read("/proc/meminfo")).map(|(ram, _)| ram).ok();
    let load = procfs::parse_loadavg(&read("/proc/loadavg")).map_or(0.0, |l| l.load_1m);
    let (disk_total, disk_free) = nix::sys::statvfs::statvfs("/data")
        .ok()
        .filter(|_| std::path::Path::new("/data/config").is_dir())
        .map_or((0, 0), |v| {
            let frag = v.fragment_size();
            (v.blocks() * frag, v.blocks_available() * frag)
        });
    Node {
        id: name.to_owned(),
        heartbeat_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        memory_total: ram.as_ref().map_or(0, |r| r.total_bytes),
        memory_free: ram.as_ref().map_or(0, |r| r.available_bytes),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        cpu_load: load,
        disk_total,
        disk_free,
        api_url: None,
        mod_index: 0,
    }
}

/// The coordinators' base URLs of the nodes with an entry, and `also` (sorted, once each): the
/// cluster's members, to which a coordinator forwards tasks.
pub async fn members_api_urls(store: &Store, also: &[String]) -> Result<Vec<String>, cerana_store::StoreError> {
    let entries = store.list("/cerana/v1/nodes/", None, 4096, false).await?;
    let mut urls: Vec<String> = entries
        .entries
        .iter()
        .filter_map(|e| serde_json::from_str::<Node>(&e.value).ok()?.api_url)
        .chain(also.iter().cloned())
        .collect();
    urls.sort();
    urls.dedup();
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_this_hosts() {
        let node = figures("n1");
        assert_eq!(node.id, "n1");
        assert!(node.memory_total > 0 && node.memory_free <= node.memory_total, "{node:?}");
        assert!(node.cpu_cores > 0 && node.heartbeat_ms > 0, "{node:?}");
    }
}
