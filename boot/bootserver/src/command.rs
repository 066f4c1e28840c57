//! The `cerana-bootserver` command line: `cerana-bootserver --config /etc/cerana/bootserver.toml`,
//! or its `fetch` and `bootstrap-config` subcommands.
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// DHCP, TFTP and HTTP boot server for CeranaOS nodes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "CERANA_BOOTSERVER_CONFIG", default_value = "/etc/cerana/bootserver.toml")]
    config: PathBuf,
    /// Overrides `state_dir` of the configuration (lease journal).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Also serve the `boot-events` and `boot-machines` tasks through this coordinator socket
    /// (reconnecting whenever it restarts).
    #[arg(long, env = "CERANA_COORDINATOR_SOCKET")]
    coordinator: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "CERANA_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch the kernel and initrd this node booted from its boot server, check their hashes and
    /// keep them under DEST/sha256-<initrd hash>/ so this node can serve them too.
    Fetch {
        /// The boot server, e.g. http://10.0.0.1 (the value of cerana.boot_server).
        #[arg(long)]
        server: String,
        /// sha256-<hex> of the initrd (the value of cerana.initrd_hash).
        #[arg(long)]
        initrd_hash: String,
        #[arg(long, default_value = "/data/platform")]
        dest: PathBuf,
    },
    /// Write the bootstrap node's configuration from its kernel command line: the interface
    /// holding cerana.mgmt_ip, a lease pool (.100-.249) on that network, KERNEL and INITRD as
    /// the image (with the storage policy and quorum size passed on; never a credential).
    BootstrapConfig {
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long, default_value = "/usr/lib/ipxe")]
        tftp_root: PathBuf,
        #[arg(long, default_value = "/etc/cerana/bootserver.toml")]
        output: PathBuf,
    },
    /// On a node booted from the network: fetch the image this node booted (kernel and initrd by
    /// the hashes on its command line, both checked) into DEST, write a configuration that serves
    /// it and answers DHCP while the cluster elects it, and check in with the boot server.
    Join {
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        #[arg(long, default_value = "/run/cerana/boot-image")]
        dest: PathBuf,
        #[arg(long, default_value = "/usr/lib/ipxe")]
        tftp_root: PathBuf,
        #[arg(long, default_value = "/etc/cerana/bootserver.toml")]
        output: PathBuf,
        /// Where the node's key and the certificate its check-in brings are written.
        #[arg(long, default_value = "/run/cerana/tls")]
        tls_dir: PathBuf,
    },
}

/// The whole program: parses `std::env::args()` and serves (or runs a subcommand).
pub fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cerana-bootserver: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cerana-bootserver: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::Fetch { server, initrd_hash, dest }) = args.command {
        let (dir, manifest) = crate::replicate::fetch(&server, &initrd_hash, &dest).await?;
        println!(
            "{}",
            serde_json::json!({ "dir": dir, "kernel": manifest.kernel, "initrd": manifest.initrd, "cmdline": manifest.cmdline })
        );
        return Ok(());
    }
    if let Some(Command::BootstrapConfig { cmdline, kernel, initrd, tftp_root, output }) = args.command {
        let text = std::fs::read_to_string(&cmdline).with_context(|| format!("reading {}", cmdline.display()))?;
        let bootstrap = crate::bootstrap::Bootstrap::from_cmdline(&text)?;
        let interface = crate::bootstrap::interface_with(bootstrap.address)?;
        std::fs::write(
            &output,
            bootstrap.config(
                &interface,
                &kernel,
                &initrd,
                &tftp_root,
                crate::bootstrap::DhcpRole::Elected,
                Some(crate::bootstrap::Issuer::Here(Path::new(crate::bootstrap::CLUSTER_CA_DIR))),
            ),
        )
        .with_context(|| format!("writing {}", output.display()))?;
        // The check the server itself makes, so a bad file fails here, not at its start.
        crate::config::Config::load(&output)?;
        println!("{} written: interface {interface}, address {}", output.display(), bootstrap.address);
        return Ok(());
    }
    if let Some(Command::Join { cmdline, dest, tftp_root, output, tls_dir }) = args.command {
        let text = std::fs::read_to_string(&cmdline).with_context(|| format!("reading {}", cmdline.display()))?;
        let joined = crate::join::join(&text, &dest, &tftp_root, &output, &tls_dir).await?;
        println!("{}", serde_json::to_string(&joined)?);
        return Ok(());
    }
    let mut config = crate::config::Config::load(&args.config)?;
    if args.state_dir.is_some() {
        config.state_dir = args.state_dir;
    }
    // Join tokens go to the cluster store through the node's coordinator (the kv provider).
    let join_store = args.coordinator.as_ref().map(|socket| {
        std::sync::Arc::new(crate::join_store::KvJoinStore::new(socket))
            as std::sync::Arc<dyn crate::join_store::JoinStore>
    });
    let mut server = crate::Bootserver::start(config, join_store).await.context("starting the bootserver")?;
    if let Some(socket) = &args.coordinator {
        let kv = std::sync::Arc::new(crate::kv_tasks::KvTasks::new(socket, "bootserver-dhcp"));
        server.run_cluster_dhcp(kv, crate::cluster_dhcp::RESPONDER_TTL);
    }
    // Ready once DHCP, TFTP and HTTP serve; the coordinator may come later.
    cerana_protocol::readiness::notify_ready();
    if let Some(socket) = args.coordinator {
        let provider = crate::provider::provider(server.events.clone(), server.dhcp.clone(), server.joins.clone());
        tokio::spawn(async move {
            if let Err(e) = provider.serve(socket).await {
                tracing::error!(error = %e, "boot-* tasks are not served");
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        e = server.wait() => Err(e.into()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}
