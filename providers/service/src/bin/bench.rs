//! `cerana-service-bench` (make bench-service): `service-create` until the container's process
//! runs, through the whole task path (client → coordinator → `cerana-service` → shim →
//! libcontainer), against `crun run -d` of the same OCI bundle (the config.json the provider
//! writes for the same arguments, same root directory), rounds interleaved. Prints the medians
//! and their ratio (target ≤ 1.3), and for information service-create on a fresh overlay.
//!
//! Usage: cerana-service-bench [--rounds N] [--rootfs DIR]   (as root; needs crun, and
//! cerana-coordinator and cerana-service built beside this binary)

use cerana_client::UnixClient;
use cerana_protocol::tasks::service::{
    CreateArgs, ListArgs, RootfsKind, ServiceCreate, ServiceList, ServiceRef, ServiceRemove, ServiceState,
};
use cerana_service::cgroup::Layout;
use cerana_service::definition::{NodeCapacity, ServiceDef};
use cerana_service::spec::{self, Placement};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const TARGET_RATIO: f64 = 1.3;

struct Options {
    rounds: usize,
    rootfs: Option<PathBuf>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options { rounds: 15, rootfs: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                o.rounds = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).ok_or("--rounds needs a positive number")?
            }
            "--rootfs" => o.rootfs = Some(it.next().ok_or("--rootfs needs a directory")?.into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = options(&args).and_then(|opts| {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (containers)".into());
        }
        let work = PathBuf::from(format!("/run/cerana-service-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let result = bench(&opts, &work);
        let _ = std::fs::remove_dir_all(&work);
        result
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cerana-service-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not built (cargo build --release -p ...)", path.display()))
    }
}

fn spawn(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<Process, String> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("CERANA_LOG", "warn").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map(Process).map_err(|e| format!("starting {}: {e}", program.display()))
}

fn test_rootfs(opts: &Options) -> Result<PathBuf, String> {
    if let Some(dir) = &opts.rootfs {
        return Ok(dir.clone());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-rootfs.sh");
    let out = Command::new(&script).output().map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("test-rootfs.sh: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn bench(opts: &Options, work: &Path) -> Result<bool, String> {
    Command::new("crun").arg("--version").output().map_err(|e| format!("crun: {e} (apt-get install crun)"))?;
    let rootfs = test_rootfs(opts)?;
    let socket = work.join("coordinator.sock");
    let sock = socket.to_str().ok_or("path")?;
    let _coordinator = spawn(&sibling("cerana-coordinator")?, &["--socket", sock, "--no-http"], &[])?;
    let _provider = spawn(&sibling("cerana-service")?, &["--coordinator", sock], &[("CERANA_SERVICE_DIR", &work.join("provider"))])?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(rounds(opts, work, &rootfs, &socket))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn crun(state: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("crun")
        .arg("--root")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("crun: {e}"))?;
    if !out.status.success() {
        return Err(format!("crun {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

async fn rounds(opts: &Options, work: &Path, rootfs: &Path, socket: &Path) -> Result<bool, String> {
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = UnixClient::connect(socket, "service-bench").await {
            if c.run::<ServiceList>(&ListArgs::default()).await.is_ok() {
                client = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.ok_or("the service provider never answered service-list through the coordinator")?;
    let crun_state = work.join("crun-state");
    let (mut provider, mut overlay, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let layout = Layout::detect();
    // Round 0 warms every path up.
    for round in 0..=opts.rounds {
        let args = |id: String, kind: RootfsKind| -> CreateArgs {
            serde_json::from_value(serde_json::json!({
                "id": id, "bundle_id": "bench", "dataset": rootfs, "rootfs": kind,
                "cmd": ["/bin/sleep", "600"], "limits": {"memory": 64 << 20, "processes": 64},
            }))
            .expect("bench arguments")
        };
        let timed_create = async |a: CreateArgs| -> Result<Duration, String> {
            let t = Instant::now();
            let info = client.run::<ServiceCreate>(&a).await.map_err(|e| format!("service-create: {e}"))?;
            let took = t.elapsed();
            if info.state != ServiceState::Running || info.pid.is_none() {
                return Err(format!("service-create returned {info:?}"));
            }
            let r = ServiceRef { id: a.id.clone(), bundle_id: a.bundle_id.clone() };
            client.run::<ServiceRemove>(&r).await.map_err(|e| format!("service-remove: {e}"))?;
            Ok(took)
        };
        let p = timed_create(args(format!("d{round}"), RootfsKind::Directory)).await?;
        let o = timed_create(args(format!("o{round}"), RootfsKind::Overlay)).await?;

        // The same bundle for crun: the spec the provider writes for these arguments.
        let a = args(format!("c{round}"), RootfsKind::Directory);
        let def = ServiceDef::check(&a, NodeCapacity::of_this_node()).map_err(|e| e.to_string())?;
        let cgroup = layout.container_path(&format!("crun-bench.c{round}"));
        let spec = spec::build(&def, &Placement { rootfs, cgroup: &cgroup, netns_path: None }).map_err(|e| e.to_string())?;
        let bundle = work.join(format!("crun-bundle-{round}"));
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        spec.save(bundle.join("config.json")).map_err(|e| e.to_string())?;
        let id = format!("cerana-bench-c{round}");
        let t = Instant::now();
        crun(&crun_state, &["run", "-d", "--bundle", bundle.to_str().ok_or("path")?, &id])?;
        let c = t.elapsed();
        crun(&crun_state, &["delete", "-f", &id])?;
        if round > 0 {
            provider.push(p);
            overlay.push(o);
            direct.push(c);
        }
    }
    let (p, o, c) = (median(&mut provider), median(&mut overlay), median(&mut direct));
    let ratio = p.as_secs_f64() / c.as_secs_f64();
    println!("service-create until running, {} rounds, cgroup layout {layout:?}, medians:", opts.rounds);
    println!("  crun run -d (same bundle)              {:8.2} ms", ms(c));
    println!("  service-create, directory rootfs       {:8.2} ms", ms(p));
    println!("  service-create, fresh overlay rootfs   {:8.2} ms   (for information)", ms(o));
    println!("ratio service-create / crun: {ratio:.2} (target <= {TARGET_RATIO})");
    Ok(ratio <= TARGET_RATIO)
}
