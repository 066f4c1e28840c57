//! `make bench-network`: bundle networks (issue #19), against their peers, in the same run.
//!
//! 1. Setup. One bundle replica's network on a node, as `bundle-apply` and the network tick
//!    make it: the namespace `bundle-<id>` (loopback up), the veth `cb<hash>` (node end, holding
//!    the subnet's gateway as a /32) with `eth0` inside (the services' /32 addresses), the
//!    namespace's routes (the gateway on the link, default through it), the node's /32 routes to
//!    the veth, the bundle's cluster-mode firewall and its published port. Through the ticks' code
//!    ([`cerana_ticks::network::make`], then `firewall-apply` and `publish-apply`, over the
//!    coordinator to the netns provider, both in this process) against the same state made by
//!    `ip` and `nft -j -f -` commands (fed the provider's own nft batches); torn down by
//!    [`cerana_ticks::network::remove`] against `nft delete table` and `ip netns delete`. Each
//!    round runs both, alternating which goes first; the warm-up round checks that both leave the
//!    same state (links, addresses, routes, firewall and publication as `ip -j` and `nft -j`
//!    list them).
//! 2. Throughput. Two node namespaces joined by a veth (the management link, 10.96.0.1/24 and
//!    10.96.0.2/24, forwarding on), each with a bundle namespace made as the ticks make it (the
//!    node's routes to the other node's bundle through the other node's management address), the
//!    node's guard in each node and each bundle's cluster-mode firewall (the receiving bundle's
//!    port open to the sending bundle only). TCP (std) from bundle A to bundle B, crossing both
//!    nodes, against node A to node B straight over the management link: 1 GiB per run in
//!    256 KiB writes, timed at the receiver from accept to end of stream, 3 runs each,
//!    alternating; the medians and their ratio are printed (goal ≥ 0.8).
//!
//! Needs root, and refuses to run in the machine's own network namespace: `make bench-network`
//! runs it in a namespace of its own (and deletes it afterwards). It also takes a mount namespace
//! of its own with a private /run/netns, so the namespaces it makes are seen by nothing outside
//! and go with it even if it is killed; it deletes them itself when it ends, failed or not.
//!
//! `NETWORK_BENCH_ROUNDS` (default 20) setup rounds, `NETWORK_BENCH_MIB` (default 1024) MiB per
//! throughput run.

#[path = "../../../providers/netns/tests/common/mod.rs"]
mod common;

use cerana_client::{CallError, UnixClient};
use cerana_netns::names::{BundleId, NetnsName};
use cerana_netns::namespace::Namespaces;
use cerana_netns::{firewall, guard, publish};
use cerana_protocol::tasks::netns::{
    ClusterSources, FirewallApply, FirewallApplyArgs, FirewallPort, GuardArgs, Protocol, PublishApply, PublishArgs,
    PublishedPort,
};
use cerana_protocol::tasks::ticks::{bundle_link, bundle_netns, ReplicaNetwork, BUNDLE_LINK_PREFIX};
use cerana_protocol::{ErrorCode, Task, TaskError};
use cerana_ticks::network::{self, Tasks};
use common::{Harness, NETNS_DIR};
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sched::{unshare, CloneFlags};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The cluster's inter-bundle range.
const RANGE: &str = "10.224.0.0/12";
/// The node address ports are published on in the setup rounds (on a veth of its own).
const PUBLISH_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const PUBLISH_LINK: &str = "mgmt0";
/// The connected bundle named by the setup rounds' firewall, and where it is.
const CLIENT: &str = "client";
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 224, 250, 2);
/// Bounds on connecting, accepting and each read or write of the throughput runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 256 << 10;
const THROUGHPUT_RUNS: usize = 3;
const PORT: u16 = 5201;

