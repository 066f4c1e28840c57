//! The node tick: what this node runs (each bundle's services, their state and health) and
//! which cluster datasets it holds, reported under `REPORTS/NODE` on a lease of the heartbeat
//! TTL. The lease is kept alive every beat; the report is written again when it changes, and
//! at least every [`REWRITE`] so its `at_ms` says how fresh it is.

use crate::caller::Caller;
use crate::settings::Settings;
use cerana_protocol::tasks::clusterconf::DATASETS_ON_POOL;
use cerana_protocol::tasks::service::{ListArgs, ServiceGet, ServiceInfo, ServiceList, ServiceRef, ServiceState};
use cerana_protocol::tasks::ticks::{NodeReport, ServiceReport, REPORTS};
use cerana_protocol::tasks::zfs::{DatasetType, ListArgs as ZfsListArgs, ZfsList};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_store::Store;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest a report goes without being written again.
pub const REWRITE: Duration = Duration::from_secs(10);
/// Health checks and the dataset listing (a `zfs list` each) run every this many beats; a
/// dataset changes only by the ticks' own copies and imports, which the leader accounts for.
const SLOW_EVERY: u32 = 5;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Starting => "starting",
        ServiceState::Running => "running",
        ServiceState::Restarting => "restarting",
        ServiceState::Exited => "exited",
        ServiceState::Failed => "failed",
    }
}

/// The bundles of `services`, with each service's health from `health` where known.
pub fn bundles_of(
    services: &[ServiceInfo],
    health: &BTreeMap<(String, String), bool>,
) -> BTreeMap<String, BTreeMap<String, ServiceReport>> {
    let mut bundles: BTreeMap<String, BTreeMap<String, ServiceReport>> = BTreeMap::new();
    for s in services {
        let report = ServiceReport {
            state: state_name(s.state).into(),
            healthy: health.get(&(s.bundle_id.clone(), s.id.clone())).copied(),
            clone: s.clone.clone(),
            definition: s.definition.clone(),
        };
        bundles.entry(s.bundle_id.clone()).or_default().insert(s.id.clone(), report);
    }
    bundles
}

/// Cluster datasets (`data/datasets/ID`) and their snapshots, oldest first, from a listing.
pub fn datasets_of(listing: &[cerana_protocol::tasks::zfs::Dataset]) -> BTreeMap<String, Vec<String>> {
    let prefix = format!("{DATASETS_ON_POOL}/");
    let mut held: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for d in listing {
        let Some(rest) = d.name.strip_prefix(&prefix) else { continue };
        match (d.kind, rest.split_once('@')) {
            (DatasetType::Filesystem, None) if !rest.contains('/') => {
                held.entry(rest.to_owned()).or_default();
            }
            (DatasetType::Snapshot, Some((id, snap))) if !id.contains('/') => {
                held.entry(id.to_owned()).or_default().push((d.creation, snap.to_owned()));
            }
            _ => {}
        }
    }
    held.into_iter()
        .map(|(id, mut snaps)| {
            snaps.sort();
            (id, snaps.into_iter().map(|(_, s)| s).collect())
        })
        .collect()
}

/// The node tick's loop state.
#[derive(Debug)]
pub struct Reporter {
    name: String,
    settings: Settings,
    lease: Option<i64>,
    written: Option<(NodeReport, Instant)>,
    health: BTreeMap<(String, String), bool>,
    beats: u32,
}

impl Reporter {
    pub fn new(name: String, settings: Settings) -> Self {
        Self { name, settings, lease: None, written: None, health: BTreeMap::new(), beats: 0 }
    }

