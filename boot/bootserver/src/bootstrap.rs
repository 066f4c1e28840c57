//! The bootstrap node's bootserver configuration, derived from its kernel command line:
//! `cerana-bootserver bootstrap-config` (run by init when `cerana.cluster_bootstrap` is set).
//! The management address `cerana.mgmt_ip=A.B.C.D/N` gives the interface (the one holding
//! it) and the lease pool (host addresses .100 to .249 of a /24 or larger network).
use crate::config::{DhcpMode, Ipv4Net};
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the command line has no cerana.mgmt_ip=A.B.C.D/N")]
    NoMgmtIp,
    #[error("cerana.mgmt_ip={0:?}: {1}")]
    BadMgmtIp(String, String),
    #[error("cerana.mgmt_gw={0:?} is not an IPv4 address in the management network")]
    BadGateway(String),
    #[error("the management network /{0} is too small for a lease pool (needs /24 or larger)")]
    NetworkTooSmall(u8),
    #[error("the management address {0} is inside the lease pool (use host .1 to .99 or .250 to .254)")]
    AddressInPool(Ipv4Addr),
    #[error("no interface holds the management address {0}")]
    NoInterface(Ipv4Addr),
    #[error("listing interfaces: {0}")]
    Interfaces(#[from] nix::Error),
    #[error("cerana.zfs_config={0:?}: expected auto or manual")]
    ZfsConfig(String),
    #[error("cerana.etcd_members={0:?}: expected 1, 3 or 5")]
    EtcdMembers(String),
    #[error("cerana.etcd_grace={0:?}: expected seconds from 5 to 3600")]
    EtcdGrace(String),
}

/// What the configuration is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub address: Ipv4Addr,
    pub net: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// `cerana.zfs_config` (auto or manual), passed on too: the cluster's storage policy.
    pub zfs_config: Option<String>,
    /// `cerana.etcd_members` and `cerana.etcd_grace`, passed on: the cluster store's quorum.
    pub etcd_members: Option<u8>,
    pub etcd_grace_secs: Option<u64>,
}

