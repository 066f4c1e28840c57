//! Published ports: a bundle's ports reachable on an address of this node, by DNAT to the
//! bundle's addresses, in nftables through `nft -j` as the firewalls are.
//!
//! Every bundle's publications live in one table, `ip cerana_publish`, in the node's namespace:
//! chains `prerouting` (traffic arriving) and `output` (traffic from the node itself), both nat
//! at priority -100, each with one rule per published port. The whole table is rebuilt from all
//! bundles' publications in one `nft -f` batch (add, delete, add, chains, rules) on every change,
//! which the kernel commits as one transaction. Each rule's `cerana:` comment says whose port it
//! is, so the listing read back from the kernel can say it. IPv4 only.

use crate::firewall::{nft, no_table, protocol_name, write_state, FirewallError};
use crate::names::{BundleId, NameError, NetnsName};
use crate::namespace::Namespaces;
use cerana_protocol::tasks::netns::{Protocol, PublishArgs, PublishInfo, PublishedPort};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use tokio::sync::Mutex;

pub const TABLE: &str = "cerana_publish";
/// The chains, each with a rule per published port: arriving traffic, the node's own.
const CHAINS: [&str; 2] = ["prerouting", "output"];
const COMMENT_PREFIX: &str = "cerana:";

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Name(#[from] NameError),
    /// Running `nft` (or entering its namespace) failed.
    #[error(transparent)]
    Nft(#[from] FirewallError),
    #[error("publishing is IPv4 only: {what} {address} is an IPv6 address")]
    Ipv6 { what: &'static str, address: IpAddr },
    #[error("{0}")]
    InvalidPort(String),
    #[error(
        "bundle {bundle} cannot publish {address}:{external_port}/{}: bundle {other} publishes it already",
        protocol_name(*protocol)
    )]
    Conflict { bundle: BundleId, other: BundleId, address: Ipv4Addr, external_port: u16, protocol: Protocol },
    #[error("cannot read the published ports back: {0}")]
    Listing(String),
    #[error("cannot save the published ports to {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
}

/// A validated `publish-apply` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub bundle: BundleId,
    pub address: Ipv4Addr,
    pub ports: Vec<PublishedPort>,
}

fn ipv4(what: &'static str, address: IpAddr) -> Result<Ipv4Addr, PublishError> {
    match address {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(PublishError::Ipv6 { what, address }),
    }
}

impl Publication {
    pub fn from_args(args: &PublishArgs) -> Result<Self, PublishError> {
        let bundle = BundleId::new(&args.bundle)?;
        let address = ipv4("address", args.address)?;
        let mut seen = BTreeSet::new();
        for port in &args.ports {
            ipv4("destination", port.to)?;
            let proto = protocol_name(port.protocol);
            if port.external_port == 0 || port.port == 0 {
                return Err(PublishError::InvalidPort(format!(
                    "bundle {bundle}: port 0 cannot be published ({}/{proto} to {}:{})",
                    port.external_port, port.to, port.port
                )));
            }
            if !seen.insert((port.external_port, port.protocol)) {
                return Err(PublishError::InvalidPort(format!(
                    "bundle {bundle}: port {}/{proto} is published twice",
                    port.external_port
                )));
            }
        }
        Ok(Self { bundle, address, ports: args.ports.clone() })
    }

    fn to_args(&self) -> PublishArgs {
        PublishArgs { bundle: self.bundle.to_string(), address: IpAddr::V4(self.address), ports: self.ports.clone() }
    }
}

/// The comment naming a published port's rule.
fn comment(bundle: &BundleId, port: &PublishedPort) -> String {
    format!(
        "{COMMENT_PREFIX}bundle={bundle},proto={},external={},to={},port={}",
        protocol_name(port.protocol),
        port.external_port,
        port.to,
        port.port
    )
}

/// The `nft -j -f` batch rebuilding the table from every bundle's publications; with none, it
/// only removes the table (and succeeds when there is none).
pub fn ruleset(publications: &BTreeMap<BundleId, Publication>) -> Value {
    let table = json!({"table": {"family": "ip", "name": TABLE}});
    let mut commands = vec![json!({"add": table}), json!({"delete": table})];
    if publications.values().all(|p| p.ports.is_empty()) {
        return json!({"nftables": commands});
    }
    commands.push(json!({"add": table}));
    for chain in CHAINS {
        commands.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": chain, "type": "nat",
            "hook": chain, "prio": -100, "policy": "accept"}}}));
    }
    for chain in CHAINS {
        for publication in publications.values() {
            for port in &publication.ports {
                let expr = json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                        "right": publication.address.to_string()}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": protocol_name(port.protocol), "field": "dport"}},
                        "right": port.external_port}},
                    {"dnat": {"addr": port.to.to_string(), "port": port.port}},
                ]);
                commands.push(json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain,
                    "comment": comment(&publication.bundle, port), "expr": expr}}}));
            }
        }
    }
    json!({"nftables": commands})
}

