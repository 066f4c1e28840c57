//! The image manifest (`image/manifest.toml`) and the size budget (`image/budget.toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("profile {0:?} is not in the manifest (known: {1})")]
    UnknownProfile(String, String),
    #[error("profile {0:?} inherits itself through {1:?}")]
    InheritanceCycle(String, String),
    #[error("module {0:?} is loaded at boot but not listed in `modules`")]
    BootModuleNotIncluded(String),
    #[error("{0:?} must be an absolute path")]
    RelativePath(String),
    #[error("multi-call name {0:?} must be a plain file name")]
    BadMulticallName(String),
    #[error("zstd_level {0} of profile {1}: zstd levels are 1 to 19")]
    BadZstdLevel(u8, String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub kernel: KernelSpec,
    pub project: ProjectSpec,
    pub profiles: BTreeMap<String, ProfileSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub package: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub init: String,
    pub binaries: Vec<String>,
    /// Names installed as `/usr/bin/<name> -> cerana-multicall` (the applets of the
    /// multi-call binary, which must be among `binaries`).
    #[serde(default)]
    pub multicall: Vec<String>,
    pub services: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default)]
    pub inherit: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub busybox: Option<String>,
    #[serde(default)]
    pub binaries: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub load_at_boot: Vec<String>,
    #[serde(default)]
    pub zfs: bool,
    /// A script from the repo used as /init instead of the project's binaries (the boot floor).
    #[serde(default)]
    pub init_script: Option<String>,
    /// Workspace binaries only this profile carries (besides `[project] binaries`), installed
    /// as /usr/bin/<name> with their shared libraries, e.g. the kvm provider (libvirt).
    #[serde(default)]
    pub project_binaries: Vec<String>,
    /// zstd level of the initramfs (default 19). Level 19 costs ~1 MB/s of CPU: right for the
    /// base image, where every byte counts against its budget, too slow for a 180 MB one.
    #[serde(default)]
    pub zstd_level: Option<u8>,
    /// Service tables (repo paths) appended to `[project] services` for this profile.
    #[serde(default)]
    pub services: Vec<String>,
}

/// A profile with its inheritance applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub packages: Vec<String>,
    pub busybox: Option<String>,
    pub binaries: Vec<String>,
    pub files: Vec<String>,
    pub modules: Vec<String>,
    pub load_at_boot: Vec<String>,
    pub zfs: bool,
    pub init_script: Option<String>,
    pub project_binaries: Vec<String>,
    pub services: Vec<String>,
    pub zstd_level: Option<u8>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let manifest: Self =
            toml::from_str(text).map_err(|source| ManifestError::Parse { path: path.into(), source })?;
        if let Some(bad) =
            manifest.project.multicall.iter().find(|n| n.is_empty() || n.contains('/') || n.starts_with('.'))
        {
            return Err(ManifestError::BadMulticallName(bad.clone()));
        }
        if let Some((name, spec)) =
            manifest.profiles.iter().find(|(_, p)| p.zstd_level.is_some_and(|l| !(1..=19).contains(&l)))
        {
            return Err(ManifestError::BadZstdLevel(spec.zstd_level.unwrap_or_default(), name.clone()));
        }
        for spec in manifest.profiles.values() {
            for p in spec.binaries.iter().chain(&spec.files).chain(&spec.busybox) {
                if !p.starts_with('/') {
                    return Err(ManifestError::RelativePath(p.clone()));
                }
            }
        }
        Ok(manifest)
    }

    /// The named profile with everything it inherits, parents first, duplicates dropped.
    pub fn profile(&self, name: &str) -> Result<Profile, ManifestError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_owned());
        while let Some(current) = next {
            if chain.iter().any(|(n, _)| *n == current) {
                return Err(ManifestError::InheritanceCycle(name.into(), current));
            }
            let spec = self.profiles.get(&current).ok_or_else(|| {
                ManifestError::UnknownProfile(
                    current.clone(),
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
                )
            })?;
            next = spec.inherit.clone();
            chain.push((current, spec));
        }
        let mut profile = Profile { name: name.into(), ..Profile::default() };
        for (_, spec) in chain.iter().rev() {
            extend_unique(&mut profile.packages, &spec.packages);
            extend_unique(&mut profile.binaries, &spec.binaries);
            extend_unique(&mut profile.files, &spec.files);
            extend_unique(&mut profile.modules, &spec.modules);
            extend_unique(&mut profile.load_at_boot, &spec.load_at_boot);
            extend_unique(&mut profile.project_binaries, &spec.project_binaries);
            extend_unique(&mut profile.services, &spec.services);
            profile.zstd_level = spec.zstd_level.or(profile.zstd_level);
            profile.busybox = spec.busybox.clone().or(profile.busybox);
            profile.zfs |= spec.zfs;
            profile.init_script = spec.init_script.clone().or(profile.init_script);
        }
        if let Some(m) = profile.load_at_boot.iter().find(|m| !profile.modules.contains(m)) {
            return Err(ManifestError::BootModuleNotIncluded(m.clone()));
        }
        Ok(profile)
    }
}

