//! The `netns` provider: named network namespaces, veth pairs, bridges, links, addresses and
//! routes (through rtnetlink), per-bundle firewalls, published ports and the node's guard on
//! bundle links (nftables through `nft -j`), and `namespace-set-user` (a process's uid/gid maps).
//! See README.md for each task.
//!
//! Every error carries a stable code and, in `details.reason`, a stable reason string.

pub mod firewall;
pub mod guard;
pub mod links;
pub mod names;
pub mod namespace;
pub mod publish;
pub mod userns;

use cerana_protocol::tasks::netns::*;
use cerana_protocol::{ErrorCode, NoOutput, TaskError};
use cerana_provider_sdk::Provider;
use firewall::{FirewallError, FirewallSpec, Firewalls};
use guard::{Guard, GuardError, Guards};
use links::{LinkError, Net};
use names::{BundleId, Cidr, LinkName, NameError, NetnsName};
use namespace::{NamespaceError, Namespaces};
use publish::{Publication, PublishError, Publisher};
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use userns::SetUserError;

/// Where the provider keeps and finds things.
#[derive(Debug, Clone)]
pub struct Config {
    /// Named namespaces (`/run/netns`).
    pub netns_dir: PathBuf,
    /// The applied firewalls, so a restarted provider knows them (`None`: memory only).
    pub firewall_state: Option<PathBuf>,
    /// The published ports, likewise (`None`: memory only).
    pub publish_state: Option<PathBuf>,
    /// Where ports are published: the provider's own namespace (a node's) for `None`.
    pub publish_netns: Option<NetnsName>,
    /// The applied guard, likewise (`None`: memory only).
    pub guard_state: Option<PathBuf>,
    /// Where the guard is: the provider's own namespace (a node's) for `None`.
    pub guard_netns: Option<NetnsName>,
    /// The `nft` program.
    pub nft: PathBuf,
    /// procfs, for `namespace-set-user`.
    pub proc: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            netns_dir: namespace::DEFAULT_NETNS_DIR.into(),
            firewall_state: Some("/run/cerana/netns/firewalls.json".into()),
            publish_state: Some("/run/cerana/netns/published.json".into()),
            publish_netns: None,
            guard_state: Some("/run/cerana/netns/guard.json".into()),
            guard_netns: None,
            nft: firewall::default_nft(),
            proc: "/proc".into(),
        }
    }
}

fn coded(code: ErrorCode, reason: &str, message: impl ToString) -> TaskError {
    TaskError::new(code, message.to_string()).with_details(json!({ "reason": reason }))
}

fn name_error(e: &NameError) -> TaskError {
    let code = match e {
        NameError::TooLong { .. } => ErrorCode::NameTooLong,
        NameError::Invalid { .. } => ErrorCode::InvalidArgument,
    };
    coded(code, e.reason(), e)
}

fn sys_code(errno: Option<i32>) -> ErrorCode {
    match errno {
        Some(1 | 13) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Failed,
    }
}

impl From<NamespaceError> for TaskError {
    fn from(e: NamespaceError) -> Self {
        match &e {
            NamespaceError::Name(n) => name_error(n),
            NamespaceError::Exists(_) => coded(ErrorCode::AlreadyExists, "netns-exists", &e),
            NamespaceError::NotFound(_) => coded(ErrorCode::NotFound, "netns-not-found", &e),
            NamespaceError::NotANamespace(_) => coded(ErrorCode::InvalidArgument, "not-a-namespace", &e),
            NamespaceError::Io { source, .. } => coded(sys_code(source.raw_os_error()), "netns-failed", &e),
            NamespaceError::Sys { source, .. } => coded(sys_code(Some(*source as i32)), "netns-failed", &e),
            NamespaceError::Thread(_) => coded(ErrorCode::Internal, "worker-thread", &e),
        }
    }
}

