//! The ticks end to end on the host, against a real 3-member etcd: two nodes (coordinators over
//! HTTP, each with the real `ticks` provider and loops) report, elect a leader, copy a dataset
//! from the node that holds it to the other through a cross-node stream, run a bundle of
//! redundancy 2 on both, refuse a deposed leader's order, and remove everything once the bundle
//! is deleted. Containers and ZFS run only in VMs (`make test-cluster` runs the same there):
//! here the nodes' `service-*` and `zfs-*` tasks are doubles that keep their state in memory.

use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::tasks::netns::{
    AddressArgs, BundleRef as FwBundleRef, FirewallApply, FirewallApplyArgs, FirewallInfo, FirewallList,
    FirewallListResult, FirewallRemove, GuardApply, GuardArgs, GuardInfo, LinkInfo, LinkListResult, NetnsAddressAdd,
    NetnsAddressDelete, NetnsArgs, NetnsCreate, NetnsDelete, NetnsInfo, NetnsLinkList, NetnsList, NetnsListResult,
    NetnsRef, NetnsRouteAdd, NetnsRouteDelete, NetnsRouteList, NetnsVethAdd, PublishApply, PublishArgs, PublishInfo,
    PublishList, PublishListResult, PublishRemove, RouteArgs, RouteInfo, RouteListResult, VethAddArgs, VethAddResult,
};
use cerana_protocol::tasks::service::{
    CreateArgs as ServiceCreateArgs, ListArgs, ListResult, ServiceCreate, ServiceGet, ServiceInfo, ServiceList,
    ServiceRef, ServiceRemove,
};
use cerana_protocol::tasks::ticks::{
    ActionOutcome, Applied, ApplyAction, ApplyArgs, BundleApply, History, HistoryArgs, PlanArgs, TickPlan,
    TicksHistory, TicksPlan, LEADER,
};
use cerana_protocol::tasks::zfs::{
    CloneArgs, CreateArgs, Dataset, DatasetType, DestroyArgs, ListArgs as ZfsListArgs, ListResult as ZfsListResult,
    NameResult, ReceiveArgs, ReceiveResult, SendArgs, SendResult, ZfsClone, ZfsCreate, ZfsDestroy, ZfsList, ZfsReceive,
    ZfsSend,
};
use cerana_protocol::{ErrorCode, NoArgs, NoOutput, NodeUrl, Request, TaskError};
use cerana_provider_sdk::Provider;
use cerana_store::{LazyStore, StoreConfig};
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;
use cerana_ticks::settings::Settings;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "peer-token-0123456789abcdef";

/// What one node's doubles hold: datasets and snapshots by name, and services by (bundle, id).
#[derive(Default)]
struct NodeState {
    zfs: BTreeSet<String>,
    services: BTreeMap<(String, String), ServiceCreateArgs>,
    /// Send streams still to cut halfway (the sender vanishes).
    cut_sends: u32,
    /// Every dataset destroyed here, in order.
    destroyed: Vec<String>,
    /// While set, `service-create` waits (a slow start the test can interrupt).
    hold_creates: bool,
    /// Creates waiting on `hold_creates` now.
    held_creates: u32,
    /// Services created (or created again) here.
    creates: u32,
    /// The properties each clone was made with.
    clones: BTreeMap<String, BTreeMap<String, String>>,
    /// The node's networking (kept across its death, as the kernel keeps it).
    net: SharedNet,
}
type Shared = Arc<Mutex<NodeState>>;

/// What one node's netns double holds: namespaces, links (by namespace, `""` the node's own)
/// with their addresses and veth peers, routes, firewalls, published ports and the guard.
#[derive(Default)]
struct NetState {
    namespaces: BTreeSet<String>,
    links: BTreeMap<(String, String), BTreeSet<String>>,
    peers: BTreeMap<(String, String), (String, String)>,
    routes: BTreeSet<(String, String, Option<std::net::IpAddr>, Option<String>)>,
    firewalls: BTreeMap<String, FirewallApplyArgs>,
    published: BTreeMap<String, PublishArgs>,
    /// The node's guard, as last applied.
    guard: Option<GuardArgs>,
}
type SharedNet = Arc<Mutex<NetState>>;

fn ns(netns: &Option<String>) -> String {
    netns.clone().unwrap_or_default()
}

fn link_info(name: &str, addresses: &BTreeSet<String>) -> LinkInfo {
    LinkInfo {
        name: name.into(),
        index: 1,
        kind: Some("veth".into()),
        mac: None,
        up: true,
        mtu: None,
        master: None,
        addresses: addresses.iter().cloned().collect(),
    }
}

fn exists(what: String) -> TaskError {
    TaskError::new(ErrorCode::AlreadyExists, what)
}

