//! The bootserver as a Task API provider: `boot-events` and `boot-machines` read the running
//! server's event log, so operators reach it through the coordinator and the `cerana` CLI;
//! `boot-dhcp` moves DHCP onto or off this node.

use crate::config::DhcpMode;
use crate::dhcp_control::DhcpControl;
use crate::events::EventLog;
use cerana_protocol::tasks::boot::{
    BootDhcp, BootDhcpArgs, BootDhcpMode, BootDhcpResult, BootEvents, BootEventsArgs, BootMachines,
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

pub fn provider(events: Arc<EventLog>, dhcp: Arc<DhcpControl>) -> Provider {
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
}
