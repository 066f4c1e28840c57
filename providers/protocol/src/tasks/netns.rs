//! `netns-*`, `firewall-*`, `publish-*`, `guard-*`, `namespace-set-user`: network namespaces,
//! links, addresses, routes, per-bundle firewalls (issue #7), bundles' published ports and the
//! node's guard on bundle links, served by the `netns` provider (`cerana-netns`).
//!
//! Names travel as strings and are checked by the provider, which answers with a specific code
//! (`name_too_long` for a link name over 15 bytes, `invalid_argument` for other bad names) and a
//! stable `details.reason` (see the provider's README for the list).
//!
//! `netns: None` in a request means the provider's own (the node's) namespace. A named namespace
//! is the bind mount `/run/netns/NAME`, the place `ip netns` and containers use.

use crate::task::{NoArgs, NoOutput};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

crate::declare_tasks! {
    NetnsCreate = "netns-create", Write, "Creates the named network namespace /run/netns/NAME (loopback up)", NetnsArgs => NetnsInfo;
    NetnsDelete = "netns-delete", Write, "Deletes a named network namespace (its links go with it)", NetnsArgs => NetnsInfo;
    NetnsList = "netns-list", Read, "Lists the named network namespaces", NoArgs => NetnsListResult;
    NetnsVethAdd = "netns-veth-add", Write, "Creates a veth pair, each end in its namespace, optionally up", VethAddArgs => VethAddResult;
    NetnsBridgeAdd = "netns-bridge-add", Write, "Creates a bridge in a namespace, optionally up", BridgeAddArgs => LinkInfo;
    NetnsLinkSet = "netns-link-set", Write, "Sets a link up or down, its MTU, or its bridge (master)", LinkSetArgs => LinkInfo;
    NetnsLinkMove = "netns-link-move", Write, "Moves a link into another namespace", LinkMoveArgs => LinkInfo;
    NetnsLinkDelete = "netns-link-delete", Write, "Deletes a link (a veth's peer goes with it)", LinkRef => NoOutput;
    NetnsLinkList = "netns-link-list", Read, "Lists the links of a namespace with their addresses", NetnsRef => LinkListResult;
    NetnsAddressAdd = "netns-address-add", Write, "Adds an address (CIDR) to a link; refuses one overlapping the namespace's", AddressArgs => LinkInfo;
    NetnsAddressDelete = "netns-address-delete", Write, "Removes an address (CIDR) from a link", AddressArgs => LinkInfo;
    NetnsRouteAdd = "netns-route-add", Write, "Adds a route (destination CIDR or default, gateway and/or link)", RouteArgs => RouteListResult;
    NetnsRouteDelete = "netns-route-delete", Write, "Deletes a route", RouteArgs => RouteListResult;
    NetnsRouteList = "netns-route-list", Read, "Lists the main routing table of a namespace", NetnsRef => RouteListResult;
    FirewallApply = "firewall-apply", Write, "Replaces a bundle's nftables firewall (in its namespace) in one transaction", FirewallApplyArgs => FirewallInfo;
    FirewallGet = "firewall-get", Read, "Reads a bundle's firewall back from the kernel", BundleRef => FirewallInfo;
    FirewallList = "firewall-list", Read, "Reads every bundle's firewall back from the kernel", NoArgs => FirewallListResult;
    FirewallRemove = "firewall-remove", Write, "Removes a bundle's firewall; refused while another bundle names it", BundleRef => NoOutput;
    PublishApply = "publish-apply", Write, "Publishes a bundle's ports on an address of this node (DNAT to the bundle's namespace), replacing what it published", PublishArgs => PublishInfo;
    PublishList = "publish-list", Read, "What every bundle publishes on this node, read back from the kernel", NoArgs => PublishListResult;
    PublishRemove = "publish-remove", Write, "Stops publishing a bundle's ports (none published is no error)", BundleRef => NoOutput;
    GuardApply = "guard-apply", Write, "Confines traffic from links named PREFIX* to the given ranges: nothing to the node itself, nothing forwarded elsewhere (replies excepted)", GuardArgs => GuardInfo;
    GuardGet = "guard-get", Read, "The node's guard on links named PREFIX*, read back from the kernel (none installed: no prefix, no ranges)", NoArgs => GuardInfo;
    NamespaceSetUser = "namespace-set-user", Write, "Writes a process's uid and gid maps (1 to 5 ranges each)", SetUserArgs => SetUserResult;
}

/// A named namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsArgs {
    pub name: String,
}

/// A namespace, or the node's own when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsRef {
    #[serde(default)]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsInfo {
    pub name: String,
    /// The bind mount holding the namespace.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsListResult {
    pub namespaces: Vec<NetnsInfo>,
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VethEnd {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VethAddArgs {
    pub end: VethEnd,
    pub peer: VethEnd,
    /// Bring both ends up (default true).
    #[serde(default = "yes")]
    pub up: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethAddResult {
    pub end: LinkInfo,
    pub peer: LinkInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeAddArgs {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default = "yes")]
    pub up: bool,
}

/// A link by name in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRef {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
}