/// The value of `cerana.KEY=` (the last one wins, as init reads it).
pub(crate) fn setting<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().rev().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Bootstrap {
    /// The bootstrap node: its address must lie outside the lease pool it will serve.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, BootstrapError> {
        let b = Self::parse(cmdline)?;
        let [first, last] = b.range();
        if (first..=last).contains(&b.address) {
            return Err(BootstrapError::AddressInPool(b.address));
        }
        Ok(b)
    }

    /// A node that booted from another one (its address came from that node's pool, which the
    /// allocator never hands out as long as it is this server's own).
    pub fn for_replica(cmdline: &str) -> Result<Self, BootstrapError> {
        Self::parse(cmdline)
    }

    fn parse(cmdline: &str) -> Result<Self, BootstrapError> {
        let mgmt = setting(cmdline, "cerana.mgmt_ip").ok_or(BootstrapError::NoMgmtIp)?;
        let bad = |why: String| BootstrapError::BadMgmtIp(mgmt.to_string(), why);
        let (addr, prefix) = mgmt.split_once('/').ok_or_else(|| bad("not ADDRESS/PREFIX".into()))?;
        let address: Ipv4Addr = addr.parse().map_err(|e| bad(format!("{e}")))?;
        let prefix: u8 = prefix.parse().map_err(|e| bad(format!("prefix: {e}")))?;
        if prefix > 24 {
            return Err(BootstrapError::NetworkTooSmall(prefix));
        }
        let bits = u32::MAX << (32 - u32::from(prefix));
        let net = Ipv4Net::new(Ipv4Addr::from(u32::from(address) & bits), prefix).map_err(bad)?;
        let gateway = match setting(cmdline, "cerana.mgmt_gw") {
            None => None,
            Some(g) => Some(
                g.parse().ok().filter(|g| net.contains(*g)).ok_or_else(|| BootstrapError::BadGateway(g.to_string()))?,
            ),
        };
        let b = Bootstrap {
            address,
            net,
            gateway,
            zfs_config: match setting(cmdline, "cerana.zfs_config") {
                None => None,
                Some(v @ ("auto" | "manual")) => Some(v.to_string()),
                Some(other) => return Err(BootstrapError::ZfsConfig(other.to_string())),
            },
            etcd_members: match setting(cmdline, "cerana.etcd_members") {
                None => None,
                Some(v) => Some(
                    v.parse()
                        .ok()
                        .filter(|n| matches!(n, 1 | 3 | 5))
                        .ok_or_else(|| BootstrapError::EtcdMembers(v.into()))?,
                ),
            },
            etcd_grace_secs: match setting(cmdline, "cerana.etcd_grace") {
                None => None,
                Some(v) => Some(
                    v.trim_end_matches('s')
                        .parse()
                        .ok()
                        .filter(|s| (5..=3600).contains(s))
                        .ok_or_else(|| BootstrapError::EtcdGrace(v.into()))?,
                ),
            },
        };
        Ok(b)
    }

    /// Host addresses .100 to .249 of the network.
    pub fn range(&self) -> [Ipv4Addr; 2] {
        let base = u32::from(self.net.network());
        [Ipv4Addr::from(base + 100), Ipv4Addr::from(base + 249)]
    }

    /// The configuration file: this interface, this node's kernel and initrd as image `cerana`,
    /// DHCP as `dhcp` says (the pool is written in every mode, so `boot-dhcp` can switch to full).
    /// `ca_dir`: the cluster CA, on the bootstrap node ([`CLUSTER_CA_DIR`]).
    pub fn config(
        &self,
        interface: &str,
        kernel: &Path,
        initrd: &Path,
        tftp_root: &Path,
        dhcp: DhcpRole,
        issuer: Option<Issuer<'_>>,
    ) -> String {
        let (mode, cluster) = match dhcp {
            DhcpRole::Alone(mode) => (mode, false),
            DhcpRole::Elected => (DhcpMode::Full, true),
        };
        let [first, last] = self.range();
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = format!(
            "# Written by cerana-bootserver bootstrap-config from the kernel command line.\n\
             interface = {}\nserver_ip = \"{}\"\nhttp_port = 80\ntftp_root = {}\nrouter_advertisements = true\n\n\
             [dhcp]\nmode = \"{}\"\ncluster = {cluster}\n[dhcp.pool]\nnet = \"{}/{}\"\nrange = [\"{first}\", \"{last}\"]\nlease_secs = 43200\n",
            quote(interface),
            self.address,
            quote(&tftp_root.display().to_string()),
            match mode {
                DhcpMode::Full => "full",
                DhcpMode::Proxy => "proxy",
                DhcpMode::Off => "off",
            },
            self.net.network(),
            self.net.prefix_len(),
        );
        if let Some(gw) = self.gateway {
            out.push_str(&format!("gateway = \"{gw}\"\n"));
        }
        let top_level = match issuer {
            Some(Issuer::Here(dir)) => Some(format!("ca_dir = {}", quote(&dir.display().to_string()))),
            Some(Issuer::At(server)) => Some(format!("join_server = {}", quote(server))),
            None => None,
        };
        if let Some(line) = top_level {
            // Top-level keys go before the first table.
            out = out.replacen("\n[dhcp]\n", &format!("{line}\n\n[dhcp]\n"), 1);
        }
        // What the booted nodes share with this one: the storage policy and the quorum's size.
        // Never a credential: a boot script is served to whoever asks for it. A node proves
        // itself with the certificate its one-time join token buys.
        let image_cmdline = [
            self.zfs_config.as_deref().map(|z| format!("cerana.zfs_config={z}")),
            self.etcd_members.map(|n| format!("cerana.etcd_members={n}")),
            self.etcd_grace_secs.map(|s| format!("cerana.etcd_grace={s}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        out.push_str(&format!(
            "\n[boot]\ndefault = {{ image = \"cerana\" }}\ncmdline = \"console=ttyS0\"\n\n\
             [images.cerana]\nkernel = {}\ninitrd = {}\ncmdline = {}\n",
            quote(&kernel.display().to_string()),
            quote(&initrd.display().to_string()),
            quote(&image_cmdline),
        ));
        out
    }
}

/// How the server a generated configuration describes runs DHCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpRole {
    /// Always in this mode, with its own lease journal.
    Alone(DhcpMode),
    /// A cluster member: leases in the cluster store, full mode while the cluster elects it
    /// the segment's responder, so the segment keeps DHCP when any one node goes.
    Elected,
}

