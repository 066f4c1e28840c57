//! Links, addresses and routes inside one namespace, through rtnetlink.
//!
//! A [`Net`] is a netlink socket opened inside its namespace (the socket stays bound to the
//! namespace it was created in, whatever thread later uses it).

use crate::names::{Cidr, LinkName, NameError, NetnsName};
use crate::namespace::{NamespaceError, Namespaces};
use cerana_protocol::tasks::netns::{LinkInfo, RouteInfo};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Why a link, address or route operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("no link {link} in {netns}")]
    LinkNotFound { link: String, netns: String },
    #[error("a link {link} exists already in {netns}")]
    LinkExists { link: String, netns: String },
    #[error("{address} overlaps {existing} on {link} in {netns}")]
    AddressOverlap { address: Cidr, existing: Cidr, link: String, netns: String },
    #[error("{link} in {netns} has no address {address}")]
    AddressNotFound { address: Cidr, link: String, netns: String },
    #[error("no route to {destination} in {netns} matches")]
    RouteNotFound { destination: String, netns: String },
    #[error("{0}")]
    InvalidRoute(String),
    #[error("cannot open a netlink socket in {netns}: {source}")]
    Socket { netns: String, source: std::io::Error },
    #[error("netlink refused to {op} in {netns}: {message}")]
    Netlink { op: &'static str, netns: String, errno: Option<i32>, message: String },
}

impl LinkError {
    /// The errno the kernel answered with, when it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// How a namespace is named in messages.
pub fn label(netns: Option<&NetnsName>) -> String {
    match netns {
        Some(n) => format!("namespace {n}"),
        None => "the node's namespace".to_owned(),
    }
}

/// A netlink connection inside one namespace.
#[derive(Debug, Clone)]
pub struct Net {
    handle: Handle,
    netns: Option<NetnsName>,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Net {
    /// Opens a netlink socket inside `netns` (the provider's own for `None`).
    pub async fn connect(namespaces: &Namespaces, netns: Option<&NetnsName>) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        let opened = namespaces
            .run_in(netns, move || {
                let _entered = runtime.enter();
                rtnetlink::new_connection().map(|(connection, handle, _)| (connection, handle))
            })
            .await?;
        let (connection, handle) = opened.map_err(|source| LinkError::Socket { netns: label(netns), source })?;
        tokio::spawn(connection);
        Ok(Self { handle, netns: netns.cloned() })
    }

    pub fn netns(&self) -> Option<&NetnsName> {
        self.netns.as_ref()
    }

    fn label(&self) -> String {
        label(self.netns.as_ref())
    }

    fn failed(&self, op: &'static str, e: rtnetlink::Error) -> LinkError {
        let errno = errno_of(&e);
        let message = match errno {
            Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
            None => e.to_string(),
        };
        LinkError::Netlink { op, netns: self.label(), errno, message }
    }

    /// The link called `name`, if there is one.
    pub async fn find_link(&self, name: &LinkName) -> Result<Option<LinkMessage>, LinkError> {
        let mut links = self.handle.link().get().match_name(name.as_str().to_owned()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if matches!(errno_of(&e), Some(libc_errno::ENODEV)) => Ok(None),
            Err(e) => Err(self.failed("look up a link", e)),
        }
    }

    /// The link called `name`, or a not-found error.
    pub async fn link(&self, name: &LinkName) -> Result<LinkMessage, LinkError> {
        self.find_link(name)
            .await?
            .ok_or_else(|| LinkError::LinkNotFound { link: name.to_string(), netns: self.label() })
    }