/// Runs `program args`, feeding it `input`; its standard output, or what went wrong.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{}: writing its input: {e}", shown()))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", shown()))?;
    if !out.status.success() {
        return Err(format!("{}: {}", shown(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args, None)
}

fn nft_program() -> String {
    firewall::default_nft().to_string_lossy().into_owned()
}

/// `nft -j -f -` fed `batch`, in the namespace `netns` (`ip netns exec`) or this one.
fn nft_batch(netns: Option<&str>, batch: &str) -> Result<(), String> {
    let nft = nft_program();
    match netns {
        Some(netns) => run("ip", &["netns", "exec", netns, &nft, "-j", "-f", "-"], Some(batch)),
        None => run(&nft, &["-j", "-f", "-"], Some(batch)),
    }
    .map(drop)
}

/// What this run made: named namespaces, and in its own namespace the publishing link and the
/// publication table. All removed on drop, however the run ends.
#[derive(Debug, Default)]
struct Made {
    namespaces: Mutex<Vec<String>>,
    /// The publishing link, and the publication table, in this namespace are this run's.
    publishing: AtomicBool,
}

impl Made {
    /// `name`, remembered for deletion (before it is made: a failed make leaves nothing either).
    fn netns(&self, name: String) -> String {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner()).push(name.clone());
        name
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let namespaces = Namespaces::at(NETNS_DIR);
        let names = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names.iter().rev() {
            if let Ok(name) = NetnsName::new(name) {
                let _ = namespaces.delete(&name);
            }
        }
        if self.publishing.load(Ordering::Relaxed) {
            let _ = run(&nft_program(), &["delete", "table", "ip", publish::TABLE], None);
            let _ = ip(&["link", "del", PUBLISH_LINK]);
        }
    }
}

/// The ticks' [`Tasks`] over the harness' client (coordinator → netns provider).
struct Through<'a>(&'a UnixClient);

impl Tasks for Through<'_> {
    async fn run<T: Task>(&self, args: &T::Args) -> Result<T::Output, TaskError>
    where
        T::Args: Sync,
    {
        self.0.run::<T>(args).await.map_err(|e| match e {
            CallError::Task(e) => e,
            CallError::Client(e) => TaskError::new(ErrorCode::Unavailable, e.to_string()),
        })
    }
}

#[derive(Debug, Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn median_ms(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }

    fn mean_ms(&self) -> f64 {
        self.0.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / self.0.len() as f64
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One replica's network: subnet `10.224.<k>.0/24`, services `a` and `b` at .2 and .3.
fn replica(k: u8) -> ReplicaNetwork {
    ReplicaNetwork {
        subnet: format!("10.224.{k}.0/24"),
        addresses: BTreeMap::from([
            ("a".to_owned(), Ipv4Addr::new(10, 224, k, 2)),
            ("b".to_owned(), Ipv4Addr::new(10, 224, k, 3)),
        ]),
    }
}

/// The cluster-mode firewall of `bundle`: `ports`, with `sources` as where the cluster says the
/// connected bundles are.
fn firewall_args(bundle: &str, ports: Vec<FirewallPort>, sources: BTreeMap<String, Vec<IpAddr>>) -> FirewallApplyArgs {
    FirewallApplyArgs {
        bundle: bundle.to_owned(),
        netns: bundle_netns(bundle),
        ports,
        cluster: Some(ClusterSources { range: RANGE.into(), bundles: sources }),
    }
}

/// The nft batch `firewall-apply` installs for `args`.
fn firewall_batch(args: &FirewallApplyArgs) -> Result<String, String> {
    let spec = firewall::FirewallSpec::from_args(args).map_err(|e| e.to_string())?;
    let given = args.cluster.as_ref().map(|c| c.bundles.clone()).unwrap_or_default();
    let sources = spec.connected().into_iter().filter_map(|b| Some((b.clone(), given.get(&b)?.clone()))).collect();
    Ok(firewall::ruleset(&spec, &sources).to_string())
}

/// One command of the `ip`/`nft` path.
struct Step {
    program: String,
    args: Vec<String>,
    input: Option<String>,
}

impl Step {
    fn ip(args: &[&str]) -> Self {
        Self { program: "ip".into(), args: args.iter().map(|a| (*a).to_owned()).collect(), input: None }
    }

    fn run(&self) -> Result<(), String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run(&self.program, &args, self.input.as_deref()).map(drop)
    }
}

