//! The node's guard on bundle links: traffic arriving on a link whose name starts with a prefix
//! (the node ends of the bundles' veths, `cb…`) may be forwarded to the allowed ranges (the
//! cluster's inter-bundle range) and nowhere else, and reaches nothing on the node itself —
//! except replies (`ct state established,related`) to connections made to the bundles, by the
//! node or forwarded to them (published ports). Without it, a bundle reaches the node's own
//! services through its gateway address and, the node forwarding, the management network.
//!
//! One table, `inet cerana_guard`, in the node's namespace, with two filter chains at priority 0
//! and policy accept (traffic from other links is not this table's business):
//!
//! ```text
//! chain input:   iifname "cb*" ct state established,related accept
//!                iifname "cb*" drop
//! chain forward: iifname "cb*" ct state established,related accept
//!                iifname "cb*" ip daddr 10.224.0.0/12 accept      (one rule per allowed range)
//!                iifname "cb*" drop
//! ```
//!
//! `inet`, not `ip`: a veth carries IPv6 too (every link gets a link-local address by itself), and
//! an `ip` table would let a bundle reach the node's services listening on `::` through
//! `fe80::…%eth0`; in an `inet` table the drops take both families, and the allowed ranges (IPv4,
//! as the bundle network is) match IPv4 only. ARP is not an `inet` protocol, so it still flows.
//! A trailing `*` in nft's `iifname` string is a wildcard (nft compares the bytes before it), so
//! links made after the guard are covered as they appear.
//!
//! The whole table is rebuilt in one `nft -j -f` batch (add, delete, add, chains, rules), one
//! kernel transaction. Each rule's `cerana:guard=` comment says what it is and for which prefix
//! (and range), so `guard-get` reads the guard back from the kernel.

use crate::firewall::{nft, no_table, write_state, FirewallError};
use crate::names::{Cidr, LinkPrefix, NameError, NetnsName};
use crate::namespace::Namespaces;
use cerana_protocol::tasks::netns::{GuardArgs, GuardInfo};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::Mutex;

pub const TABLE: &str = "cerana_guard";
/// The most ranges one guard allows.
pub const MAX_RANGES: usize = 64;
const COMMENT_PREFIX: &str = "cerana:guard=";
const INPUT: &str = "input";
const FORWARD: &str = "forward";

/// Why the guard failed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Name(#[from] NameError),
    /// Running `nft` (or entering its namespace) failed.
    #[error(transparent)]
    Nft(#[from] FirewallError),
    #[error("the guard is IPv4 only: the allowed range {0} is IPv6")]
    Ipv6(String),
    #[error("the guard allows at most {MAX_RANGES} ranges, not {0}")]
    TooManyRanges(usize),
    #[error("cannot read the guard back: {0}")]
    Listing(String),
    #[error("cannot save the guard to {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
}

/// A validated `guard-apply` request: the ranges as networks (host bits cleared), each once, in
/// the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub prefix: LinkPrefix,
    pub allowed: Vec<Cidr>,
}

impl Guard {
    pub fn from_args(args: &GuardArgs) -> Result<Self, GuardError> {
        let prefix = LinkPrefix::new(&args.link_prefix)?;
        if args.allowed.len() > MAX_RANGES {
            return Err(GuardError::TooManyRanges(args.allowed.len()));
        }
        let mut allowed: Vec<Cidr> = Vec::new();
        for text in &args.allowed {
            let range = Cidr::parse(text)?;
            if !range.addr().is_ipv4() {
                return Err(GuardError::Ipv6(text.clone()));
            }
            let network = range.network();
            if !allowed.contains(&network) {
                allowed.push(network);
            }
        }
        Ok(Self { prefix, allowed })
    }

    pub fn info(&self) -> GuardInfo {
        GuardInfo {
            link_prefix: Some(self.prefix.to_string()),
            allowed: self.allowed.iter().map(ToString::to_string).collect(),
        }
    }