impl From<LinkError> for TaskError {
    fn from(e: LinkError) -> Self {
        match &e {
            LinkError::Name(n) => name_error(n),
            LinkError::Namespace(_) => match e {
                LinkError::Namespace(inner) => inner.into(),
                _ => unreachable!("matched above"),
            },
            LinkError::LinkNotFound { .. } => coded(ErrorCode::NotFound, "link-not-found", &e),
            LinkError::LinkExists { .. } => coded(ErrorCode::AlreadyExists, "link-exists", &e),
            LinkError::AddressOverlap { .. } => coded(ErrorCode::AlreadyExists, "address-overlap", &e),
            LinkError::AddressNotFound { .. } => coded(ErrorCode::NotFound, "address-not-found", &e),
            LinkError::RouteNotFound { .. } => coded(ErrorCode::NotFound, "route-not-found", &e),
            LinkError::InvalidRoute(_) => coded(ErrorCode::InvalidArgument, "invalid-route", &e),
            LinkError::Socket { .. } => coded(ErrorCode::Failed, "netlink-socket", &e),
            LinkError::Netlink { errno, .. } => {
                let code = match errno {
                    Some(17) => ErrorCode::AlreadyExists,
                    Some(2 | 3 | 19) => ErrorCode::NotFound,
                    Some(16) => ErrorCode::Busy,
                    Some(22 | 34 | 95 | 101) => ErrorCode::InvalidArgument,
                    other => sys_code(*other),
                };
                TaskError::new(code, e.to_string()).with_details(json!({ "reason": "netlink", "errno": errno }))
            }
        }
    }
}

impl From<FirewallError> for TaskError {
    fn from(e: FirewallError) -> Self {
        match e {
            FirewallError::Name(n) => name_error(&n),
            FirewallError::Namespace(n) => n.into(),
            FirewallError::Links(l) => l.into(),
            FirewallError::UnknownBundles { ref unknown, .. } => TaskError::new(ErrorCode::NotFound, e.to_string())
                .with_details(json!({ "reason": "unknown-bundle", "bundles": unknown })),
            FirewallError::NotFound(_) => coded(ErrorCode::NotFound, "firewall-not-found", &e),
            FirewallError::InUse { .. } => coded(ErrorCode::Busy, "bundle-referenced", &e),
            FirewallError::NetnsTaken { .. } => coded(ErrorCode::AlreadyExists, "netns-has-firewall", &e),
            FirewallError::InvalidPort(_) => coded(ErrorCode::InvalidArgument, "invalid-port", &e),
            FirewallError::NftMissing { .. } => coded(ErrorCode::Unavailable, "nft-missing", &e),
            FirewallError::Nft { .. } => coded(ErrorCode::Failed, "nft-failed", &e),
            FirewallError::Listing { .. } => coded(ErrorCode::Internal, "nft-listing", &e),
            FirewallError::State { .. } => coded(ErrorCode::Failed, "state-file", &e),
        }
    }
}

impl From<PublishError> for TaskError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Name(n) => name_error(&n),
            PublishError::Nft(f) => f.into(),
            PublishError::Ipv6 { .. } => coded(ErrorCode::InvalidArgument, "ipv6-not-supported", &e),
            PublishError::InvalidPort(_) => coded(ErrorCode::InvalidArgument, "invalid-port", &e),
            PublishError::Conflict { ref other, ref address, external_port, protocol, .. } => {
                TaskError::new(ErrorCode::Conflict, e.to_string()).with_details(json!({
                    "reason": "port-published",
                    "bundle": other.as_str(),
                    "address": address,
                    "external_port": external_port,
                    "protocol": protocol,
                }))
            }
            PublishError::Listing(_) => coded(ErrorCode::Internal, "nft-listing", &e),
            PublishError::State { .. } => coded(ErrorCode::Failed, "state-file", &e),
        }
    }
}

