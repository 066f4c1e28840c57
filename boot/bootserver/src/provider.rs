//! The bootserver as a Task API provider: `boot-events` and `boot-machines` read the running
//! server's event log, so operators reach it through the coordinator and the `cerana` CLI;
//! `boot-dhcp` moves DHCP onto or off this node; `boot-join-token-create` mints an operator's
//! join token where this server issues node certificates.

use crate::config::DhcpMode;
use crate::dhcp_control::DhcpControl;
use crate::events::EventLog;
use crate::join_tokens::{JoinMintError, JoinTokens};
use cerana_protocol::tasks::boot::{
    BootDhcp, BootDhcpArgs, BootDhcpMode, BootDhcpResult, BootEvents, BootEventsArgs, BootJoinTokenCreate,
    BootMachines, JoinTokenCreateArgs, JoinTokenCreated,
};
use cerana_provider_sdk::{ErrorCode, Provider, TaskError};
use std::sync::Arc;

/// Provider name registered with the coordinator.
pub const PROVIDER_NAME: &str = "bootserver";

fn to_config(mode: BootDhcpMode) -> Option<DhcpMode> {
    match mode {
        BootDhcpMode::Full => Some(DhcpMode::Full),
        BootDhcpMode::Proxy => Some(DhcpMode::Proxy),
        BootDhcpMode::Off => Some(DhcpMode::Off),
        BootDhcpMode::Cluster => None,
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
    if args.mode == BootDhcpMode::Cluster && !dhcp.is_clustered() {
        return Err(TaskError::new(ErrorCode::InvalidArgs, "this boot server takes no part in the cluster's DHCP"));
    }
    // Binding sockets and opening the lease journal block briefly.
    let (previous, count) = tokio::task::spawn_blocking(move || match to_config(args.mode) {
        Some(mode) => {
            dhcp.override_election();
            dhcp.switch(mode, &imported)
        }
        None => dhcp.follow_election().map(|previous| (previous, 0)),
    })
    .await
    .map_err(|e| TaskError::new(ErrorCode::Internal, format!("switching DHCP: {e}")))?
    .map_err(|e| TaskError::new(ErrorCode::Failed, format!("switching DHCP: {e}")))?;
    Ok(BootDhcpResult { previous: from_config(previous), mode: args.mode, imported_leases: count as u32 })
}

/// What `boot-join-token-create` needs.
#[derive(Debug, Clone)]
pub struct JoinIssuer {
    pub tokens: Arc<JoinTokens>,
    /// Where the machine checks in (`http://<server>[:port]`): this server where it holds the
    /// cluster CA, the server that holds it where this one's tokens go to the cluster store;
    /// none where a join token would be worth nothing.
    pub check_in_at: Option<String>,
    /// `cerana.cluster_ips` for the machine's command line.
    pub cluster_ips: String,
}

async fn create_join_token(joins: JoinIssuer, args: JoinTokenCreateArgs) -> Result<JoinTokenCreated, TaskError> {
    args.validate().map_err(|e| TaskError::new(ErrorCode::InvalidArgument, e))?;
    let Some(check_in_at) = &joins.check_in_at else {
        return Err(TaskError::new(
            ErrorCode::Unavailable,
            "this node's boot server neither holds the cluster CA nor knows the one that does: ask the bootstrap node's",
        ));
    };
    let now = crate::events::now_ms() / 1000;
    let token = joins.tokens.mint_for_operator(args.mac, args.ttl_seconds, now).await.map_err(|e| match e {
        JoinMintError::Store(e) => TaskError::new(ErrorCode::Unavailable, e.to_string()),
        JoinMintError::Mint(e) => TaskError::new(ErrorCode::Internal, e.to_string()),
    })?;
    let mut cmdline = format!(
        "cerana.boot_server={check_in_at}/ cerana.cluster_ips={} cerana.join_token={}",
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
            create_join_token(joins.clone(), args)
        })
}