    fn to_args(&self) -> GuardArgs {
        let info = self.info();
        GuardArgs { link_prefix: self.prefix.to_string(), allowed: info.allowed }
    }
}

fn rule(chain: &str, comment: String, mut expr: Vec<Value>, verdict: &str) -> Value {
    expr.push(json!({ verdict: null }));
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "comment": comment, "expr": expr}}})
}

/// The `nft -j -f` batch replacing the table with `guard`.
pub fn ruleset(guard: &Guard) -> Value {
    let table = json!({"table": {"family": "inet", "name": TABLE}});
    let prefix = guard.prefix.as_str();
    let from_links =
        || json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": format!("{prefix}*")}});
    let replies =
        || json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let comment = |what: &str| format!("{COMMENT_PREFIX}{what},links={prefix}");
    let mut commands = vec![json!({"add": table}), json!({"delete": table}), json!({"add": table})];
    for chain in [INPUT, FORWARD] {
        commands.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": chain, "type": "filter",
            "hook": chain, "prio": 0, "policy": "accept"}}}));
    }
    commands.push(rule(INPUT, comment("replies"), vec![from_links(), replies()], "accept"));
    commands.push(rule(INPUT, comment("node"), vec![from_links()], "drop"));
    commands.push(rule(FORWARD, comment("replies"), vec![from_links(), replies()], "accept"));
    for range in &guard.allowed {
        let to = json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": {"prefix": {"addr": range.addr().to_string(), "len": range.prefix()}}}});
        commands.push(rule(FORWARD, format!("{},range={range}", comment("allow")), vec![from_links(), to], "accept"));
    }
    commands.push(rule(FORWARD, comment("drop"), vec![from_links()], "drop"));
    json!({"nftables": commands})
}

/// Reads the guard out of `nft -j list table inet cerana_guard`: the prefix from the rules'
/// comments, the ranges from the `allow` rules in order. A table missing one of the guard's
/// rules (the replies and the drop of either chain), or whose rules name different prefixes,
/// is an error: it would not guard as it says.
pub fn parse_listing(listing: &str) -> Result<GuardInfo, String> {
    let value: Value = serde_json::from_str(listing).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items = value["nftables"].as_array().ok_or("no nftables array in nft's output")?;
    let mut prefix: Option<String> = None;
    let mut allowed = Vec::new();
    let mut seen = Vec::new();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some(comment) = rule["comment"].as_str().and_then(|c| c.strip_prefix(COMMENT_PREFIX)) else { continue };
        let (what, rest) = comment.split_once(',').unwrap_or((comment, ""));
        let fields: BTreeMap<&str, &str> = rest.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let links = fields.get("links").ok_or_else(|| format!("the rule {comment:?} names no links"))?;
        match &prefix {
            None => prefix = Some((*links).to_owned()),
            Some(p) if p != links => return Err(format!("the guard's rules name the links {p}* and {links}*")),
            Some(_) => {}
        }
        let chain = rule["chain"].as_str().unwrap_or_default();
        if (chain, what) == (FORWARD, "allow") {
            let range = fields.get("range").ok_or_else(|| format!("the rule {comment:?} names no range"))?;
            allowed.push((*range).to_owned());
        }
        seen.push((chain.to_owned(), what.to_owned()));
    }
    let Some(prefix) = prefix else { return Ok(GuardInfo::default()) };
    for (chain, what) in [(INPUT, "replies"), (INPUT, "node"), (FORWARD, "replies"), (FORWARD, "drop")] {
        if !seen.iter().any(|(c, w)| c == chain && w == what) {
            return Err(format!("the guard on {prefix}* lacks its {what} rule in chain {chain}"));
        }
    }
    Ok(GuardInfo { link_prefix: Some(prefix), allowed })
}

/// The node's guard. The applied one is remembered (and kept in a state file) so that a
/// `guard-get` finding something else in the kernel says so in the log; what `guard-get`
/// answers is always the kernel's.
#[derive(Debug)]
pub struct Guards {
    nft: PathBuf,
    /// Where the table lives: the provider's own namespace for `None` (a node's).
    netns: Option<NetnsName>,
    state_file: Option<PathBuf>,
    applied: Mutex<Option<Guard>>,
}