/// The commands making, in this namespace, what the tick path makes for `bundle`.
fn ip_nft_steps(
    bundle: &str,
    net: &ReplicaNetwork,
    firewall: &FirewallApplyArgs,
    published: &PublishArgs,
) -> Result<Vec<Step>, String> {
    let (netns, link) = (bundle_netns(bundle), bundle_link(bundle));
    let gateway = format!("{}/32", net.gateway()?);
    let gateway_ip = net.gateway()?.to_string();
    let mut steps = vec![
        Step::ip(&["netns", "add", &netns]),
        Step::ip(&["-n", &netns, "link", "set", "lo", "up"]),
        Step::ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns]),
        Step::ip(&["link", "set", &link, "up"]),
        Step::ip(&["-n", &netns, "link", "set", "eth0", "up"]),
        Step::ip(&["addr", "add", &gateway, "dev", &link]),
    ];
    for address in net.addresses.values() {
        steps.push(Step::ip(&["-n", &netns, "addr", "add", &format!("{address}/32"), "dev", "eth0"]));
    }
    steps.push(Step::ip(&["-n", &netns, "route", "add", &gateway, "dev", "eth0", "scope", "link"]));
    steps.push(Step::ip(&["-n", &netns, "route", "add", "default", "via", &gateway_ip]));
    for address in net.addresses.values() {
        steps.push(Step::ip(&["route", "add", &format!("{address}/32"), "dev", &link]));
    }
    let nft = nft_program();
    steps.push(Step {
        program: "ip".into(),
        args: ["netns", "exec", &netns, &nft, "-j", "-f", "-"].map(String::from).to_vec(),
        input: Some(firewall_batch(firewall)?),
    });
    let publication = publish::Publication::from_args(published).map_err(|e| e.to_string())?;
    let all = BTreeMap::from([(publication.bundle.clone(), publication)]);
    steps.push(Step {
        program: nft,
        args: ["-j", "-f", "-"].map(String::from).to_vec(),
        input: Some(publish::ruleset(&all).to_string()),
    });
    Ok(steps)
}