/// `netns-*`, `firewall-*`, `publish-*` and `guard-apply` as a node answers them, without the
/// kernel.
fn netns_double(net: SharedNet) -> Provider {
    macro_rules! task {
        ($p:expr, $t:ty, |$state:ident, $args:ident| $body:block) => {{
            let net = net.clone();
            $p.task::<$t, _, _>(move |_ctx, $args| {
                let net = net.clone();
                async move {
                    #[allow(unused_mut)]
                    let mut $state = net.lock().unwrap();
                    $body
                }
            })
        }};
    }
    let p = Provider::new("netns", "double");
    let p = task!(p, NetnsCreate, |st, a| {
        let a: NetnsArgs = a;
        if !st.namespaces.insert(a.name.clone()) {
            return Err(exists(a.name));
        }
        Ok(NetnsInfo { path: format!("/run/netns/{}", a.name), name: a.name })
    });
    let p = task!(p, NetnsDelete, |st, a| {
        let a: NetnsArgs = a;
        if !st.namespaces.remove(&a.name) {
            return Err(not_found(a.name));
        }
        // Its links go, and their veth peers, and the routes through those.
        let gone: Vec<(String, String)> = st.links.keys().filter(|(n, _)| *n == a.name).cloned().collect();
        for key in gone {
            st.links.remove(&key);
            if let Some(peer) = st.peers.remove(&key) {
                st.links.remove(&peer);
                st.peers.remove(&peer);
                st.routes.retain(|(n, _, _, l)| !(*n == peer.0 && l.as_deref() == Some(peer.1.as_str())));
            }
        }
        st.routes.retain(|(n, ..)| *n != a.name);
        Ok(NetnsInfo { path: format!("/run/netns/{}", a.name), name: a.name })
    });
    let p = task!(p, NetnsList, |st, _a| {
        let _: NoArgs = _a;
        let namespaces =
            st.namespaces.iter().map(|n| NetnsInfo { name: n.clone(), path: format!("/run/netns/{n}") }).collect();
        Ok(NetnsListResult { namespaces })
    });
    let p = task!(p, NetnsVethAdd, |st, a| {
        let a: VethAddArgs = a;
        let (end, peer) = ((ns(&a.end.netns), a.end.name.clone()), (ns(&a.peer.netns), a.peer.name.clone()));
        if st.links.contains_key(&end) || st.links.contains_key(&peer) {
            return Err(exists(a.end.name));
        }
        st.links.insert(end.clone(), BTreeSet::new());
        st.links.insert(peer.clone(), BTreeSet::new());
        st.peers.insert(end.clone(), peer.clone());
        st.peers.insert(peer, end);
        Ok(VethAddResult {
            end: link_info(&a.end.name, &BTreeSet::new()),
            peer: link_info(&a.peer.name, &BTreeSet::new()),
        })
    });
    let p = task!(p, NetnsAddressAdd, |st, a| {
        let a: AddressArgs = a;
        let held = st.links.get_mut(&(ns(&a.netns), a.link.clone())).ok_or_else(|| not_found(a.link.clone()))?;
        if !held.insert(a.address.clone()) {
            return Err(exists(a.address));
        }
        Ok(link_info(&a.link, held))
    });
    let p = task!(p, NetnsAddressDelete, |st, a| {
        let a: AddressArgs = a;
        let held = st.links.get_mut(&(ns(&a.netns), a.link.clone())).ok_or_else(|| not_found(a.link.clone()))?;
        if !held.remove(&a.address) {
            return Err(not_found(a.address));
        }
        Ok(link_info(&a.link, held))
    });
    let p = task!(p, NetnsLinkList, |st, a| {
        let a: NetnsRef = a;
        let links =
            st.links.iter().filter(|((n, _), _)| *n == ns(&a.netns)).map(|((_, l), x)| link_info(l, x)).collect();
        Ok(LinkListResult { links })
    });
    let routes = |st: &NetState, netns: &str| RouteListResult {
        routes: st
            .routes
            .iter()
            .filter(|(n, ..)| n == netns)
            .map(|(_, d, g, l)| RouteInfo { destination: d.clone(), gateway: *g, link: l.clone() })
            .collect(),
    };
    let p = task!(p, NetnsRouteAdd, |st, a| {
        let a: RouteArgs = a;
        if let Some(link) = &a.link {
            if !st.links.contains_key(&(ns(&a.netns), link.clone())) {
                return Err(not_found(link.clone()));
            }
        }
        if st.routes.iter().any(|(n, d, ..)| *n == ns(&a.netns) && *d == a.destination) {
            return Err(exists(a.destination));
        }
        st.routes.insert((ns(&a.netns), a.destination.clone(), a.gateway, a.link.clone()));
        Ok(routes(&st, &ns(&a.netns)))
    });
    let p = task!(p, NetnsRouteDelete, |st, a| {
        let a: RouteArgs = a;
        let before = st.routes.len();
        st.routes.retain(|(n, d, ..)| !(*n == ns(&a.netns) && *d == a.destination));
        if st.routes.len() == before {
            return Err(not_found(a.destination));
        }
        Ok(routes(&st, &ns(&a.netns)))
    });
    let p = task!(p, NetnsRouteList, |st, a| {
        let a: NetnsRef = a;
        Ok(routes(&st, &ns(&a.netns)))
    });
    let p = task!(p, FirewallApply, |st, a| {
        let a: FirewallApplyArgs = a;
        if !st.namespaces.contains(&a.netns) {
            return Err(not_found(a.netns));
        }
        st.firewalls.insert(a.bundle.clone(), a.clone());
        Ok(FirewallInfo { bundle: a.bundle, netns: a.netns, policy: "drop".into(), rules: vec![] })
    });
    let p = task!(p, FirewallRemove, |st, a| {
        let a: FwBundleRef = a;
        st.firewalls.remove(&a.bundle).map(|_| NoOutput {}).ok_or_else(|| not_found(a.bundle))
    });
    let p = task!(p, PublishApply, |st, a| {
        let a: PublishArgs = a;
        st.published.insert(a.bundle.clone(), a.clone());
        Ok(PublishInfo { bundle: a.bundle, address: a.address, ports: a.ports })
    });
    let p = task!(p, FirewallList, |st, _a| {
        let _: NoArgs = _a;
        let firewalls = st
            .firewalls
            .values()
            .map(|a| FirewallInfo {
                bundle: a.bundle.clone(),
                netns: a.netns.clone(),
                policy: "drop".into(),
                rules: vec![],
            })
            .collect();
        Ok(FirewallListResult { firewalls })
    });
    let p = task!(p, PublishList, |st, _a| {
        let _: NoArgs = _a;
        let published = st
            .published
            .values()
            .map(|a| PublishInfo { bundle: a.bundle.clone(), address: a.address, ports: a.ports.clone() })
            .collect();
        Ok(PublishListResult { published })
    });
    let p = task!(p, GuardApply, |st, a| {
        let a: GuardArgs = a;
        st.guard = Some(a.clone());
        Ok(GuardInfo { link_prefix: Some(a.link_prefix), allowed: a.allowed })
    });
    task!(p, PublishRemove, |st, a| {
        let a: FwBundleRef = a;
        st.published.remove(&a.bundle);
        Ok(NoOutput {})
    })
}

fn info(a: &ServiceCreateArgs) -> ServiceInfo {
    serde_json::from_value(serde_json::json!({
        "id": a.id, "bundle_id": a.bundle_id, "dataset": a.dataset, "rootfs": "zfs", "rootfs_path": null,
        "clone": format!("{}-clone", a.dataset), "cmd": a.cmd, "limits": a.limits, "netns": null,
        "restart": a.restart, "state": "running", "pid": 7, "uptime_ms": 1, "restarts": 0, "last_exit": null,
        "last_error": null, "cgroup": format!("cerana/services/{}.{}", a.bundle_id, a.id),
        "definition": a.definition(),
    }))
    .unwrap()
}

fn not_found(what: String) -> TaskError {
    TaskError::new(ErrorCode::NotFound, what).with_details(serde_json::json!({ "reason": "not-found" }))
}

/// Waits while the test holds creates (up to a minute, so that no test hangs on it).
async fn hold_while_asked(state: &Shared) -> Result<(), TaskError> {
    if !state.lock().unwrap().hold_creates {
        return Ok(());
    }
    state.lock().unwrap().held_creates += 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while state.lock().unwrap().hold_creates && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.lock().unwrap().held_creates -= 1;
    Ok(())
}