impl From<GuardError> for TaskError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Name(n) => name_error(&n),
            GuardError::Nft(f) => f.into(),
            GuardError::Ipv6(_) => coded(ErrorCode::InvalidArgument, "ipv6-not-supported", &e),
            GuardError::TooManyRanges(_) => coded(ErrorCode::InvalidArgument, "too-many-ranges", &e),
            GuardError::Listing(_) => coded(ErrorCode::Internal, "nft-listing", &e),
            GuardError::State { .. } => coded(ErrorCode::Failed, "state-file", &e),
        }
    }
}

impl From<SetUserError> for TaskError {
    fn from(e: SetUserError) -> Self {
        match &e {
            SetUserError::NoRanges { .. }
            | SetUserError::TooManyRanges { .. }
            | SetUserError::EmptyRange { .. }
            | SetUserError::Overflow { .. }
            | SetUserError::Overlap { .. } => TaskError::new(ErrorCode::InvalidArgument, e.to_string())
                .with_details(json!({ "reason": "invalid-id-map", "errno": 22 })),
            SetUserError::NoProcess(_) => coded(ErrorCode::NotFound, "process-not-found", &e),
            SetUserError::Refused { .. } => coded(ErrorCode::PermissionDenied, "id-map-refused", &e),
            SetUserError::Io { .. } => coded(ErrorCode::Failed, "id-map-failed", &e),
        }
    }
}

fn netns_name(name: &Option<String>) -> Result<Option<NetnsName>, TaskError> {
    name.as_deref().map(NetnsName::new).transpose().map_err(|e| name_error(&e))
}

fn link_name(name: &str) -> Result<LinkName, TaskError> {
    LinkName::new(name).map_err(|e| name_error(&e))
}

fn cidr(text: &str) -> Result<Cidr, TaskError> {
    Cidr::parse(text).map_err(|e| name_error(&e))
}

/// The provider's state, shared by the handlers.
#[derive(Debug)]
pub struct Netns {
    namespaces: Namespaces,
    firewalls: Firewalls,
    publisher: Publisher,
    guards: Guards,
    proc: PathBuf,
}

impl Netns {
    pub fn new(config: Config) -> Self {
        Self {
            namespaces: Namespaces::at(config.netns_dir),
            publisher: Publisher::new(config.nft.clone(), config.publish_netns, config.publish_state),
            guards: Guards::new(config.nft.clone(), config.guard_netns, config.guard_state),
            firewalls: Firewalls::new(config.nft, config.firewall_state),
            proc: config.proc,
        }
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    async fn net(&self, netns: Option<&NetnsName>) -> Result<Net, TaskError> {
        Ok(Net::connect(&self.namespaces, netns).await?)
    }

    fn info(&self, name: &NetnsName) -> NetnsInfo {
        NetnsInfo { name: name.to_string(), path: self.namespaces.path(name).display().to_string() }
    }

    pub async fn create(&self, args: NetnsArgs) -> Result<NetnsInfo, TaskError> {
        let name = NetnsName::new(&args.name).map_err(|e| name_error(&e))?;
        self.namespaces.create(&name).await?;
        let lo_up = async {
            self.net(Some(&name)).await?.set_up(&LinkName::new("lo").expect("lo is a valid name")).await?;
            Ok::<_, TaskError>(())
        };
        if let Err(e) = lo_up.await {
            let _ = self.namespaces.delete(&name);
            return Err(e);
        }
        Ok(self.info(&name))
    }

    pub async fn delete(&self, args: NetnsArgs) -> Result<NetnsInfo, TaskError> {
        let name = NetnsName::new(&args.name).map_err(|e| name_error(&e))?;
        if let Some(bundle) = self.firewalls.bundle_in(&name).await {
            return Err(coded(
                ErrorCode::Busy,
                "netns-has-firewall",
                format!("namespace {name} holds the firewall of bundle {bundle}; remove the firewall first"),
            ));
        }
        self.namespaces.delete(&name)?;
        Ok(self.info(&name))
    }

    pub fn list(&self) -> Result<NetnsListResult, TaskError> {
        Ok(NetnsListResult { namespaces: self.namespaces.list()?.iter().map(|n| self.info(n)).collect() })
    }

    pub async fn add_veth(&self, args: VethAddArgs) -> Result<VethAddResult, TaskError> {
        let (end, peer) = (link_name(&args.end.name)?, link_name(&args.peer.name)?);
        let end_net = self.net(netns_name(&args.end.netns)?.as_ref()).await?;
        let peer_net = self.net(netns_name(&args.peer.netns)?.as_ref()).await?;
        end_net.add_veth(&end, &peer, &peer_net, &self.namespaces, args.up).await?;
        let read = async { Ok::<_, LinkError>((end_net.link_info(&end).await?, peer_net.link_info(&peer).await?)) };
        match read.await {
            Ok((end, peer)) => Ok(VethAddResult { end, peer }),
            Err(e) => {
                let _ = end_net.delete_link(&end).await;
                Err(e.into())
            }
        }
    }

    pub async fn add_bridge(&self, args: BridgeAddArgs) -> Result<LinkInfo, TaskError> {
        let name = link_name(&args.name)?;
        let net = self.net(netns_name(&args.netns)?.as_ref()).await?;
        net.add_bridge(&name, args.up).await?;
        Ok(net.link_info(&name).await?)
    }

    pub async fn set_link(&self, args: LinkSetArgs) -> Result<LinkInfo, TaskError> {
        let name = link_name(&args.name)?;
        let master = match args.master.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(bridge) => Some(Some(link_name(bridge)?)),
        };
        let net = self.net(netns_name(&args.netns)?.as_ref()).await?;
        net.set_link(&name, args.up, args.mtu, master.as_ref().map(Option::as_ref)).await?;
        Ok(net.link_info(&name).await?)
    }