fn ip_nft_teardown_steps(bundle: &str) -> Vec<Step> {
    vec![
        Step {
            program: nft_program(),
            args: ["delete", "table", "ip", publish::TABLE].map(String::from).to_vec(),
            input: None,
        },
        Step::ip(&["netns", "delete", &bundle_netns(bundle)]),
    ]
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn ip_json(args: &[&str]) -> Result<Value, String> {
    let out = ip(args)?;
    serde_json::from_str(&out).map_err(|e| format!("ip {}: unreadable JSON: {e}", args.join(" ")))
}

/// An nft listing without what differs between two equal tables (handles, nft's version).
fn nft_items(listing: &str) -> Result<Vec<String>, String> {
    fn unhandled(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(unhandled);
            }
            Value::Array(list) => list.iter_mut().for_each(unhandled),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(listing).map_err(|e| format!("nft printed unreadable JSON: {e}"))?;
    unhandled(&mut value);
    Ok(items(&value["nftables"]).iter().filter(|i| i.get("metainfo").is_none()).map(Value::to_string).collect())
}

/// A bundle's network on this node as `ip -j` and `nft -j` list it, its names and its subnet
/// (`10.224.<k>.0/24`) replaced by placeholders: equal for two bundles made alike.
fn state(bundle: &str, k: u8) -> Result<BTreeSet<String>, String> {
    let (netns, link) = (bundle_netns(bundle), bundle_link(bundle));
    let mut facts = Vec::new();
    let up = |l: &Value| items(&l["flags"]).iter().any(|f| f == "UP");
    for l in items(&ip_json(&["-j", "-n", &netns, "link", "show"])?) {
        facts.push(format!("inside: link {} up={}", text(&l["ifname"]), up(l)));
    }
    for l in items(&ip_json(&["-j", "-n", &netns, "-4", "addr", "show"])?) {
        for a in items(&l["addr_info"]) {
            facts.push(format!("inside: {} has {}/{}", text(&l["ifname"]), text(&a["local"]), a["prefixlen"]));
        }
    }
    let route = |r: &Value| {
        let scope = r.get("scope").map_or("global".into(), text);
        let via = r.get("gateway").map_or(String::new(), |g| format!(" via {}", text(g)));
        format!("{}{via} dev {} scope {scope}", text(&r["dst"]), text(&r["dev"]))
    };
    for r in items(&ip_json(&["-j", "-n", &netns, "-4", "route", "show"])?) {
        facts.push(format!("inside: route {}", route(r)));
    }
    for l in items(&ip_json(&["-j", "link", "show", "dev", &link])?) {
        facts.push(format!("node: link {} up={}", text(&l["ifname"]), up(l)));
    }
    for l in items(&ip_json(&["-j", "-4", "addr", "show", "dev", &link])?) {
        for a in items(&l["addr_info"]) {
            facts.push(format!("node: {} has {}/{}", text(&l["ifname"]), text(&a["local"]), a["prefixlen"]));
        }
    }
    for r in items(&ip_json(&["-j", "-4", "route", "show"])?).iter().filter(|r| r["dev"] == link.as_str()) {
        facts.push(format!("node: route {}", route(r)));
    }
    let nft = nft_program();
    let listing = ip(&["netns", "exec", &netns, &nft, "-j", "list", "table", "inet", firewall::TABLE])?;
    facts.extend(nft_items(&listing)?.into_iter().map(|i| format!("firewall: {i}")));
    let listing = run(&nft, &["-j", "list", "table", "ip", publish::TABLE], None)?;
    facts.extend(nft_items(&listing)?.into_iter().map(|i| format!("publish: {i}")));
    Ok(facts
        .into_iter()
        .map(|f| {
            f.replace(&netns, "<netns>")
                .replace(bundle, "<bundle>")
                .replace(&link, "<link>")
                .replace(&format!("10.224.{k}."), "10.224.<k>.")
        })
        .collect())
}

/// Part 1: the setup rounds, printed.
async fn setup_rounds(made: &Made, rounds: usize) -> Result<(), String> {
    let h = Harness::start().await;
    let tasks = Through(&h.client);
    if run(&nft_program(), &["list", "table", "ip", publish::TABLE], None).is_ok() {
        return Err(format!("this namespace publishes ports already (table ip {}): not the bench's", publish::TABLE));
    }
    ip(&["link", "add", PUBLISH_LINK, "type", "veth", "peer", "name", "mgmt1"])?;
    made.publishing.store(true, Ordering::Relaxed);
    ip(&["addr", "add", &format!("{PUBLISH_ADDRESS}/24"), "dev", PUBLISH_LINK])?;
    ip(&["link", "set", PUBLISH_LINK, "up"])?;
    ip(&["link", "set", "mgmt1", "up"])?;
    let (mut tick_set, mut tick_down, mut ip_set, mut ip_down) =
        (Samples::default(), Samples::default(), Samples::default(), Samples::default());
    let (mut set_commands, mut down_commands) = (0, 0);
    for round in 0..rounds + 1 {
        let j = (round % 120) as u8;
        let mut states = Vec::new();
        // Alternate which path goes first, so drift in the machine's load hits both alike.
        for tick in [round % 2 == 0, round % 2 != 0] {
            // Each path its own subnet: a deleted namespace's links (and so the node's routes
            // through them) go a moment after the delete returns, in the kernel's own time.
            let k = 2 * j + if tick { 1 } else { 2 };
            let net = replica(k);
            let bundle = format!("cerana-bench-{}{round}", if tick { "t" } else { "i" });
            BundleId::new(&bundle).map_err(|e| e.to_string())?;
            made.netns(bundle_netns(&bundle));
            let connected = BTreeMap::from([(CLIENT.to_owned(), vec![IpAddr::V4(CLIENT_ADDRESS)])]);
            let ports = vec![FirewallPort {
                port: 80,
                protocol: Protocol::Tcp,
                public: true,
                connected_bundles: vec![CLIENT.into()],
            }];
            let firewall = firewall_args(&bundle, ports, connected);
            let published = PublishArgs {
                bundle: bundle.clone(),
                address: IpAddr::V4(PUBLISH_ADDRESS),
                ports: vec![PublishedPort {
                    external_port: 18000 + u16::from(j),
                    protocol: Protocol::Tcp,
                    to: IpAddr::V4(net.addresses["a"]),
                    port: 80,
                }],
            };
            let (set, down);
            if tick {
                let start = Instant::now();
                network::make(&tasks, &bundle, &net).await.map_err(|e| format!("network::make: {e}"))?;
                tasks.run::<FirewallApply>(&firewall).await.map_err(|e| format!("firewall-apply: {e}"))?;
                tasks.run::<PublishApply>(&published).await.map_err(|e| format!("publish-apply: {e}"))?;
                set = start.elapsed();
                if round == 0 {
                    states.push(state(&bundle, k)?);
                }
                let start = Instant::now();
                network::remove(&tasks, &bundle).await.map_err(|e| format!("network::remove: {e}"))?;
                down = start.elapsed();
            } else {
                let steps = ip_nft_steps(&bundle, &net, &firewall, &published)?;
                let teardown = ip_nft_teardown_steps(&bundle);
                (set_commands, down_commands) = (steps.len(), teardown.len());
                let start = Instant::now();
                steps.iter().try_for_each(Step::run)?;
                set = start.elapsed();
                if round == 0 {
                    states.push(state(&bundle, k)?);
                }
                let start = Instant::now();
                teardown.iter().try_for_each(Step::run)?;
                down = start.elapsed();
            }
            if round == 0 {
                continue; // warm-up
            }
            let (s, d) = if tick { (&mut tick_set, &mut tick_down) } else { (&mut ip_set, &mut ip_down) };
            s.0.push(set);
            d.0.push(down);
        }
        // Round 0 runs the tick code first.
        if let [first, second] = states.as_slice() {
            if first != second {
                let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
                    a.difference(b).map(|f| format!("\n  {f}")).collect::<String>()
                };
                return Err(format!(
                    "the two paths left different states; only after the tick code:{}\nonly after ip/nft:{}",
                    only(first, second),
                    only(second, first)
                ));
            }
            println!("warm-up: both paths leave the same state ({} facts from ip -j and nft -j)", first.len());
        }
    }
    drop(h);
    println!("bundle network setup on a node, {rounds} rounds each (namespace, veth, 3 addresses, 4 routes, firewall, published port)");
    println!("{:<36} {:>10} {:>10}", "", "median ms", "mean ms");
    let row = |what: &str, s: &Samples| println!("{what:<36} {:>10.2} {:>10.2}", s.median_ms(), s.mean_ms());
    row("setup via tick code (tasks)", &tick_set);
    row(&format!("setup via ip/nft ({set_commands} cmds)"), &ip_set);
    row("teardown via tick code (tasks)", &tick_down);
    row(&format!("teardown via ip/nft ({down_commands} cmds)"), &ip_down);
    println!("ratio setup tick/ip-nft (median): {:.2}", tick_set.median_ms() / ip_set.median_ms());
    println!("ratio teardown tick/ip-nft (median): {:.2}", tick_down.median_ms() / ip_down.median_ms());
    Ok(())
}

