//! Per-bundle firewalls in nftables, through nftables' own JSON front end (`nft -j`).
//!
//! A bundle's firewall is the table `inet cerana` in the bundle's namespace: an input chain with
//! policy drop that accepts established traffic, loopback, ICMP, its public ports from anyone and
//! its other ports from the addresses of the bundles it names as connected. A whole table is
//! replaced in one `nft -f` batch (add, delete, add again, then the chain and rules), which the
//! kernel commits as one transaction: a firewall is never seen half-applied. Each rule carries a
//! `cerana:` comment saying what it is for, so the listing read back from the kernel can say it.
//!
//! In cluster mode (`cluster` given) the connected bundles' addresses come with the request
//! instead of from their namespaces here, and a public port is open to any source outside the
//! cluster's inter-bundle range but, inside it, to the connected bundles only.

use crate::links::{label, LinkError, Net};
use crate::names::{BundleId, Cidr, NameError, NetnsName};
use crate::namespace::{NamespaceError, Namespaces};
use cerana_protocol::tasks::netns::{
    ClusterSources, FirewallApplyArgs, FirewallInfo, FirewallPort, FirewallRule, Protocol,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio::sync::Mutex;

pub const TABLE: &str = "cerana";
const CHAIN: &str = "input";
const COMMENT_PREFIX: &str = "cerana:";
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// Why a firewall operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Links(#[from] LinkError),
    #[error("the firewall of bundle {bundle} names bundles without a firewall on this node: {}", unknown.join(", "))]
    UnknownBundles { bundle: BundleId, unknown: Vec<String> },
    #[error("bundle {0} has no firewall on this node")]
    NotFound(BundleId),
    #[error("bundle {bundle} is named as connected by {}; remove it from their firewalls first", by.join(", "))]
    InUse { bundle: BundleId, by: Vec<String> },
    #[error("namespace {netns} already holds the firewall of bundle {other}")]
    NetnsTaken { netns: NetnsName, other: BundleId },
    #[error("{0}")]
    InvalidPort(String),
    #[error("cannot run {program}: {source}")]
    NftMissing { program: PathBuf, source: std::io::Error },
    /// `netns` as [`label`] says it (`namespace NAME`, `the node's namespace`).
    #[error("nft refused the ruleset in {netns}: {stderr}")]
    Nft { netns: String, stderr: String },
    #[error("cannot read the firewall back from namespace {netns}: {why}")]
    Listing { netns: NetnsName, why: String },
    #[error("cannot save the firewall state to {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
}

/// A validated firewall request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub bundle: BundleId,
    pub netns: NetnsName,
    pub ports: Vec<FirewallPort>,
    /// Cluster mode: where connected bundles' traffic comes from, given by the cluster.
    pub cluster: Option<ClusterSpec>,
}

/// The cluster's sources of a cluster-mode firewall, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The inter-bundle range: the addresses that are bundles.
    pub range: Cidr,
    /// By bundle: the addresses its traffic comes from.
    pub bundles: BTreeMap<String, Vec<IpAddr>>,
}

impl ClusterSpec {
    pub fn from_sources(sources: &ClusterSources) -> Result<Self, FirewallError> {
        let range = Cidr::parse(&sources.range)?;
        for bundle in sources.bundles.keys() {
            BundleId::new(bundle)?;
        }
        Ok(Self { range, bundles: sources.bundles.clone() })
    }

    fn to_sources(&self) -> ClusterSources {
        ClusterSources { range: self.range.to_string(), bundles: self.bundles.clone() }
    }
}

impl FirewallSpec {
    pub fn from_args(args: &FirewallApplyArgs) -> Result<Self, FirewallError> {
        let bundle = BundleId::new(&args.bundle)?;
        let netns = NetnsName::new(&args.netns)?;
        let mut seen = BTreeSet::new();
        for port in &args.ports {
            if port.port == 0 {
                return Err(FirewallError::InvalidPort(format!("bundle {bundle}: port 0 cannot be opened")));
            }
            if !seen.insert((port.port, port.protocol)) {
                return Err(FirewallError::InvalidPort(format!(
                    "bundle {bundle}: port {}/{} is declared twice",
                    port.port,
                    protocol_name(port.protocol)
                )));
            }
            for other in &port.connected_bundles {
                BundleId::new(other)?;
            }
        }
        let cluster = args.cluster.as_ref().map(ClusterSpec::from_sources).transpose()?;
        Ok(Self { bundle, netns, ports: args.ports.clone(), cluster })
    }