    async fn ensure_absent(&self, name: &LinkName) -> Result<(), LinkError> {
        match self.find_link(name).await? {
            Some(_) => Err(LinkError::LinkExists { link: name.to_string(), netns: self.label() }),
            None => Ok(()),
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkMessage>, LinkError> {
        self.handle.link().get().execute().try_collect().await.map_err(|e| self.failed("list links", e))
    }

    pub async fn addresses(&self) -> Result<Vec<AddressMessage>, LinkError> {
        self.handle.address().get().execute().try_collect().await.map_err(|e| self.failed("list addresses", e))
    }

    /// Every link with its addresses, as the task results show them.
    pub async fn link_infos(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let links = self.links().await?;
        let addresses = self.addresses().await?;
        let names: HashMap<u32, String> = links.iter().filter_map(|l| Some((l.header.index, link_name(l)?))).collect();
        Ok(links.iter().map(|l| describe(l, &names, &addresses)).collect())
    }

    /// One link as the task results show it.
    pub async fn link_info(&self, name: &LinkName) -> Result<LinkInfo, LinkError> {
        self.link_infos()
            .await?
            .into_iter()
            .find(|l| l.name == name.as_str())
            .ok_or_else(|| LinkError::LinkNotFound { link: name.to_string(), netns: self.label() })
    }

    /// Creates a veth pair `end` (here) and `peer` (in `peer_net`'s namespace) in one netlink
    /// request, so either both ends exist afterwards or neither does; then brings both up when
    /// asked (the kernel refuses IFF_UP on a peer created in another namespace), deleting the
    /// pair again if that fails.
    pub async fn add_veth(
        &self,
        end: &LinkName,
        peer: &LinkName,
        peer_net: &Net,
        namespaces: &Namespaces,
        up: bool,
    ) -> Result<(), LinkError> {
        self.ensure_absent(end).await?;
        peer_net.ensure_absent(peer).await?;
        if self.netns == peer_net.netns && end == peer {
            return Err(LinkError::LinkExists { link: peer.to_string(), netns: self.label() });
        }
        let peer_ns = namespaces.open(peer_net.netns.as_ref())?;
        let peer_msg =
            LinkMessageBuilder::<LinkUnspec>::new().name(peer.as_str()).setns_by_fd(peer_ns.as_raw_fd()).build();
        let message =
            LinkVeth::new(end.as_str(), peer.as_str()).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
        let result = self.handle.link().add(message).execute().await;
        drop(peer_ns);
        result.map_err(|e| self.failed("create a veth pair", e))?;
        if up {
            let raised = async {
                self.set_up(end).await?;
                peer_net.set_up(peer).await
            };
            if let Err(e) = raised.await {
                let _ = self.delete_link(end).await;
                return Err(e);
            }
        }
        Ok(())
    }

    pub async fn add_bridge(&self, name: &LinkName, up: bool) -> Result<(), LinkError> {
        self.ensure_absent(name).await?;
        let builder = LinkMessageBuilder::<LinkBridge>::new(name.as_str());
        let builder = if up { builder.up() } else { builder };
        self.handle.link().add(builder.build()).execute().await.map_err(|e| self.failed("create a bridge", e))
    }

    /// Changes up/down, MTU and bridge membership in one request.
    pub async fn set_link(
        &self,
        name: &LinkName,
        up: Option<bool>,
        mtu: Option<u32>,
        master: Option<Option<&LinkName>>,
    ) -> Result<(), LinkError> {
        let index = self.link(name).await?.header.index;
        let mut builder = LinkUnspec::new_with_index(index);
        builder = match up {
            Some(true) => builder.up(),
            Some(false) => builder.down(),
            None => builder,
        };
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        match master {
            Some(Some(bridge)) => builder = builder.controller(self.link(bridge).await?.header.index),
            Some(None) => builder = builder.nocontroller(),
            None => {}
        }
        self.handle.link().set(builder.build()).execute().await.map_err(|e| self.failed("change a link", e))
    }

    /// Moves the link into `to`'s namespace.
    pub async fn move_link(&self, name: &LinkName, to: &Net, namespaces: &Namespaces) -> Result<(), LinkError> {
        let index = self.link(name).await?.header.index;
        to.ensure_absent(name).await?;
        let target = namespaces.open(to.netns.as_ref())?;
        let message = LinkUnspec::new_with_index(index).setns_by_fd(target.as_raw_fd()).build();
        let result = self.handle.link().set(message).execute().await;
        drop(target);
        result.map_err(|e| self.failed("move a link", e))
    }

    pub async fn delete_link(&self, name: &LinkName) -> Result<(), LinkError> {
        let index = self.link(name).await?.header.index;
        self.handle.link().del(index).execute().await.map_err(|e| self.failed("delete a link", e))
    }

    pub async fn set_up(&self, name: &LinkName) -> Result<(), LinkError> {
        self.set_link(name, Some(true), None, None).await
    }

    /// The namespace's addresses as (link index, CIDR).
    pub async fn cidrs(&self) -> Result<Vec<(u32, Cidr)>, LinkError> {
        Ok(self.addresses().await?.iter().filter_map(|a| Some((a.header.index, address_cidr(a)?))).collect())
    }

    /// Adds `address` to `link`, refusing one whose network overlaps any address already in the
    /// namespace (IPv6 link-local addresses, which every link has, aside).
    pub async fn add_address(&self, link: &LinkName, address: Cidr) -> Result<(), LinkError> {
        let index = self.link(link).await?.header.index;
        if !address.is_link_local() {
            let names: HashMap<u32, String> =
                self.links().await?.iter().filter_map(|l| Some((l.header.index, link_name(l)?))).collect();
            if let Some((at, existing)) =
                self.cidrs().await?.into_iter().find(|(_, c)| !c.is_link_local() && c.overlaps(&address))
            {
                return Err(LinkError::AddressOverlap {
                    address,
                    existing,
                    link: names.get(&at).cloned().unwrap_or_else(|| format!("link #{at}")),
                    netns: self.label(),
                });
            }
        }
        self.handle
            .address()
            .add(index, address.addr(), address.prefix())
            .execute()
            .await
            .map_err(|e| self.failed("add an address", e))
    }

    pub async fn delete_address(&self, link: &LinkName, address: Cidr) -> Result<(), LinkError> {
        let index = self.link(link).await?.header.index;
        let found = self
            .addresses()
            .await?
            .into_iter()
            .find(|a| a.header.index == index && address_cidr(a) == Some(address))
            .ok_or_else(|| LinkError::AddressNotFound { address, link: link.to_string(), netns: self.label() })?;
        self.handle.address().del(found).execute().await.map_err(|e| self.failed("delete an address", e))
    }

    fn route_message(
        &self,
        destination: Option<Cidr>,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<RouteMessage, LinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new();
        let destination = destination.unwrap_or_else(|| {
            let any = match gateway {
                Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            Cidr::new(any, 0).expect("a zero prefix is valid")
        });
        let network = destination.network();
        builder = builder.destination_prefix(network.addr(), network.prefix()).map_err(invalid_route)?;
        if let Some(gateway) = gateway {
            if gateway.is_ipv4() != destination.addr().is_ipv4() {
                return Err(LinkError::InvalidRoute(format!(
                    "gateway {gateway} is not of the family of {destination}"
                )));
            }
            builder = builder.gateway(gateway).map_err(invalid_route)?;
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
            if gateway.is_none() {
                // Directly on the link, as `ip route add X dev Y` makes it: the scope a later
                // route's gateway must be reachable in (`default via X`).
                builder = builder.scope(RouteScope::Link);
            }
        }
        Ok(builder.build())
    }

    /// Adds a route to `destination` (`None`: default) through `gateway` and/or out of `link`.
    pub async fn add_route(
        &self,
        destination: Option<Cidr>,
        gateway: Option<IpAddr>,
        link: Option<&LinkName>,
    ) -> Result<(), LinkError> {
        if gateway.is_none() && link.is_none() {
            return Err(LinkError::InvalidRoute("a route needs a gateway, a link, or both".into()));
        }
        let oif = match link {
            Some(l) => Some(self.link(l).await?.header.index),
            None => None,
        };
        let message = self.route_message(destination, gateway, oif)?;
        self.handle.route().add(message).execute().await.map_err(|e| self.failed("add a route", e))
    }

    async fn route_messages(&self) -> Result<Vec<RouteMessage>, LinkError> {
        let mut routes = Vec::new();
        for query in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
            let found: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| self.failed("list routes", e))?;
            routes.extend(found.into_iter().filter(|r| {
                route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN) && r.header.kind == RouteType::Unicast
            }));
        }
        Ok(routes)
    }