/// One node of the throughput part with its bundle replica.
struct Side {
    node: String,
    bundle: String,
    mgmt: Ipv4Addr,
    net: ReplicaNetwork,
}

impl Side {
    fn address(&self) -> Ipv4Addr {
        self.net.addresses["a"]
    }

    /// The node namespace, its end of the management link aside; the bundle's namespace, veth,
    /// addresses and routes as the ticks make them; the node's routes to `other`'s bundle; the
    /// node's guard and the bundle's `firewall`.
    fn make(&self, made: &Made, other: &Side, firewall: &FirewallApplyArgs) -> Result<(), String> {
        let (node, netns, link) =
            (self.node.as_str(), made.netns(bundle_netns(&self.bundle)), bundle_link(&self.bundle));
        let gateway = self.net.gateway()?;
        let forward = "/proc/sys/net/ipv4/ip_forward";
        let set = common::spawn_in(node, move || -> Result<String, String> {
            std::fs::write(forward, "1").map_err(|e| format!("{forward}: {e}"))?;
            std::fs::read_to_string(forward).map_err(|e| format!("{forward}: {e}"))
        });
        match set.join().map_err(|_| "the thread setting ip_forward panicked".to_owned())?? {
            on if on.trim() == "1" => {}
            off => return Err(format!("ip_forward in {node} reads {off:?} after writing 1")),
        }
        ip(&["netns", "add", &netns])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", node, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&["-n", node, "link", "set", &link, "up"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", node, "addr", "add", &format!("{gateway}/32"), "dev", &link])?;
        for address in self.net.addresses.values() {
            ip(&["-n", &netns, "addr", "add", &format!("{address}/32"), "dev", "eth0"])?;
        }
        ip(&["-n", &netns, "route", "add", &format!("{gateway}/32"), "dev", "eth0", "scope", "link"])?;
        ip(&["-n", &netns, "route", "add", "default", "via", &gateway.to_string()])?;
        for address in self.net.addresses.values() {
            ip(&["-n", node, "route", "add", &format!("{address}/32"), "dev", &link])?;
        }
        for address in other.net.addresses.values() {
            ip(&["-n", node, "route", "add", &format!("{address}/32"), "via", &other.mgmt.to_string()])?;
        }
        let args = GuardArgs { link_prefix: BUNDLE_LINK_PREFIX.into(), allowed: vec![RANGE.into()] };
        let node_guard = guard::Guard::from_args(&args).map_err(|e| e.to_string())?;
        nft_batch(Some(node), &guard::ruleset(&node_guard).to_string())?;
        nft_batch(Some(&netns), &firewall_batch(firewall)?)
    }
}