impl Guards {
    /// The guard in `netns` (`None`: the provider's own) applied with `nft`, remembered in
    /// `state_file` (none: in memory only).
    pub fn new(nft: PathBuf, netns: Option<NetnsName>, state_file: Option<PathBuf>) -> Self {
        let saved = state_file.as_ref().and_then(|p| std::fs::read(p).ok());
        let applied = saved.and_then(|saved| match serde_json::from_slice::<GuardArgs>(&saved) {
            Ok(args) => Guard::from_args(&args).ok(),
            Err(e) => {
                tracing::warn!("ignoring the unreadable guard state: {e}");
                None
            }
        });
        Self { nft, netns, state_file, applied: Mutex::new(applied) }
    }

    fn save(&self, guard: &Guard) -> Result<(), GuardError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        write_state(path, &guard.to_args()).map_err(|source| GuardError::State { path: path.clone(), source })
    }

    /// Replaces the guard with `guard` in one transaction; answers what the kernel then has.
    pub async fn apply(&self, namespaces: &Namespaces, guard: Guard) -> Result<GuardInfo, GuardError> {
        let mut applied = self.applied.lock().await;
        let batch = ruleset(&guard).to_string();
        nft(namespaces, &self.nft, self.netns.as_ref(), &["-f", "-"], Some(batch)).await?;
        *applied = Some(guard.clone());
        self.save(&guard)?;
        self.read(namespaces).await
    }

    async fn read(&self, namespaces: &Namespaces) -> Result<GuardInfo, GuardError> {
        let listing =
            match nft(namespaces, &self.nft, self.netns.as_ref(), &["list", "table", "inet", TABLE], None).await {
                Ok(listing) => listing,
                Err(e) if no_table(&e) => return Ok(GuardInfo::default()),
                Err(e) => return Err(e.into()),
            };
        parse_listing(&listing).map_err(GuardError::Listing)
    }

    /// The guard as the kernel has it (none: no prefix, no ranges).
    pub async fn get(&self, namespaces: &Namespaces) -> Result<GuardInfo, GuardError> {
        let applied = self.applied.lock().await;
        let found = self.read(namespaces).await?;
        if let Some(applied) = applied.as_ref().map(Guard::info).filter(|a| *a != found) {
            tracing::warn!(?applied, ?found, "the kernel's guard is not the one applied");
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(prefix: &str, allowed: &[&str]) -> Result<Guard, GuardError> {
        Guard::from_args(&GuardArgs {
            link_prefix: prefix.into(),
            allowed: allowed.iter().map(|a| (*a).to_owned()).collect(),
        })
    }

    #[test]
    fn the_table_drops_what_the_links_send_beyond_replies_and_the_allowed_ranges() {
        let g = guard("cb", &["10.224.0.0/12", "10.77.1.9/16"]).unwrap();
        let batch = ruleset(&g);
        let commands = batch["nftables"].as_array().unwrap();
        let table = json!({"table": {"family": "inet", "name": TABLE}});
        assert_eq!(commands[..3], [json!({"add": table}), json!({"delete": table}), json!({"add": table})]);
        assert_eq!(
            commands[3],
            json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "input", "type": "filter",
                "hook": "input", "prio": 0, "policy": "accept"}}})
        );
        assert_eq!(commands[4]["add"]["chain"]["hook"], "forward");
        let rules: Vec<&Value> = commands.iter().filter_map(|c| c["add"].get("rule")).collect();
        let links = json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}});
        let replies =
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
        assert_eq!(
            *rules[0],
            json!({"family": "inet", "table": TABLE, "chain": "input", "comment": "cerana:guard=replies,links=cb",
                "expr": [links, replies, {"accept": null}]})
        );
        assert_eq!(
            *rules[1],
            json!({"family": "inet", "table": TABLE, "chain": "input", "comment": "cerana:guard=node,links=cb",
                "expr": [links, {"drop": null}]})
        );
        assert_eq!((rules[2]["chain"].as_str(), rules[2]["expr"][1].clone()), (Some("forward"), replies));
        assert_eq!(
            *rules[4],
            json!({"family": "inet", "table": TABLE, "chain": "forward",
                "comment": "cerana:guard=allow,links=cb,range=10.77.0.0/16",
                "expr": [links, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": {"prefix": {"addr": "10.77.0.0", "len": 16}}}}, {"accept": null}]})
        );
        assert_eq!(rules[3]["comment"], "cerana:guard=allow,links=cb,range=10.224.0.0/12");
        assert_eq!((rules[5]["comment"].as_str(), rules.len()), (Some("cerana:guard=drop,links=cb"), 6));
        // No ranges: replies only, then the drops.
        assert_eq!(ruleset(&guard("cb", &[]).unwrap())["nftables"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn bad_guards_are_refused_and_ranges_normalized() {
        let g = guard("cb", &["10.224.3.4/12", "10.224.0.0/12", "10.1.2.3"]).unwrap();
        assert_eq!(g.info().allowed, ["10.224.0.0/12", "10.1.2.3/32"]);
        assert_eq!(g.info().link_prefix.as_deref(), Some("cb"));
        assert!(matches!(guard("", &[]), Err(GuardError::Name(_))));
        assert!(matches!(guard("cb*", &[]), Err(GuardError::Name(_))));
        assert!(matches!(guard(&"c".repeat(15), &[]), Err(GuardError::Name(NameError::TooLong { .. }))));
        assert!(matches!(guard("cb", &["fd00::/8"]), Err(GuardError::Ipv6(_))));
        let bad = guard("cb", &["10.0.0.0/33"]).unwrap_err();
        assert!(matches!(&bad, GuardError::Name(n) if n.reason() == "invalid-address"), "{bad}");
        assert!(matches!(guard("cb", &["x"]), Err(GuardError::Name(_))));
        let many: Vec<String> = (0..65).map(|i| format!("10.{i}.0.0/16")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(guard("cb", &many), Err(GuardError::TooManyRanges(65))));
        assert!(guard("cb", &many[..64]).is_ok());
    }

    // Output of nft 1.0.6 for the table `ruleset` builds for `cb` and 10.77.0.0/16.
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "cerana_guard", "handle": 2}},
      {"chain": {"family": "inet", "table": "cerana_guard", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "cerana_guard", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "input", "handle": 3, "comment": "cerana:guard=replies,links=cb", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "input", "handle": 4, "comment": "cerana:guard=node,links=cb", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "forward", "handle": 5, "comment": "cerana:guard=replies,links=cb", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "forward", "handle": 6, "comment": "cerana:guard=allow,links=cb,range=10.77.0.0/16", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.77.0.0", "len": 16}}}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "forward", "handle": 7, "expr": [{"accept": null}]}},
      {"rule": {"family": "inet", "table": "cerana_guard", "chain": "forward", "handle": 8, "comment": "cerana:guard=drop,links=cb", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cb*"}}, {"drop": null}]}}]}"#;

    #[test]
    fn listings_from_nft_give_the_prefix_and_ranges_back() {
        let info = parse_listing(LISTING).unwrap();
        assert_eq!(info, GuardInfo { link_prefix: Some("cb".into()), allowed: vec!["10.77.0.0/16".into()] });
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#;
        assert_eq!(parse_listing(empty).unwrap(), GuardInfo::default());
        assert!(parse_listing("{}").is_err());
        let no_drop = LISTING.replace("guard=drop", "guard=other");
        assert!(parse_listing(&no_drop).unwrap_err().contains("lacks its drop rule in chain forward"));
        let mixed = LISTING.replace("guard=node,links=cb", "guard=node,links=vb");
        assert!(parse_listing(&mixed).is_err());
    }
}
