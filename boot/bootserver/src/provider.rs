//! The bootserver as a Task API provider: `boot-events` and `boot-machines` read the running
//! server's event log, so operators reach it through the coordinator and the `cerana` CLI;
//! `boot-dhcp` moves DHCP onto or off this node; `boot-join-token-create` mints an operator's
//! join token where this server issues node certificates.

use crate::config::DhcpMode;
use crate::dhcp_control::DhcpControl;
use crate::events::EventLog;
use crate::join_tokens::JoinTokens;
use cerana_protocol::tasks::boot::{
    BootDhcp, BootDhcpArgs, BootDhcpMode, BootDhcpResult, BootEvents, BootEventsArgs, BootJoinTokenCreate,
    BootMachines, JoinTokenCreateArgs, JoinTokenCreated,
};
use cerana_provider_sdk::{ErrorCode, Provider, TaskError};
use std::sync::Arc;

/// Provider name registered with the coordinator.
pub const PROVIDER_NAME: &str = "bootserver";

fn to_config(mode: BootDhcpMode) -> DhcpMode {
    match mode {
        BootDhcpMode::Full => DhcpMode::Full,
        BootDhcpMode::Proxy => DhcpMode::Proxy,
        BootDhcpMode::Off => DhcpMode::Off,
    }
}

fn from_config(mode: DhcpMode) -> BootDhcpMode {
    match mode {
        DhcpMode::Full => BootDhcpMode::Full,
        DhcpMode::Proxy => BootDhcpMode::Proxy,
        DhcpMode::Off => BootDhcpMode::Off,
    }
}

/// `boot-dhcp`: imports leases first (a failure changes nothing), then switches.
async fn switch_dhcp(dhcp: Arc<DhcpControl>, args: BootDhcpArgs) -> Result<BootDhcpResult, TaskError> {
    let imported = match &args.import_leases_from {
        Some(server) if args.mode == BootDhcpMode::Full => crate::replicate::fetch_leases(server)
            .await
            .map_err(|e| TaskError::new(ErrorCode::Unavailable, format!("importing leases: {e}")))?,
        Some(_) => return Err(TaskError::new(ErrorCode::InvalidArgs, "import_leases_from only applies to full mode")),
        None => Vec::new(),
    };
    let mode = to_config(args.mode);
    // Binding sockets and opening the lease journal block briefly.
    let (previous, count) = tokio::task::spawn_blocking(move || dhcp.switch(mode, &imported))
        .await
        .map_err(|e| TaskError::new(ErrorCode::Internal, format!("switching DHCP: {e}")))?
        .map_err(|e| TaskError::new(ErrorCode::Failed, format!("switching DHCP: {e}")))?;
    Ok(BootDhcpResult { previous: from_config(previous), mode: args.mode, imported_leases: count as u32 })
}

/// What `boot-join-token-create` needs.
#[derive(Debug, Clone)]
pub struct JoinIssuer {
    pub tokens: Arc<JoinTokens>,
    /// Whether this server holds the cluster CA: only then is a join token worth anything here.
    pub can_issue: bool,
    /// `http://<server>[:port]`, where the machine checks in.
    pub base: String,
    /// `cerana.cluster_ips` for the machine's command line.
    pub cluster_ips: String,
}

fn create_join_token(joins: &JoinIssuer, args: &JoinTokenCreateArgs) -> Result<JoinTokenCreated, TaskError> {
    args.validate().map_err(|e| TaskError::new(ErrorCode::InvalidArgument, e))?;
    if !joins.can_issue {
        return Err(TaskError::new(
            ErrorCode::Unavailable,
            "this node's boot server holds no cluster CA, so it issues no certificates: ask the bootstrap node's",
        ));
    }
    let now = crate::events::now_ms() / 1000;
    let token = joins
        .tokens
        .mint_for_operator(args.mac, args.ttl_seconds, now)
        .map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    let mut cmdline = format!(
        "cerana.boot_server={}/ cerana.cluster_ips={} cerana.join_token={}",
        joins.base,
        joins.cluster_ips,
        token.reveal()
    );
    if let Some(mac) = args.mac {
        cmdline.push_str(&format!(" cerana.mgmt_mac={mac}"));
    }
    tracing::info!(id = %token.id(), mac = ?args.mac, ttl = args.ttl_seconds, "join token minted for an operator");
    Ok(JoinTokenCreated {
        id: token.id().clone(),
        token: token.reveal(),
        expires_at: now.saturating_add(args.ttl_seconds),
        mac: args.mac,
        cmdline,
    })
}

pub fn provider(events: Arc<EventLog>, dhcp: Arc<DhcpControl>, joins: JoinIssuer) -> Provider {
    let machines = events.clone();
    Provider::new(PROVIDER_NAME, env!("CARGO_PKG_VERSION"))
        .task::<BootEvents, _, _>(move |_ctx, args: BootEventsArgs| {
            let events = events.clone();
            async move { Ok(events.events(&args)) }
        })
        .task::<BootMachines, _, _>(move |_ctx, _args| {
            let events = machines.clone();
            async move { Ok(events.machines()) }
        })
        .task::<BootDhcp, _, _>(move |_ctx, args: BootDhcpArgs| switch_dhcp(dhcp.clone(), args))
        .task::<BootJoinTokenCreate, _, _>(move |_ctx, args: JoinTokenCreateArgs| {
            let result = create_join_token(&joins, &args);
            async move { result }
        })
}
