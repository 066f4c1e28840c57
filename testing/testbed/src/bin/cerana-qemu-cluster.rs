//! `cerana-qemu-cluster up|down` (make cluster, make cluster-down): see the library and boot/README.md.
use anyhow::Context;
use cerana_testbed::cluster::{Cluster, Layout};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
struct Args {
    /// Where pidfiles, consoles and the API token go.
    #[arg(long, default_value = "out/cluster")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot the cluster, wait until every node is ready, leave it running.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The built image (vmlinuz, initrd.img).
        #[arg(long, default_value = "out/image/base")]
        image_dir: PathBuf,
        /// Nodes that PXE-boot on UEFI (OVMF); the rest use BIOS.
        #[arg(long, value_delimiter = ',', default_value = "3")]
        uefi: Vec<usize>,
        #[arg(long, default_value = "cerana-cluster")]
        netns: String,
        #[arg(long, default_value = "cerana-cl0")]
        host_if: String,
        #[arg(long, default_value = "10.99.0")]
        subnet: String,
        #[arg(long, default_value_t = 1024)]
        memory_mb: u32,
        /// Each node's data disk for its ZFS pool, in MiB (sparse; kept across `down`); 0: none.
        #[arg(long, default_value_t = 8192)]
        data_disk_mb: u64,
        /// More `cerana.*` settings for node 1 (passed on to the nodes it boots), e.g.
        /// `cerana.etcd_members=5`.
        #[arg(long = "bootstrap-arg")]
        bootstrap_args: Vec<String>,
        /// Seconds to wait for every node's node_ready.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Stop the VMs and delete the namespace, bridge, taps and veth.
    Down,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Down => {
            cerana_testbed::cluster::down(&args.state_dir)?;
            println!("cluster in {} stopped", args.state_dir.display());
        }
        Cmd::Up {
            nodes,
            image_dir,
            uefi,
            netns,
            host_if,
            subnet,
            memory_mb,
            data_disk_mb,
            bootstrap_args,
            timeout,
        } => {
            if let Some(bad) =
                bootstrap_args.iter().find(|a| !a.starts_with("cerana.") || a.contains(char::is_whitespace))
            {
                anyhow::bail!("--bootstrap-arg {bad:?}: expected one cerana.KEY=VALUE word");
            }
            // A cluster already running from this directory is replaced.
            cerana_testbed::cluster::down(&args.state_dir)?;
            let uefi_nodes = uefi.into_iter().filter(|&n| n >= 2 && n <= nodes).collect();
            let state_dir = args.state_dir.clone();
            let layout = Layout {
                netns,
                host_if,
                subnet,
                nodes,
                uefi_nodes,
                memory_mb,
                data_disk_mb,
                image_dir,
                state_dir,
                bootstrap_args,
            };
            let result = bring_up(layout, Duration::from_secs(timeout));
            if result.is_err() {
                cerana_testbed::cluster::down(&args.state_dir)?;
            }
            result?;
        }
    }
    Ok(())
}

fn bring_up(layout: Layout, limit: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let cluster = Cluster::up(layout).context("starting the cluster")?;
    cluster.wait_ready([1], limit)?;
    // Node 1 answers DHCP once its store is up and elects it the segment's responder.
    cluster.wait_dhcp_responder(&cluster.layout.bootstrap_ip(), |_| true, limit)?;
    println!(
        "node 1 ready and answering DHCP after {:.1} s; PXE-booting nodes 2..{}",
        start.elapsed().as_secs_f64(),
        cluster.layout.nodes
    );
    cluster.start_pxe_nodes()?;
    for (node, after) in cluster.wait_ready(2..=cluster.layout.nodes, limit)? {
        println!("node {node} ready {:.1} s after it started", after.as_secs_f64());
    }
    println!("all {} nodes ready after {:.1} s", cluster.layout.nodes, start.elapsed().as_secs_f64());
    // The cluster store: etcd_members voters (default 3), or every node when there are fewer.
    let wanted = cluster
        .layout
        .bootstrap_args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("cerana.etcd_members=")?.parse::<usize>().ok())
        .unwrap_or(3)
        .min(cluster.layout.nodes);
    let members = cluster.wait_quorum(&cluster.layout.bootstrap_ip(), wanted, limit)?;
    let names: Vec<&str> =
        members["members"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
    println!("cluster store: {wanted} voters ({}) after {:.1} s\n", names.join(", "), start.elapsed().as_secs_f64());
    cluster.write_cli_config()?;
    print!("{}", cluster.usage());
    Ok(())
}