/// Reads the publications out of `nft -j list table ip cerana_publish`: the `prerouting`
/// chain's rules (`output` holds the same), by bundle. Rules without a `cerana:` comment are
/// not the provider's and are left out.
pub fn parse_listing(listing: &str) -> Result<Vec<PublishInfo>, String> {
    let value: Value = serde_json::from_str(listing).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items = value["nftables"].as_array().ok_or("no nftables array in nft's output")?;
    let mut by_bundle: BTreeMap<(String, IpAddr), Vec<PublishedPort>> = BTreeMap::new();
    for rule in items.iter().filter_map(|i| i.get("rule")).filter(|r| r["chain"] == CHAINS[0]) {
        let Some(comment) = rule["comment"].as_str().and_then(|c| c.strip_prefix(COMMENT_PREFIX)) else { continue };
        let fields: BTreeMap<&str, &str> = comment.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let bad = || format!("a rule with the comment {comment:?} does not say what it publishes");
        let field = |name| fields.get(name).copied().ok_or_else(bad);
        let address = rule["expr"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| &e["match"])
            .find(|m| m["left"]["payload"]["field"] == "daddr")
            .and_then(|m| m["right"].as_str()?.parse::<IpAddr>().ok())
            .ok_or_else(|| format!("the rule {comment:?} matches no destination address"))?;
        let port = PublishedPort {
            external_port: field("external")?.parse().map_err(|_| bad())?,
            protocol: match field("proto")? {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return Err(bad()),
            },
            to: field("to")?.parse().map_err(|_| bad())?,
            port: field("port")?.parse().map_err(|_| bad())?,
        };
        by_bundle.entry((field("bundle")?.to_owned(), address)).or_default().push(port);
    }
    Ok(by_bundle.into_iter().map(|((bundle, address), ports)| PublishInfo { bundle, address, ports }).collect())
}

/// The ports this node's bundles publish; the applied publications are kept in a state file so
/// a restarted provider still knows them.
#[derive(Debug)]
pub struct Publisher {
    nft: PathBuf,
    /// Where the table lives: the provider's own namespace for `None` (a node's).
    netns: Option<NetnsName>,
    state_file: Option<PathBuf>,
    applied: Mutex<BTreeMap<BundleId, Publication>>,
}

impl Publisher {
    /// Publications in `netns` (`None`: the provider's own) applied with `nft`, remembered in
    /// `state_file` (none: in memory only).
    pub fn new(nft: PathBuf, netns: Option<NetnsName>, state_file: Option<PathBuf>) -> Self {
        let mut applied = BTreeMap::new();
        if let Some(saved) = state_file.as_ref().and_then(|p| std::fs::read(p).ok()) {
            match serde_json::from_slice::<Vec<PublishArgs>>(&saved) {
                Ok(list) => {
                    for args in list {
                        if let Ok(publication) = Publication::from_args(&args) {
                            applied.insert(publication.bundle.clone(), publication);
                        }
                    }
                }
                Err(e) => tracing::warn!("ignoring the unreadable publish state: {e}"),
            }
        }
        Self { nft, netns, state_file, applied: Mutex::new(applied) }
    }

