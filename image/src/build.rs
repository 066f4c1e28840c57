//! Assembling one profile: packages → sysroot → image root → cpio → compressed initramfs,
//! kernel, contents list, SHA256SUMS, size budget check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::apt::{self, AptError};
use crate::cpio::{self, EntryKind};
use crate::manifest::{Budget, Manifest, ManifestError, Profile};
use crate::modules::{ModuleDeps, ModuleError};
use crate::rootfs::{self, Rootfs, RootfsError};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the ZFS module step failed: {0}")]
    Zfs(String),
    #[error("the ZFS modules in {dir} are for kernel {found}, the image's kernel is {want}")]
    ZfsKernelMismatch { dir: PathBuf, found: String, want: String },
    #[error("building the project's binaries failed: {0}")]
    Cargo(String),
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("profile {profile} is over budget: kernel {kernel} B + initramfs {initrd} B = {total} B > {max} B (image/budget.toml)")]
    OverBudget { profile: String, kernel: u64, initrd: u64, total: u64, max: u64 },
    #[error("profile {0} has no entry in the budget file")]
    NoBudget(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_owned(), source }
}

/// zstd level of profiles that name none.
pub const DEFAULT_ZSTD_LEVEL: u8 = 19;

/// How the initramfs is compressed; both are deterministic and supported by Debian's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    Zstd,
    Xz,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Zstd => "zst",
            Self::Xz => "xz",
        }
    }

    fn command(self, zstd_level: u8) -> Command {
        match self {
            Self::Zstd => {
                let mut c = Command::new("zstd");
                c.arg(format!("-{zstd_level}")).args(["-T1", "-q", "-c", "--no-check"]);
                c
            }
            Self::Xz => {
                // The kernel's xz decoder only knows CRC32 checks.
                let mut c = Command::new("xz");
                c.args(["-9", "-T1", "--check=crc32", "-c"]);
                c
            }
        }
    }

    /// Compresses `input` into `output` (`zstd_level`, 1–19, applies to zstd only).
    pub fn compress(self, input: &Path, output: &Path, zstd_level: u8) -> Result<(), BuildError> {
        let file_in = std::fs::File::open(input).map_err(io(input))?;
        let file_out = std::fs::File::create(output).map_err(io(output))?;
        let status = self
            .command(zstd_level)
            .stdin(file_in)
            .stdout(file_out)
            .status()
            .map_err(|e| BuildError::Tool { tool: format!("{self:?}"), detail: e.to_string() })?;
        if !status.success() {
            return Err(BuildError::Tool { tool: format!("{self:?}"), detail: status.to_string() });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The workspace (checkout) root: manifest, budget, service table and binaries come from it.
    pub workspace: PathBuf,
    pub profile: String,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub source_date_epoch: u32,
    pub compression: Compression,
    /// Skip `cargo build` and take whatever binaries are already in the target directory.
    pub no_cargo: bool,
    /// An already built /init (e.g. the static, size-optimised one from `make init-static`).
    pub init_binary: Option<PathBuf>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub dir: PathBuf,
    pub kernel_release: String,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
    pub initrd_unpacked_bytes: u64,
    pub budget_bytes: u64,
    pub project_binaries: Vec<String>,
    pub init: String,
}

struct Step {
    name: &'static str,
    started: Instant,
}

fn step(name: &'static str) -> Step {
    eprintln!("image: {name} ...");
    Step { name, started: Instant::now() }
}

impl Drop for Step {
    fn drop(&mut self) {
        eprintln!("image: {} done in {:.1} s", self.name, self.started.elapsed().as_secs_f64());
    }
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let image_dir = opts.workspace.join("image");
    let manifest = Manifest::load(&image_dir.join("manifest.toml"))?;
    let budget = Budget::load(&image_dir.join("budget.toml"))?;
    let profile = manifest.profile(&opts.profile)?;
    let max =
        budget.profiles.get(&opts.profile).ok_or_else(|| BuildError::NoBudget(opts.profile.clone()))?.max_boot_bytes;
    let work = opts.out_dir.join("image").join(".work").join(&opts.profile);
    let dest = opts.out_dir.join("image").join(&opts.profile);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    std::fs::create_dir_all(&dest).map_err(io(&dest))?;

    let kernel_release = apt::kernel_release(&manifest.kernel.package)?;
    let kernel_pkg = format!("linux-image-{kernel_release}");
    eprintln!("image: profile {}, kernel {kernel_release}", profile.name);

    let zfs_dir = if profile.zfs { Some(zfs_modules(opts, &kernel_release)?) } else { None };

    let (debs, kernel_deb) = {
        let _s = step("fetching packages (apt-get download, cached)");
        let mut all = profile.packages.clone();
        all.push(kernel_pkg.clone());
        let mut debs = apt::fetch(&all, &opts.cache_dir.join("debs"))?;
        let kernel = debs.pop().expect("kernel package was pushed last");
        (debs, kernel)
    };

    let sysroot = work.join("sysroot");
    {
        let _s = step("unpacking packages (dpkg-deb -x)");
        if sysroot.exists() {
            std::fs::remove_dir_all(&sysroot).map_err(io(&sysroot))?;
        }
        std::fs::create_dir_all(&sysroot).map_err(io(&sysroot))?;
        for deb in &debs {
            apt::unpack(&deb.path, &sysroot)?;
        }
    }

    let kernel_root = unpack_kernel(&kernel_deb, &work, zfs_dir.as_deref(), &kernel_release)?;

    let mut fs = Rootfs::new(work.join("root"), sysroot.clone())?;
    let _s = step("assembling the image root");
    for (dir, mode) in [
        ("/dev", 0o755),
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/run", 0o755),
        ("/tmp", 0o1777),
        ("/root", 0o700),
        ("/etc", 0o755),
        ("/var", 0o755),
        ("/mnt", 0o755),
    ] {
        fs.mkdir(dir, mode)?;
    }
    for path in &profile.binaries {
        fs.take(path)?;
    }
    for path in &profile.files {
        fs.take_data(path)?;
    }
    let (init, project_binaries) = match &profile.init_script {
        Some(script) => {
            fs.install(&opts.workspace.join(script), "/init", 0o755)?;
            (script.clone(), Vec::new())
        }
        None => install_project(opts, &manifest, &profile, &mut fs)?,
    };
    write_etc(&mut fs)?;
    let module_count = install_modules(&mut fs, &kernel_root, &kernel_release, &profile)?;
    if let Some(busybox) = &profile.busybox {
        install_busybox(&mut fs, &sysroot, busybox)?;
    }
    drop(_s);
    eprintln!("image: {module_count} kernel modules, init is {init}");

    let _s = step("writing the cpio archive");
    let entries = fs.entries()?;
    let cpio_path = work.join("initramfs.cpio");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&cpio_path).map_err(io(&cpio_path))?);
    let unpacked = cpio::write_newc(&mut file, &entries, opts.source_date_epoch).map_err(io(&cpio_path))?;
    drop(file);
    drop(_s);

    let initrd_name = "initrd.img".to_owned();
    let initrd_path = dest.join(&initrd_name);
    {
        let _s = step("compressing the initramfs");
        opts.compression.compress(&cpio_path, &initrd_path, profile.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL))?;
    }
    let vmlinuz = dest.join("vmlinuz");
    let kernel_src = kernel_root.join(format!("boot/vmlinuz-{kernel_release}"));
    std::fs::copy(&kernel_src, &vmlinuz).map_err(io(&kernel_src))?;
    let config_src = kernel_root.join(format!("boot/config-{kernel_release}"));
    std::fs::copy(&config_src, dest.join("kernel.config")).map_err(io(&config_src))?;

    let contents = contents_list(&entries, &kernel_release, opts.compression);
    std::fs::write(dest.join("contents.txt"), &contents).map_err(io(&dest))?;
    let kernel_bytes = file_len(&vmlinuz)?;
    let initrd_bytes = file_len(&initrd_path)?;
    let mut info = String::new();
    let _ = writeln!(info, "profile={}", profile.name);
    let _ = writeln!(info, "kernel_release={kernel_release}");
    let _ = writeln!(info, "kernel_package={} {}", kernel_deb.package, kernel_deb.version);
    let _ = writeln!(info, "compression={:?}", opts.compression);
    let _ = writeln!(info, "init={init}");
    let _ = writeln!(info, "project_binaries={}", project_binaries.join(","));
    let _ = writeln!(info, "kernel_bytes={kernel_bytes}");
    let _ = writeln!(info, "initrd_bytes={initrd_bytes}");
    let _ = writeln!(info, "initrd_unpacked_bytes={unpacked}");
    let _ = writeln!(info, "budget_bytes={max}");
    std::fs::write(dest.join("image.env"), &info).map_err(io(&dest))?;
    write_sha256sums(&dest, &["vmlinuz", &initrd_name, "kernel.config", "contents.txt", "image.env"])?;

    let total = kernel_bytes + initrd_bytes;
    eprintln!(
        "image: {}: vmlinuz {kernel_bytes} B + initrd {initrd_bytes} B ({unpacked} B unpacked) = {total} B of {max} B budget",
        dest.display()
    );
    if total > max {
        return Err(BuildError::OverBudget {
            profile: profile.name,
            kernel: kernel_bytes,
            initrd: initrd_bytes,
            total,
            max,
        });
    }
    Ok(BuildReport {
        dir: dest,
        kernel_release,
        kernel_bytes,
        initrd_bytes,
        initrd_unpacked_bytes: unpacked,
        budget_bytes: max,
        project_binaries,
        init,
    })
}