fn extend_unique(into: &mut Vec<String>, items: &[String]) {
    for item in items {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub profiles: BTreeMap<String, ProfileBudget>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBudget {
    /// Kernel plus compressed initramfs.
    pub max_boot_bytes: u64,
}

impl Budget {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ManifestError::Parse { path: path.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_sets_its_zstd_level_and_children_inherit_it() {
        let text = SAMPLE.replace("[profiles.full]\n", "[profiles.full]\nzstd_level = 9\n");
        let m = Manifest::parse(&text, Path::new("m")).unwrap();
        assert_eq!((m.profile("base").unwrap().zstd_level, m.profile("full").unwrap().zstd_level), (None, Some(9)));
        let text = SAMPLE.replace("[profiles.full]\n", "[profiles.full]\nzstd_level = 22\n");
        assert!(matches!(Manifest::parse(&text, Path::new("m")), Err(ManifestError::BadZstdLevel(22, _))));
    }

    #[test]
    fn multicall_names_are_plain_file_names() {
        for bad in ["../init", "/usr/bin/x", ""] {
            let text =
                SAMPLE.replace("binaries = [\"cerana\"]", &format!("binaries = [\"cerana\"]\nmulticall = [{bad:?}]"));
            assert!(matches!(Manifest::parse(&text, Path::new("m")), Err(ManifestError::BadMulticallName(_))), "{bad}");
        }
        let text = SAMPLE.replace("binaries = [\"cerana\"]", "binaries = [\"cerana\"]\nmulticall = [\"cerana-zfs\"]");
        assert_eq!(Manifest::parse(&text, Path::new("m")).unwrap().project.multicall, ["cerana-zfs"]);
    }

    const SAMPLE: &str = r#"
[kernel]
package = "linux-image-amd64"
[project]
init = "cerana-init"
binaries = ["cerana"]
services = "init/services.base.toml"
[profiles.base]
packages = ["busybox-static", "libc6"]
busybox = "/bin/busybox"
binaries = ["/sbin/zpool"]
modules = ["zfs"]
load_at_boot = ["zfs"]
zfs = true
[profiles.full]
inherit = "base"
packages = ["libc6", "qemu-system-x86"]
modules = ["kvm_intel"]
project_binaries = ["cerana-kvm"]
services = ["init/services.full.toml"]
"#;

    #[test]
    fn inheritance_merges_parent_first_without_duplicates() {
        let m = Manifest::parse(SAMPLE, Path::new("m.toml")).unwrap();
        let full = m.profile("full").unwrap();
        assert_eq!(full.packages, ["busybox-static", "libc6", "qemu-system-x86"]);
        assert_eq!(full.modules, ["zfs", "kvm_intel"]);
        assert!(full.zfs);
        assert_eq!(full.busybox.as_deref(), Some("/bin/busybox"));
        assert_eq!(
            (full.project_binaries.as_slice(), full.services.as_slice()),
            (&["cerana-kvm".to_owned()][..], &["init/services.full.toml".to_owned()][..])
        );
        let base = m.profile("base").unwrap();
        assert!(base.project_binaries.is_empty() && base.services.is_empty());
    }

    #[test]
    fn shipped_manifest_and_budget_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let m = Manifest::load(&dir.join("manifest.toml")).unwrap();
        assert!(m.profile("base").unwrap().zfs);
        assert!(m.profile("full").unwrap().packages.len() > m.profile("base").unwrap().packages.len());
        let b = Budget::load(&dir.join("budget.toml")).unwrap();
        assert_eq!(b.profiles["base"].max_boot_bytes, 32 * 1024 * 1024);
    }

    #[test]
    fn bad_manifests_get_clear_errors() {
        let m = Manifest::parse(SAMPLE, Path::new("m.toml")).unwrap();
        let err = m.profile("tiny").unwrap_err().to_string();
        assert!(err.contains("\"tiny\"") && err.contains("base, full"), "{err}");
        let cyclic = SAMPLE.replace("[profiles.base]", "[profiles.base]\ninherit = \"full\"");
        let m = Manifest::parse(&cyclic, Path::new("m.toml")).unwrap();
        assert!(matches!(m.profile("full"), Err(ManifestError::InheritanceCycle(..))));
        let unknown = SAMPLE.replace("zfs = true", "zfs = true\nextra = 1");
        assert!(Manifest::parse(&unknown, Path::new("m.toml")).unwrap_err().to_string().contains("extra"));
        let stray = SAMPLE.replace("load_at_boot = [\"zfs\"]", "load_at_boot = [\"zfs\", \"e1000\"]");
        let m = Manifest::parse(&stray, Path::new("m.toml")).unwrap();
        assert!(matches!(m.profile("base"), Err(ManifestError::BootModuleNotIncluded(n)) if n == "e1000"));
        let relative = SAMPLE.replace("\"/sbin/zpool\"", "\"sbin/zpool\"");
        assert!(matches!(Manifest::parse(&relative, Path::new("m.toml")), Err(ManifestError::RelativePath(_))));
    }
}