/// Receives on `at` until the stream ends: the bytes and the time from accept to end.
fn receive(at: SocketAddrV4, ready: mpsc::Sender<()>) -> Result<(u64, Duration), String> {
    let listener = TcpListener::bind(at).map_err(|e| format!("cannot listen on {at}: {e}"))?;
    let _ = ready.send(());
    let waited = u16::try_from(CONNECT_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, waited).map_err(|e| format!("waiting for a connection on {at}: {e}"))? == 0 {
        return Err(format!("nothing connected to {at} within {CONNECT_TIMEOUT:?}"));
    }
    let (mut stream, _) = listener.accept().map_err(|e| format!("accepting on {at}: {e}"))?;
    let start = Instant::now();
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading on {at} after {total} bytes: {e}")),
        }
    }
    Ok((total, start.elapsed()))
}

/// Sends `bytes` to `to` in [`CHUNK`] writes, then ends the stream.
fn send(to: SocketAddrV4, bytes: u64) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::V4(to), CONNECT_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&buf[..n]).map_err(|e| format!("sending to {to}, {left} bytes left: {e}"))?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write).map_err(|e| format!("ending the stream to {to}: {e}"))
}

fn joined<T>(handle: std::thread::JoinHandle<Result<T, String>>, what: &str) -> Result<T, String> {
    handle.join().map_err(|_| format!("the {what} thread panicked"))?
}