    async fn observe(&mut self, caller: &Caller) -> Result<NodeReport, TaskError> {
        let timeout = Duration::from_secs(10);
        let services = caller.call::<ServiceList>(None, &ListArgs::default(), None, timeout).await?.output.services;
        let slow = self.beats % SLOW_EVERY == 1;
        if slow {
            let mut health = BTreeMap::new();
            for s in services.iter().filter(|s| s.state == ServiceState::Running) {
                let r = ServiceRef { id: s.id.clone(), bundle_id: s.bundle_id.clone() };
                if let Ok(info) = caller.call::<ServiceGet>(None, &r, None, timeout).await {
                    if let Some(h) = info.output.health {
                        health.insert((s.bundle_id.clone(), s.id.clone()), h.healthy);
                    }
                }
            }
            self.health = health;
        }
        let datasets = match (&self.written, slow) {
            (Some((last, _)), false) => last.datasets.clone(),
            _ => {
                let list = ZfsListArgs {
                    name: Some(DATASETS_ON_POOL.into()),
                    types: vec![DatasetType::Filesystem, DatasetType::Snapshot],
                    depth: Some(2),
                };
                match caller.call::<ZfsList>(None, &list, None, timeout).await {
                    Ok(answer) => datasets_of(&answer.output.datasets),
                    // No pool, or nothing imported here yet.
                    Err(e) if e.code == ErrorCode::NotFound => BTreeMap::new(),
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(NodeReport {
            node: self.name.clone(),
            at_ms: now_ms(),
            bundles: bundles_of(&services, &self.health),
            datasets,
        })
    }

    /// One beat: observe, then write or keep the report alive.
    pub async fn beat(&mut self, store: &Store, caller: &Caller) {
        self.beats = self.beats.wrapping_add(1);
        let observed = self.observe(caller).await;
        let key = format!("{REPORTS}/{}", self.name);
        let report = match observed {
            Ok(report) => report,
            Err(e) => {
                // What the node runs is unknown this beat: the last report stands while the
                // lease lives (the node itself is up).
                tracing::warn!("cannot observe this node: {e}");
                if let Some(lease) = self.lease {
                    if store.keep_alive(lease).await.is_err() {
                        self.lease = None;
                    }
                }
                return;
            }
        };
        let same = self.written.as_ref().is_some_and(|(last, at)| {
            last.bundles == report.bundles && last.datasets == report.datasets && at.elapsed() < REWRITE
        });
        if let Some(lease) = self.lease {
            // A TTL of 0: the lease lapsed (a partition, say) and the report went with it.
            if matches!(store.keep_alive(lease).await, Ok(ttl) if ttl > 0) {
                if same {
                    return;
                }
                if let Ok(value) = serde_json::to_string(&report) {
                    if store.put_on_lease(&key, &value, lease).await.is_ok() {
                        self.written = Some((report, Instant::now()));
                        return;
                    }
                }
            }
            self.lease = None;
        }
        let Ok(value) = serde_json::to_string(&report) else { return };
        match store.put_ephemeral(&key, &value, self.settings.lease_secs()).await {
            Ok((lease, _)) => {
                self.lease = Some(lease);
                self.written = Some((report, Instant::now()));
            }
            Err(e) => tracing::warn!("cannot write this node's report: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::tasks::zfs::Dataset;

    fn ds(name: &str, kind: DatasetType, creation: u64) -> Dataset {
        serde_json::from_value(serde_json::json!({
            "name": name, "type": kind, "guid": 1, "creation": creation, "used": 0, "available": null,
            "referenced": 0, "mountpoint": null, "mounted": null, "origin": null
        }))
        .unwrap()
    }

    #[test]
    fn cluster_datasets_and_their_snapshots_in_creation_order() {
        let listing = [
            ds("data/datasets", DatasetType::Filesystem, 1),
            ds("data/datasets/web", DatasetType::Filesystem, 2),
            ds("data/datasets/web@v2", DatasetType::Snapshot, 9),
            ds("data/datasets/web@import", DatasetType::Snapshot, 3),
            ds("data/datasets/empty", DatasetType::Filesystem, 4),
            ds("data/datasets/web/child", DatasetType::Filesystem, 5),
            ds("data/other@x", DatasetType::Snapshot, 5),
        ];
        let held = datasets_of(&listing);
        assert_eq!(held.len(), 2, "{held:?}");
        assert_eq!(held["web"], ["import", "v2"]);
        assert!(held["empty"].is_empty());
    }
}
