//! `cerana-kvm-bench` (make bench-kvm): `kvm-define` + `kvm-start` until the domain runs,
//! through the whole task path (client → coordinator → `cerana-kvm` → libvirtd), against
//! `virsh define` + `virsh start` of the same domain XML, rounds interleaved, same private
//! libvirtd (see `cerana_kvm::testbed`). Prints the medians and their ratio (target ≤ 1.2).
//!
//! Usage: cerana-kvm-bench [--rounds N] [--image-dir DIR]   (as root; needs the base image and
//! cerana-coordinator built beside this binary)

use cerana_client::UnixClient;
use cerana_kvm::host::HostProbe;
use cerana_kvm::testbed::{self, PrivateLibvirtd, TestGuest, INNER_FLAG};
use cerana_kvm::xml::VmRecord;
use cerana_protocol::task::NoArgs;
use cerana_protocol::tasks::kvm::{
    BootDevice, DirectKernel, DiskInfo, DiskSource, DiskSpec, KvmDefine, KvmDefineArgs, KvmDestroy, KvmList, KvmStart,
    KvmUndefine, KvmUndefineArgs, VirtType, VmName, VmRef, VmState,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const TARGET_RATIO: f64 = 1.2;

struct Options {
    rounds: usize,
    image_dir: PathBuf,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options { rounds: 7, image_dir: PathBuf::from("out/image/base") };
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
            "--image-dir" => o.image_dir = it.next().ok_or("--image-dir needs a directory")?.into(),
            INNER_FLAG => {}
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    o.image_dir = std::fs::canonicalize(&o.image_dir).unwrap_or(o.image_dir);
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cerana-kvm-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.iter().any(|a| a == INNER_FLAG) {
        return match inner(&opts) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("cerana-kvm-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(why) = testbed::skip_reason() {
        eprintln!("cerana-kvm-bench: cannot run: {why}");
        return ExitCode::FAILURE;
    }
    let pass = vec![
        "--rounds".to_owned(),
        opts.rounds.to_string(),
        "--image-dir".to_owned(),
        opts.image_dir.display().to_string(),
    ];
    match testbed::run_isolated("kvm-bench", &pass) {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cerana-kvm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = me.with_file_name(name);
    path.exists()
        .then_some(path.clone())
        .ok_or(format!("{} is not built (cargo build --release -p ...)", path.display()))
}

fn spawn(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<Process, String> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("CERANA_LOG", "warn").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map(Process).map_err(|e| format!("starting {}: {e}", program.display()))
}

fn virsh(uri: &str, args: &[&str]) -> Result<(), String> {
    let out =
        Command::new("virsh").arg("-q").arg("-c").arg(uri).args(args).output().map_err(|e| format!("virsh: {e}"))?;
    if !out.status.success() {
        return Err(format!("virsh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn inner(opts: &Options) -> Result<bool, String> {
    let work = std::env::temp_dir().join(format!("cerana-kvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = bench(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn bench(opts: &Options, work: &Path) -> Result<bool, String> {
    let guest = testbed::test_guest(&opts.image_dir, work).map_err(|e| e.to_string())?;
    let daemon = PrivateLibvirtd::start(&work.join("libvirt")).map_err(|e| e.to_string())?;
    let socket = work.join("coordinator.sock");
    let consoles = work.join("consoles");
    let sock = socket.to_str().ok_or("path")?;
    let _coordinator = spawn(&sibling("cerana-coordinator")?, &["--socket", sock, "--no-http"], &[])?;
    let _provider = spawn(&sibling("cerana-kvm")?, &["--coordinator", sock], &[("CERANA_KVM_LOG_DIR", &consoles)])?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let result = runtime.block_on(rounds(opts, work, &guest, &socket, &consoles, &daemon.uri));
    drop(daemon);
    result
}

async fn rounds(
    opts: &Options,
    work: &Path,
    guest: &TestGuest,
    socket: &Path,
    consoles: &Path,
    uri: &str,
) -> Result<bool, String> {
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = UnixClient::connect(socket, "kvm-bench").await {
            if c.run::<KvmList>(&NoArgs {}).await.is_ok() {
                client = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.ok_or("the kvm provider never answered kvm-list through the coordinator")?;
    let disk = work.join("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(8 << 20)).map_err(|e| e.to_string())?;
    let kernel = DirectKernel {
        kernel: guest.kernel.display().to_string(),
        initrd: Some(guest.initrd.display().to_string()),
        cmdline: guest.cmdline.clone(),
    };
    let hypervisor = HostProbe::default().resolve(VirtType::Auto).map_err(|e| e.to_string())?;
    let (mut through_provider, mut through_virsh) = (Vec::new(), Vec::new());
    // Round 0 warms both paths up (libvirt probes QEMU's capabilities on first use).
    for round in 0..=opts.rounds {
        let name = VmName::new(format!("p{round}")).map_err(|e| e.to_string())?;
        let args = KvmDefineArgs {
            name: name.clone(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![DiskSpec {
                source: DiskSource::File { path: disk.display().to_string() },
                create_bytes: None,
                read_only: true,
            }],
            nics: vec![],
            boot: vec![],
            direct_kernel: Some(kernel.clone()),
            virt_type: VirtType::Auto,
        };
        let t = Instant::now();
        client.run::<KvmDefine>(&args).await.map_err(|e| format!("kvm-define: {e}"))?;
        let info =
            client.run::<KvmStart>(&VmRef { name: name.clone() }).await.map_err(|e| format!("kvm-start: {e}"))?;
        let provider_time = t.elapsed();
        if info.state != VmState::Running {
            return Err(format!("kvm-start returned state {:?}", info.state));
        }
        client.run::<KvmDestroy>(&VmRef { name: name.clone() }).await.map_err(|e| format!("kvm-destroy: {e}"))?;
        client
            .run::<KvmUndefine>(&KvmUndefineArgs { name, remove_storage: false, force: false })
            .await
            .map_err(|e| format!("kvm-undefine: {e}"))?;

        // The XML the provider writes for the same arguments.
        let name = VmName::new(format!("v{round}")).map_err(|e| e.to_string())?;
        let record = VmRecord {
            name: name.clone(),
            vcpus: 1,
            memory_mib: 128,
            virt_type: VirtType::Auto,
            hypervisor,
            disks: vec![DiskInfo {
                target: "vda".into(),
                source: DiskSource::File { path: disk.display().to_string() },
                path: disk.display().to_string(),
                read_only: true,
                created: false,
            }],
            nics: vec![],
            boot: vec![BootDevice::Disk],
            direct_kernel: Some(kernel.clone()),
            console_log: consoles.join(format!("{name}.log")).display().to_string(),
        };
        let xml_path = work.join(format!("{name}.xml"));
        std::fs::write(&xml_path, record.domain_xml()).map_err(|e| e.to_string())?;
        let xml = xml_path.to_str().ok_or("path")?;
        let t = Instant::now();
        virsh(uri, &["define", xml])?;
        virsh(uri, &["start", name.as_str()])?;
        let virsh_time = t.elapsed();
        virsh(uri, &["destroy", name.as_str()])?;
        virsh(uri, &["undefine", name.as_str()])?;
        println!(
            "round {round}{}: kvm-define+kvm-start {:.1} ms, virsh define+start {:.1} ms",
            if round == 0 { " (warm-up, not counted)" } else { "" },
            provider_time.as_secs_f64() * 1e3,
            virsh_time.as_secs_f64() * 1e3
        );
        if round > 0 {
            through_provider.push(provider_time);
            through_virsh.push(virsh_time);
        }
    }
    let (p, v) = (median(&mut through_provider), median(&mut through_virsh));
    let ratio = p.as_secs_f64() / v.as_secs_f64();
    println!(
        "kvm define+start until running, median of {} rounds: through the task API {:.1} ms, virsh {:.1} ms; ratio {ratio:.2} (target <= {TARGET_RATIO}) {}",
        opts.rounds,
        p.as_secs_f64() * 1e3,
        v.as_secs_f64() * 1e3,
        if ratio <= TARGET_RATIO { "PASS" } else { "FAIL" }
    );
    Ok(ratio <= TARGET_RATIO)
}
