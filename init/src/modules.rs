//! Kernel module loading: dependency order from `modules.dep`, plain modules through
//! `finit_module`, `.ko.xz` and `.ko.zst` decompressed in memory and loaded with `init_module`.
//! Each module's outcome is reported; a failure only skips the modules that need it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cerana_protocol::events::LifecycleEvent;

use crate::cmdline::ModuleName;
use crate::output::Output;

/// Why a module did not load.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not found in modules.dep")]
    NotFound,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot decompress {path}: {message}")]
    Decompress { path: PathBuf, message: String },
    #[error("{path}: unsupported compression (only .ko, .ko.xz, .ko.zst)")]
    UnsupportedCompression { path: PathBuf },
    #[error("the kernel refused {path}: {errno} ({})", errno.desc())]
    Kernel { path: PathBuf, errno: nix::errno::Errno },
    #[error("needs {0}, which failed")]
    Dependency(String),
}

/// The module name of a path in modules.dep (`kernel/fs/zfs/zfs.ko.xz` -> `zfs`).
fn name_of(path: &str) -> Option<ModuleName> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    stem.parse().ok()
}

/// `modules.dep`: every module's file and its dependencies.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    modules: BTreeMap<ModuleName, (String, Vec<ModuleName>)>,
    builtin: BTreeSet<ModuleName>,
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = name_of(path.trim()) else {
                continue;
            };
            let deps = deps.split_whitespace().filter_map(name_of).collect();
            modules.insert(name, (path.trim().to_string(), deps));
        }
        let builtin = modules_builtin.lines().filter_map(|l| name_of(l.trim())).collect();
        Self { modules, builtin }
    }

    /// Reads `modules.dep` (and `modules.builtin` when present) from a module tree.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let dep = std::fs::read_to_string(dir.join("modules.dep"))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(Self::parse(&dep, &builtin))
    }

    /// The modules to load for `wanted`, dependencies first, each once. Built-in modules are
    /// left out; unknown ones are returned separately.
    pub fn load_order(&self, wanted: &[ModuleName]) -> (Vec<ModuleName>, Vec<ModuleName>) {
        fn visit(idx: &ModuleIndex, m: &ModuleName, order: &mut Vec<ModuleName>, seen: &mut BTreeSet<ModuleName>) {
            if !seen.insert(m.clone()) {
                return;
            }
            if let Some((_, deps)) = idx.modules.get(m) {
                // modules.dep lists the deepest dependency last.
                for d in deps.iter().rev() {
                    visit(idx, d, order, seen);
                }
                order.push(m.clone());
            }
        }
        let mut order = Vec::new();
        let mut unknown = Vec::new();
        let mut seen = BTreeSet::new();
        for m in wanted {
            if self.builtin.contains(m) {
                continue;
            }
            if self.modules.contains_key(m) {
                visit(self, m, &mut order, &mut seen);
            } else {
                unknown.push(m.clone());
            }
        }
        (order, unknown)
    }

    pub fn path_of(&self, m: &ModuleName) -> Option<&str> {
        self.modules.get(m).map(|(p, _)| p.as_str())
    }

    pub fn deps_of(&self, m: &ModuleName) -> &[ModuleName] {
        self.modules.get(m).map_or(&[], |(_, d)| d.as_slice())
    }
}

/// Hands a module to the kernel.
/// Loads one module file; called from several threads at once.
pub trait ModuleLoader: Sync {
    fn load(&self, path: &Path) -> Result<(), ModuleError>;
}

/// The real loader: `finit_module` for `.ko`, `init_module` on the decompressed image for
/// `.ko.xz` / `.ko.zst`. A module that is loaded already counts as loaded.
#[derive(Debug, Default)]
pub struct KernelLoader;

impl ModuleLoader for KernelLoader {
    fn load(&self, path: &Path) -> Result<(), ModuleError> {
        let params = c"";
        let result = if path.extension().is_some_and(|e| e == "ko") {
            let file = File::open(path).map_err(|source| ModuleError::Read { path: path.into(), source })?;
            nix::kmod::finit_module(&file, params, nix::kmod::ModuleInitFlags::empty())
        } else {
            let image = decompress(path)?;
            nix::kmod::init_module(&image, params)
        };
        match result {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(errno) => Err(ModuleError::Kernel { path: path.into(), errno }),
        }
    }
}

