//! `cerana-bootserver --config /etc/cerana/bootserver.toml`
use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

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
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "CERANA_LOG", default_value = "info")]
    log: String,
}

/// Tells the supervisor we serve: `READY\n` on the fd named by CERANA_READY_FD.
fn notify_ready() -> anyhow::Result<()> {
    let Ok(fd) = std::env::var(cerana_protocol::READY_FD_ENV) else { return Ok(()) };
    let fd: i32 = fd.parse().with_context(|| format!("{}={fd:?} is not a file descriptor", cerana_protocol::READY_FD_ENV))?;
    // SAFETY: the supervisor passed this fd to us for exactly this purpose and nothing else in
    // the process uses it; File takes ownership and closes it after the write.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    pipe.write_all(b"READY\n").context("writing the readiness line")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?).with_writer(std::io::stderr).init();
    let mut config = cerana_bootserver::config::Config::load(&args.config)?;
    if args.state_dir.is_some() {
        config.state_dir = args.state_dir;
    }
    let mut server = cerana_bootserver::Bootserver::start(config).await.context("starting the bootserver")?;
    notify_ready()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        e = server.wait() => Err(e.into()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}