/// `service-*` as a node answers them, without containers.
fn services_double(state: Shared) -> Provider {
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state);
    Provider::new("service", "double")
        .task::<ServiceCreate, _, _>(move |_ctx, a: ServiceCreateArgs| {
            let state = s1.clone();
            async move {
                hold_while_asked(&state).await?;
                let mut state = state.lock().unwrap();
                let snapshot = a.dataset.clone();
                if !state.zfs.contains(&snapshot) {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{snapshot} does not exist"))
                        .with_details(serde_json::json!({ "reason": "dataset-missing" })));
                }
                let key = (a.bundle_id.clone(), a.id.clone());
                if state.services.contains_key(&key) && !a.overwrite {
                    return Err(TaskError::new(ErrorCode::AlreadyExists, "exists")
                        .with_details(serde_json::json!({ "reason": "exists" })));
                }
                let a = ServiceCreateArgs { overwrite: false, ..a };
                state.services.insert(key, a.clone());
                state.creates += 1;
                Ok(info(&a))
            }
        })
        .task::<ServiceList, _, _>(move |_ctx, a: ListArgs| {
            let state = s2.clone();
            async move {
                let state = state.lock().unwrap();
                let services = state
                    .services
                    .values()
                    .filter(|s| a.bundle_id.as_ref().is_none_or(|b| *b == s.bundle_id))
                    .map(info)
                    .collect();
                Ok(ListResult { services })
            }
        })
        .task::<ServiceRemove, _, _>(move |_ctx, r: ServiceRef| {
            let state = s3.clone();
            async move {
                let removed = state.lock().unwrap().services.remove(&(r.bundle_id.clone(), r.id.clone()));
                removed.map(|_| r.clone()).ok_or_else(|| not_found(format!("no service {}", r.id)))
            }
        })
        .task::<ServiceGet, _, _>(move |_ctx, r: ServiceRef| {
            let state = s4.clone();
            async move {
                let state = state.lock().unwrap();
                state.services.get(&(r.bundle_id.clone(), r.id.clone())).map(info).ok_or_else(|| not_found(r.id))
            }
        })
}

fn dataset(name: &str, creation: u64) -> Dataset {
    let kind = if name.contains('@') { DatasetType::Snapshot } else { DatasetType::Filesystem };
    serde_json::from_value(serde_json::json!({
        "name": name, "type": kind, "guid": 1, "creation": creation, "used": 0, "available": null,
        "referenced": 0, "mountpoint": null, "mounted": null, "origin": null
    }))
    .unwrap()
}

/// `zfs-*` as a node answers them. A send stream is the snapshot's name; receiving it makes
/// the dataset and that snapshot.
fn zfs_double(state: Shared) -> Provider {
    let (z1, z2, z3, z4, z5, z6) = (state.clone(), state.clone(), state.clone(), state.clone(), state.clone(), state);
    Provider::new("zfs", "double")
        .task::<ZfsList, _, _>(move |_ctx, a: ZfsListArgs| {
            let state = z1.clone();
            async move {
                let state = state.lock().unwrap();
                let under = a.name.unwrap_or_default();
                if !state.zfs.contains(&under) {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{under} does not exist")));
                }
                let datasets = state
                    .zfs
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.starts_with(&under))
                    .map(|(i, n)| dataset(n, i as u64))
                    .collect();
                Ok(ZfsListResult { datasets })
            }
        })
        .task::<ZfsCreate, _, _>(move |_ctx, a: CreateArgs| {
            let state = z2.clone();
            async move {
                if !state.lock().unwrap().zfs.insert(a.name.clone()) {
                    return Err(TaskError::new(ErrorCode::AlreadyExists, format!("{} exists", a.name)));
                }
                Ok(NameResult { name: a.name, device: None })
            }
        })
        .task::<ZfsClone, _, _>(move |_ctx, a: CloneArgs| {
            let state = z6.clone();
            async move {
                let mut state = state.lock().unwrap();
                if !state.zfs.contains(&a.origin) {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{} does not exist", a.origin)));
                }
                if !state.zfs.insert(a.name.clone()) {
                    return Err(TaskError::new(ErrorCode::AlreadyExists, format!("{} exists", a.name)));
                }
                state.clones.insert(a.name.clone(), a.properties);
                Ok(NameResult { name: a.name, device: None })
            }
        })
        .task::<ZfsSend, _, _>(move |ctx, a: SendArgs| {
            let state = z3.clone();
            async move {
                if !state.lock().unwrap().zfs.contains(&a.name) {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{} does not exist", a.name)));
                }
                let cut = {
                    let mut state = state.lock().unwrap();
                    let cut = state.cut_sends > 0;
                    state.cut_sends = state.cut_sends.saturating_sub(1);
                    cut
                };
                let mut out = ctx.output_stream().await?;
                let name = a.name.clone();
                tokio::spawn(async move {
                    if cut {
                        // Half the stream, then gone without its end marker.
                        let _ = out.write_chunk(&name.as_bytes()[..name.len() / 2]).await;
                        return;
                    }
                    let _ = out.write_chunk(name.as_bytes()).await;
                    let _ = out.finish().await;
                });
                Ok(SendResult { name: a.name, from: a.from })
            }
        })
        .task::<ZfsReceive, _, _>(move |ctx, a: ReceiveArgs| {
            let state = z4.clone();
            async move {
                let mut input = ctx.input_stream().await?;
                // As a real receive, the dataset exists while the stream comes in, and a cut
                // stream leaves it behind for the sender of the copy to clean up.
                state.lock().unwrap().zfs.insert(a.name.clone());
                let mut bytes = Vec::new();
                while let Some(chunk) =
                    input.next_chunk().await.map_err(|e| TaskError::new(ErrorCode::StreamError, e.to_string()))?
                {
                    bytes.extend_from_slice(chunk);
                }
                let sent = String::from_utf8(bytes).unwrap();
                let snap = sent.split_once('@').map(|(_, s)| s.to_owned()).unwrap();
                let mut state = state.lock().unwrap();
                state.zfs.insert(a.name.clone());
                state.zfs.insert(format!("{}@{snap}", a.name));
                Ok(ReceiveResult { dataset: dataset(&a.name, 1), bytes: sent.len() as u64 })
            }
        })
        .task::<ZfsDestroy, _, _>(move |_ctx, a: DestroyArgs| {
            let state = z5.clone();
            async move {
                let mut state = state.lock().unwrap();
                state.destroyed.push(a.name.clone());
                let before = state.zfs.len();
                state.zfs.retain(|n| n != &a.name && !(a.recursive && n.starts_with(&format!("{}@", a.name))));
                if state.zfs.len() == before {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{} does not exist", a.name)));
                }
                Ok(NameResult { name: a.name, device: None })
            }
        })
}