/// Reads a compressed module into memory.
pub fn decompress(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let name = path.to_string_lossy();
    let mut file = File::open(path).map_err(|source| ModuleError::Read { path: path.into(), source })?;
    let fail = |message: String| ModuleError::Decompress { path: path.into(), message };
    let mut out = Vec::new();
    if name.ends_with(".ko.xz") {
        let mut input = std::io::BufReader::new(file);
        lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| fail(format!("{e:?}")))?;
    } else if name.ends_with(".ko.zst") {
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut file).map_err(|e| fail(e.to_string()))?;
        decoder.read_to_end(&mut out).map_err(|e| fail(e.to_string()))?;
    } else {
        return Err(ModuleError::UnsupportedCompression { path: path.into() });
    }
    Ok(out)
}

/// What happened to each module.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<ModuleName>,
    pub failed: Vec<(ModuleName, String)>,
}

/// Threads loading modules at once: independent modules (the virtio chain, ahci waiting for
/// its SATA links, the storage CRCs) then overlap instead of queueing behind each other.
const MAX_LOADERS: usize = 4;

/// Loads `wanted` and their dependencies from `dir`, reporting each outcome on `out`. A module
/// is loaded only after its dependencies loaded; independent ones load in parallel.
pub fn load_modules(dir: &Path, wanted: &[ModuleName], loader: &dyn ModuleLoader, out: &mut Output) -> LoadReport {
    let loaders = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_LOADERS);
    load_modules_with(dir, wanted, loader, loaders, out)
}

/// The loading state the loader threads share.
struct Progress {
    /// Modules not started yet, dependencies first.
    pending: Vec<ModuleName>,
    /// Finished modules in the order they finished: `Err` holds why one failed.
    finished: Vec<(ModuleName, Result<(), String>)>,
}

impl Progress {
    fn outcome(&self, m: &ModuleName) -> Option<&Result<(), String>> {
        self.finished.iter().find(|(f, _)| f == m).map(|(_, r)| r)
    }
}

fn load_modules_with(
    dir: &Path,
    wanted: &[ModuleName],
    loader: &dyn ModuleLoader,
    loaders: usize,
    out: &mut Output,
) -> LoadReport {
    let mut report = LoadReport::default();
    let fail = |report: &mut LoadReport, m: &ModuleName, error: String, out: &mut Output| {
        out.error(&format!("module {m}: {error}"));
        out.event(LifecycleEvent::ModuleFailed { module: m.to_string(), error: error.clone() });
        report.failed.push((m.clone(), error));
    };
    let index = match ModuleIndex::read(dir) {
        Ok(i) => i,
        Err(e) => {
            let error = format!("cannot read {}/modules.dep: {e}", dir.display());
            for m in wanted {
                fail(&mut report, m, error.clone(), out);
            }
            return report;
        }
    };
    let (order, unknown) = index.load_order(wanted);
    for m in unknown {
        fail(&mut report, &m, ModuleError::NotFound.to_string(), out);
    }
    let order: Vec<ModuleName> = order.into_iter().filter(|m| index.path_of(m).is_some()).collect();
    let progress = std::sync::Mutex::new(Progress { pending: order, finished: Vec::new() });
    let changed = std::sync::Condvar::new();
    let work = || loop {
        let mut state = progress.lock().expect("module progress lock");
        // The first pending module whose dependencies are all finished; `order` is
        // topological, so while nothing is in flight the first pending one qualifies.
        let next = loop {
            if state.pending.is_empty() {
                return;
            }
            let ready = state.pending.iter().position(|m| index.deps_of(m).iter().all(|d| state.outcome(d).is_some()));
            match ready {
                Some(i) => break state.pending.remove(i),
                None => state = changed.wait(state).expect("module progress lock"),
            }
        };
        let failed_dep = index.deps_of(&next).iter().find(|d| matches!(state.outcome(d), Some(Err(_)))).cloned();
        let outcome = match failed_dep {
            Some(dep) => Err(ModuleError::Dependency(dep.to_string()).to_string()),
            None => {
                drop(state);
                let path = dir.join(index.path_of(&next).unwrap_or_default());
                let outcome = loader.load(&path).map_err(|e| e.to_string());
                state = progress.lock().expect("module progress lock");
                outcome
            }
        };
        state.finished.push((next, outcome));
        changed.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 1..loaders {
            scope.spawn(work);
        }
        work();
    });
    let finished = progress.into_inner().expect("module progress lock").finished;
    for (m, outcome) in finished {
        match outcome {
            Ok(()) => {
                out.debug(&format!("module {m} loaded"));
                out.event(LifecycleEvent::ModuleLoaded { module: m.to_string() });
                report.loaded.push(m);
            }
            Err(error) => fail(&mut report, &m, error, out),
        }
    }
    report
}

