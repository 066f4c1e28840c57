//! Kernel modules: the `modules.dep` closure of the modules the manifest names.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("kernel module {0:?} is not in this kernel's modules.dep (nor built in)")]
    Unknown(String),
    #[error("modules.dep line {0}: {1:?} is not `path: deps...`")]
    Malformed(usize, String),
}

/// `overlay` for `kernel/fs/overlayfs/overlay.ko(.xz)`; dashes become underscores as modprobe does.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A parsed `modules.dep`: module path → the paths it depends on.
#[derive(Debug, Default, Clone)]
pub struct ModuleDeps {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

impl ModuleDeps {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<Self, ModuleError> {
        let mut parsed = Self::default();
        for (i, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| ModuleError::Malformed(i + 1, line.into()))?;
            let path = path.trim().to_owned();
            parsed.by_name.insert(module_name(&path), path.clone());
            parsed.deps.insert(path, deps.split_whitespace().map(str::to_owned).collect());
        }
        parsed.builtin = modules_builtin.lines().filter(|l| !l.is_empty()).map(module_name).collect();
        Ok(parsed)
    }

    /// The paths of `names` and everything they depend on, sorted; built-in modules need nothing.
    pub fn closure(&self, names: &[String]) -> Result<BTreeSet<String>, ModuleError> {
        let mut out = BTreeSet::new();
        let mut todo = Vec::new();
        for name in names {
            let name = name.replace('-', "_");
            match self.by_name.get(&name) {
                Some(path) => todo.push(path.clone()),
                None if self.builtin.contains(&name) => {}
                None => return Err(ModuleError::Unknown(name)),
            }
        }
        while let Some(path) = todo.pop() {
            if out.insert(path.clone()) {
                todo.extend(self.deps.get(&path).into_iter().flatten().cloned());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/veth.ko:\n\
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
kernel/net/llc/llc.ko:\n\
updates/dkms/zfs.ko: updates/dkms/spl.ko\n\
updates/dkms/spl.ko:\n";

    #[test]
    fn closure_follows_dependencies() {
        let deps = ModuleDeps::parse(DEP, "kernel/fs/ext4/ext4.ko\n").unwrap();
        let got = deps.closure(&["bridge".into(), "zfs".into(), "ext4".into()]).unwrap();
        let want: BTreeSet<String> = [
            "kernel/net/bridge/bridge.ko",
            "kernel/net/802/stp.ko",
            "kernel/net/llc/llc.ko",
            "updates/dkms/spl.ko",
            "updates/dkms/zfs.ko",
        ]
        .map(String::from)
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_module_and_bad_lines_are_named() {
        let deps = ModuleDeps::parse(DEP, "").unwrap();
        assert_eq!(deps.closure(&["nope".into()]), Err(ModuleError::Unknown("nope".into())));
        assert!(matches!(ModuleDeps::parse("garbage line\n", ""), Err(ModuleError::Malformed(1, _))));
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("kernel/drivers/block/virtio_blk.ko.xz"), "virtio_blk");
        assert_eq!(module_name("kernel/net/nf-tables.ko"), "nf_tables");
    }
}