struct Node {
    name: &'static str,
    socket: PathBuf,
    url: String,
    state: Shared,
    /// The node's providers and loops; aborted when it dies.
    running: Vec<tokio::task::AbortHandle>,
    coordinator: Option<Coordinator>,
}

async fn node(dir: &Path, name: &'static str, store: &LazyStore, settings: Settings) -> Node {
    start_node(dir, name, store, settings, Shared::default(), 4 << 30).await
}

/// A node whose doubles hold `state` (kept across its death), with `memory_free` bytes free.
async fn start_node(
    dir: &Path,
    name: &'static str,
    store: &LazyStore,
    settings: Settings,
    state: Shared,
    memory_free: u64,
) -> Node {
    let socket = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    let mut config = Config::new(&socket);
    config.name = name.into();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some(TOKEN.into());
    config.peer_token = Some(TOKEN.into());
    let coordinator = Coordinator::start(config).await.unwrap();
    let url = format!("http://{}", coordinator.http_addr().unwrap());
    let fence = Arc::new(cerana_ticks::apply::Fence::default());
    let running = vec![
        tokio::spawn(services_double(state.clone()).serve(socket.clone())).abort_handle(),
        tokio::spawn(zfs_double(state.clone()).serve(socket.clone())).abort_handle(),
        tokio::spawn(netns_double(state.lock().unwrap().net.clone()).serve(socket.clone())).abort_handle(),
        tokio::spawn(cerana_ticks::provider(store.clone(), fence.clone()).serve(socket.clone())).abort_handle(),
        tokio::spawn(cerana_ticks::run_loops(store.clone(), socket.clone(), name.into(), settings, fence))
            .abort_handle(),
    ];
    // The node's entry, as its quorum agent writes it.
    let entry = serde_json::json!({"id": name, "heartbeat_ms": 1, "memory_free": memory_free, "cpu_cores": 2,
        "disk_free": 8u64 << 30, "api_url": url});
    store.get().await.unwrap().put(&format!("/cerana/v1/nodes/{name}"), &entry.to_string()).await.unwrap();
    Node { name, socket, url, state, running, coordinator: Some(coordinator) }
}

impl Node {
    /// The node dies: its coordinator, providers and loops stop at once, leases left to lapse.
    fn kill(&mut self) {
        for task in self.running.drain(..) {
            task.abort();
        }
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.shutdown();
        }
    }
}

async fn until<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call<T: cerana_protocol::Task>(
    socket: &Path,
    node: Option<&str>,
    args: &T::Args,
) -> Result<T::Output, TaskError> {
    let client = cerana_client::UnixClient::connect(socket, "test").await.unwrap();
    let mut request = Request::for_task::<T>(args).unwrap();
    request.node = node.map(|u| NodeUrl::new(u).unwrap());
    client.call(request).await.unwrap().decode()
}