    pub async fn move_link(&self, args: LinkMoveArgs) -> Result<LinkInfo, TaskError> {
        let name = link_name(&args.name)?;
        let from = self.net(netns_name(&args.netns)?.as_ref()).await?;
        let to = self.net(netns_name(&args.to)?.as_ref()).await?;
        from.move_link(&name, &to, &self.namespaces).await?;
        Ok(to.link_info(&name).await?)
    }

    pub async fn delete_link(&self, args: LinkRef) -> Result<NoOutput, TaskError> {
        let name = link_name(&args.name)?;
        self.net(netns_name(&args.netns)?.as_ref()).await?.delete_link(&name).await?;
        Ok(NoOutput {})
    }

    pub async fn list_links(&self, args: NetnsRef) -> Result<LinkListResult, TaskError> {
        Ok(LinkListResult { links: self.net(netns_name(&args.netns)?.as_ref()).await?.link_infos().await? })
    }

    /// Re-applies the firewalls that let in the bundle of `netns`, whose addresses changed.
    async fn refresh_firewalls(&self, netns: Option<&NetnsName>) -> Result<(), TaskError> {
        if let Some(netns) = netns {
            self.firewalls.refresh_for(&self.namespaces, netns).await?;
        }
        Ok(())
    }

    pub async fn add_address(&self, args: AddressArgs) -> Result<LinkInfo, TaskError> {
        let (link, address, netns) = (link_name(&args.link)?, cidr(&args.address)?, netns_name(&args.netns)?);
        let net = self.net(netns.as_ref()).await?;
        net.add_address(&link, address).await?;
        if let Err(e) = self.refresh_firewalls(netns.as_ref()).await {
            let _ = net.delete_address(&link, address).await;
            let _ = self.refresh_firewalls(netns.as_ref()).await;
            return Err(e);
        }
        Ok(net.link_info(&link).await?)
    }

