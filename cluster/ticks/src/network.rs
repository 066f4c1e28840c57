//! Bundle networks on this node. Routed, not encapsulated: each replica's services share a
//! namespace ([`bundle_netns`]) joined to the node by a veth ([`bundle_link`]) whose node end
//! holds the bundle subnet's gateway; every service address is a /32 in the namespace, and the
//! node routes each address of the cluster's bundles — to the veth when the replica is here, to
//! the node running it over the management network otherwise. Nodes of one cluster share the
//! management segment (the first one PXE-boots the others), so a host route is all it takes:
//! no tunnel, no smaller MTU, no per-packet cost, no kernel module beyond veth.
//!
//! `bundle-apply` makes a replica's namespace, veth and addresses before its services, and
//! removes them after (see `apply`). The node's network tick ([`NetworkTick`]) keeps the rest
//! level-triggered from the store: the node's routes, each local bundle's firewall (its ports
//! open to the replicas of the bundles it names as connected, wherever they run; public ports
//! also to anything outside the bundle range) and its published ports (DNAT from the node's
//! management address), and it removes the network of a bundle no longer here. It also keeps
//! the node's guard (`guard-apply`): traffic from the bundles' veths (`cb*`) reaches only the
//! bundle range — nothing on the node itself, nothing else forwarded — replies to connections
//! made to the bundles excepted.

use crate::caller::Caller;
use crate::state::Cluster;
use cerana_protocol::tasks::netns::{
    AddressArgs, BundleRef, ClusterSources, FirewallApply, FirewallApplyArgs, FirewallList, FirewallPort,
    FirewallRemove, GuardApply, GuardArgs, NetnsAddressAdd, NetnsAddressDelete, NetnsArgs, NetnsCreate, NetnsDelete,
    NetnsLinkList, NetnsList, NetnsRef, NetnsRouteAdd, NetnsRouteDelete, NetnsRouteList, NetnsVethAdd, Protocol,
    PublishApply, PublishArgs, PublishList, PublishRemove, PublishedPort, RouteArgs, VethAddArgs, VethEnd,
};
use cerana_protocol::tasks::service::{ListArgs, ServiceList};
use cerana_protocol::tasks::ticks::{
    bundle_link, bundle_netns, ReplicaNetwork, BUNDLE_LINK_INSIDE, BUNDLE_LINK_PREFIX, BUNDLE_NETNS_PREFIX,
};
use cerana_protocol::{ErrorCode, Task, TaskError};
use cerana_provider_sdk::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Runs tasks on this node: a provider's context while it serves a task, the ticks' own
/// connection in their loops.
pub trait Tasks: Sync {
    fn run<T: Task>(&self, args: &T::Args) -> impl Future<Output = Result<T::Output, TaskError>> + Send
    where
        T::Args: Sync;
}

impl Tasks for Context {
    fn run<T: Task>(&self, args: &T::Args) -> impl Future<Output = Result<T::Output, TaskError>> + Send
    where
        T::Args: Sync,
    {
        self.call::<T>(args)
    }
}

/// How long the loops give one task.
const TASK_TIMEOUT: Duration = Duration::from_secs(10);

impl Tasks for Caller {
    async fn run<T: Task>(&self, args: &T::Args) -> Result<T::Output, TaskError>
    where
        T::Args: Sync,
    {
        Ok(self.call::<T>(None, args, None, TASK_TIMEOUT).await?.output)
    }
}