/// What to change on a link; fields left out stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSetArgs {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub up: Option<bool>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `Some("br0")` attaches the link to a bridge of the same namespace, `Some("")` detaches it.
    #[serde(default)]
    pub master: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkMoveArgs {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
    /// The namespace to move it into (`None`: the node's own).
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// `veth`, `bridge`, ... (`None` for links without a kind, such as loopback).
    pub kind: Option<String>,
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
    pub mtu: Option<u32>,
    /// The bridge the link is attached to.
    pub master: Option<String>,
    /// Addresses in CIDR notation.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkListResult {
    pub links: Vec<LinkInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressArgs {
    pub link: String,
    #[serde(default)]
    pub netns: Option<String>,
    /// `10.0.0.1/24`, `fd00::1/64`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteArgs {
    #[serde(default)]
    pub netns: Option<String>,
    /// A CIDR, or `default`.
    pub destination: String,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The outgoing link.
    #[serde(default)]
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub destination: String,
    pub gateway: Option<IpAddr>,
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteListResult {
    pub routes: Vec<RouteInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A port a bundle declares: open to everyone (`public`) or to the listed bundles only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallPort {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub connected_bundles: Vec<String>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallApplyArgs {
    pub bundle: String,
    /// The namespace the bundle's services run in (named; the node's own is refused).
    pub netns: String,
    #[serde(default)]
    pub ports: Vec<FirewallPort>,
    /// Where connected bundles' traffic comes from, as the cluster knows it. Given, it replaces
    /// the provider's own lookup (connected bundles then need no firewall on this node) and a
    /// public port lets in any source outside `range` but, inside it, connected bundles only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSources>,
}

/// Connected bundles' addresses across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSources {
    /// The cluster's inter-bundle range (CIDR): the addresses that are bundles.
    pub range: String,
    /// By bundle: the addresses of its replicas' services.
    #[serde(default)]
    pub bundles: std::collections::BTreeMap<String, Vec<IpAddr>>,
}

/// A bundle's ports published on an address of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishArgs {
    pub bundle: String,
    /// The node's address they are published on.
    pub address: IpAddr,
    pub ports: Vec<PublishedPort>,
}

/// `address:external_port` forwarded to `to:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    pub external_port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    pub to: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishInfo {
    pub bundle: String,
    pub address: IpAddr,
    /// As read back from the kernel.
    pub ports: Vec<PublishedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishListResult {
    pub published: Vec<PublishInfo>,
}

/// The node's guard: traffic arriving on links whose names start with `link_prefix` (the node
/// ends of bundles' veths) reaches only `allowed`, forwarded; nothing on the node itself, and
/// nothing else forwarded, except replies to connections made to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardArgs {
    /// 1 to 14 characters of `[A-Za-z0-9._-]`: the start of a link name.
    pub link_prefix: String,
    /// IPv4 CIDRs (at most 64) the links' traffic may be forwarded to; empty: none.
    pub allowed: Vec<String>,
}

/// The guard as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardInfo {
    /// `None`: no guard installed.
    pub link_prefix: Option<String>,
    /// The allowed ranges as networks (`10.224.0.0/12`), in the order applied.
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    pub bundle: String,
}

/// One rule as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    /// The kernel's rule handle.
    pub handle: u64,
    /// `established`, `loopback`, `icmp`, `public` or `connected`.
    pub kind: String,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    /// For `connected`: the bundle the sources belong to.
    pub from_bundle: Option<String>,
    /// For `connected`: the source addresses the rule matches.
    pub sources: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallInfo {
    pub bundle: String,
    pub netns: String,
    /// The input chain's policy (`drop`).
    pub policy: String,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallListResult {
    pub firewalls: Vec<FirewallInfo>,
}

/// `length` ids from `id` inside the namespace map to `host_id..` outside (as in /proc/PID/uid_map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub id: u32,
    pub host_id: u32,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetUserArgs {
    pub pid: u32,
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetUserResult {
    pub pid: u32,
    /// The maps as the kernel shows them afterwards.
    pub uid_map: String,
    pub gid_map: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guard_args_are_strict_and_guard_info_says_none_installed() {
        let args: GuardArgs =
            serde_json::from_value(json!({"link_prefix": "cb", "allowed": ["10.224.0.0/12"]})).unwrap();
        assert_eq!(args, GuardArgs { link_prefix: "cb".into(), allowed: vec!["10.224.0.0/12".into()] });
        assert!(serde_json::from_value::<GuardArgs>(json!({"link_prefix": "cb", "allowed": [], "extra": 1})).is_err());
        assert!(serde_json::from_value::<GuardArgs>(json!({"link_prefix": "cb"})).is_err(), "allowed is required");
        assert_eq!(serde_json::to_value(GuardInfo::default()).unwrap(), json!({"link_prefix": null, "allowed": []}));
    }
}
