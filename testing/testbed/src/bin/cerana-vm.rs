//! `cerana-vm`: boot a CeranaOS node in QEMU for a person. See testing/testbed/README.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cerana_testbed::{default_log_dir, Boot, Vm, VmConfig};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Firmware {
    Direct,
    Bios,
    Uefi,
}

#[derive(Parser)]
#[command(about = "Boot a CeranaOS node in QEMU, wait for it to be ready, optionally run a task and power it off")]
struct Cli {
    /// Image directory from `make image` (vmlinuz, initrd.img) for direct boot.
    #[arg(long, default_value = "out/image/base")]
    image: PathBuf,
    /// The hybrid ISO from `make iso` (for --firmware bios|uefi).
    #[arg(long, default_value = "out/iso/cerana.iso")]
    iso: PathBuf,
    #[arg(long, value_enum, default_value = "direct")]
    firmware: Firmware,
    /// Extra kernel command line for direct boot (e.g. "cerana.rescue").
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Raw virtio disks to create, in MiB (repeatable).
    #[arg(long = "disk-mib")]
    disks: Vec<u64>,
    #[arg(long, default_value_t = 1536)]
    memory_mib: u32,
    /// Seconds to wait for the node_ready event.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Run this task through the API once ready and print its answer (e.g. node-info).
    #[arg(long)]
    task: Option<String>,
    /// Power off once done instead of staying up until Ctrl-C.
    #[arg(long)]
    powerdown: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let boot = match cli.firmware {
        Firmware::Direct => Boot::Direct {
            kernel: cli.image.join("vmlinuz"),
            initrd: cli.image.join("initrd.img"),
            cmdline: cli.cmdline.clone(),
        },
        Firmware::Bios => Boot::IsoBios(cli.iso.clone()),
        Firmware::Uefi => Boot::IsoUefi(cli.iso.clone()),
    };
    let mut config = VmConfig::new("cerana-vm", boot, default_log_dir());
    config.memory_mib = cli.memory_mib;
    config.disks = cli.disks.iter().map(|m| m * 1024 * 1024).collect();
    let mut vm = Vm::boot(&config).context("starting QEMU")?;
    eprintln!("console log: {}", vm.log_path().display());
    let ready = vm.wait_for_event("node_ready", Duration::from_secs(cli.timeout))?;
    eprintln!("node ready after {:.1} s: {ready:?}", vm.elapsed().as_secs_f64());
    if let Some(addr) = vm.api_addr() {
        println!("api=http://{addr} token={}", vm.token());
    }
    if let Some(task) = &cli.task {
        let reply = vm.run_task(task, serde_json::json!({}), Duration::from_secs(60))?;
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    if cli.powerdown {
        let status = vm.powerdown(Duration::from_secs(120))?;
        eprintln!("powered off ({status})");
        return Ok(());
    }
    eprintln!("running; Ctrl-C stops the VM");
    vm.wait_exit(Duration::from_secs(u64::from(u32::MAX)), "the guest to power off")?;
    Ok(())
}