fn services_of(node: &Node, bundle: &str) -> Vec<String> {
    node.state.lock().unwrap().services.keys().filter(|(b, _)| b == bundle).map(|(_, s)| s.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_placed_replicated_fenced_and_collected() {
    let mut etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
    let settings = Settings {
        heartbeat: Duration::from_millis(250),
        heartbeat_ttl: Duration::from_millis(2000),
        tick: Duration::from_millis(500),
        dataset_grace: Duration::from_secs(600),
    };
    let a = node(dir.path(), "node-a", &store, settings).await;
    let b = node(dir.path(), "node-b", &store, settings).await;
    // Only node-a holds the dataset to begin with.
    a.state
        .lock()
        .unwrap()
        .zfs
        .extend(["data/datasets", "data/datasets/img", "data/datasets/img@import"].map(String::from));
    // The first copy's stream is cut halfway: the partial receive is destroyed, the copy tried
    // again.
    a.state.lock().unwrap().cut_sends = 1;
    let s = store.get().await.unwrap();
    let put = |key: &str, value: serde_json::Value| {
        let (s, key) = (s.clone(), key.to_owned());
        async move { s.put(&key, &value.to_string()).await.unwrap() }
    };
    put("/cerana/v1/datasets/img", serde_json::json!({"id": "img", "read_only": true, "redundancy": 1})).await;
    put(
        "/cerana/v1/services/sleeper",
        serde_json::json!({"id": "sleeper", "dataset": "img", "cmd": ["/bin/sleep", "9"]}),
    )
    .await;
    // Service a mounts two of the bundle's datasets: a scratch clone and a kept one.
    let bundle = serde_json::json!({"id": "pair", "redundancy": 2,
        "datasets": {"scratch": {"id": "img", "type": "temp_zfs"}, "keep": {"id": "img", "type": "rw_zfs", "quota": 65536}},
        "services": {"a": {"id": "sleeper", "datasets": {"scratch": {"mount_point": "/scratch"},
                                                         "keep": {"mount_point": "/keep", "read_only": true}}},
                     "b": {"id": "sleeper", "overrides": {"cmd": ["/bin/sleep", "10"]}}},
        "ports": {"80": {"public": true, "external_port": 18080}}});
    let volumes = ["data/scratch/pair.scratch", "data/volumes/pair.keep"];
    let started = Instant::now();
    put("/cerana/v1/bundles/pair", bundle.clone()).await;

    // Both nodes run both services, on node-b from the copy the leader made there.
    until("pair on both nodes", Duration::from_secs(30), async || {
        (services_of(&a, "pair") == ["a", "b"] && services_of(&b, "pair") == ["a", "b"]).then_some(())
    })
    .await;
    eprintln!("bundle placed on 2 nodes in {:.1} s", started.elapsed().as_secs_f64());
    assert!(b.state.lock().unwrap().zfs.contains("data/datasets/img@import"), "copied to node-b");
    let on_b = b.state.lock().unwrap().services[&("pair".to_string(), "b".to_string())].clone();
    assert_eq!((on_b.dataset.as_str(), on_b.cmd[1].as_str()), ("data/datasets/img@import", "10"));
    // Its volumes were made before its services, where they mount them.
    for node in [&a, &b] {
        let state = node.state.lock().unwrap();
        let on = &state.clones;
        assert_eq!(on.keys().map(String::as_str).collect::<Vec<_>>(), volumes, "{}", node.name);
        assert_eq!(on["data/volumes/pair.keep"]["mountpoint"], "/run/cerana/volumes/pair/rw_zfs/keep");
        assert_eq!(on["data/volumes/pair.keep"]["refquota"], "65536");
        assert_eq!(on["data/scratch/pair.scratch"]["mountpoint"], "/run/cerana/volumes/pair/temp_zfs/scratch");
        let a = &state.services[&("pair".to_string(), "a".to_string())];
        let mounts: Vec<(&str, &str, bool)> =
            a.mounts.iter().map(|m| (m.source.as_str(), m.destination.as_str(), m.read_only)).collect();
        assert_eq!(
            mounts,
            [
                ("/run/cerana/volumes/pair/rw_zfs/keep", "/keep", true),
                ("/run/cerana/volumes/pair/temp_zfs/scratch", "/scratch", false)
            ]
        );
    }

    // Settled: the plan is empty, and the journal shows what was done.
    let plan: TickPlan = until("a settled plan", Duration::from_secs(10), async || {
        let plan = call::<TicksPlan>(&b.socket, None, &PlanArgs::default()).await.ok()?;
        (plan.actions.is_empty() && plan.bundles[0].running_on.len() == 2).then_some(plan)
    })
    .await;
    assert!(plan.leader.is_some(), "{plan:?}");
    dry_run_plans_objects_as_if_declared(&b, &plan, &bundle).await;
    // Its subnet, and an address for each service of each replica, all different.
    assert_eq!(plan.bundles[0].subnet.as_deref(), Some("10.224.0.0/24"), "{plan:?}");
    let addresses = &plan.bundles[0].addresses;
    assert_eq!(addresses.keys().collect::<Vec<_>>(), ["node-a", "node-b"], "{plan:?}");
    let ips: BTreeSet<std::net::Ipv4Addr> = addresses.values().flat_map(|s| s.values().copied()).collect();
    assert_eq!(ips.len(), 4, "{addresses:?}");
    assert!(ips.iter().all(|ip| ip.octets()[..3] == [10, 224, 0] && ip.octets()[3] >= 2), "{ips:?}");
    for node in [&a, &b] {
        network_is_up(node, &plan, "pair").await;
    }
    // A bundle network left without services (a stop cut short) is removed by the node's tick.
    {
        let state = a.state.lock().unwrap();
        let mut net = state.net.lock().unwrap();
        net.namespaces.insert("bundle-ghost".into());
        let address = [127, 0, 0, 1].into();
        net.published.insert("ghost".into(), PublishArgs { bundle: "ghost".into(), address, ports: vec![] });
        let firewall =
            FirewallApplyArgs { bundle: "ghost".into(), netns: "bundle-ghost".into(), ports: vec![], cluster: None };
        net.firewalls.insert("ghost".into(), firewall);
    }
    until("the left-over network removed", Duration::from_secs(10), async || {
        let state = a.state.lock().unwrap();
        let net = state.net.lock().unwrap();
        (!net.namespaces.contains("bundle-ghost")
            && !net.firewalls.contains_key("ghost")
            && !net.published.contains_key("ghost"))
        .then_some(())
    })
    .await;
    network_is_up(&a, &plan, "pair").await;
    let history: History = call::<TicksHistory>(&a.socket, None, &HistoryArgs { limit: Some(1000) }).await.unwrap();
    let done: Vec<&str> = history
        .runs
        .iter()
        .flat_map(|r| r.actions.iter())
        .filter(|x| x.outcome == "ok")
        .map(|x| x.action.as_str())
        .collect();
    assert!(done.iter().any(|x| x.starts_with("+ img@import from node-a to node-b")), "{done:?}");
    let cut: Vec<&ActionOutcome> = history
        .runs
        .iter()
        .flat_map(|r| r.actions.iter())
        .filter(|x| x.action.starts_with("+ img@import from node-a to node-b") && x.outcome != "ok")
        .collect();
    assert_eq!(cut.len(), 1, "the cut copy is journaled as failed: {:?}", history.runs);
    assert!(cut[0].outcome.contains("zfs-receive on node-b"), "{cut:?}");
    assert_eq!(b.state.lock().unwrap().destroyed, ["data/datasets/img"], "the partial receive was cleaned up");
    assert!(done.contains(&"+ pair on node-a") && done.contains(&"+ pair on node-b"), "{done:?}");

    // A changed definition rolls out: each replica made again with it, one node per tick,
    // the others running meanwhile; nothing else is touched.
    let creates_before = [&a, &b].map(|n| n.state.lock().unwrap().creates);
    let changed_at = now_ms();
    put(
        "/cerana/v1/services/sleeper",
        serde_json::json!({"id": "sleeper", "dataset": "img", "cmd": ["/bin/sleep", "11"]}),
    )
    .await;
    until("the new definition on both nodes", Duration::from_secs(20), async || {
        [&a, &b]
            .iter()
            .all(|n| n.state.lock().unwrap().services[&("pair".to_string(), "a".to_string())].cmd[1] == "11")
            .then_some(())
    })
    .await;
    let on_b = b.state.lock().unwrap().services[&("pair".to_string(), "b".to_string())].clone();
    assert_eq!(on_b.cmd[1], "10", "service b's override kept");
    // Service a was made again on each node, b (its override unchanged) was not.
    for (node, before) in [&a, &b].iter().zip(creates_before) {
        assert_eq!(node.state.lock().unwrap().creates, before + 1, "{}", node.name);
    }
    let history: History = call::<TicksHistory>(&a.socket, None, &HistoryArgs { limit: Some(1000) }).await.unwrap();
    let mut updated = BTreeSet::new();
    for run in history.runs.iter().filter(|r| r.started_ms >= changed_at) {
        let here: Vec<&str> =
            run.actions.iter().map(|x| x.action.as_str()).filter(|x| x.starts_with("~ pair on")).collect();
        assert!(here.len() <= 1, "more than one replica updated in one tick: {here:?}");
        updated.extend(here);
    }
    assert_eq!(
        updated.into_iter().collect::<Vec<_>>(),
        ["~ pair on node-a (its definition changed)", "~ pair on node-b (its definition changed)"]
    );
    until("a settled plan after the update", Duration::from_secs(10), async || {
        let plan = call::<TicksPlan>(&b.socket, None, &PlanArgs::default()).await.ok()?;
        plan.actions.is_empty().then_some(())
    })
    .await;
    // A service dropped from the bundle goes from every replica, and so do datasets dropped
    // (kept or not); then they come back.
    let one = serde_json::json!({"id": "pair", "redundancy": 2, "services": {"a": {"id": "sleeper"}}});
    put("/cerana/v1/bundles/pair", one).await;
    until("service b and the volumes gone from both nodes", Duration::from_secs(20), async || {
        let gone = |n: &Node| volumes.iter().all(|v| !n.state.lock().unwrap().zfs.contains(*v));
        (services_of(&a, "pair") == ["a"] && services_of(&b, "pair") == ["a"] && gone(&a) && gone(&b)).then_some(())
    })
    .await;
    put("/cerana/v1/bundles/pair", bundle.clone()).await;
    until("service b back on both nodes", Duration::from_secs(20), async || {
        (services_of(&a, "pair") == ["a", "b"] && services_of(&b, "pair") == ["a", "b"]).then_some(())
    })
    .await;
    until("a settled plan again", Duration::from_secs(10), async || {
        let plan = call::<TicksPlan>(&b.socket, None, &PlanArgs::default()).await.ok()?;
        plan.actions.is_empty().then_some(())
    })
    .await;

    // Fencing: the leader is deposed (its lease ends); its order, arriving late, is refused.
    let old = s.leader(LEADER).await.unwrap().expect("a leader");
    s.revoke(old.lease).await.unwrap();
    let new = until("a new leader", Duration::from_secs(10), async || {
        s.leader(LEADER).await.unwrap().filter(|l| l.token > old.token)
    })
    .await;
    eprintln!("leader term {} ({}) replaced by term {} ({})", old.token, old.value, new.token, new.value);
    let late =
        ApplyArgs { bundle: "pair".into(), leader_key: old.key.clone(), term: old.token, action: ApplyAction::Stop };
    let err = call::<BundleApply>(&a.socket, Some(&b.url), &late).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    assert!(err.message.contains(&format!("term {}", old.token)), "{err}");
    // A forged term on the current key is refused too, and a key outside the election.
    let forged = ApplyArgs { term: new.token + 1, leader_key: new.key.clone(), ..late.clone() };
    assert_eq!(call::<BundleApply>(&b.socket, None, &forged).await.unwrap_err().code, ErrorCode::Conflict);
    let outside = ApplyArgs { leader_key: "/cerana/v1/other".into(), ..late.clone() };
    assert_eq!(call::<BundleApply>(&b.socket, None, &outside).await.unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(services_of(&b, "pair"), ["a", "b"], "nothing was stopped");
    // The current leader's order is carried out, and again changes nothing (idempotent).
    let services: Vec<ServiceCreateArgs> =
        b.state.lock().unwrap().services.values().filter(|s| s.bundle_id == "pair").cloned().collect();
    let current = ApplyArgs {
        leader_key: new.key.clone(),
        term: new.token,
        action: ApplyAction::Run { services, volumes: vec![], network: None },
        ..late
    };
    let applied: Applied = call::<BundleApply>(&b.socket, None, &current).await.unwrap();
    assert!(applied.changed.is_empty());

    // Without a quorum the ticks pause: nothing is planned from stale data, nothing stops;
    // once the quorum is back they go on from where the cluster is.
    etcd.kill(1);
    etcd.kill(2);
    tokio::time::sleep(settings.heartbeat_ttl * 2).await;
    let err = call::<TicksPlan>(&a.socket, None, &PlanArgs::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert_eq!(
        (services_of(&a, "pair"), services_of(&b, "pair")),
        (vec!["a".into(), "b".into()], vec!["a".into(), "b".into()])
    );
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.restart(1).unwrap();
        etcd.restart(2).unwrap();
        etcd
    })
    .await
    .unwrap();
    until("the ticks back, pair still on both", Duration::from_secs(30), async || {
        let plan = call::<TicksPlan>(&a.socket, None, &PlanArgs::default()).await.ok()?;
        (plan.actions.is_empty() && plan.bundles[0].running_on.len() == 2 && plan.leader.is_some()).then_some(())
    })
    .await;
    assert_eq!(services_of(&b, "pair"), ["a", "b"]);

    // Deleted: every service goes from every node.
    s.delete("/cerana/v1/bundles/pair", false).await.unwrap();
    let deleted = Instant::now();
    // Its volumes with it, the kept one too (the bundle is gone from the cluster).
    until("pair and its volumes removed everywhere", Duration::from_secs(20), async || {
        let gone = |n: &Node| volumes.iter().all(|v| !n.state.lock().unwrap().zfs.contains(*v));
        (services_of(&a, "pair").is_empty() && services_of(&b, "pair").is_empty() && gone(&a) && gone(&b)).then_some(())
    })
    .await;
    eprintln!("bundle removed from 2 nodes in {:.1} s", deleted.elapsed().as_secs_f64());
    // Its subnet and addresses are free again.
    until("pair's subnet and addresses released", Duration::from_secs(10), async || {
        let held = s.list_all("/cerana/v1/network/", 100).await.unwrap().0;
        held.is_empty().then_some(())
    })
    .await;
    // Its network with it: no namespace, link, route, firewall or published port left (the
    // node's guard stays: it is the node's, not the bundle's).
    until("pair's network removed everywhere", Duration::from_secs(10), async || {
        let clean = |n: &Node| {
            let state = n.state.lock().unwrap();
            let net = state.net.lock().unwrap();
            net.namespaces.is_empty()
                && net.links.is_empty()
                && net.routes.is_empty()
                && net.firewalls.is_empty()
                && net.published.is_empty()
        };
        (clean(&a) && clean(&b)).then_some(())
    })
    .await;
    let _ = (a.name, b.name);
}

/// Waits until `node` runs `bundle`'s network as the plan gives it: its namespace holding the
/// replica's addresses, the gateway on the node's end, a route to each replica's address (to
/// the veth here, to the node running it elsewhere), the firewall, the published port, and the
/// node's guard confining the bundles' links to the bundle range.
async fn network_is_up(node: &Node, plan: &TickPlan, bundle: &str) {
    let status = plan.bundles.iter().find(|b| b.id == bundle).unwrap();
    let link = cerana_protocol::tasks::ticks::bundle_link(bundle);
    let netns = cerana_protocol::tasks::ticks::bundle_netns(bundle);
    let mine: BTreeSet<String> = status.addresses[node.name].values().map(|ip| format!("{ip}/32")).collect();
    let mut routes: BTreeSet<(String, Option<std::net::IpAddr>, Option<String>)> = BTreeSet::new();
    for (at, ips) in &status.addresses {
        for ip in ips.values() {
            let via = if *at == node.name { (None, Some(link.clone())) } else { (Some([127, 0, 0, 1].into()), None) };
            routes.insert((format!("{ip}/32"), via.0, via.1));
        }
    }
    until(&format!("{bundle}'s network on {}", node.name), Duration::from_secs(10), async || {
        let state = node.state.lock().unwrap();
        let net = state.net.lock().unwrap();
        let on_node: BTreeSet<_> =
            net.routes.iter().filter(|(n, ..)| n.is_empty()).map(|(_, d, g, l)| (d.clone(), *g, l.clone())).collect();
        let inside = net.links.get(&(netns.clone(), "eth0".into()));
        let firewall = net.firewalls.get(bundle)?;
        let published = net.published.get(bundle)?;
        let guard = net.guard.as_ref()?;
        (net.namespaces.contains(&netns)
            && guard.link_prefix == "cb"
            && guard.allowed == ["10.224.0.0/12"]
            && inside == Some(&mine)
            && net.links.get(&(String::new(), link.clone())) == Some(&BTreeSet::from(["10.224.0.1/32".to_string()]))
            && on_node == routes
            && firewall.cluster.as_ref().map(|c| c.range.as_str()) == Some("10.224.0.0/12")
            && firewall.ports.iter().map(|p| (p.port, p.public)).collect::<Vec<_>>() == [(80, true)]
            && published.ports.iter().map(|p| (p.external_port, p.port)).collect::<Vec<_>>() == [(18080, 80)]
            && mine.contains(&format!("{}/32", published.ports[0].to)))
        .then_some(())
    })
    .await;
}

/// Every journaled action with its outcome, oldest run first, with the run's term.
async fn journaled(socket: &Path) -> Vec<(u64, u64, String, String)> {
    let history: History = call::<TicksHistory>(socket, None, &HistoryArgs { limit: Some(1000) }).await.unwrap();
    let mut runs = history.runs;
    runs.reverse();
    runs.iter()
        .flat_map(|r| r.actions.iter().map(|a| (r.term, r.started_ms, a.action.clone(), a.outcome.clone())))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Settings for the fault tests: a 2 s heartbeat TTL, half-second ticks.
fn quick() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(250),
        heartbeat_ttl: Duration::from_millis(2000),
        tick: Duration::from_millis(500),
        dataset_grace: Duration::from_secs(600),
    }
}

/// A fault test's cluster: a real etcd and node-a leading it, with [`quick`] settings.
struct Faults {
    _etcd: EtcdCluster,
    dir: tempfile::TempDir,
    store: LazyStore,
    settings: Settings,
    a: Node,
}

async fn faults() -> Result<Faults, String> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await.unwrap().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().unwrap();
    let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
    let settings = quick();
    let a = node(dir.path(), "node-a", &store, settings).await;
    leader_is(&store, "node-a").await;
    Ok(Faults { _etcd: etcd, dir, store, settings, a })
}

