//! A service's health: its checks run as `health-*` sub-tasks, in parallel.

use cerana_protocol::tasks::health::{HealthCheck, HealthReport};
use cerana_protocol::tasks::service::{CheckOutcome, Health};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_provider_sdk::Context;

/// Runs every check; healthy when each one ran and passed.
pub async fn run(ctx: &Context, checks: &[HealthCheck]) -> Health {
    let runs = checks.iter().map(|check| async move {
        let outcome = match check.request() {
            Ok(request) => match ctx.call_request(request).await {
                Ok(response) => response.decode::<HealthReport>(),
                Err(e) => Err(e),
            },
            Err(e) => Err(TaskError::new(ErrorCode::Internal, format!("cannot encode the check: {e}"))),
        };
        match outcome {
            Ok(report) => CheckOutcome { task: check.task().to_owned(), report: Some(report), error: None },
            Err(error) => CheckOutcome { task: check.task().to_owned(), report: None, error: Some(error) },
        }
    });
    let checks: Vec<CheckOutcome> = futures_util::future::join_all(runs).await;
    let healthy = checks.iter().all(|c| c.report.as_ref().is_some_and(HealthReport::passed));
    Health { healthy, checks }
}