    fn to_args(&self) -> FirewallApplyArgs {
        FirewallApplyArgs {
            bundle: self.bundle.to_string(),
            netns: self.netns.to_string(),
            ports: self.ports.clone(),
            cluster: self.cluster.as_ref().map(ClusterSpec::to_sources),
        }
    }

    /// Whether the connected bundles' sources come from the cluster (not from this node).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The bundles this firewall lets in.
    pub fn connected(&self) -> BTreeSet<String> {
        self.ports.iter().flat_map(|p| p.connected_bundles.iter().cloned()).collect()
    }
}

pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn rule(comment: String, mut expr: Vec<Value>) -> Value {
    expr.push(json!({"accept": null}));
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": CHAIN, "comment": comment, "expr": expr}}})
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn dport(port: &FirewallPort) -> Value {
    matches(json!({"payload": {"protocol": protocol_name(port.protocol), "field": "dport"}}), json!(port.port))
}

/// The nft payload protocol of an address family (`ip`, `ip6`).
fn address_family(v4: bool) -> &'static str {
    if v4 {
        "ip"
    } else {
        "ip6"
    }
}

/// A cluster-mode public port: open to sources outside the range (those of the range's family
/// not in it, and all of the other family), as two rules.
fn public_outside(port: &FirewallPort, range: &Cidr, comment: &str) -> [Value; 2] {
    let network = range.network();
    let v4 = network.addr().is_ipv4();
    let outside = json!({"match": {"op": "!=",
        "left": {"payload": {"protocol": address_family(v4), "field": "saddr"}},
        "right": {"prefix": {"addr": network.addr().to_string(), "len": network.prefix()}}}});
    let other_family = matches(json!({"meta": {"key": "nfproto"}}), json!(if v4 { "ipv6" } else { "ipv4" }));
    [rule(comment.to_owned(), vec![outside, dport(port)]), rule(comment.to_owned(), vec![other_family, dport(port)])]
}

/// The `nft -j -f` batch replacing the bundle's table; `sources` holds each connected bundle's
/// addresses. A connected bundle without addresses gets no rule (nothing of it could connect).
///
/// In cluster mode a public port's rules let in sources outside the cluster's range, followed
/// by the connected rules of its connected bundles (so, inside the range, only they get in).
pub fn ruleset(spec: &FirewallSpec, sources: &BTreeMap<String, Vec<IpAddr>>) -> Value {
    let table = json!({"table": {"family": "inet", "name": TABLE}});
    let mut commands = vec![
        json!({"add": table}),
        json!({"delete": table}),
        json!({"add": table}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": CHAIN, "type": "filter", "hook": "input",
            "prio": 0, "policy": "drop"}}}),
        rule(
            format!("{COMMENT_PREFIX}kind=established"),
            vec![json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})],
        ),
        rule(format!("{COMMENT_PREFIX}kind=loopback"), vec![matches(json!({"meta": {"key": "iifname"}}), json!("lo"))]),
        rule(
            format!("{COMMENT_PREFIX}kind=icmp"),
            // Numbers, not names: a node has no /etc/protocols for nft to resolve them with.
            vec![matches(json!({"meta": {"key": "l4proto"}}), json!({"set": [IPPROTO_ICMP, IPPROTO_ICMPV6]}))],
        ),
    ];
    for port in &spec.ports {
        let proto = protocol_name(port.protocol);
        if port.public {
            let comment = format!("{COMMENT_PREFIX}kind=public,proto={proto},port={}", port.port);
            match &spec.cluster {
                None => {
                    commands.push(rule(comment, vec![dport(port)]));
                    continue;
                }
                Some(cluster) => commands.extend(public_outside(port, &cluster.range, &comment)),
            }
        }
        for other in &port.connected_bundles {
            let addresses = sources.get(other).map(Vec::as_slice).unwrap_or_default();
            for v4 in [true, false] {
                let family = address_family(v4);
                let set: Vec<String> = addresses.iter().filter(|a| a.is_ipv4() == v4).map(|a| a.to_string()).collect();
                if set.is_empty() {
                    continue;
                }
                let source = matches(json!({"payload": {"protocol": family, "field": "saddr"}}), json!({"set": set}));
                commands.push(rule(
                    format!("{COMMENT_PREFIX}kind=connected,proto={proto},port={},from={other}", port.port),
                    vec![source, dport(port)],
                ));
            }
        }
    }
    json!({"nftables": commands})
}