/// Module names listed one per line in a file (`#` comments allowed); bad names are returned
/// as problems.
pub fn read_module_list(text: &str) -> (Vec<ModuleName>, Vec<String>) {
    let mut names = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.parse() {
            Ok(n) => names.push(n),
            Err(e) => problems.push(e),
        }
    }
    (names, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn names(v: &[ModuleName]) -> Vec<&str> {
        v.iter().map(ModuleName::as_str).collect()
    }

    fn n(s: &str) -> ModuleName {
        s.parse().unwrap()
    }

    const DEP: &str = "\
kernel/fs/zfs/zfs.ko.xz: kernel/fs/zfs/zunicode.ko.xz kernel/fs/zfs/zcommon.ko.xz kernel/fs/zfs/spl.ko.xz
kernel/fs/zfs/zcommon.ko.xz: kernel/fs/zfs/spl.ko.xz
kernel/fs/zfs/zunicode.ko.xz: kernel/fs/zfs/spl.ko.xz
kernel/fs/zfs/spl.ko.xz:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/net/failover.ko
kernel/drivers/net/net_failover.ko: kernel/drivers/net/failover.ko
kernel/drivers/net/failover.ko:
garbage line without colon
";

    #[test]
    fn dependencies_come_first_and_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/drivers/input/evdev.ko\n");
        let (order, unknown) = idx.load_order(&[n("zfs"), n("virtio-net"), n("spl"), n("evdev"), n("nope")]);
        assert_eq!(names(&order), ["spl", "zcommon", "zunicode", "zfs", "failover", "net_failover", "virtio_net"]);
        assert_eq!(names(&unknown), ["nope"]);
    }

    /// Records each load's start and end; loads overlap when several threads run.
    #[derive(Default)]
    struct Recorder {
        calls: std::sync::Mutex<Vec<String>>,
        running: std::sync::atomic::AtomicUsize,
        most_at_once: std::sync::atomic::AtomicUsize,
    }
    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        /// Index of `what` in the record, which must be there.
        fn at(&self, what: &str) -> usize {
            let calls = self.calls();
            calls.iter().position(|c| c == what).unwrap_or_else(|| panic!("{what} not in {calls:?}"))
        }
    }
    impl ModuleLoader for Recorder {
        fn load(&self, path: &Path) -> Result<(), ModuleError> {
            use std::sync::atomic::Ordering::SeqCst;
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            self.calls.lock().unwrap().push(format!("start {file}"));
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most_at_once.fetch_max(now, SeqCst);
            // Long enough for another thread to start a load meanwhile, if one may.
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.running.fetch_sub(1, SeqCst);
            self.calls.lock().unwrap().push(format!("end {file}"));
            if file.starts_with("zcommon") {
                return Err(ModuleError::Kernel { path: path.into(), errno: nix::errno::Errno::ENOEXEC });
            }
            Ok(())
        }
    }

    fn quiet_output(events: &Path) -> Output {
        Output::new(
            File::options().write(true).open("/dev/null").unwrap(),
            Some(Output::open_events_file(events).unwrap()),
            Instant::now(),
        )
    }

    #[test]
    fn a_failure_skips_only_what_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let events = dir.path().join("events");
        let mut out = quiet_output(&events);
        let rec = Recorder::default();
        let report = load_modules_with(dir.path(), &[n("zfs"), n("virtio_net")], &rec, 2, &mut out);
        let started: BTreeSet<String> =
            rec.calls().iter().filter_map(|c| c.strip_prefix("start ").map(str::to_owned)).collect();
        let expected =
            ["spl.ko.xz", "zcommon.ko.xz", "zunicode.ko.xz", "failover.ko", "net_failover.ko", "virtio_net.ko"];
        assert_eq!(started, expected.iter().map(|s| s.to_string()).collect(), "zfs itself is never tried");
        for (dep, module) in [
            ("spl.ko.xz", "zcommon.ko.xz"),
            ("spl.ko.xz", "zunicode.ko.xz"),
            ("failover.ko", "net_failover.ko"),
            ("net_failover.ko", "virtio_net.ko"),
        ] {
            assert!(
                rec.at(&format!("end {dep}")) < rec.at(&format!("start {module}")),
                "{module} before {dep}: {:?}",
                rec.calls()
            );
        }
        assert_eq!(rec.most_at_once.load(std::sync::atomic::Ordering::SeqCst), 2, "independent chains overlap");
        let loaded: BTreeSet<&str> = report.loaded.iter().map(ModuleName::as_str).collect();
        assert_eq!(loaded, BTreeSet::from(["spl", "zunicode", "failover", "net_failover", "virtio_net"]));
        let failed: Vec<(&str, &str)> = report.failed.iter().map(|(m, e)| (m.as_str(), e.as_str())).collect();
        assert_eq!(failed[0].0, "zcommon");
        assert!(failed[0].1.contains("ENOEXEC"), "{}", failed[0].1);
        assert_eq!(failed[1], ("zfs", "needs zcommon, which failed"));
        let text = std::fs::read_to_string(events).unwrap();
        assert!(text.contains(r#"{"event":"module_failed","module":"zfs","error":"needs zcommon, which failed"}"#));
        assert!(text.contains(r#"{"event":"module_loaded","module":"spl"}"#));
    }

    #[test]
    fn a_missing_tree_fails_every_module_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = quiet_output(&dir.path().join("events"));
        let report = load_modules(&dir.path().join("absent"), &[n("zfs")], &Recorder::default(), &mut out);
        assert!(report.failed[0].1.contains("modules.dep"));
    }

    #[test]
    fn compressed_modules_decompress() {
        let dir = tempfile::tempdir().unwrap();
        let image = b"\x7fELF pretend module image".repeat(100);
        let xz = dir.path().join("m.ko.xz");
        let mut packed = Vec::new();
        lzma_rs::xz_compress(&mut &image[..], &mut packed).unwrap();
        std::fs::write(&xz, &packed).unwrap();
        assert_eq!(decompress(&xz).unwrap(), image);
        let zst = dir.path().join("m.ko.zst");
        let packed = ruzstd::encoding::compress_to_vec(&image[..], ruzstd::encoding::CompressionLevel::Fastest);
        std::fs::write(&zst, &packed).unwrap();
        assert_eq!(decompress(&zst).unwrap(), image);
        let bad = dir.path().join("bad.ko.xz");
        std::fs::write(&bad, b"not xz").unwrap();
        assert!(matches!(decompress(&bad), Err(ModuleError::Decompress { .. })));
        let gz = dir.path().join("m.ko.gz");
        std::fs::write(&gz, b"").unwrap();
        assert!(matches!(decompress(&gz), Err(ModuleError::UnsupportedCompression { .. })));
    }

    #[test]
    fn module_lists_allow_comments_and_report_bad_names() {
        let (names_, problems) = read_module_list("# base\nzfs\n\nvirtio-net # nic\nbad/name\n");
        assert_eq!(names(&names_), ["zfs", "virtio_net"]);
        assert_eq!(problems.len(), 1);
    }
}