/// Gives `node` dataset `img` at its snapshot `import`.
fn holds_img(node: &Node) {
    node.state
        .lock()
        .unwrap()
        .zfs
        .extend(["data/datasets", "data/datasets/img", "data/datasets/img@import"].map(String::from));
}

/// Declares dataset `img` (held by every node in `holders`), service `sleeper` and bundle `id`,
/// whose service mounts a kept volume of `img`.
async fn declare(store: &LazyStore, holders: &[&Node], id: &str, redundancy: u32) {
    for node in holders {
        holds_img(node);
    }
    let s = store.get().await.unwrap();
    let put = async |key: &str, value: serde_json::Value| s.put(key, &value.to_string()).await.unwrap();
    put("/cerana/v1/datasets/img", serde_json::json!({"id": "img", "read_only": true, "redundancy": 1})).await;
    put(
        "/cerana/v1/services/sleeper",
        serde_json::json!({"id": "sleeper", "dataset": "img", "cmd": ["/bin/sleep", "9"]}),
    )
    .await;
    let bundle = serde_json::json!({"id": id, "redundancy": redundancy,
        "datasets": {"keep": {"id": "img", "type": "rw_zfs"}},
        "services": {"a": {"id": "sleeper", "datasets": {"keep": {"mount_point": "/keep"}}}}});
    put(&format!("/cerana/v1/bundles/{id}"), bundle).await;
}