/// The ruleset that removes the bundle's table (and succeeds when there is none).
fn removal() -> Value {
    let table = json!({"table": {"family": "inet", "name": TABLE}});
    json!({"nftables": [{"add": table}, {"delete": table}]})
}

/// Reads the rules out of `nft -j list table inet cerana`.
pub fn parse_listing(bundle: &BundleId, netns: &NetnsName, listing: &str) -> Result<FirewallInfo, String> {
    let value: Value = serde_json::from_str(listing).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items = value["nftables"].as_array().ok_or("no nftables array in nft's output")?;
    let mut policy = None;
    let mut rules = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain").filter(|c| c["name"] == CHAIN) {
            policy = chain["policy"].as_str().map(str::to_owned);
        }
        let Some(rule) = item.get("rule") else { continue };
        let handle = rule["handle"].as_u64().ok_or("a rule without a handle")?;
        let comment = rule["comment"].as_str().and_then(|c| c.strip_prefix(COMMENT_PREFIX)).unwrap_or("kind=foreign");
        let fields: BTreeMap<&str, &str> = comment.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let mut sources = Vec::new();
        for expr in rule["expr"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let m = &expr["match"];
            if m["left"]["payload"]["field"] == "saddr" {
                let right = &m["right"];
                let listed = right["set"].as_array().cloned().unwrap_or_else(|| vec![right.clone()]);
                sources.extend(listed.iter().filter_map(|a| a.as_str()?.parse::<IpAddr>().ok()));
            }
        }
        rules.push(FirewallRule {
            handle,
            kind: fields.get("kind").copied().unwrap_or("foreign").to_owned(),
            protocol: match fields.get("proto").copied() {
                Some("tcp") => Some(Protocol::Tcp),
                Some("udp") => Some(Protocol::Udp),
                _ => None,
            },
            port: fields.get("port").and_then(|p| p.parse().ok()),
            from_bundle: fields.get("from").map(|f| (*f).to_owned()),
            sources,
        });
    }
    Ok(FirewallInfo {
        bundle: bundle.to_string(),
        netns: netns.to_string(),
        policy: policy.ok_or("the table has no input chain")?,
        rules,
    })
}

