//! The `kvm` provider: virtual machines through libvirt (`kvm-*` tasks, see
//! `cerana_protocol::tasks::kvm` and README.md).
//!
//! It is its own dynamically linked process (libvirt has no static library) and talks to the
//! node's libvirtd over `qemu:///system`. Where no libvirt runs (the base image profile) every
//! task fails with `unavailable` and says so.

pub mod host;
pub mod testbed;
pub mod vm;
pub mod xml;

use cerana_protocol::tasks::kvm::{
    KvmConsoleLog, KvmDefine, KvmDestroy, KvmGet, KvmList, KvmListResult, KvmShutdown, KvmStart, KvmUndefine,
};
use cerana_protocol::tasks::zfs::{CreateArgs, DatasetName, DatasetType, DestroyArgs, ZfsCreate, ZfsDestroy};
use cerana_protocol::{ErrorCode, Task, TaskError};
use cerana_provider_sdk::{Context, Provider};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use vm::{Config, Vms, Volumes};

/// Environment variables that override [`Config`]'s defaults.
pub const ENV_LIBVIRT_URI: &str = "CERANA_KVM_LIBVIRT_URI";
pub const ENV_LOG_DIR: &str = "CERANA_KVM_LOG_DIR";

impl Config {
    /// The defaults with [`ENV_LIBVIRT_URI`] and [`ENV_LOG_DIR`] applied.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Some(uri) = std::env::var_os(ENV_LIBVIRT_URI) {
            config.uri = uri.to_string_lossy().into_owned();
        }
        if let Some(dir) = std::env::var_os(ENV_LOG_DIR) {
            config.log_dir = dir.into();
        }
        config
    }
}

/// The whole `cerana-kvm` program (see [`Provider::main`]).
pub fn main() -> std::process::ExitCode {
    provider(Config::from_env()).main()
}

/// zvols through `zfs-create` / `zfs-destroy` sub-tasks of the request being served. Called
/// from the blocking pool, so it may wait on the runtime.
struct SubTaskVolumes {
    ctx: Context,
    runtime: tokio::runtime::Handle,
}

impl Volumes for SubTaskVolumes {
    fn create(&self, dataset: &DatasetName, size_bytes: u64) -> Result<PathBuf, String> {
        let args = CreateArgs {
            name: dataset.to_string(),
            kind: DatasetType::Volume,
            volsize: Some(size_bytes),
            properties: Default::default(),
        };
        let made = self.runtime.block_on(self.ctx.call::<ZfsCreate>(&args)).map_err(|e| format!("zfs-create: {e}"))?;
        let device = PathBuf::from(made.device.unwrap_or_else(|| format!("/dev/zvol/{dataset}")));
        // udev makes the /dev/zvol link shortly after the volume.
        for _ in 0..100 {
            if device.exists() {
                return Ok(device);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.destroy(dataset);
        Err(format!("{} did not appear within 5 s of zfs-create", device.display()))
    }

    fn destroy(&self, dataset: &DatasetName) -> Result<(), String> {
        let args = DestroyArgs { name: dataset.to_string(), ..DestroyArgs::default() };
        self.runtime.block_on(self.ctx.call::<ZfsDestroy>(&args)).map(|_| ()).map_err(|e| format!("zfs-destroy: {e}"))
    }
}

/// A VM operation: blocking, given the VMs, the zvol sub-tasks of the request and its arguments.
type Op<T> = fn(&Vms, &dyn Volumes, <T as Task>::Args) -> Result<<T as Task>::Output, TaskError>;

/// Serves task `T` by running `op` on tokio's blocking pool (libvirt's calls block).
fn serve<T: Task>(provider: Provider, vms: &Arc<Vms>, op: Op<T>) -> Provider {
    let vms = vms.clone();
    provider.task::<T, _, _>(move |ctx, args| {
        let vms = vms.clone();
        async move {
            let volumes = SubTaskVolumes { ctx, runtime: tokio::runtime::Handle::current() };
            match tokio::task::spawn_blocking(move || op(&vms, &volumes, args)).await {
                Ok(result) => result,
                Err(e) => Err(TaskError::new(ErrorCode::Internal, format!("the libvirt call panicked: {e}"))),
            }
        }
    })
}

/// The provider with its handlers.
pub fn provider(config: Config) -> Provider {
    let vms = Arc::new(Vms::new(config));
    let p = Provider::new("kvm", env!("CARGO_PKG_VERSION"));
    let p = serve::<KvmDefine>(p, &vms, |vms, volumes, args| Ok(vms.define(&args, volumes)?));
    let p = serve::<KvmStart>(p, &vms, |vms, _, args| Ok(vms.start(&args.name)?));
    let p = serve::<KvmShutdown>(p, &vms, |vms, _, args| {
        Ok(vms.shutdown(&args.name, args.timeout_ms.map(Duration::from_millis))?)
    });
    let p = serve::<KvmDestroy>(p, &vms, |vms, _, args| Ok(vms.destroy(&args.name)?));
    let p = serve::<KvmUndefine>(p, &vms, |vms, volumes, args| {
        Ok(vms.undefine(&args.name, args.remove_storage, args.force, volumes)?)
    });
    let p = serve::<KvmGet>(p, &vms, |vms, _, args| Ok(vms.get(&args.name)?));
    let p = serve::<KvmList>(p, &vms, |vms, _, _| Ok(KvmListResult { vms: vms.list()? }));
    serve::<KvmConsoleLog>(p, &vms, |vms, _, args| Ok(vms.console_log(&args.name, args.max_bytes)?))
}