fn file_len(path: &Path) -> Result<u64, BuildError> {
    Ok(std::fs::metadata(path).map_err(io(path))?.len())
}

/// Runs image/scripts/zfs-module.sh (cache hit or a ~7 minute dkms build) and checks its output.
fn zfs_modules(opts: &BuildOptions, kernel_release: &str) -> Result<PathBuf, BuildError> {
    let _s = step("ZFS modules for the image's kernel (cached; first build takes ~7 min)");
    let script = opts.workspace.join("image/scripts/zfs-module.sh");
    let out = Command::new(&script)
        .arg(kernel_release)
        .env("CACHE_DIR", &opts.cache_dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BuildError::Zfs(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(BuildError::Zfs(format!("{} exited with {}", script.display(), out.status)));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim());
    let versions = std::fs::read_to_string(dir.join("VERSIONS")).unwrap_or_default();
    let found = versions.lines().find_map(|l| l.strip_prefix("kernel=")).unwrap_or("").to_owned();
    if found != kernel_release {
        return Err(BuildError::ZfsKernelMismatch { dir, found, want: kernel_release.into() });
    }
    Ok(dir)
}

/// Unpacks the kernel package once per version (it is large) and runs depmod over its modules
/// plus the ZFS ones.
fn unpack_kernel(deb: &apt::Deb, work: &Path, zfs: Option<&Path>, release: &str) -> Result<PathBuf, BuildError> {
    let root = work.join(format!("kernel-{}-{}", deb.package, deb.version));
    let marker = root.join(".unpacked");
    if !marker.exists() {
        let _s = step("unpacking the kernel package");
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io(&root))?;
        }
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        apt::unpack(&deb.path, &root)?;
        std::fs::write(&marker, b"").map_err(io(&marker))?;
    }
    let extra = root.join(format!("lib/modules/{release}/updates/dkms"));
    if extra.exists() {
        std::fs::remove_dir_all(&extra).map_err(io(&extra))?;
    }
    if let Some(zfs) = zfs {
        std::fs::create_dir_all(&extra).map_err(io(&extra))?;
        for entry in std::fs::read_dir(zfs).map_err(io(zfs))?.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".ko") {
                std::fs::copy(entry.path(), extra.join(&name)).map_err(io(&entry.path()))?;
            }
        }
    }
    depmod(&root, release)?;
    Ok(root)
}