    pub async fn delete_address(&self, args: AddressArgs) -> Result<LinkInfo, TaskError> {
        let (link, address, netns) = (link_name(&args.link)?, cidr(&args.address)?, netns_name(&args.netns)?);
        let net = self.net(netns.as_ref()).await?;
        net.delete_address(&link, address).await?;
        self.refresh_firewalls(netns.as_ref()).await?;
        Ok(net.link_info(&link).await?)
    }

    fn route_parts(args: &RouteArgs) -> Result<(Option<Cidr>, Option<LinkName>), TaskError> {
        let destination = match args.destination.as_str() {
            "default" => None,
            other => Some(cidr(other)?),
        };
        Ok((destination, args.link.as_deref().map(link_name).transpose()?))
    }

    pub async fn add_route(&self, args: RouteArgs) -> Result<RouteListResult, TaskError> {
        let (destination, link) = Self::route_parts(&args)?;
        let net = self.net(netns_name(&args.netns)?.as_ref()).await?;
        net.add_route(destination, args.gateway, link.as_ref()).await?;
        Ok(RouteListResult { routes: net.routes().await? })
    }

    pub async fn delete_route(&self, args: RouteArgs) -> Result<RouteListResult, TaskError> {
        let (destination, link) = Self::route_parts(&args)?;
        let net = self.net(netns_name(&args.netns)?.as_ref()).await?;
        net.delete_route(destination, args.gateway, link.as_ref()).await?;
        Ok(RouteListResult { routes: net.routes().await? })
    }

    pub async fn list_routes(&self, args: NetnsRef) -> Result<RouteListResult, TaskError> {
        Ok(RouteListResult { routes: self.net(netns_name(&args.netns)?.as_ref()).await?.routes().await? })
    }

    pub async fn apply_firewall(&self, args: FirewallApplyArgs) -> Result<FirewallInfo, TaskError> {
        let spec = FirewallSpec::from_args(&args)?;
        Ok(self.firewalls.apply(&self.namespaces, spec).await?)
    }

    fn bundle(args: &BundleRef) -> Result<BundleId, TaskError> {
        BundleId::new(&args.bundle).map_err(|e| name_error(&e))
    }

    pub async fn get_firewall(&self, args: BundleRef) -> Result<FirewallInfo, TaskError> {
        Ok(self.firewalls.get(&self.namespaces, &Self::bundle(&args)?).await?)
    }

    pub async fn list_firewalls(&self) -> Result<FirewallListResult, TaskError> {
        Ok(FirewallListResult { firewalls: self.firewalls.list(&self.namespaces).await? })
    }

    pub async fn remove_firewall(&self, args: BundleRef) -> Result<NoOutput, TaskError> {
        self.firewalls.remove(&self.namespaces, &Self::bundle(&args)?).await?;
        Ok(NoOutput {})
    }

    pub async fn publish(&self, args: PublishArgs) -> Result<PublishInfo, TaskError> {
        let publication = Publication::from_args(&args)?;
        Ok(self.publisher.apply(&self.namespaces, publication).await?)
    }

    pub async fn list_published(&self) -> Result<PublishListResult, TaskError> {
        Ok(PublishListResult { published: self.publisher.list(&self.namespaces).await? })
    }

    pub async fn unpublish(&self, args: BundleRef) -> Result<NoOutput, TaskError> {
        self.publisher.remove(&self.namespaces, &Self::bundle(&args)?).await?;
        Ok(NoOutput {})
    }

    pub async fn apply_guard(&self, args: GuardArgs) -> Result<GuardInfo, TaskError> {
        let guard = Guard::from_args(&args)?;
        Ok(self.guards.apply(&self.namespaces, guard).await?)
    }

    pub async fn get_guard(&self) -> Result<GuardInfo, TaskError> {
        Ok(self.guards.get(&self.namespaces).await?)
    }

    pub async fn set_user(&self, args: SetUserArgs) -> Result<SetUserResult, TaskError> {
        let proc = self.proc.clone();
        let written = tokio::task::spawn_blocking(move || userns::set_user(&proc, &args))
            .await
            .map_err(|e| TaskError::new(ErrorCode::Internal, format!("the map writer failed: {e}")))?;
        Ok(written?)
    }
}