/// `bytes` from namespace `from` to a listener on `at` in namespace `to`: MB/s at the receiver.
fn transfer(from: &str, to: &str, at: SocketAddrV4, bytes: u64) -> Result<f64, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = common::spawn_in(to, move || receive(at, ready_tx));
    if ready_rx.recv_timeout(CONNECT_TIMEOUT).is_err() {
        return Err(joined(receiver, "receiver").err().unwrap_or_else(|| format!("no listener on {at}")));
    }
    let sender = common::spawn_in(from, move || send(at, bytes));
    let sent = joined(sender, "sender");
    let received = joined(receiver, "receiver");
    sent?;
    let (got, took) = received?;
    if got != bytes {
        return Err(format!("{at} received {got} bytes of {bytes}"));
    }
    Ok(got as f64 / 1e6 / took.as_secs_f64())
}

/// That `from` cannot connect to `at` in `to` although something listens there (the firewall
/// drops it): the bundle firewall is in place.
fn dropped(from: &str, to: &str, at: SocketAddrV4) -> Result<(), String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let listener = common::spawn_in(to, move || -> Result<(), String> {
        let listener = TcpListener::bind(at).map_err(|e| format!("cannot listen on {at}: {e}"))?;
        let _ = ready_tx.send(());
        let _ = stop_rx.recv_timeout(CONNECT_TIMEOUT);
        drop(listener);
        Ok(())
    });
    if ready_rx.recv_timeout(CONNECT_TIMEOUT).is_err() {
        return Err(joined(listener, "listener").err().unwrap_or_else(|| format!("no listener on {at}")));
    }
    let attempt = common::spawn_in(from, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(at), Duration::from_secs(1)).map(drop)
    });
    let outcome = attempt.join();
    let _ = stop_tx.send(());
    joined(listener, "listener")?;
    match outcome {
        Err(_) => Err("the connecting thread panicked".into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
        Ok(Err(e)) => Err(format!("connecting from {from} to {at} failed otherwise than dropped: {e}")),
        Ok(Ok(())) => Err(format!("{from} reached {at}, which its bundle's firewall should drop")),
    }
}

