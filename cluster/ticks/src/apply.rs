//! `bundle-apply` on the node: the leader's order to run or stop a bundle here, carried out
//! only for the election's current term. The term is the leader key's creation revision, which
//! grows with every new leader; this node also remembers the highest term it has acted for, so
//! a deposed leader's order that arrives late is refused even while the store cannot be asked.
//! Orders are idempotent (a service or volume already there as ordered stays, one already gone
//! is no error).

use crate::volumes::Volumes;
use cerana_protocol::tasks::clusterconf::{self as c, DatasetKind, ObjectId};
use cerana_protocol::tasks::service::{
    CreateArgs as ServiceCreate, ListArgs, ServiceCreate as ServiceCreateTask, ServiceErrorReason, ServiceList,
    ServiceRef, ServiceRemove,
};
use cerana_protocol::tasks::ticks::{Applied, ApplyAction, ApplyArgs, Volume, LEADER};
use cerana_protocol::{ErrorCode, TaskError};
use cerana_provider_sdk::Context;
use cerana_store::{task_error, LazyStore, Store};
use futures_util::future::join_all;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's memory of terms, one order at a time, and where the orders' volumes go.
#[derive(Debug, Default)]
pub struct Fence {
    highest: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
    volumes: Volumes,
}

impl Fence {
    /// Held while an order is carried out: what cleans up after orders takes it too.
    pub fn orders(&self) -> &tokio::sync::Mutex<()> {
        &self.one_at_a_time
    }
}

fn invalid(why: String) -> TaskError {
    TaskError::new(ErrorCode::InvalidArgument, why)
}

/// Checks an order's volumes before anything is made.
fn check_volumes(bundle: &str, volumes: &[Volume]) -> Result<(), TaskError> {
    for (i, volume) in volumes.iter().enumerate() {
        volume.validate(bundle).map_err(invalid)?;
        if volumes[..i].iter().any(|v| v.name == volume.name) {
            return Err(invalid(format!("volume {} is listed twice", volume.name)));
        }
    }
    Ok(())
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
        let id = ObjectId::new(args.bundle.clone()).map_err(|e| invalid(format!("bundle: {e}")))?;
        let _one = self.one_at_a_time.lock().await;
        let store = store.get().await?;
        self.check(&store, &args).await?;
        if let ApplyAction::Run { volumes, network, .. } = &args.action {
            check_volumes(&args.bundle, volumes)?;
            if let Some(network) = network {
                network.validate().map_err(|e| invalid(format!("network: {e}")))?;
            }
        }
        let here = ctx.call::<ServiceList>(&ListArgs { bundle_id: Some(args.bundle.clone()) }).await?.services;
        let volumes_here = self.volumes.here(ctx, &args.bundle).await?;
        // A bundle's services start and stop together: one after another, a service still
        // running would hold the others up, and a stop takes its whole timeout.
        let changed = match args.action {
            ApplyAction::Run { services, volumes, network } => {
                if let Some(service) = services.iter().find(|s| s.bundle_id != args.bundle) {
                    return Err(invalid(format!(
                        "service {} belongs to bundle {}, not {}",
                        service.id, service.bundle_id, args.bundle
                    )));
                }
                // Its network and volumes first: the services run in the one, mount the others.
                if let Some(network) = &network {
                    crate::network::make(ctx, &args.bundle, network).await?;
                }
                for volume in &volumes {
                    self.volumes.make(ctx, &args.bundle, volume).await?;
                }
                // Those here with the same definition stay (a node that does not say counts as
                // the same); others are made again; services the bundle no longer has go.
                let same = |s: &ServiceCreate| {
                    here.iter().any(|h| h.id == s.id && h.definition.as_ref().is_none_or(|d| *d == s.definition()))
                };
                let here = &here;
                let created = join_all(services.iter().filter(|s| !same(s)).map(|service| async move {
                    let replace = here.iter().any(|h| h.id == service.id);
                    let args = ServiceCreate { overwrite: replace, ..service.clone() };
                    match ctx.call::<ServiceCreateTask>(&args).await {
                        Ok(_) => Ok(Some(service.id.clone())),
                        Err(e) if reason(&e) == Some(ServiceErrorReason::Exists) => Ok(None),
                        Err(e) => Err(e),
                    }
                }))
                .await;
                let extra = here.iter().filter(|h| !services.iter().any(|s| s.id == h.id));
                let removed = join_all(extra.map(|h| remove(ctx, &args.bundle, &h.id))).await;
                let mut changed: Vec<String> =
                    created.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
                changed.extend(removed.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten());
                let listed = |kind: DatasetKind, name: &str| volumes.iter().any(|v| v.kind == kind && v.name == name);
                for (kind, name) in volumes_here.iter().filter(|(kind, name)| !listed(*kind, name)) {
                    self.volumes.remove(ctx, &args.bundle, *kind, name).await?;
                }
                changed
            }
            ApplyAction::Stop => {
                let removed = join_all(here.iter().map(|h| remove(ctx, &args.bundle, &h.id))).await;
                let removed = removed.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
                // Kept volumes stay for the bundle's return, unless it is gone from the cluster.
                let declared = store.get(&c::key("bundles", &id)).await.map_err(task_error)?.is_some();
                for (kind, name) in volumes_here.iter().filter(|(kind, _)| *kind != DatasetKind::RwZfs || !declared) {
                    self.volumes.remove(ctx, &args.bundle, *kind, name).await?;
                }
                crate::network::remove(ctx, &args.bundle).await?;
                removed
            }
        };
        Ok(Applied { bundle: args.bundle, changed })
    }
}

/// Removes one service of `bundle`; `Some(id)` when it was there.
async fn remove(ctx: &Context, bundle: &str, id: &str) -> Result<Option<String>, TaskError> {
    let r = ServiceRef { id: id.to_owned(), bundle_id: bundle.to_owned() };
    match ctx.call::<ServiceRemove>(&r).await {
        Ok(_) => Ok(Some(r.id)),
        Err(e) if reason(&e) == Some(ServiceErrorReason::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn reason(e: &TaskError) -> Option<ServiceErrorReason> {
    e.details.as_ref().and_then(|d| serde_json::from_value(d.get("reason")?.clone()).ok())
}