/// Writes a provider's state file whole: a temporary file beside it, renamed over it.
pub(crate) fn write_state(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Whether nft failed because the table it was asked about is not there.
pub(crate) fn no_table(e: &FirewallError) -> bool {
    matches!(e, FirewallError::Nft { stderr, .. } if stderr.contains("No such file or directory"))
}

/// The `nft` program: `CERANA_NFT`, else the first of /usr/sbin/nft, /sbin/nft, else `nft`.
pub fn default_nft() -> PathBuf {
    if let Some(path) = std::env::var_os("CERANA_NFT") {
        return path.into();
    }
    ["/usr/sbin/nft", "/sbin/nft"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| "nft".into())
}

/// Runs `nft -j ARGS` with `input` on stdin inside a namespace, the provider's own for `None`
/// (on a thread that entered it, so the child starts there).
pub(crate) async fn nft(
    namespaces: &Namespaces,
    program: &Path,
    netns: Option<&NetnsName>,
    args: &[&str],
    input: Option<String>,
) -> Result<String, FirewallError> {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = program.clone();
    let output = namespaces
        .run_in(netns, move || -> std::io::Result<std::process::Output> {
            let mut child = Command::new(&program)
                .arg("-j")
                .args(&args)
                .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(input.as_bytes())?;
            }
            child.wait_with_output()
        })
        .await?
        .map_err(|source| FirewallError::NftMissing { program: shown, source })?;
    if !output.status.success() {
        return Err(FirewallError::Nft {
            netns: label(netns),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The firewalls of this node's bundles; the applied specs are kept in a state file so a
/// restarted provider still knows them.
#[derive(Debug)]
pub struct Firewalls {
    nft: PathBuf,
    state_file: Option<PathBuf>,
    applied: Mutex<BTreeMap<BundleId, FirewallSpec>>,
}

impl Firewalls {
    /// Firewalls applied with `nft`, remembered in `state_file` (none: in memory only).
    pub fn new(nft: PathBuf, state_file: Option<PathBuf>) -> Self {
        let mut applied = BTreeMap::new();
        if let Some(saved) = state_file.as_ref().and_then(|p| std::fs::read(p).ok()) {
            match serde_json::from_slice::<Vec<FirewallApplyArgs>>(&saved) {
                Ok(list) => {
                    for args in list {
                        if let Ok(spec) = FirewallSpec::from_args(&args) {
                            applied.insert(spec.bundle.clone(), spec);
                        }
                    }
                }
                Err(e) => tracing::warn!("ignoring the unreadable firewall state: {e}"),
            }
        }
        Self { nft, state_file, applied: Mutex::new(applied) }
    }

    fn save(&self, applied: &BTreeMap<BundleId, FirewallSpec>) -> Result<(), FirewallError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let list: Vec<FirewallApplyArgs> = applied.values().map(FirewallSpec::to_args).collect();
        write_state(path, &list).map_err(|source| FirewallError::State { path: path.clone(), source })
    }

    /// The addresses a bundle's traffic comes from: every address in its namespace but loopback
    /// and link-local ones.
    async fn addresses_of(namespaces: &Namespaces, netns: &NetnsName) -> Result<Vec<IpAddr>, FirewallError> {
        let net = Net::connect(namespaces, Some(netns)).await?;
        let cidrs: Vec<Cidr> = net.cidrs().await?.into_iter().map(|(_, c)| c).collect();
        Ok(cidrs.iter().filter(|c| !c.is_link_local() && !c.addr().is_loopback()).map(Cidr::addr).collect())
    }

    async fn install(
        &self,
        namespaces: &Namespaces,
        spec: &FirewallSpec,
        applied: &BTreeMap<BundleId, FirewallSpec>,
    ) -> Result<(), FirewallError> {
        let mut sources = BTreeMap::new();
        for other in spec.connected() {
            let addresses = match &spec.cluster {
                // The cluster says where connected bundles are; one it does not name gets no rule.
                Some(cluster) => match cluster.bundles.get(&other) {
                    Some(addresses) => addresses.clone(),
                    None => continue,
                },
                None => {
                    let id = BundleId::new(&other)?;
                    let netns = &applied.get(&id).ok_or_else(|| FirewallError::NotFound(id.clone()))?.netns;
                    Self::addresses_of(namespaces, netns).await?
                }
            };
            sources.insert(other, addresses);
        }
        let batch = ruleset(spec, &sources).to_string();
        nft(namespaces, &self.nft, Some(&spec.netns), &["-f", "-"], Some(batch)).await?;
        Ok(())
    }

    /// Replaces the bundle's firewall. Outside cluster mode every connected bundle must have a
    /// firewall here already (that is how the provider knows where its traffic comes from).
    pub async fn apply(&self, namespaces: &Namespaces, spec: FirewallSpec) -> Result<FirewallInfo, FirewallError> {
        let mut applied = self.applied.lock().await;
        let unknown: Vec<String> = spec
            .connected()
            .into_iter()
            .filter(|_| !spec.is_cluster())
            .filter(|b| b != spec.bundle.as_str() && BundleId::new(b).map_or(true, |id| !applied.contains_key(&id)))
            .collect();
        if !unknown.is_empty() {
            return Err(FirewallError::UnknownBundles { bundle: spec.bundle.clone(), unknown });
        }
        if let Some((other, _)) = applied.iter().find(|(b, s)| **b != spec.bundle && s.netns == spec.netns) {
            return Err(FirewallError::NetnsTaken { netns: spec.netns.clone(), other: other.clone() });
        }
        namespaces.open(Some(&spec.netns))?;
        let mut with_self = applied.clone();
        with_self.insert(spec.bundle.clone(), spec.clone());
        self.install(namespaces, &spec, &with_self).await?;
        applied.insert(spec.bundle.clone(), spec.clone());
        self.save(&applied)?;
        drop(applied);
        self.read(namespaces, &spec.bundle, &spec.netns).await
    }

    /// Re-applies the firewalls that let in a bundle living in `netns`, after its addresses
    /// changed (cluster-mode ones aside: the cluster gives their sources). Returns the bundles
    /// refreshed.
    pub async fn refresh_for(
        &self,
        namespaces: &Namespaces,
        netns: &NetnsName,
    ) -> Result<Vec<BundleId>, FirewallError> {
        let applied = self.applied.lock().await;
        let moved: BTreeSet<String> =
            applied.values().filter(|s| &s.netns == netns).map(|s| s.bundle.to_string()).collect();
        let mut refreshed = Vec::new();
        for spec in applied.values().filter(|s| !s.is_cluster() && s.connected().iter().any(|b| moved.contains(b))) {
            self.install(namespaces, spec, &applied).await?;
            refreshed.push(spec.bundle.clone());
        }
        Ok(refreshed)
    }

    async fn read(
        &self,
        namespaces: &Namespaces,
        bundle: &BundleId,
        netns: &NetnsName,
    ) -> Result<FirewallInfo, FirewallError> {
        let listing = nft(namespaces, &self.nft, Some(netns), &["list", "table", "inet", TABLE], None).await?;
        parse_listing(bundle, netns, &listing).map_err(|why| FirewallError::Listing { netns: netns.clone(), why })
    }

    /// The bundle whose firewall lives in `netns`, if any.
    pub async fn bundle_in(&self, netns: &NetnsName) -> Option<BundleId> {
        self.applied.lock().await.values().find(|s| &s.netns == netns).map(|s| s.bundle.clone())
    }

    /// The bundle's firewall as the kernel has it (read under the lock, so a removal running at
    /// the same time is either all before or all after).
    pub async fn get(&self, namespaces: &Namespaces, bundle: &BundleId) -> Result<FirewallInfo, FirewallError> {
        let applied = self.applied.lock().await;
        let netns = applied.get(bundle).map(|s| s.netns.clone());
        let netns = netns.ok_or_else(|| FirewallError::NotFound(bundle.clone()))?;
        self.read(namespaces, bundle, &netns).await
    }

    /// The firewalls the kernel has. One whose namespace or table went away underneath the
    /// provider (its namespace removed before its firewall) is not there, so it is not listed.
    pub async fn list(&self, namespaces: &Namespaces) -> Result<Vec<FirewallInfo>, FirewallError> {
        let applied = self.applied.lock().await;
        let mut firewalls = Vec::new();
        for spec in applied.values() {
            match self.read(namespaces, &spec.bundle, &spec.netns).await {
                Ok(info) => firewalls.push(info),
                Err(e) if no_table(&e) || matches!(e, FirewallError::Namespace(NamespaceError::NotFound(_))) => {
                    tracing::warn!(bundle = %spec.bundle, netns = %spec.netns, "firewall not in the kernel: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(firewalls)
    }

    /// Removes the bundle's table; refused while another bundle's firewall names it (cluster-mode
    /// firewalls do not count: their sources come from the cluster). A bundle whose namespace is
    /// gone is forgotten without touching nftables.
    pub async fn remove(&self, namespaces: &Namespaces, bundle: &BundleId) -> Result<(), FirewallError> {
        let mut applied = self.applied.lock().await;
        let spec = applied.get(bundle).cloned().ok_or_else(|| FirewallError::NotFound(bundle.clone()))?;
        let by: Vec<String> = applied
            .values()
            .filter(|s| s.bundle != *bundle && !s.is_cluster() && s.connected().contains(bundle.as_str()))
            .map(|s| s.bundle.to_string())
            .collect();
        if !by.is_empty() {
            return Err(FirewallError::InUse { bundle: bundle.clone(), by });
        }
        match nft(namespaces, &self.nft, Some(&spec.netns), &["-f", "-"], Some(removal().to_string())).await {
            Ok(_) | Err(FirewallError::Namespace(NamespaceError::NotFound(_))) => {}
            Err(e) => return Err(e),
        }
        applied.remove(bundle);
        self.save(&applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16, public: bool, connected: &[&str]) -> FirewallPort {
        FirewallPort {
            port,
            protocol: Protocol::Tcp,
            public,
            connected_bundles: connected.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn spec(ports: Vec<FirewallPort>) -> Result<FirewallSpec, FirewallError> {
        FirewallSpec::from_args(&FirewallApplyArgs { bundle: "a".into(), netns: "ns-a".into(), ports, cluster: None })
    }

    #[test]
    fn ruleset_replaces_the_table_atomically_and_names_each_rule() {
        let spec = spec(vec![port(80, true, &[]), port(81, false, &["b", "c"])]).unwrap();
        let sources = BTreeMap::from([
            ("b".to_owned(), vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()]),
            ("c".to_owned(), vec![]),
        ]);
        let batch = ruleset(&spec, &sources);
        let commands = batch["nftables"].as_array().unwrap();
        assert_eq!(commands[0]["add"]["table"]["name"], TABLE);
        assert_eq!(commands[1]["delete"]["table"]["name"], TABLE);
        assert_eq!(commands[3]["add"]["chain"]["policy"], "drop");
        let comments: Vec<&str> = commands.iter().filter_map(|c| c["add"]["rule"]["comment"].as_str()).collect();
        assert_eq!(
            comments,
            [
                "cerana:kind=established",
                "cerana:kind=loopback",
                "cerana:kind=icmp",
                "cerana:kind=public,proto=tcp,port=80",
                "cerana:kind=connected,proto=tcp,port=81,from=b",
                "cerana:kind=connected,proto=tcp,port=81,from=b",
            ]
        );
        let last = &commands.last().unwrap()["add"]["rule"]["expr"];
        assert_eq!(last[0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(last[0]["match"]["right"]["set"][0], "fd00::2");
    }

    fn cluster_spec(ports: Vec<FirewallPort>, range: &str) -> Result<FirewallSpec, FirewallError> {
        let bundles = BTreeMap::from([
            ("b".to_owned(), vec!["10.224.1.2".parse().unwrap(), "10.224.7.9".parse().unwrap()]),
            ("c".to_owned(), vec!["fd00:e0::3".parse().unwrap()]),
        ]);
        FirewallSpec::from_args(&FirewallApplyArgs {
            bundle: "a".into(),
            netns: "ns-a".into(),
            ports,
            cluster: Some(ClusterSources { range: range.into(), bundles }),
        })
    }

    #[test]
    fn cluster_mode_public_ports_let_in_the_outside_and_connected_bundles_only() {
        let spec =
            cluster_spec(vec![port(80, true, &["b", "d"]), port(81, false, &["b", "c"])], "10.224.0.0/12").unwrap();
        let sources = spec.cluster.as_ref().unwrap().bundles.clone();
        let batch = ruleset(&spec, &sources);
        let commands = batch["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = commands.iter().filter_map(|c| c["add"].get("rule")).collect();
        let comments: Vec<&str> = rules.iter().filter_map(|r| r["comment"].as_str()).collect();
        assert_eq!(
            comments[3..],
            [
                "cerana:kind=public,proto=tcp,port=80",
                "cerana:kind=public,proto=tcp,port=80",
                "cerana:kind=connected,proto=tcp,port=80,from=b",
                "cerana:kind=connected,proto=tcp,port=81,from=b",
                "cerana:kind=connected,proto=tcp,port=81,from=c",
            ]
        );
        // From outside the range (of its family), and from the other family.
        assert_eq!(
            rules[3]["expr"],
            json!([
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.224.0.0", "len": 12}}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"accept": null},
            ])
        );
        assert_eq!(
            rules[4]["expr"][0],
            json!({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}})
        );
        // Inside it, the connected bundles named by the cluster (d is not: no rule).
        assert_eq!(
            rules[5]["expr"],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"set": ["10.224.1.2", "10.224.7.9"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"accept": null},
            ])
        );
        assert_eq!(rules[7]["expr"][0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(spec.to_args().cluster.unwrap().range, "10.224.0.0/12", "the state file keeps the sources");
    }

    #[test]
    fn cluster_mode_with_an_ipv6_range_matches_ip6_sources() {
        let spec = cluster_spec(vec![port(443, true, &[])], "fd00:e0::/48").unwrap();
        let batch = ruleset(&spec, &BTreeMap::new());
        let rules: Vec<&Value> =
            batch["nftables"].as_array().unwrap().iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 5);
        assert_eq!(
            rules[3]["expr"][0],
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                "right": {"prefix": {"addr": "fd00:e0::", "len": 48}}}})
        );
        assert_eq!(rules[4]["expr"][0]["match"]["right"], "ipv4");
    }

    #[test]
    fn cluster_sources_are_checked() {
        assert!(matches!(cluster_spec(vec![], "10.224.0.0/33"), Err(FirewallError::Name(_))));
        assert!(matches!(cluster_spec(vec![], "not-a-cidr"), Err(FirewallError::Name(_))));
        let bad_bundle = FirewallApplyArgs {
            bundle: "a".into(),
            netns: "ns-a".into(),
            ports: vec![],
            cluster: Some(ClusterSources {
                range: "10.224.0.0/12".into(),
                bundles: BTreeMap::from([("bad/bundle".to_owned(), vec![])]),
            }),
        };
        assert!(matches!(FirewallSpec::from_args(&bad_bundle), Err(FirewallError::Name(_))));
        let args = cluster_spec(vec![port(80, true, &["b"])], "10.224.0.5/12").unwrap().to_args();
        assert_eq!(FirewallSpec::from_args(&args).unwrap().to_args(), args, "round trip");
    }

    #[test]
    fn bad_ports_are_refused() {
        assert!(matches!(spec(vec![port(0, true, &[])]), Err(FirewallError::InvalidPort(_))));
        let err = spec(vec![port(80, true, &[]), port(80, false, &["b"])]).unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
        assert!(matches!(spec(vec![port(80, false, &["bad/name"])]), Err(FirewallError::Name(_))));
    }

    #[test]
    fn listings_from_nft_are_read_back() {
        // Output of nft 1.0.6 for a table like the one `ruleset` builds.
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "cerana", "handle": 2}},
          {"chain": {"family": "inet", "table": "cerana", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
          {"rule": {"family": "inet", "table": "cerana", "chain": "input", "handle": 2, "comment": "cerana:kind=established", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "cerana", "chain": "input", "handle": 8, "comment": "cerana:kind=connected,proto=tcp,port=81,from=b", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["10.0.0.2", "10.0.0.3"]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 81}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "cerana", "chain": "input", "handle": 9, "comment": "cerana:kind=connected,proto=udp,port=81,from=b", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00::2"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 81}}, {"accept": null}]}},
          {"rule": {"family": "inet", "table": "cerana", "chain": "input", "handle": 10, "expr": [{"accept": null}]}}]}"#;
        let info = parse_listing(&BundleId::new("a").unwrap(), &NetnsName::new("ns-a").unwrap(), listing).unwrap();
        assert_eq!(info.policy, "drop");
        assert_eq!(info.rules.len(), 4);
        assert_eq!(info.rules[0].kind, "established");
        let connected = &info.rules[1];
        assert_eq!((connected.handle, connected.port, connected.protocol), (8, Some(81), Some(Protocol::Tcp)));
        assert_eq!(connected.from_bundle.as_deref(), Some("b"));
        assert_eq!(connected.sources, ["10.0.0.2".parse::<IpAddr>().unwrap(), "10.0.0.3".parse().unwrap()]);
        assert_eq!(info.rules[2].sources, ["fd00::2".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.rules[3].kind, "foreign");
        assert!(parse_listing(&BundleId::new("a").unwrap(), &NetnsName::new("n").unwrap(), "{}").is_err());
    }
}
