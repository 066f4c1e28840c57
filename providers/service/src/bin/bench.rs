//! `cerana-service-bench` (make bench-service): `service-create` until the container's process
//! runs, through the whole task path (client → coordinator → `cerana-service` → shim →
//! libcontainer), against libcontainer directly (the shim program alone, no provider, no
//! coordinator) and `crun run -d`, each on the same OCI bundle (the config.json the provider
//! writes for the same arguments, same root directory), rounds interleaved. Prints the medians
//! and the ratios (target ≤ 1.3), and for information service-create on a fresh overlay.
//!
//! crun refuses hosts whose cgroup v2 hierarchy holds any controller while others are on v1
//! ("hybrid", like the build machine), even with `--cgroup-manager=disabled`; there the crun
//! column is left out and says why.
//!
//! Usage: cerana-service-bench [--rounds N] [--rootfs DIR]   (as root; needs crun, and
//! cerana-coordinator and cerana-service built beside this binary)

use cerana_client::UnixClient;
use cerana_protocol::tasks::service::{
    CreateArgs, ListArgs, RootfsKind, ServiceCreate, ServiceList, ServiceRef, ServiceRemove, ServiceState,
};
use cerana_service::cgroup::Layout;
use cerana_service::definition::{NodeCapacity, ServiceDef};
use cerana_service::shim::{self, ShimArgs, ShimEvent};
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
                o.rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--rounds needs a positive number")?
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
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
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

fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Process, String> {
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
    let provider_dir = work.join("provider").display().to_string();
    // `sleep` as PID 1 ignores SIGTERM: a short stop timeout keeps the untimed removals quick.
    let env = [("CERANA_SERVICE_DIR", provider_dir.as_str()), ("CERANA_SERVICE_STOP_TIMEOUT_MS", "100")];
    let _provider = spawn(&sibling("cerana-service")?, &["--coordinator", sock], &env)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(rounds(opts, work, &rootfs, &socket))
}

/// The shim alone on `args.bundle`: from spawn until it reports the container's process
/// started; then stops it.
fn libcontainer_directly(exe: &Path, args: &ShimArgs) -> Result<Duration, String> {
    use std::io::BufRead;
    let t = Instant::now();
    let mut command = Command::new(exe);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let status = shim::prepare_command(&mut command, args).map_err(|e| e.to_string())?;
    let spawned = command.spawn();
    drop(command);
    let shim = Process(spawned.map_err(|e| format!("spawn the shim: {e}"))?);
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::from(status)).read_line(&mut line).map_err(|e| e.to_string())?;
    let took = t.elapsed();
    match serde_json::from_str::<ShimEvent>(&line) {
        Ok(ShimEvent::Started { .. }) => {}
        _ => return Err(format!("the shim said {line:?}")),
    }
    drop(shim);
    Ok(took)
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
    let (mut provider, mut overlay, mut direct, mut by_crun) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut crun_refused: Option<String> = None;
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
        let spec =
            spec::build(&def, &Placement { rootfs, cgroup: &cgroup, netns_path: None }).map_err(|e| e.to_string())?;
        let bundle = work.join(format!("crun-bundle-{round}"));
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        spec.save(bundle.join("config.json")).map_err(|e| e.to_string())?;
        let shim_args = ShimArgs {
            state_root: work.join("shim-state"),
            container_id: format!("bench.l{round}"),
            bundle: bundle.clone(),
            cgroup: cgroup.clone(),
            no_pivot: cerana_service::supervisor::root_is_initramfs(),
            stop_timeout: Duration::from_millis(100),
        };
        let l = libcontainer_directly(&sibling("cerana-service")?, &shim_args)?;

        let id = format!("cerana-bench-c{round}");
        let bundle_arg = bundle.to_str().ok_or("path")?;
        if crun_refused.is_none() {
            let t = Instant::now();
            match crun(&crun_state, &["run", "-d", "--bundle", bundle_arg, &id]) {
                Ok(()) => {
                    let c = t.elapsed();
                    crun(&crun_state, &["delete", "-f", &id])?;
                    if round > 0 {
                        by_crun.push(c);
                    }
                }
                Err(e) if e.contains("hybrid mode not supported") => crun_refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        if round > 0 {
            provider.push(p);
            overlay.push(o);
            direct.push(l);
        }
    }
    let (p, o, l) = (median(&mut provider), median(&mut overlay), median(&mut direct));
    let ratio = p.as_secs_f64() / l.as_secs_f64();
    println!("service-create until running, {} rounds, cgroup layout {layout:?}, medians:", opts.rounds);
    println!("  libcontainer directly (same bundle)    {:8.2} ms", ms(l));
    match &crun_refused {
        None => println!("  crun run -d (same bundle)              {:8.2} ms", ms(median(&mut by_crun))),
        Some(why) => println!("  crun run -d (same bundle)              refused on this host: {why}"),
    }
    println!("  service-create, directory rootfs       {:8.2} ms", ms(p));
    println!("  service-create, fresh overlay rootfs   {:8.2} ms   (for information)", ms(o));
    println!("ratio service-create / libcontainer directly: {ratio:.2} (target <= {TARGET_RATIO})");
    if crun_refused.is_none() {
        println!("ratio service-create / crun: {:.2}", p.as_secs_f64() / median(&mut by_crun).as_secs_f64());
    }
    Ok(ratio <= TARGET_RATIO)
}