fn depmod(root: &Path, release: &str) -> Result<(), BuildError> {
    apt::run(Command::new("depmod").arg("-b").arg(root).arg(release))
        .map(|_| ())
        .map_err(|e| BuildError::Tool { tool: "depmod".into(), detail: e.to_string() })
}

fn install_modules(fs: &mut Rootfs, kernel_root: &Path, release: &str, profile: &Profile) -> Result<usize, BuildError> {
    let moddir = format!("/lib/modules/{release}");
    let read = |name: &str| {
        let p = rootfs::under(kernel_root, &format!("{moddir}/{name}"));
        std::fs::read_to_string(&p).map_err(io(&p))
    };
    let deps = ModuleDeps::parse(&read("modules.dep")?, &read("modules.builtin")?)?;
    let closure = deps.closure(&profile.modules)?;
    for rel in &closure {
        let src = rootfs::under(kernel_root, &format!("{moddir}/{rel}"));
        fs.install(&src, &format!("{moddir}/{rel}"), 0o644)?;
    }
    for name in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        let src = rootfs::under(kernel_root, &format!("{moddir}/{name}"));
        fs.install(&src, &format!("{moddir}/{name}"), 0o644)?;
    }
    let list: String = profile.load_at_boot.iter().map(|m| format!("{m}\n")).collect();
    fs.write("/etc/cerana/modules", list.as_bytes(), 0o644)?;
    // Indexes (modules.dep, modules.alias, ...) for exactly the modules in the image.
    depmod(&fs.root, release)?;
    Ok(closure.len())
}

