//! The OCI runtime spec (config.json) of one start of a service.

use crate::definition::ServiceDef;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};
use std::path::{Path, PathBuf};

/// The CFS period the cpu limit is expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Where one start's container lives on the node.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub rootfs: &'a Path,
    /// `linux.cgroupsPath`.
    pub cgroup: &'a str,
    /// `/run/netns/NAME` when the service joins a named namespace.
    pub netns_path: Option<PathBuf>,
}

/// Why a spec could not be built (the builders refuse only impossible values).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OCI spec: {0}")]
pub struct SpecError(#[from] oci_spec::OciSpecError);

/// The spec: new pid, ipc, uts, mount and cgroup namespaces; the named network namespace or a
/// new one; a user namespace when the definition maps ids; limits as cgroup resources.
pub fn build(def: &ServiceDef, at: &Placement<'_>) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(def.key.id.clone()));
    spec.set_root(Some(RootBuilder::default().path(at.rootfs).readonly(false).build()?));

    let user = UserBuilder::default().uid(def.user.uid).gid(def.user.gid).build()?;
    let mut process = ProcessBuilder::default()
        .args(def.cmd.clone())
        .env(def.env_list())
        .cwd(def.cwd.clone())
        .user(user)
        .no_new_privileges(true)
        .build()?;
    // Keep the default capability set and rlimits of Spec::default.
    if let Some(defaults) = spec.process() {
        process.set_capabilities(defaults.capabilities().clone());
        process.set_rlimits(defaults.rlimits().clone());
    }
    spec.set_process(Some(process));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &def.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ("bind")
                .source(&m.source)
                .options(vec!["rbind".to_owned(), "rprivate".to_owned(), mode.to_owned()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));

    let mut namespaces = Vec::new();
    for typ in [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &at.netns_path {
        net = net.path(path.clone());
    }
    namespaces.push(net.build()?);
    let mut linux = LinuxBuilder::default();
    if !def.user.uid_map.is_empty() {
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).build()?);
        let map = |ranges: &[cerana_protocol::tasks::service::IdRange]| {
            ranges
                .iter()
                .map(|r| {
                    LinuxIdMappingBuilder::default()
                        .container_id(r.container_id)
                        .host_id(r.host_id)
                        .size(r.size)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        };
        linux = linux.uid_mappings(map(&def.user.uid_map)?).gid_mappings(map(&def.user.gid_map)?);
    }

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(cpu) = def.limits.cpu {
        let quota = u64::from(cpu) * CPU_PERIOD_US / 1000;
        resources = resources.cpu(LinuxCpuBuilder::default().quota(quota as i64).period(CPU_PERIOD_US).build()?);
    }
    if let Some(memory) = def.limits.memory {
        // No swap beyond the limit: memory+swap equals memory.
        let limit = memory as i64;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).swap(limit).build()?);
    }
    if let Some(processes) = def.limits.processes {
        resources = resources.pids(LinuxPidsBuilder::default().limit(i64::from(processes)).build()?);
    }
    let defaults = Spec::default();
    let default_linux = defaults.linux().as_ref();
    let linux = linux
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(at.cgroup))
        .masked_paths(default_linux.and_then(|l| l.masked_paths().clone()).unwrap_or_default())
        .readonly_paths(default_linux.and_then(|l| l.readonly_paths().clone()).unwrap_or_default());
    spec.set_linux(Some(linux.build()?));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::NodeCapacity;
    use cerana_protocol::tasks::service::CreateArgs;

    fn def(extra: &str) -> ServiceDef {
        let json = format!(
            r#"{{"id":"web","bundle_id":"b1","dataset":"/srv/r","rootfs":"overlay","cmd":["/bin/sh","-c","x"]{extra}}}"#
        );
        let args: CreateArgs = serde_json::from_str(&json).unwrap();
        ServiceDef::check(&args, NodeCapacity { cpus: 4, memory_bytes: 8 << 30 }).unwrap()
    }

    fn spec_json(def: &ServiceDef, netns: Option<&str>) -> serde_json::Value {
        let place = Placement {
            rootfs: Path::new("/run/x/rootfs"),
            cgroup: "/cerana-services/b1.web",
            netns_path: netns.map(PathBuf::from),
        };
        serde_json::to_value(build(def, &place).unwrap()).unwrap()
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let d = def(
            r#","limits":{"cpu":500,"memory":67108864,"processes":32},"mounts":[{"source":"/data/x","destination":"/srv","read_only":true}]"#,
        );
        let s = spec_json(&d, None);
        let r = &s["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 67_108_864);
        assert_eq!(r["pids"]["limit"], 32);
        assert_eq!(s["linux"]["cgroupsPath"], "/cerana-services/b1.web");
        assert_eq!(s["root"]["path"], "/run/x/rootfs");
        assert_eq!(s["process"]["args"][2], "x");
        assert_eq!(s["hostname"], "web");
        let bind = s["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/srv").unwrap();
        assert_eq!(bind["source"], "/data/x");
        assert_eq!(bind["options"], serde_json::json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn a_named_netns_is_joined_by_path_and_maps_add_a_user_namespace() {
        let d = def(
            r#","netns":"blue","user":{"uid":0,"gid":0,"uid_map":[{"container_id":0,"host_id":100000,"size":65536}],"gid_map":[{"container_id":0,"host_id":100000,"size":65536}]}"#,
        );
        let s = spec_json(&d, Some("/run/netns/blue"));
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/netns/blue");
        assert!(ns.iter().any(|n| n["type"] == "user"));
        assert!(ns.iter().any(|n| n["type"] == "pid"));
        assert_eq!(s["linux"]["uidMappings"][0]["hostID"], 100000);
        let plain = spec_json(&def(""), None);
        let plain_ns = plain["linux"]["namespaces"].as_array().unwrap();
        assert!(plain_ns.iter().all(|n| n["type"] != "user" && n.get("path").is_none()));
    }
}