    fn save(&self, applied: &BTreeMap<BundleId, Publication>) -> Result<(), PublishError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let list: Vec<PublishArgs> = applied.values().map(Publication::to_args).collect();
        write_state(path, &list).map_err(|source| PublishError::State { path: path.clone(), source })
    }

    /// Installs `publications` as the whole table, then remembers them.
    async fn replace(
        &self,
        namespaces: &Namespaces,
        applied: &mut BTreeMap<BundleId, Publication>,
        publications: BTreeMap<BundleId, Publication>,
    ) -> Result<(), PublishError> {
        let batch = ruleset(&publications).to_string();
        nft(namespaces, &self.nft, self.netns.as_ref(), &["-f", "-"], Some(batch)).await?;
        *applied = publications;
        self.save(applied)
    }

    /// Replaces what the bundle publishes (no ports: nothing). Refused, changing nothing, when
    /// another bundle publishes one of the ports on the same address.
    pub async fn apply(&self, namespaces: &Namespaces, publication: Publication) -> Result<PublishInfo, PublishError> {
        let mut applied = self.applied.lock().await;
        for (other, theirs) in
            applied.iter().filter(|(b, p)| **b != publication.bundle && p.address == publication.address)
        {
            if let Some(taken) = publication.ports.iter().find(|port| {
                theirs.ports.iter().any(|t| (t.external_port, t.protocol) == (port.external_port, port.protocol))
            }) {
                return Err(PublishError::Conflict {
                    bundle: publication.bundle.clone(),
                    other: other.clone(),
                    address: publication.address,
                    external_port: taken.external_port,
                    protocol: taken.protocol,
                });
            }
        }
        let mut next = applied.clone();
        if publication.ports.is_empty() {
            next.remove(&publication.bundle);
        } else {
            next.insert(publication.bundle.clone(), publication.clone());
        }
        self.replace(namespaces, &mut applied, next).await?;
        let read = self.read(namespaces).await?;
        let address = IpAddr::V4(publication.address);
        Ok(read
            .into_iter()
            .find(|p| p.bundle == publication.bundle.as_str() && p.address == address)
            .unwrap_or(PublishInfo { bundle: publication.bundle.to_string(), address, ports: Vec::new() }))
    }

    /// Stops publishing the bundle's ports; a bundle publishing nothing is no error.
    pub async fn remove(&self, namespaces: &Namespaces, bundle: &BundleId) -> Result<(), PublishError> {
        let mut applied = self.applied.lock().await;
        if !applied.contains_key(bundle) {
            return Ok(());
        }
        let mut next = applied.clone();
        next.remove(bundle);
        self.replace(namespaces, &mut applied, next).await
    }

    async fn read(&self, namespaces: &Namespaces) -> Result<Vec<PublishInfo>, PublishError> {
        let listing = match nft(namespaces, &self.nft, self.netns.as_ref(), &["list", "table", "ip", TABLE], None).await
        {
            Ok(listing) => listing,
            Err(e) if no_table(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        parse_listing(&listing).map_err(PublishError::Listing)
    }

    /// Every bundle's published ports, as the kernel has them.
    pub async fn list(&self, namespaces: &Namespaces) -> Result<Vec<PublishInfo>, PublishError> {
        let _applied = self.applied.lock().await;
        self.read(namespaces).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(external_port: u16, protocol: Protocol, to: &str, port: u16) -> PublishedPort {
        PublishedPort { external_port, protocol, to: to.parse().unwrap(), port }
    }

    fn publication(bundle: &str, address: &str, ports: Vec<PublishedPort>) -> Result<Publication, PublishError> {
        Publication::from_args(&PublishArgs { bundle: bundle.into(), address: address.parse().unwrap(), ports })
    }

    #[test]
    fn the_table_is_rebuilt_whole_with_a_dnat_rule_per_port_in_both_chains() {
        let web = publication(
            "web",
            "192.168.1.10",
            vec![port(80, Protocol::Tcp, "10.224.0.2", 8080), port(53, Protocol::Udp, "10.224.0.3", 53)],
        )
        .unwrap();
        let api = publication("api", "192.168.1.10", vec![port(443, Protocol::Tcp, "10.224.1.2", 443)]).unwrap();
        let all = BTreeMap::from([(web.bundle.clone(), web), (api.bundle.clone(), api)]);
        let batch = ruleset(&all);
        let commands = batch["nftables"].as_array().unwrap();
        let table = json!({"table": {"family": "ip", "name": TABLE}});
        assert_eq!(commands[..3], [json!({"add": table}), json!({"delete": table}), json!({"add": table})]);
        assert_eq!(
            commands[3],
            json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "prerouting", "type": "nat",
                "hook": "prerouting", "prio": -100, "policy": "accept"}}})
        );
        assert_eq!(commands[4]["add"]["chain"]["hook"], "output");
        let rules: Vec<&Value> = commands.iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 6);
        assert_eq!(
            *rules[1],
            json!({"family": "ip", "table": TABLE, "chain": "prerouting",
            "comment": "cerana:bundle=web,proto=tcp,external=80,to=10.224.0.2,port=8080",
            "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.10"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"dnat": {"addr": "10.224.0.2", "port": 8080}},
            ]})
        );
        assert_eq!(rules[2]["expr"][1]["match"]["left"]["payload"]["protocol"], "udp");
        assert_eq!(rules[3]["chain"], "output");
        assert_eq!(rules[3]["comment"], rules[0]["comment"]);
        // Nothing published: the table is only removed.
        assert_eq!(ruleset(&BTreeMap::new())["nftables"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_publications_are_refused() {
        let ok = port(80, Protocol::Tcp, "10.224.0.2", 80);
        assert!(matches!(publication("web", "fd00::1", vec![ok.clone()]), Err(PublishError::Ipv6 { .. })));
        let err = publication("web", "10.0.0.1", vec![port(80, Protocol::Tcp, "fd00::2", 80)]).unwrap_err();
        assert!(err.to_string().contains("destination fd00::2 is an IPv6"), "{err}");
        assert!(matches!(
            publication("web", "10.0.0.1", vec![port(0, Protocol::Tcp, "10.224.0.2", 80)]),
            Err(PublishError::InvalidPort(_))
        ));
        assert!(matches!(
            publication("web", "10.0.0.1", vec![port(80, Protocol::Tcp, "10.224.0.2", 0)]),
            Err(PublishError::InvalidPort(_))
        ));
        let twice = publication("web", "10.0.0.1", vec![ok.clone(), port(80, Protocol::Tcp, "10.224.0.3", 81)]);
        assert!(twice.unwrap_err().to_string().contains("published twice"));
        assert!(publication("web", "10.0.0.1", vec![ok, port(80, Protocol::Udp, "10.224.0.2", 80)]).is_ok());
        assert!(matches!(publication("bad/name", "10.0.0.1", vec![]), Err(PublishError::Name(_))));
        assert!(publication("web", "10.0.0.1", vec![]).is_ok(), "publishing nothing is allowed");
    }

    #[test]
    fn listings_from_nft_are_read_back_by_bundle() {
        // Output of nft 1.0.6 for a table like the one `ruleset` builds, plus a foreign rule.
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
          {"table": {"family": "ip", "name": "cerana_publish", "handle": 2}},
          {"chain": {"family": "ip", "table": "cerana_publish", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "ip", "table": "cerana_publish", "name": "output", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
          {"rule": {"family": "ip", "table": "cerana_publish", "chain": "prerouting", "handle": 3, "comment": "cerana:bundle=web,proto=tcp,external=80,to=10.224.0.2,port=8080", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"dnat": {"addr": "10.224.0.2", "port": 8080}}]}},
          {"rule": {"family": "ip", "table": "cerana_publish", "chain": "prerouting", "handle": 4, "comment": "cerana:bundle=api,proto=udp,external=53,to=10.224.1.2,port=5353", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"dnat": {"addr": "10.224.1.2", "port": 5353}}]}},
          {"rule": {"family": "ip", "table": "cerana_publish", "chain": "prerouting", "handle": 5, "comment": "cerana:bundle=web,proto=tcp,external=443,to=10.224.0.2,port=8443", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"dnat": {"addr": "10.224.0.2", "port": 8443}}]}},
          {"rule": {"family": "ip", "table": "cerana_publish", "chain": "prerouting", "handle": 6, "expr": [{"accept": null}]}},
          {"rule": {"family": "ip", "table": "cerana_publish", "chain": "output", "handle": 7, "comment": "cerana:bundle=web,proto=tcp,external=80,to=10.224.0.2,port=8080", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"dnat": {"addr": "10.224.0.2", "port": 8080}}]}}]}"#;
        let published = parse_listing(listing).unwrap();
        let address: IpAddr = "192.168.1.10".parse().unwrap();
        assert_eq!(
            published,
            [
                PublishInfo { bundle: "api".into(), address, ports: vec![port(53, Protocol::Udp, "10.224.1.2", 5353)] },
                PublishInfo {
                    bundle: "web".into(),
                    address,
                    ports: vec![
                        port(80, Protocol::Tcp, "10.224.0.2", 8080),
                        port(443, Protocol::Tcp, "10.224.0.2", 8443)
                    ]
                },
            ]
        );
        assert!(parse_listing("{}").is_err());
        let broken = listing.replace("external=443", "external=x");
        assert!(parse_listing(&broken).is_err());
    }
}