/// The project's multi-call binary; `[project] multicall` names link to it.
const MULTICALL_BINARY: &str = "cerana-multicall";
/// The cargo profile the image's binaries are built with (root Cargo.toml: size over speed).
const CARGO_PROFILE: &str = "image";

/// Builds and installs the workspace's binaries that exist now; returns what /init is.
fn install_project(
    opts: &BuildOptions,
    manifest: &Manifest,
    profile: &Profile,
    fs: &mut Rootfs,
) -> Result<(String, Vec<String>), BuildError> {
    let _s = step("building the project's binaries (cargo build --profile image)");
    let (workspace_target, available) = workspace_binaries(&opts.workspace)?;
    // A target directory of its own: building this set of packages elsewhere resolves shared
    // dependencies' features differently and would rebuild them on every image build.
    let target_dir = workspace_target.join("image-bins");
    let mut wanted: Vec<&String> = manifest.project.binaries.iter().chain(&profile.project_binaries).collect();
    if opts.init_binary.is_none() {
        wanted.push(&manifest.project.init);
    }
    let present: Vec<(&String, &String)> =
        wanted.iter().filter_map(|b| available.get(*b).map(|pkg| (*b, pkg))).collect();
    if !present.is_empty() && !opts.no_cargo {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.arg("build")
            .arg("--profile")
            .arg(CARGO_PROFILE)
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&opts.workspace);
        // The cc crate tracks SOURCE_DATE_EPOCH: a new value would rebuild ring and everything above it.
        cmd.env_remove("SOURCE_DATE_EPOCH");
        for (bin, pkg) in &present {
            cmd.args(["-p", pkg, "--bin", bin]);
        }
        let status = cmd.status().map_err(|e| BuildError::Cargo(e.to_string()))?;
        if !status.success() {
            return Err(BuildError::Cargo(format!("cargo build exited with {status}")));
        }
    }
    let mut installed = Vec::new();
    let mut init = String::new();
    for (bin, _) in &present {
        let built = target_dir.join(CARGO_PROFILE).join(bin);
        if !built.exists() {
            continue;
        }
        let abs = if **bin == manifest.project.init { "/init".to_owned() } else { format!("/usr/bin/{bin}") };
        fs.install(&built, &abs, 0o755)?;
        strip(&rootfs::under(&fs.root, &abs))?;
        fs.add_libraries_of(&rootfs::under(&fs.root, &abs), &abs)?;
        if abs == "/init" {
            init = (*bin).clone();
        } else {
            installed.push((*bin).clone());
        }
    }
    if installed.iter().any(|b| b == MULTICALL_BINARY) {
        for applet in &manifest.project.multicall {
            fs.symlink(&format!("/usr/bin/{applet}"), MULTICALL_BINARY)?;
            installed.push(applet.clone());
        }
    }
    if let Some(path) = &opts.init_binary {
        fs.install(path, "/init", 0o755)?;
        fs.add_libraries_of(path, "/init")?;
        init = path.display().to_string();
    }
    if init.is_empty() {
        // cerana-init has not landed: boot into a rescue shell that says so on the console.
        let fallback = opts.workspace.join("image/fallback-init.sh");
        fs.install(&fallback, "/init", 0o755)?;
        init = "image/fallback-init.sh".into();
    }
    let services = opts.workspace.join(&manifest.project.services);
    if services.exists() && profile.services.is_empty() {
        fs.install(&services, "/etc/cerana/services.toml", 0o644)?;
    } else if services.exists() {
        // The profile's tables follow the base table in the one file init reads.
        let mut table = std::fs::read(&services).map_err(io(&services))?;
        for extra in &profile.services {
            let path = opts.workspace.join(extra);
            table.push(b'\n');
            table.extend(std::fs::read(&path).map_err(io(&path))?);
        }
        fs.write("/etc/cerana/services.toml", &table, 0o644)?;
    }
    Ok((init, installed))
}

