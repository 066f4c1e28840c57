//! `bundle-apply` on the node: the leader's order to run or stop a bundle here, carried out
//! only for the election's current term. The term is the leader key's creation revision, which
//! grows with every new leader; this node also remembers the highest term it has acted for, so
//! a deposed leader's order that arrives late is refused even while the store cannot be asked.
//! Orders are idempotent (a service already there stays, one already gone is no error).

use cerana_protocol::tasks::service::{
    ListArgs, ServiceCreate, ServiceErrorReason, ServiceList, ServiceRef, ServiceRemove,
};
use cerana_protocol::tasks::ticks::{Applied, ApplyAction, ApplyArgs, LEADER};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_provider_sdk::Context;
use cerana_store::{task_error, LazyStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's memory of terms, and one order at a time.
#[derive(Debug, Default)]
pub struct Fence {
    highest: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

fn deposed(args: &ApplyArgs, why: String) -> TaskError {
    TaskError::new(
        ErrorCode::Conflict,
        format!("refused bundle-apply for {} of term {}: {why}", args.bundle, args.term),
    )
    .with_details(serde_json::json!({ "term": args.term }))
}

impl Fence {
    /// Whether `args` comes from the current leader; refusals say why.
    pub async fn check(&self, store: &Store, args: &ApplyArgs) -> Result<(), TaskError> {
        if !args.leader_key.starts_with(&format!("{LEADER}/")) {
            return Err(TaskError::new(
                ErrorCode::InvalidArgument,
                format!("leader_key {} is not a key of the election {LEADER}", args.leader_key),
            ));
        }
        let highest = self.highest.load(Ordering::SeqCst);
        if args.term < highest {
            return Err(deposed(args, format!("this node acts for term {highest} already")));
        }
        match store.get(&args.leader_key).await.map_err(task_error)? {
            Some(entry) if entry.created == args.term => {}
            Some(entry) => return Err(deposed(args, format!("{} is term {} now", args.leader_key, entry.created))),
            None => return Err(deposed(args, format!("{} no longer leads", args.leader_key))),
        }
        // The current leader's key is the oldest in the election.
        match store.leader(LEADER).await.map_err(task_error)? {
            Some(leader) if leader.key == args.leader_key => {}
            Some(leader) => return Err(deposed(args, format!("{} leads", leader.key))),
            None => return Err(deposed(args, "no leader is elected".into())),
        }
        self.highest.fetch_max(args.term, Ordering::SeqCst);
        Ok(())
    }

    /// The whole task.
    pub async fn apply(&self, ctx: &Context, store: &LazyStore, args: ApplyArgs) -> Result<Applied, TaskError> {
        let _one = self.one_at_a_time.lock().await;
        self.check(&store.get().await?, &args).await?;
        let here = ctx.call::<ServiceList>(&ListArgs { bundle_id: Some(args.bundle.clone()) }).await?.services;
        let mut changed = Vec::new();
        match args.action {
            ApplyAction::Run { services } => {
                for service in services {
                    if service.bundle_id != args.bundle {
                        return Err(TaskError::new(
                            ErrorCode::InvalidArgument,
                            format!(
                                "service {} belongs to bundle {}, not {}",
                                service.id, service.bundle_id, args.bundle
                            ),
                        ));
                    }
                    if here.iter().any(|s| s.id == service.id) {
                        continue;
                    }
                    let id = service.id.clone();
                    match ctx.call::<ServiceCreate>(&service).await {
                        Ok(_) => changed.push(id),
                        Err(e) if reason(&e) == Some(ServiceErrorReason::Exists) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            ApplyAction::Stop => {
                for service in here {
                    let r = ServiceRef { id: service.id.clone(), bundle_id: args.bundle.clone() };
                    match ctx.call::<ServiceRemove>(&r).await {
                        Ok(_) => changed.push(service.id),
                        Err(e) if reason(&e) == Some(ServiceErrorReason::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(Applied { bundle: args.bundle, changed })
    }
}

fn reason(e: &TaskError) -> Option<ServiceErrorReason> {
    e.details.as_ref().and_then(|d| serde_json::from_value(d.get("reason")?.clone()).ok())
}