    /// The main table's unicast routes.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, LinkError> {
        let names: HashMap<u32, String> =
            self.links().await?.iter().filter_map(|l| Some((l.header.index, link_name(l)?))).collect();
        Ok(self.route_messages().await?.iter().map(|r| describe_route(r, &names)).collect())
    }

    pub async fn delete_route(
        &self,
        destination: Option<Cidr>,
        gateway: Option<IpAddr>,
        link: Option<&LinkName>,
    ) -> Result<(), LinkError> {
        let wanted = self.route_message(destination, gateway, None)?;
        let wanted_dest = describe_route(&wanted, &HashMap::new()).destination;
        let names: HashMap<u32, String> =
            self.links().await?.iter().filter_map(|l| Some((l.header.index, link_name(l)?))).collect();
        let found = self.route_messages().await?.into_iter().find(|r| {
            let info = describe_route(r, &names);
            r.header.address_family == wanted.header.address_family
                && info.destination == wanted_dest
                && gateway.is_none_or(|g| info.gateway == Some(g))
                && link.is_none_or(|l| info.link.as_deref() == Some(l.as_str()))
        });
        let found = found.ok_or_else(|| LinkError::RouteNotFound { destination: wanted_dest, netns: self.label() })?;
        self.handle.route().del(found).execute().await.map_err(|e| self.failed("delete a route", e))
    }
}

fn invalid_route(e: impl std::fmt::Display) -> LinkError {
    LinkError::InvalidRoute(e.to_string())
}

mod libc_errno {
    pub const ENODEV: i32 = 19;
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn address_cidr(address: &AddressMessage) -> Option<Cidr> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    let local = address.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Cidr::new(addr, address.header.prefix_len).ok()
}

fn describe(link: &LinkMessage, names: &HashMap<u32, String>, addresses: &[AddressMessage]) -> LinkInfo {
    let mut info = LinkInfo {
        name: link_name(link).unwrap_or_default(),
        index: link.header.index,
        kind: None,
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up),
        mtu: None,
        master: None,
        addresses: addresses
            .iter()
            .filter(|a| a.header.index == link.header.index)
            .filter_map(address_cidr)
            .map(|c| c.to_string())
            .collect(),
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                info.mac = Some(mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
            }
            LinkAttribute::Controller(i) => info.master = names.get(i).cloned(),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    info
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn describe_route(route: &RouteMessage, names: &HashMap<u32, String>) -> RouteInfo {
    let mut destination = None;
    let mut gateway = None;
    let mut link = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(a) => destination = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(i) => link = names.get(i).cloned(),
            _ => {}
        }
    }
    let prefix = route.header.destination_prefix_length;
    let destination = match destination {
        _ if prefix == 0 => "default".to_owned(),
        Some(d) => format!("{d}/{prefix}"),
        None => "default".to_owned(),
    };
    RouteInfo { destination, gateway, link }
}