/// Registers task `T` with a handler calling `op` on the shared state.
fn serve<T, F, Fut>(provider: Provider, state: &Arc<Netns>, op: F) -> Provider
where
    T: cerana_protocol::Task,
    F: Fn(Arc<Netns>, T::Args) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T::Output, TaskError>> + Send + 'static,
{
    let state = state.clone();
    provider.task::<T, _, _>(move |_ctx, args| op(state.clone(), args))
}

/// The provider with the node's defaults.
pub fn provider() -> Provider {
    provider_with(Config::default())
}

/// The provider with `config`.
pub fn provider_with(config: Config) -> Provider {
    let state = Arc::new(Netns::new(config));
    let p = Provider::new("netns", env!("CARGO_PKG_VERSION"));
    let p = serve::<NetnsCreate, _, _>(p, &state, |s, a| async move { s.create(a).await });
    let p = serve::<NetnsDelete, _, _>(p, &state, |s, a| async move { s.delete(a).await });
    let p = serve::<NetnsList, _, _>(p, &state, |s, _| async move { s.list() });
    let p = serve::<NetnsVethAdd, _, _>(p, &state, |s, a| async move { s.add_veth(a).await });
    let p = serve::<NetnsBridgeAdd, _, _>(p, &state, |s, a| async move { s.add_bridge(a).await });
    let p = serve::<NetnsLinkSet, _, _>(p, &state, |s, a| async move { s.set_link(a).await });
    let p = serve::<NetnsLinkMove, _, _>(p, &state, |s, a| async move { s.move_link(a).await });
    let p = serve::<NetnsLinkDelete, _, _>(p, &state, |s, a| async move { s.delete_link(a).await });
    let p = serve::<NetnsLinkList, _, _>(p, &state, |s, a| async move { s.list_links(a).await });
    let p = serve::<NetnsAddressAdd, _, _>(p, &state, |s, a| async move { s.add_address(a).await });
    let p = serve::<NetnsAddressDelete, _, _>(p, &state, |s, a| async move { s.delete_address(a).await });
    let p = serve::<NetnsRouteAdd, _, _>(p, &state, |s, a| async move { s.add_route(a).await });
    let p = serve::<NetnsRouteDelete, _, _>(p, &state, |s, a| async move { s.delete_route(a).await });
    let p = serve::<NetnsRouteList, _, _>(p, &state, |s, a| async move { s.list_routes(a).await });
    let p = serve::<FirewallApply, _, _>(p, &state, |s, a| async move { s.apply_firewall(a).await });
    let p = serve::<FirewallGet, _, _>(p, &state, |s, a| async move { s.get_firewall(a).await });
    let p = serve::<FirewallList, _, _>(p, &state, |s, _| async move { s.list_firewalls().await });
    let p = serve::<FirewallRemove, _, _>(p, &state, |s, a| async move { s.remove_firewall(a).await });
    let p = serve::<PublishApply, _, _>(p, &state, |s, a| async move { s.publish(a).await });
    let p = serve::<PublishList, _, _>(p, &state, |s, _| async move { s.list_published().await });
    let p = serve::<PublishRemove, _, _>(p, &state, |s, a| async move { s.unpublish(a).await });
    let p = serve::<GuardApply, _, _>(p, &state, |s, a| async move { s.apply_guard(a).await });
    let p = serve::<GuardGet, _, _>(p, &state, |s, _| async move { s.get_guard().await });
    serve::<NamespaceSetUser, _, _>(p, &state, |s, a| async move { s.set_user(a).await })
}

/// The `cerana-netns` binary: `--coordinator PATH` (or `CERANA_COORDINATOR_SOCKET`).
pub fn main() -> std::process::ExitCode {
    provider().main()
}