/// `Ok` for what is already there.
fn there_ok<O>(done: Result<O, TaskError>) -> Result<(), TaskError> {
    match done {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `Ok` for what is gone already.
fn gone_ok<O>(done: Result<O, TaskError>) -> Result<(), TaskError> {
    match done {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn host(ip: Ipv4Addr) -> String {
    format!("{ip}/32")
}

/// Makes the replica's namespace, veth, addresses and routes, keeping what is there already;
/// addresses the replica no longer has are removed.
pub async fn make(tasks: &impl Tasks, bundle: &str, network: &ReplicaNetwork) -> Result<(), TaskError> {
    let gateway = network.gateway().map_err(|e| TaskError::new(ErrorCode::InvalidArgument, e))?;
    let netns = bundle_netns(bundle);
    let link = bundle_link(bundle);
    let inside = Some(netns.clone());
    there_ok(tasks.run::<NetnsCreate>(&NetnsArgs { name: netns.clone() }).await)?;
    let veth = VethAddArgs {
        end: VethEnd { name: link.clone(), netns: None },
        peer: VethEnd { name: BUNDLE_LINK_INSIDE.into(), netns: inside.clone() },
        up: true,
    };
    there_ok(tasks.run::<NetnsVethAdd>(&veth).await)?;
    let on_node = AddressArgs { link: link.clone(), netns: None, address: host(gateway) };
    there_ok(tasks.run::<NetnsAddressAdd>(&on_node).await)?;
    let links = tasks.run::<NetnsLinkList>(&NetnsRef { netns: inside.clone() }).await?.links;
    let held: BTreeSet<String> =
        links.iter().filter(|l| l.name == BUNDLE_LINK_INSIDE).flat_map(|l| l.addresses.iter().cloned()).collect();
    let wanted: BTreeSet<String> = network.addresses.values().map(|ip| host(*ip)).collect();
    for address in held.difference(&wanted) {
        let args = AddressArgs { link: BUNDLE_LINK_INSIDE.into(), netns: inside.clone(), address: address.clone() };
        gone_ok(tasks.run::<NetnsAddressDelete>(&args).await)?;
    }
    for address in wanted.difference(&held) {
        let args = AddressArgs { link: BUNDLE_LINK_INSIDE.into(), netns: inside.clone(), address: address.clone() };
        there_ok(tasks.run::<NetnsAddressAdd>(&args).await)?;
    }
    // In the namespace: the gateway on the link, everything else through it.
    let to_gateway = RouteArgs {
        netns: inside.clone(),
        destination: host(gateway),
        gateway: None,
        link: Some(BUNDLE_LINK_INSIDE.into()),
    };
    there_ok(tasks.run::<NetnsRouteAdd>(&to_gateway).await)?;
    let default =
        RouteArgs { netns: inside, destination: "default".into(), gateway: Some(IpAddr::V4(gateway)), link: None };
    there_ok(tasks.run::<NetnsRouteAdd>(&default).await)?;
    // On the node: the replica's addresses through the veth (the network tick keeps them too).
    for ip in network.addresses.values() {
        let route = RouteArgs { netns: None, destination: host(*ip), gateway: None, link: Some(link.clone()) };
        there_ok(tasks.run::<NetnsRouteAdd>(&route).await)?;
    }
    Ok(())
}

/// Removes the bundle's network here: its published ports, its firewall and its namespace (the
/// veth, its addresses and the node's routes through it go with the namespace).
pub async fn remove(tasks: &impl Tasks, bundle: &str) -> Result<(), TaskError> {
    let this = BundleRef { bundle: bundle.to_owned() };
    gone_ok(tasks.run::<PublishRemove>(&this).await)?;
    gone_ok(tasks.run::<FirewallRemove>(&this).await)?;
    gone_ok(tasks.run::<NetnsDelete>(&NetnsArgs { name: bundle_netns(bundle) }).await)
}

/// The address in a node's API URL (`https://10.0.0.2:8443`).
pub fn api_address(url: &str) -> Option<Ipv4Addr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.parse().ok()
}

/// What the node's network should be, from the store's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The node's routes into the bundle range: destination (`a.b.c.d/32`) → through a link
    /// (the replica is here) or a gateway (the node running it).
    pub routes: BTreeMap<String, Via>,
    /// Each local bundle's firewall.
    pub firewalls: BTreeMap<String, FirewallApplyArgs>,
    /// Each local bundle's published ports.
    pub published: BTreeMap<String, PublishArgs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Link(String),
    Gateway(IpAddr),
}

/// The pure step: what `node` should have, given the cluster and the bundle namespaces here.
pub fn wanted(cluster: &Cluster, node: &str, here: &BTreeSet<String>) -> Result<Wanted, String> {
    let range = cluster.bundle_range()?.range;
    let me = cluster.nodes.get(node).and_then(|n| n.api_url.as_deref()).and_then(api_address);
    let mut out = Wanted::default();
    let mut by_bundle: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for ((bundle, at, _), ip) in &cluster.addresses {
        by_bundle.entry(bundle.as_str()).or_default().push(IpAddr::V4(*ip));
        let via = if at == node {
            if !here.contains(bundle) {
                continue;
            }
            Via::Link(bundle_link(bundle))
        } else {
            match cluster.nodes.get(at).and_then(|n| n.api_url.as_deref()).and_then(api_address) {
                Some(gateway) => Via::Gateway(IpAddr::V4(gateway)),
                None => continue,
            }
        };
        out.routes.insert(host(*ip), via);
    }
    for bundle in here {
        let Some(declared) = cluster.bundles.get(bundle) else { continue };
        let mut ports = Vec::new();
        let mut publish = Vec::new();
        let first =
            cluster.addresses.iter().find(|((b, at, _), _)| b == bundle && at == node).map(|(_, ip)| IpAddr::V4(*ip));
        for (port, spec) in &declared.ports {
            let Ok(port) = port.parse::<u16>() else { continue };
            ports.push(FirewallPort {
                port,
                protocol: Protocol::Tcp,
                public: spec.public,
                connected_bundles: spec.connected_bundles.iter().map(ToString::to_string).collect(),
            });
            if let (true, Some(to)) = (spec.public, first) {
                publish.push(PublishedPort {
                    external_port: spec.external_port.unwrap_or(port),
                    protocol: Protocol::Tcp,
                    to,
                    port,
                });
            }
        }
        let connected: BTreeSet<&str> =
            declared.ports.values().flat_map(|p| p.connected_bundles.iter().map(|b| b.as_str())).collect();
        let sources =
            connected.iter().map(|b| ((*b).to_owned(), by_bundle.get(b).cloned().unwrap_or_default())).collect();
        out.firewalls.insert(
            bundle.clone(),
            FirewallApplyArgs {
                bundle: bundle.clone(),
                netns: bundle_netns(bundle),
                ports,
                cluster: Some(ClusterSources { range: range.to_string(), bundles: sources }),
            },
        );
        if let (false, Some(address)) = (publish.is_empty(), me) {
            out.published.insert(
                bundle.clone(),
                PublishArgs { bundle: bundle.clone(), address: IpAddr::V4(address), ports: publish },
            );
        }
    }
    Ok(out)
}

/// The node's network tick: what it last applied, so that only changes are sent (and all of
/// it again every [`REAPPLY_EVERY`] runs, repairing what else changed it).
#[derive(Debug, Default)]
pub struct NetworkTick {
    applied: Option<Wanted>,
    /// The bundle range the node's guard was last applied with (none yet in this process).
    guarded: Option<cerana_planner::addresses::Subnet>,
    runs: u32,
}

/// Runs between two full applies.
const REAPPLY_EVERY: u32 = 30;

impl NetworkTick {
    /// One run, between bundle orders (`orders` is held while one is carried out; a run that
    /// finds an order going on waits for the next).
    pub async fn run(
        &mut self,
        store: &cerana_store::Store,
        caller: &Caller,
        node: &str,
        orders: &tokio::sync::Mutex<()>,
    ) -> Result<(), String> {
        let Ok(_between) = orders.try_lock() else { return Ok(()) };
        self.runs = self.runs.wrapping_add(1);
        if self.runs.is_multiple_of(REAPPLY_EVERY) {
            self.applied = None;
            self.guarded = None;
        }
        let cluster = Cluster::read(store).await.map_err(|e| e.to_string())?;
        let range = cluster.bundle_range()?.range;
        let failed = |what: &str, e: TaskError| format!("{what}: {e}");
        // The guard first; when it fails the rest is still made (and the run reports it).
        let mut guard_failed = None;
        if self.guarded != Some(range) {
            let guard = GuardArgs { link_prefix: BUNDLE_LINK_PREFIX.into(), allowed: vec![range.to_string()] };
            match caller.run::<GuardApply>(&guard).await {
                Ok(_) => self.guarded = Some(range),
                Err(e) => guard_failed = Some(failed("the node's guard", e)),
            }
        }
        let namespaces =
            caller.run::<NetnsList>(&cerana_protocol::NoArgs {}).await.map_err(|e| failed("netns-list", e))?;
        let mut here: BTreeSet<String> = namespaces
            .namespaces
            .iter()
            .filter_map(|n| n.name.strip_prefix(BUNDLE_NETNS_PREFIX).map(str::to_owned))
            .collect();
        // A namespace without its bundle's services is left over (a stop cut short, a bundle
        // deleted while the node was away).
        let services = caller.run::<ServiceList>(&ListArgs::default()).await.map_err(|e| failed("service-list", e))?;
        let running: BTreeSet<&str> = services.services.iter().map(|s| s.bundle_id.as_str()).collect();
        let left: Vec<String> = here.iter().filter(|b| !running.contains(b.as_str())).cloned().collect();
        for bundle in left {
            tracing::info!(bundle, "removing the network of a bundle no longer here");
            remove(caller, &bundle).await.map_err(|e| failed(&format!("removing {bundle}'s network"), e))?;
            here.remove(&bundle);
        }
        let wanted = wanted(&cluster, node, &here)?;
        let before = match self.applied.take() {
            Some(before) => before,
            // What the provider has, then: firewalls and publications of bundles gone are removed.
            None => self.found(caller).await?,
        };
        self.routes(caller, &wanted, range).await?;
        for (bundle, args) in &wanted.firewalls {
            if before.firewalls.get(bundle) != Some(args) {
                caller.run::<FirewallApply>(args).await.map_err(|e| failed(&format!("{bundle}'s firewall"), e))?;
            }
        }
        for bundle in before.firewalls.keys().filter(|b| !wanted.firewalls.contains_key(*b)) {
            let this = BundleRef { bundle: bundle.clone() };
            gone_ok(caller.run::<FirewallRemove>(&this).await).map_err(|e| failed("firewall-remove", e))?;
        }
        for (bundle, args) in &wanted.published {
            if before.published.get(bundle) != Some(args) {
                caller
                    .run::<PublishApply>(args)
                    .await
                    .map_err(|e| failed(&format!("{bundle}'s published ports"), e))?;
            }
        }
        for bundle in before.published.keys().filter(|b| !wanted.published.contains_key(*b)) {
            let this = BundleRef { bundle: bundle.clone() };
            gone_ok(caller.run::<PublishRemove>(&this).await).map_err(|e| failed("publish-remove", e))?;
        }
        self.applied = Some(wanted);
        guard_failed.map_or(Ok(()), Err)
    }

    /// The bundle firewalls and publications the provider has, as entries that match nothing
    /// wanted (so that each is applied again, or removed).
    async fn found(&self, caller: &Caller) -> Result<Wanted, String> {
        let mut found = Wanted::default();
        let firewalls = caller.run::<FirewallList>(&cerana_protocol::NoArgs {}).await;
        for firewall in firewalls.map_err(|e| format!("firewall-list: {e}"))?.firewalls {
            if firewall.netns.starts_with(BUNDLE_NETNS_PREFIX) {
                let args = FirewallApplyArgs {
                    bundle: firewall.bundle.clone(),
                    netns: firewall.netns,
                    ports: vec![],
                    cluster: None,
                };
                found.firewalls.insert(firewall.bundle, args);
            }
        }
        let published = caller.run::<PublishList>(&cerana_protocol::NoArgs {}).await;
        for p in published.map_err(|e| format!("publish-list: {e}"))?.published {
            found
                .published
                .insert(p.bundle.clone(), PublishArgs { bundle: p.bundle, address: p.address, ports: vec![] });
        }
        Ok(found)
    }

    /// The node's routes into the bundle range, made as wanted.
    async fn routes(
        &self,
        caller: &Caller,
        wanted: &Wanted,
        range: cerana_planner::addresses::Subnet,
    ) -> Result<(), String> {
        let listed =
            caller.run::<NetnsRouteList>(&NetnsRef { netns: None }).await.map_err(|e| format!("routes: {e}"))?;
        let mut have: BTreeMap<String, Via> = BTreeMap::new();
        for route in listed.routes {
            let Some((addr, 32)) =
                route.destination.split_once('/').and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok()?)))
            else {
                continue;
            };
            if !range.contains(addr) {
                continue;
            }
            let via = match (route.gateway, route.link) {
                (Some(g), _) => Via::Gateway(g),
                (None, Some(link)) if link.starts_with(BUNDLE_LINK_PREFIX) => Via::Link(link),
                _ => continue,
            };
            have.insert(route.destination, via);
        }
        let args = |destination: &str, via: &Via| RouteArgs {
            netns: None,
            destination: destination.to_owned(),
            gateway: match via {
                Via::Gateway(g) => Some(*g),
                Via::Link(_) => None,
            },
            link: match via {
                Via::Link(l) => Some(l.clone()),
                Via::Gateway(_) => None,
            },
        };
        for (destination, via) in &have {
            if wanted.routes.get(destination) != Some(via) {
                gone_ok(caller.run::<NetnsRouteDelete>(&args(destination, via)).await)
                    .map_err(|e| format!("deleting the route to {destination}: {e}"))?;
            }
        }
        for (destination, via) in &wanted.routes {
            if have.get(destination) != Some(via) {
                there_ok(caller.run::<NetnsRouteAdd>(&args(destination, via)).await)
                    .map_err(|e| format!("the route to {destination}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_an_api_url() {
        assert_eq!(api_address("https://10.98.0.2:8443"), Some(Ipv4Addr::new(10, 98, 0, 2)));
        assert_eq!(api_address("http://10.0.0.7:80/x"), Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(api_address("https://node.example:8443"), None);
    }
}