/// Who issues the certificates of the machines a boot server boots.
#[derive(Debug, Clone, Copy)]
pub enum Issuer<'a> {
    /// This server, with the cluster CA in this directory.
    Here(&'a Path),
    /// The boot server at this base URL; this one records its join tokens in the cluster store.
    At(&'a str),
}

/// Where the bootstrap node's quorum agent links the cluster CA it keeps on the pool.
pub const CLUSTER_CA_DIR: &str = "/run/cerana/ca";

/// The interface holding `address`.
pub fn interface_with(address: Ipv4Addr) -> Result<String, BootstrapError> {
    for ifa in nix::ifaddrs::getifaddrs()? {
        let ip = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|s| s.ip());
        if ip == Some(address) {
            return Ok(ifa.interface_name);
        }
    }
    Err(BootstrapError::NoInterface(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_policy_reaches_the_booted_nodes_and_a_bad_one_is_refused() {
        let line = "cerana.mgmt_ip=10.99.0.2/24 cerana.api_token=abcdefghijklmnop cerana.zfs_config=auto \
            cerana.etcd_members=1 cerana.etcd_grace=20s";
        let text = Bootstrap::from_cmdline(line).unwrap().config(
            "eth0",
            Path::new("/k"),
            Path::new("/i"),
            Path::new("/t"),
            DhcpRole::Alone(DhcpMode::Full),
            None,
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        assert_eq!(
            config.images["cerana"].cmdline, "cerana.zfs_config=auto cerana.etcd_members=1 cerana.etcd_grace=20",
            "the cluster's token stays on the bootstrap node"
        );
        let text = Bootstrap::from_cmdline("cerana.mgmt_ip=10.99.0.2/24").unwrap().config(
            "eth0",
            Path::new("/k"),
            Path::new("/i"),
            Path::new("/t"),
            DhcpRole::Alone(DhcpMode::Full),
            None,
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        assert_eq!(config.images["cerana"].cmdline, "");
        let err = Bootstrap::from_cmdline("cerana.mgmt_ip=10.99.0.2/24 cerana.zfs_config=yes").unwrap_err();
        assert_eq!(err.to_string(), "cerana.zfs_config=\"yes\": expected auto or manual");
        let err = Bootstrap::from_cmdline("cerana.mgmt_ip=10.99.0.2/24 cerana.etcd_members=4").unwrap_err();
        assert_eq!(err.to_string(), "cerana.etcd_members=\"4\": expected 1, 3 or 5");
        let err = Bootstrap::from_cmdline("cerana.mgmt_ip=10.99.0.2/24 cerana.etcd_grace=x;reboot").unwrap_err();
        assert_eq!(err.to_string(), "cerana.etcd_grace=\"x;reboot\": expected seconds from 5 to 3600");
    }

    #[test]
    fn a_replica_may_hold_a_pool_address_and_answers_dhcp_only_when_elected() {
        let line =
            "cerana.boot_server=http://10.99.0.2/ cerana.mgmt_ip=10.99.0.100/24 cerana.api_token=abcdefghijklmnop";
        assert!(matches!(Bootstrap::from_cmdline(line), Err(BootstrapError::AddressInPool(_))));
        let b = Bootstrap::for_replica(line).unwrap();
        let issuer = Some(Issuer::At("http://10.99.0.2"));
        let text = b.config(
            "eth0",
            Path::new("/run/k"),
            Path::new("/run/i"),
            Path::new("/usr/lib/ipxe"),
            DhcpRole::Elected,
            issuer,
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!((config.join_server.as_deref(), config.ca_dir.as_deref()), (Some("http://10.99.0.2"), None));
        assert_eq!((config.dhcp.mode, config.dhcp.cluster), (DhcpMode::Full, true));
        assert!(config.dhcp.pool.is_some());
    }

    #[test]
    fn derives_pool_and_gateway_from_the_command_line() {
        let b = Bootstrap::from_cmdline("console=ttyS0 cerana.cluster_bootstrap cerana.mgmt_ip=10.99.0.2/24 cerana.mgmt_gw=10.99.0.1 cerana.api_token=abcdefghijklmnop").unwrap();
        assert_eq!(b.range(), ["10.99.0.100".parse::<Ipv4Addr>().unwrap(), "10.99.0.249".parse().unwrap()]);
        let ca = Path::new(CLUSTER_CA_DIR);
        let text = b.config(
            "eth0",
            Path::new("/run/k"),
            Path::new("/run/i"),
            Path::new("/usr/lib/ipxe"),
            DhcpRole::Elected,
            Some(Issuer::Here(ca)),
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!((config.dhcp.mode, config.dhcp.cluster), (DhcpMode::Full, true));
        assert_eq!(config.ca_dir.as_deref(), Some(ca));
        assert!(text.contains("gateway = \"10.99.0.1\""));
        assert!(!text.contains("abcdefghijklmnop"), "no credential in what the boot server serves: {text}");
        assert!(text.contains("interface = \"eth0\""));
    }

    #[test]
    fn rejects_missing_bad_or_unusable_addresses() {
        assert!(matches!(Bootstrap::from_cmdline("cerana.cluster_bootstrap"), Err(BootstrapError::NoMgmtIp)));
        assert!(matches!(Bootstrap::from_cmdline("cerana.mgmt_ip=10.0.0.2"), Err(BootstrapError::BadMgmtIp(..))));
        assert!(matches!(Bootstrap::from_cmdline("cerana.mgmt_ip=10.0.0.x/24"), Err(BootstrapError::BadMgmtIp(..))));
        assert!(matches!(
            Bootstrap::from_cmdline("cerana.mgmt_ip=10.0.0.2/28"),
            Err(BootstrapError::NetworkTooSmall(28))
        ));
        assert!(matches!(
            Bootstrap::from_cmdline("cerana.mgmt_ip=10.0.0.120/24"),
            Err(BootstrapError::AddressInPool(_))
        ));
        assert!(matches!(
            Bootstrap::from_cmdline("cerana.mgmt_ip=10.0.0.2/24 cerana.mgmt_gw=10.1.0.1"),
            Err(BootstrapError::BadGateway(_))
        ));
    }

    #[test]
    fn finds_the_loopback_interface_by_address() {
        assert_eq!(interface_with(Ipv4Addr::LOCALHOST).unwrap(), "lo");
    }
}
