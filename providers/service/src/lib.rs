//! The `service` provider: services in containers (`service-*` tasks).
//!
//! Each service runs in a container made by youki's `libcontainer` from an OCI spec
//! (`oci-spec`), on a fresh root filesystem per start (a ZFS clone through `zfs-*` sub-tasks,
//! or an overlay or directory chosen explicitly), limited through cgroups, in a named network
//! namespace or a new one, restarted with backoff, its output kept. See README.md.

pub mod cgroup;
pub mod definition;
pub mod error;
pub mod health;
pub mod logs;
pub mod rootfs;
pub mod shim;
pub mod spec;
pub mod supervisor;

pub use error::ServiceError;
pub use supervisor::{Config, Services};

use cerana_protocol::tasks::service::{
    CreateArgs, ListArgs, ListResult, LogsArgs, ServiceCreate, ServiceGet, ServiceList, ServiceLogs, ServiceRef,
    ServiceRemove, ServiceRestart,
};
use cerana_protocol::TaskError;
use cerana_provider_sdk::{Context, Provider};
use definition::ServiceKey;
use rootfs::ZfsTasks;
use std::process::ExitCode;
use std::sync::Arc;

/// The whole `cerana-service` program: the provider, or (`cerana-service shim ...`) the shim
/// it runs each container under.
pub fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some(shim::SUBCOMMAND) {
        args.next();
        return shim::main(args);
    }
    provider().main()
}

/// The provider with [`Config::from_env`] and ZFS through sub-tasks.
pub fn provider() -> Provider {
    let zfs = ZfsTasks::default();
    provider_with(Services::new(Config::from_env(), Arc::new(zfs.clone())), zfs)
}

fn key(r: &ServiceRef) -> Result<ServiceKey, TaskError> {
    ServiceKey::from_ref(r).map_err(TaskError::from)
}

/// The provider serving `services`; each request's context is handed to `zfs` for the
/// sub-tasks of later restarts.
pub fn provider_with(services: Services, zfs: ZfsTasks) -> Provider {
    let (s1, s2, s3, s4, s5, s6, s7) = (
        services.clone(),
        services.clone(),
        services.clone(),
        services.clone(),
        services.clone(),
        services.clone(),
        services,
    );
    let remember = move |ctx: &Context| zfs.remember(ctx);
    let r1 = remember.clone();
    Provider::new("service", env!("CARGO_PKG_VERSION"))
        .task::<ServiceCreate, _, _>(move |ctx, args: CreateArgs| {
            r1(&ctx);
            let services = s1.clone();
            async move { Ok(services.create(&args).await?) }
        })
        .task::<ServiceGet, _, _>(move |ctx, r: ServiceRef| {
            let services = s2.clone();
            async move {
                let key = key(&r)?;
                let mut info = services.get_info(&key)?;
                let checks = services.health_checks(&key)?;
                if !checks.is_empty() {
                    info.health = Some(health::run(&ctx, &checks).await);
                }
                Ok(info)
            }
        })
        .task::<ServiceList, _, _>(move |_ctx, a: ListArgs| {
            let services = s3.clone();
            async move { Ok(ListResult { services: services.list(a.bundle_id.as_deref()) }) }
        })
        .task::<ServiceRestart, _, _>(move |ctx, r: ServiceRef| {
            remember(&ctx);
            let services = s4.clone();
            async move { Ok(services.restart(&key(&r)?).await?) }
        })
        .task::<ServiceRemove, _, _>(move |_ctx, r: ServiceRef| {
            let services = s5.clone();
            async move {
                services.remove(&key(&r)?).await?;
                Ok(r)
            }
        })
        .task::<ServiceLogs, _, _>(move |_ctx, a: LogsArgs| {
            let services = s6.clone();
            async move { Ok(services.logs(&a)?) }
        })
        // On a node's shutdown: stop the containers and destroy their clones while the zfs
        // provider and the coordinator still run (init stops dependants first), so no
        // running-clone outlives its service on the pool.
        .on_shutdown(move || async move { s7.stop_all().await })
}
