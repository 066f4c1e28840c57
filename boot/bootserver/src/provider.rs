//! The bootserver as a Task API provider: `boot-events` and `boot-machines` read the running
//! server's event log, so operators reach it through the coordinator and the `cerana` CLI.

use crate::events::EventLog;
use cerana_protocol::tasks::boot::{BootEvents, BootEventsArgs, BootMachines};
use cerana_provider_sdk::Provider;
use std::sync::Arc;

/// Provider name registered with the coordinator.
pub const PROVIDER_NAME: &str = "bootserver";

pub fn provider(events: Arc<EventLog>) -> Provider {
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
}