async fn leader_is(store: &LazyStore, name: &str) {
    let s = store.get().await.unwrap();
    until(&format!("{name} leading"), Duration::from_secs(20), async || {
        s.leader(LEADER).await.unwrap().filter(|l| l.value == name).map(|_| ())
    })
    .await;
}

/// The nodes running bundle `id`.
fn running(nodes: &[&Node], id: &str) -> Vec<&'static str> {
    nodes.iter().filter(|n| !services_of(n, id).is_empty()).map(|n| n.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_order_is_not_waited_on_and_its_late_replica_is_removed_as_surplus() {
    let Faults { _etcd, dir, store, settings, a } = require_ok!(faults().await);
    let mut x = node(dir.path(), "node-x", &store, settings).await;
    // node-x starts its replica slowly, and loses power meanwhile: its heartbeat stops while
    // the leader's order hangs on a connection nobody answers.
    x.state.lock().unwrap().hold_creates = true;
    declare(&store, &[&a, &x], "duo", 2).await;
    until("an order held on node-x", Duration::from_secs(20), async || {
        (x.state.lock().unwrap().held_creates == 1).then_some(())
    })
    .await;
    let x_loops = x.running.pop().unwrap();
    x_loops.abort();
    let cut = Instant::now();
    let cut_ms = now_ms();
    let z = node(dir.path(), "node-z", &store, settings).await;
    holds_img(&z);
    until("duo on node-a and node-z", Duration::from_secs(20), async || {
        (running(&[&a, &z], "duo") == ["node-a", "node-z"]).then_some(())
    })
    .await;
    // Within the heartbeat TTL and a few ticks, not the order's 180 s timeout.
    let replaced = cut.elapsed();
    eprintln!("node-x lost mid-order; its replica on node-z {:.1} s later", replaced.as_secs_f64());
    assert!(replaced < settings.heartbeat_ttl + Duration::from_secs(8), "{replaced:?}");
    let actions = journaled(&a.socket).await;
    let abandoned: Vec<_> = actions.iter().filter(|(_, _, action, _)| action == "+ duo on node-x").collect();
    assert!(
        abandoned.iter().any(|(_, _, _, outcome)| outcome.contains("abandoned: node-x's heartbeat lapsed")),
        "{actions:?}"
    );

    // node-x comes back, its start finished after all: three replicas for a redundancy of 2,
    // so one goes, as a surplus.
    x.state.lock().unwrap().hold_creates = false;
    until("node-x's late start done", Duration::from_secs(10), async || {
        (services_of(&x, "duo") == ["a"]).then_some(())
    })
    .await;
    x.kill();
    let back = start_node(dir.path(), "node-x", &store, settings, x.state.clone(), 4 << 30).await;
    let settled = until("duo on exactly 2 nodes again", Duration::from_secs(20), async || {
        let on = running(&[&a, &back, &z], "duo");
        (on.len() == 2).then_some(on)
    })
    .await;
    let actions = journaled(&a.socket).await;
    assert!(
        actions.iter().any(|(_, at, action, outcome)| *at > cut_ms
            && action.starts_with("- duo on ")
            && action.ends_with("(more replicas than its redundancy)")
            && outcome == "ok"),
        "{actions:?}"
    );
    // And it stays there.
    tokio::time::sleep(settings.tick * 4).await;
    assert_eq!(running(&[&a, &back, &z], "duo"), settled);
    // The replica removed left its kept volume for its return.
    for node in [&a, &back, &z] {
        assert!(node.state.lock().unwrap().zfs.contains("data/volumes/duo.keep"), "{}", node.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_deposed_mid_tick_stops_at_once_and_its_successor_converges() {
    let Faults { _etcd, dir, store, settings, a } = require_ok!(faults().await);
    let b = node(dir.path(), "node-b", &store, settings).await;
    let c = node(dir.path(), "node-c", &store, settings).await;
    for n in [&a, &b, &c] {
        n.state.lock().unwrap().hold_creates = true;
    }
    declare(&store, &[&a, &b, &c], "trio", 3).await;
    until("the leader's first order held", Duration::from_secs(20), async || {
        [&a, &b, &c].iter().any(|n| n.state.lock().unwrap().held_creates == 1).then_some(())
    })
    .await;
    // The leader's lease ends while it waits on its first order of the tick.
    let s = store.get().await.unwrap();
    let old = s.leader(LEADER).await.unwrap().expect("a leader");
    assert_eq!(old.value, "node-a");
    s.revoke(old.lease).await.unwrap();
    let deposed_ms = now_ms();
    let new = until("a new leader", Duration::from_secs(10), async || {
        s.leader(LEADER).await.unwrap().filter(|l| l.token > old.token)
    })
    .await;
    // The new leader orders too; the holds go once both had time to act.
    tokio::time::sleep(settings.tick * 4).await;
    for n in [&a, &b, &c] {
        n.state.lock().unwrap().hold_creates = false;
    }
    until("trio on all 3 nodes", Duration::from_secs(20), async || {
        (running(&[&a, &b, &c], "trio").len() == 3).then_some(())
    })
    .await;
    until("the new leader's journal", Duration::from_secs(10), async || {
        journaled(&a.socket).await.iter().any(|(term, ..)| *term == new.token).then_some(())
    })
    .await;
    let actions = journaled(&a.socket).await;
    // The interrupted tick left no journal entry (its write was fenced), and the deposed
    // leader ran no tick after: every entry of its term predates the deposition and holds
    // no order for trio that was sent (a tick before the nodes reported the dataset may have
    // journaled its starts as waiting for it, and the addresses it gave).
    for (term, started, action, outcome) in &actions {
        if *term == old.token {
            assert!(*started < deposed_ms, "term {term} ticked after its deposition: {actions:?}");
            let sent = action.starts_with("+ trio on") && !outcome.starts_with("waiting for dataset");
            assert!(!sent, "the deposed tick was journaled: {actions:?}");
        }
    }
    assert!(actions.iter().any(|(term, _, action, _)| *term == new.token && action.starts_with("+ trio on")));
    tokio::time::sleep(settings.tick * 4).await;
    for n in [&a, &b, &c] {
        assert_eq!(services_of(n, "trio"), ["a"], "{}", n.name);
    }
}

/// `ticks-plan` with objects (`cerana plan -f`): a copy of the settled bundle under a new id
/// would be started on both nodes, one publishing the same port could not be placed, and the
/// bundle asking for 3 replicas would be one short; nothing is written, and an object failing
/// its checks is refused.
async fn dry_run_plans_objects_as_if_declared(node: &Node, settled: &TickPlan, declared: &serde_json::Value) {
    use cerana_protocol::tasks::clusterconf::{Bundle, Strict};
    let mut stored: Bundle = serde_json::from_value(declared.clone()).unwrap();
    // A declared bundle names a service once (written past the checks, `pair` names it twice).
    stored.services.remove("b");
    let twin = Bundle { id: "twin".parse().unwrap(), ports: Default::default(), ..stored.clone() };
    let clash = Bundle { id: "clash".parse().unwrap(), ..stored.clone() };
    let wider = Bundle { redundancy: 3, ..stored.clone() };
    let args = PlanArgs { bundles: vec![Strict(twin), Strict(clash), Strict(wider)], ..Default::default() };
    let dry = call::<TicksPlan>(&node.socket, None, &args).await.unwrap();
    let text: Vec<String> = dry.actions.iter().map(|a| format!("{} {}", a.sign, a.text)).collect();
    assert!(text.iter().filter(|t| t.starts_with('+') && t.contains("twin on")).count() == 2, "{text:?}");
    let clash = dry.bundles.iter().find(|b| b.id == "clash").expect("clash planned");
    assert!(clash.unplaced.as_deref().is_some_and(|u| u.contains("port")), "its port is pair's: {clash:?}");
    let pair = dry.bundles.iter().find(|b| b.id == "pair").expect("pair planned");
    assert_eq!(pair.redundancy, 3, "{dry:?}");
    assert!(pair.unplaced.is_some(), "a third replica has nowhere to go: {dry:?}");
    let again = call::<TicksPlan>(&node.socket, None, &PlanArgs::default()).await.unwrap();
    assert_eq!(again.bundles.len(), settled.bundles.len(), "the dry run wrote nothing: {again:?}");
    let bad = Bundle { redundancy: 0, ..stored };
    let args = PlanArgs { bundles: vec![Strict(bad)], ..Default::default() };
    let err = call::<TicksPlan>(&node.socket, None, &args).await.unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgs && err.message.contains("redundancy"), "{err:?}");
}
