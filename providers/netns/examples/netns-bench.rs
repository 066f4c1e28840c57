//! `make bench-netns`: the same network set up through tasks (client → coordinator → netns
//! provider, over unix sockets) and through `ip` commands, alternating, in the same run.
//!
//! One setup = two namespaces with loopback up, a veth pair between them with both ends up, and
//! an address on each end. Tasks: netns-create ×2, netns-veth-add, netns-address-add ×2.
//! `ip`: netns add ×2, link set lo up ×2, link add (veth, peer in the other namespace), link set
//! up ×2, addr add ×2. Teardown (deleting both namespaces) is timed separately. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use cerana_protocol::tasks::netns::*;
use common::{Harness, NetnsGuard};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn ip_setup(a: &str, b: &str) -> Result<(), String> {
    ip(&["netns", "add", a])?;
    ip(&["netns", "add", b])?;
    ip(&["-n", a, "link", "set", "lo", "up"])?;
    ip(&["-n", b, "link", "set", "lo", "up"])?;
    ip(&["-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b])?;
    ip(&["-n", a, "link", "set", "va", "up"])?;
    ip(&["-n", b, "link", "set", "vb", "up"])?;
    ip(&["-n", a, "addr", "add", "10.90.0.1/24", "dev", "va"])?;
    ip(&["-n", b, "addr", "add", "10.90.0.2/24", "dev", "vb"])
}

fn ip_teardown(a: &str, b: &str) -> Result<(), String> {
    ip(&["netns", "delete", a])?;
    ip(&["netns", "delete", b])
}

async fn task_setup(h: &Harness, a: &str, b: &str) -> Result<(), String> {
    let fail = |e: cerana_protocol::TaskError| e.to_string();
    h.run::<NetnsCreate>(&NetnsArgs { name: a.into() }).await.map_err(fail)?;
    h.run::<NetnsCreate>(&NetnsArgs { name: b.into() }).await.map_err(fail)?;
    let end = |name: &str, netns: &str| VethEnd { name: name.into(), netns: Some(netns.into()) };
    h.run::<NetnsVethAdd>(&VethAddArgs { end: end("va", a), peer: end("vb", b), up: true }).await.map_err(fail)?;
    let address = |link: &str, netns: &str, address: &str| AddressArgs {
        link: link.into(),
        netns: Some(netns.into()),
        address: address.into(),
    };
    h.run::<NetnsAddressAdd>(&address("va", a, "10.90.0.1/24")).await.map_err(fail)?;
    h.run::<NetnsAddressAdd>(&address("vb", b, "10.90.0.2/24")).await.map_err(fail)?;
    Ok(())
}

async fn task_teardown(h: &Harness, a: &str, b: &str) -> Result<(), String> {
    for name in [a, b] {
        h.run::<NetnsDelete>(&NetnsArgs { name: name.into() }).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What both paths must leave: a's veth up with its address, b reachable (ping).
fn check(a: &str) -> Result<(), String> {
    let out = Command::new("ip").args(["-n", a, "-br", "addr", "show", "va"]).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("UP") || !text.contains("10.90.0.1/24") {
        return Err(format!("unexpected state of va in {a}: {text}"));
    }
    let ping = Command::new("ip").args(["netns", "exec", a, "ping", "-c", "1", "-W", "2", "10.90.0.2"]).output();
    match ping {
        Ok(p) if p.status.success() => Ok(()),
        Ok(p) => Err(format!("ping {a} -> 10.90.0.2 failed: {}", String::from_utf8_lossy(&p.stdout))),
        Err(_) => Ok(()), // no ping program: the address check above stands
    }
}

/// firewall-apply (validation, nft batch, read-back listing) vs the same batch given to `nft`
/// directly (from a thread inside the namespace, as the provider runs it), in one namespace.
async fn firewall_rounds(h: &Harness, names: &NetnsGuard, rounds: usize) -> Result<(Samples, Samples), String> {
    use cerana_netns::firewall::{ruleset, FirewallSpec};
    let netns = names.name("fw");
    h.run::<NetnsCreate>(&NetnsArgs { name: netns.clone() }).await.map_err(|e| e.to_string())?;
    let args = FirewallApplyArgs {
        bundle: names.name("bundle"),
        netns: netns.clone(),
        ports: vec![
            FirewallPort { port: 80, protocol: Protocol::Tcp, public: true, connected_bundles: vec![] },
            FirewallPort { port: 443, protocol: Protocol::Tcp, public: true, connected_bundles: vec![] },
        ],
        cluster: None,
    };
    let batch = ruleset(&FirewallSpec::from_args(&args).map_err(|e| e.to_string())?, &Default::default()).to_string();
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), batch).map_err(|e| e.to_string())?;
    let nft = cerana_netns::firewall::default_nft();
    let (mut task, mut direct) = (vec![], vec![]);
    for round in 0..rounds + 1 {
        let start = Instant::now();
        h.run::<FirewallApply>(&args).await.map_err(|e| e.to_string())?;
        let took_task = start.elapsed();
        let start = Instant::now();
        let (program, path) = (nft.clone(), file.path().to_owned());
        let out = common::in_netns(&netns, move || Command::new(program).arg("-j").arg("-f").arg(path).output())
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("nft -j -f: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let took_nft = start.elapsed();
        if round > 0 {
            task.push(took_task);
            direct.push(took_nft);
        }
    }
    h.run::<FirewallRemove>(&BundleRef { bundle: args.bundle.clone() }).await.map_err(|e| e.to_string())?;
    h.run::<NetnsDelete>(&NetnsArgs { name: netns }).await.map_err(|e| e.to_string())?;
    Ok((Samples(task), Samples(direct)))
}

struct Samples(Vec<Duration>);

impl Samples {
    fn median_ms(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted[sorted.len() / 2].as_secs_f64() * 1000.0
    }
    fn mean_ms(&self) -> f64 {
        self.0.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / self.0.len() as f64
    }
}

async fn run(rounds: usize) -> Result<(), String> {
    let h = Harness::start().await;
    let names = NetnsGuard::new();
    let (mut task_set, mut task_down, mut ip_set, mut ip_down) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds + 1 {
        // Alternate which path goes first so drift in the machine's load hits both alike.
        for tasks_first in [round % 2 == 0, round % 2 != 0] {
            let (a, b) = (names.name(&format!("a{round}{tasks_first}")), names.name(&format!("b{round}{tasks_first}")));
            let start = Instant::now();
            if tasks_first {
                task_setup(&h, &a, &b).await?;
            } else {
                ip_setup(&a, &b)?;
            }
            let set = start.elapsed();
            if round == 0 {
                check(&a)?;
            }
            let start = Instant::now();
            if tasks_first {
                task_teardown(&h, &a, &b).await?;
            } else {
                ip_teardown(&a, &b)?;
            }
            let down = start.elapsed();
            if round == 0 {
                continue; // warm-up
            }
            if tasks_first {
                task_set.push(set);
                task_down.push(down);
            } else {
                ip_set.push(set);
                ip_down.push(down);
            }
        }
    }
    let (fw_task, fw_nft) = firewall_rounds(&h, &names, rounds).await?;
    let (task_set, task_down, ip_set, ip_down) =
        (Samples(task_set), Samples(task_down), Samples(ip_set), Samples(ip_down));
    println!("netns + veth + address setup, {rounds} rounds each (2 namespaces, lo up, veth up, 2 addresses)");
    println!("{:<28} {:>12} {:>12}", "", "median ms", "mean ms");
    println!("{:<28} {:>12.2} {:>12.2}", "setup through tasks", task_set.median_ms(), task_set.mean_ms());
    println!("{:<28} {:>12.2} {:>12.2}", "setup through ip (9 cmds)", ip_set.median_ms(), ip_set.mean_ms());
    println!("{:<28} {:>12.2} {:>12.2}", "teardown through tasks", task_down.median_ms(), task_down.mean_ms());
    println!("{:<28} {:>12.2} {:>12.2}", "teardown through ip", ip_down.median_ms(), ip_down.mean_ms());
    println!("{:<28} {:>12.2} {:>12.2}", "firewall-apply task", fw_task.median_ms(), fw_task.mean_ms());
    println!("{:<28} {:>12.2} {:>12.2}", "same batch by nft -j -f", fw_nft.median_ms(), fw_nft.mean_ms());
    println!("ratio setup tasks/ip (median): {:.2}", task_set.median_ms() / ip_set.median_ms());
    println!("ratio teardown tasks/ip (median): {:.2}", task_down.median_ms() / ip_down.median_ms());
    println!("ratio firewall-apply task/nft (median): {:.2}", fw_task.median_ms() / fw_nft.median_ms());
    Ok(())
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("netns-bench needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    let rounds = std::env::var("NETNS_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match runtime.block_on(run(rounds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netns-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