/// Part 2: throughput over the bundle network against the bare management link, printed.
fn throughput(made: &Made, mib: u64) -> Result<(), String> {
    let a = Side {
        node: made.netns("cerana-bench-na".into()),
        bundle: "cerana-bench-a".into(),
        mgmt: Ipv4Addr::new(10, 96, 0, 1),
        net: replica(1),
    };
    let b = Side {
        node: made.netns("cerana-bench-nb".into()),
        bundle: "cerana-bench-b".into(),
        mgmt: Ipv4Addr::new(10, 96, 0, 2),
        net: replica(2),
    };
    for side in [&a, &b] {
        ip(&["netns", "add", &side.node])?;
        ip(&["-n", &side.node, "link", "set", "lo", "up"])?;
    }
    ip(&["-n", &a.node, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt0", "netns", &b.node])?;
    for side in [&a, &b] {
        ip(&["-n", &side.node, "addr", "add", &format!("{}/24", side.mgmt), "dev", "mgmt0"])?;
        ip(&["-n", &side.node, "link", "set", "mgmt0", "up"])?;
    }
    // A sends and lets nothing in; B's port is open to A's replica (all its addresses) only.
    let addresses = |s: &Side| s.net.addresses.values().map(|ip| IpAddr::V4(*ip)).collect::<Vec<_>>();
    a.make(made, &b, &firewall_args(&a.bundle, vec![], BTreeMap::new()))?;
    let open =
        FirewallPort { port: PORT, protocol: Protocol::Tcp, public: false, connected_bundles: vec![a.bundle.clone()] };
    b.make(made, &a, &firewall_args(&b.bundle, vec![open], BTreeMap::from([(a.bundle.clone(), addresses(&a))])))?;
    let (bundle_a, bundle_b) = (bundle_netns(&a.bundle), bundle_netns(&b.bundle));
    let to_bundle = SocketAddrV4::new(b.address(), PORT);
    let to_node = SocketAddrV4::new(b.mgmt, PORT);
    dropped(&a.node, &bundle_b, to_bundle)?;
    // Warm-up, and a check that both paths carry.
    transfer(&bundle_a, &bundle_b, to_bundle, 64 << 20)?;
    transfer(&a.node, &b.node, to_node, 64 << 20)?;
    let bytes = mib << 20;
    let (mut bundle, mut bare) = (Vec::new(), Vec::new());
    for run in 0..THROUGHPUT_RUNS {
        for over_bundles in [run % 2 == 0, run % 2 != 0] {
            if over_bundles {
                bundle.push(transfer(&bundle_a, &bundle_b, to_bundle, bytes)?);
            } else {
                bare.push(transfer(&a.node, &b.node, to_node, bytes)?);
            }
        }
    }
    let runs = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!("TCP throughput between two nodes, {mib} MiB per run in {} KiB writes, {THROUGHPUT_RUNS} runs each (MB/s at the receiver)", CHUNK >> 10);
    println!(
        "{:<44} {:>8.0} MB/s (median; runs {})",
        "bundle A -> bundle B over the bundle network",
        median(&bundle),
        runs(&bundle)
    );
    println!(
        "{:<44} {:>8.0} MB/s (median; runs {})",
        "node A -> node B over the bare link",
        median(&bare),
        runs(&bare)
    );
    println!("ratio bundle network/bare link (median): {:.2} (goal ≥ 0.8)", median(&bundle) / median(&bare));
    Ok(())
}

/// The inode of the initial network namespace on kernels that fix it (`PROC_NET_INIT_INO`).
const INIT_NETNS_INO: u64 = 0xEFFF_FFF9;

/// Whether this process may be in the machine's own network namespace: it is when it shares
/// PID 1's, or has the initial one's fixed inode; where PID 1's cannot be read (a sandbox), it is
/// taken to be unless it is a named one (under /run/netns, as `ip netns exec` runs it).
fn in_machine_netns() -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(|e| format!("cannot read /proc/self/ns/net: {e}"))?;
    let same = |other: &std::fs::Metadata| own.dev() == other.dev() && own.ino() == other.ino();
    if own.ino() == INIT_NETNS_INO {
        return Ok(true);
    }
    if let Ok(machine) = std::fs::metadata("/proc/1/ns/net") {
        return Ok(same(&machine));
    }
    let named = std::fs::read_dir(NETNS_DIR)
        .map(|entries| entries.flatten().filter_map(|e| std::fs::metadata(e.path()).ok()).any(|m| same(&m)))
        .unwrap_or(false);
    Ok(!named)
}

/// A mount namespace of this process' own with a private, empty /run/netns: the namespaces made
/// here are seen by nothing outside and go with the process. Before any thread is started.
fn private_netns_dir() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot unshare a mount namespace: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("cannot make / a slave mount: {e}"))?;
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| format!("cannot create {NETNS_DIR}: {e}"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), NETNS_DIR, Some("tmpfs"), flags, Some("mode=0755"))
        .map_err(|e| format!("cannot mount a tmpfs on {NETNS_DIR}: {e}"))
}

fn bench(rounds: usize, mib: u64) -> Result<(), String> {
    let made = Made::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(setup_rounds(&made, rounds))?;
    drop(runtime);
    println!();
    throughput(&made, mib)
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("network-bench needs root (network namespaces, veth, nftables); run `make bench-network` as root");
        return ExitCode::FAILURE;
    }
    match in_machine_netns() {
        Ok(false) => {}
        Ok(true) => {
            eprintln!(
                "network-bench: refusing to run in the machine's own network namespace (it adds links, routes and \
                 nftables tables there); run `make bench-network`, which runs it in a namespace of its own and \
                 deletes that afterwards"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("network-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = private_netns_dir() {
        eprintln!("network-bench: {e}");
        return ExitCode::FAILURE;
    }
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, mib) = (env("NETWORK_BENCH_ROUNDS", 20).max(1) as usize, env("NETWORK_BENCH_MIB", 1024).max(1));
    match bench(rounds, mib) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("network-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