fn strip(path: &Path) -> Result<(), BuildError> {
    apt::run(Command::new("strip").arg("--strip-unneeded").arg(path))
        .map(|_| ())
        .map_err(|e| BuildError::Tool { tool: "strip".into(), detail: e.to_string() })
}

/// Binary target name → package name for every bin target in the workspace, and the target dir.
fn workspace_binaries(workspace: &Path) -> Result<(PathBuf, BTreeMap<String, String>), BuildError> {
    let out = apt::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(workspace),
    )
    .map_err(|e| BuildError::Cargo(e.to_string()))?;
    let meta: serde_json::Value = serde_json::from_str(&out).map_err(|e| BuildError::Cargo(e.to_string()))?;
    let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    let mut bins = BTreeMap::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let pkg_name = pkg["name"].as_str().unwrap_or_default();
        for target in pkg["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin {
                bins.insert(target["name"].as_str().unwrap_or_default().to_owned(), pkg_name.to_owned());
            }
        }
    }
    Ok((target_dir, bins))
}

/// Debian's fixed system groups (base-passwd) that udev's rules give devices to, and the
/// dynamic ones udev's package adds; without them udevd warns about every rule on each boot.
const SYSTEM_GROUPS: &str = "root:x:0:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\nkmem:x:15:\ndialout:x:20:\ncdrom:x:24:\n\
tape:x:26:\naudio:x:29:\nvideo:x:44:\ninput:x:101:\nkvm:x:102:\nrender:x:103:\nsgx:x:104:\nnogroup:x:65534:\n";

fn write_etc(fs: &mut Rootfs) -> Result<(), BuildError> {
    fs.write(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    fs.write("/etc/group", SYSTEM_GROUPS.as_bytes(), 0o644)?;
    fs.write("/etc/hostname", b"cerana\n", 0o644)?;
    let release =
        format!("NAME=CeranaOS\nID=cerana\nPRETTY_NAME=\"CeranaOS\"\nVERSION_ID={}\n", env!("CARGO_PKG_VERSION"));
    fs.write("/etc/os-release", release.as_bytes(), 0o644)?;
    fs.write("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)?;
    Ok(())
}

/// Busybox applets as symlinks, wherever no real file has the name.
fn install_busybox(fs: &mut Rootfs, sysroot: &Path, busybox: &str) -> Result<(), BuildError> {
    fs.take(busybox)?;
    let list = apt::run(Command::new(rootfs::under(sysroot, busybox)).arg("--list-full"))
        .map_err(|e| BuildError::Tool { tool: "busybox --list-full".into(), detail: e.to_string() })?;
    for applet in list.lines().filter(|l| !l.is_empty()) {
        let abs = format!("/{applet}");
        if !fs.exists(&abs) {
            fs.symlink(&abs, busybox)?;
        }
    }
    Ok(())
}

/// The human-readable list of what is in the image, with sizes.
pub fn contents_list(entries: &[cpio::Entry], release: &str, compression: Compression) -> String {
    let mut s = String::new();
    let mut total = 0u64;
    let _ = writeln!(s, "# CeranaOS initramfs contents (kernel {release}, {compression:?}); mode size path");
    for e in entries {
        match &e.kind {
            EntryKind::Dir => {
                let _ = writeln!(s, "d{:04o} {:>10} /{}", e.mode, 0, e.path);
            }
            EntryKind::File(bytes) => {
                total += bytes.len() as u64;
                let _ = writeln!(s, "f{:04o} {:>10} /{}", e.mode, bytes.len(), e.path);
            }
            EntryKind::Symlink(target) => {
                let _ = writeln!(s, "l0777 {:>10} /{} -> {target}", 0, e.path);
            }
        }
    }
    let _ = writeln!(s, "# {} entries, {total} bytes in files", entries.len());
    s
}

fn write_sha256sums(dir: &Path, names: &[&str]) -> Result<(), BuildError> {
    let mut sums = String::new();
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let digest = Sha256::digest(&bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(sums, "{hex}  {name}");
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).map_err(io(dir))
}
