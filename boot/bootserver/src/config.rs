//! The bootserver's configuration file (TOML), strictly typed.

use cerana_protocol::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// An IPv4 network `a.b.c.d/len` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is more than 32"));
        }
        let net = Ipv4Net { addr, prefix };
        if u32::from(addr) & !net.mask_bits() != 0 {
            return Err(format!("{addr}/{prefix} has host bits set"));
        }
        Ok(net)
    }

    fn mask_bits(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask_bits())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask_bits() == u32::from(self.addr)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: prefix: {e}"))?;
        Ipv4Net::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The one interface DHCP, TFTP and router advertisements are bound to (SO_BINDTODEVICE).
    pub interface: String,
    /// Address announced to clients; the interface's first IPv4 address when absent.
    #[serde(default)]
    pub server_ip: Option<Ipv4Addr>,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Directory served read-only over TFTP (the iPXE binaries).
    #[serde(default = "default_tftp_root")]
    pub tftp_root: PathBuf,
    /// Where leases persist; in memory only when absent.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Send IPv6 router advertisements (no prefix, no flags) so iPXE does not wait for IPv6.
    #[serde(default = "default_true")]
    pub router_advertisements: bool,
    pub dhcp: DhcpConfig,
    #[serde(default)]
    pub boot: BootConfig,
    #[serde(default)]
    pub images: BTreeMap<String, ImageConfig>,
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
    #[serde(default)]
    pub http_limits: HttpLimits,
    #[serde(default)]
    pub tftp_limits: TftpLimits,
    /// The cluster CA (`ca.key`, `ca.crt`) that signs the certificates of the nodes checking
    /// in; without it, check-ins get no certificate.
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    /// A server without the CA: the boot server that issues the certificates
    /// (`http://<address>[:port]`). Its boot scripts send the machines' check-ins there
    /// (`cerana.join_server`), with join tokens recorded in the cluster store.
    #[serde(default)]
    pub join_server: Option<String>,
    /// How long the one-time join token in each boot script stays valid (with a CA only).
    #[serde(default = "default_join_token_ttl_secs")]
    pub join_token_ttl_secs: u64,
}

/// `http://<IPv4>[:port]`, nothing more: it goes into kernel command lines.
pub fn is_http_base(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("http://") else { return false };
    let (host, port) = rest.split_once(':').unwrap_or((rest, "80"));
    host.parse::<std::net::Ipv4Addr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn default_join_token_ttl_secs() -> u64 {
    600
}

fn default_http_port() -> u16 {
    80
}
fn default_tftp_root() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DhcpMode {
    /// Hand out addresses from the pool, with boot information.
    Full,
    /// Another server hands out addresses; answer PXE clients with boot information only.
    Proxy,
    /// No DHCP at all (TFTP and HTTP only).
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    /// Required in full mode.
    #[serde(default)]
    pub pool: Option<PoolConfig>,
    /// Leases in the cluster store, and full mode only while the cluster elects this server
    /// the segment's responder (needs `mode = "full"` and the node's coordinator).
    #[serde(default)]
    pub cluster: bool,
}

/// The address pool of full mode (the cluster's DHCP config `{net, gateway, dns[], duration}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub net: Ipv4Net,
    /// First and last address handed out (inclusive).
    pub range: [Ipv4Addr; 2],
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
}

fn default_lease_secs() -> u32 {
    12 * 3600
}

/// What the server tells machines to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// For machines not listed in `machines`.
    #[serde(default = "default_action")]
    pub default: BootAction,
    /// `cerana.cluster_ips=`; the server's own address when empty.
    #[serde(default)]
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Appended to every kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// TFTP file for BIOS PXE ROMs (option 93 = 0).
    #[serde(default = "default_bios_bootfile")]
    pub bios_bootfile: String,
    /// TFTP file for UEFI x86-64 PXE (option 93 = 7 or 9).
    #[serde(default = "default_uefi_bootfile")]
    pub uefi_bootfile: String,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            default: default_action(),
            cluster_ips: Vec::new(),
            cmdline: default_cmdline(),
            bios_bootfile: default_bios_bootfile(),
            uefi_bootfile: default_uefi_bootfile(),
        }
    }
}

fn default_action() -> BootAction {
    BootAction::Image("cerana".to_string())
}
fn default_cmdline() -> String {
    "console=ttyS0".to_string()
}
fn default_bios_bootfile() -> String {
    "undionly.kpxe".to_string()
}
fn default_uefi_bootfile() -> String {
    "snponly.efi".to_string()
}

/// `"disk"` (iPXE `exit`, the firmware goes on to the next boot device) or `{ image = "NAME" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootAction {
    Disk,
    Image(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Added to the kernel command line of machines booting this image.
    #[serde(default)]
    pub cmdline: String,
}

/// A decision for one machine, matched by MAC or by SMBIOS UUID (sent by iPXE as `${uuid}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    pub boot: BootAction,
    /// Added to this machine's kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// Bounds on HTTP clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// A client has this long to send its request head.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Largest request head, bytes (at least 8192).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body (check-ins), bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A request body must arrive within this time.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// A connection is closed after this long, whatever it does.
    #[serde(default = "default_connection_secs")]
    pub max_connection_secs: u64,
    /// Connections served at once (lowered at start to fit the descriptor limit); more wait in
    /// the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one source address may hold, well below `max_connections`, so one client
    /// cannot take the slots every other machine needs for its kernel; more are answered 503
    /// and closed at once.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout_secs: default_header_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            body_timeout_secs: default_body_timeout(),
            max_connection_secs: default_connection_secs(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}
fn default_body_timeout() -> u64 {
    10
}
fn default_connection_secs() -> u64 {
    1800
}
fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_source() -> usize {
    16
}

/// Bounds on TFTP peers (UDP: a request's sender is unverified until it acknowledges).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpLimits {
    /// Transfers at once, in all; more are refused with a TFTP error.
    #[serde(default = "default_tftp_max_transfers")]
    pub max_transfers: usize,
    /// Transfers at once from one address.
    #[serde(default = "default_tftp_max_transfers_per_source")]
    pub max_transfers_per_source: usize,
    /// Largest block (`blksize`, RFC 2348) granted: an Ethernet frame's UDP payload, so blocks are
    /// not fragmented.
    #[serde(default = "default_tftp_max_block_size")]
    pub max_block_size: u16,
    /// Largest window (`windowsize`, RFC 7440) granted, in blocks.
    #[serde(default = "default_tftp_max_window")]
    pub max_window: u16,
    /// Seconds before an unacknowledged OACK or window is sent again (a client's `timeout`
    /// option is not granted).
    #[serde(default = "default_tftp_timeout")]
    pub timeout_secs: u64,
    /// Times an OACK or window is sent again before the transfer is given up.
    #[serde(default = "default_tftp_max_retries")]
    pub max_retries: u32,
    /// A transfer is ended after this long, whatever it does.
    #[serde(default = "default_tftp_max_transfer_secs")]
    pub max_transfer_secs: u64,
}

impl Default for TftpLimits {
    fn default() -> Self {
        TftpLimits {
            max_transfers: default_tftp_max_transfers(),
            max_transfers_per_source: default_tftp_max_transfers_per_source(),
            max_block_size: default_tftp_max_block_size(),
            max_window: default_tftp_max_window(),
            timeout_secs: default_tftp_timeout(),
            max_retries: default_tftp_max_retries(),
            max_transfer_secs: default_tftp_max_transfer_secs(),
        }
    }
}

fn default_tftp_max_transfers() -> usize {
    64
}
fn default_tftp_max_transfers_per_source() -> usize {
    4
}
fn default_tftp_max_block_size() -> u16 {
    1468
}
fn default_tftp_max_window() -> u16 {
    64
}
fn default_tftp_timeout() -> u64 {
    3
}
fn default_tftp_max_retries() -> u32 {
    5
}
fn default_tftp_max_transfer_secs() -> u64 {
    1800
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: the pool is consistent, every referenced image exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.interface.is_empty() || self.interface.len() >= libc::IFNAMSIZ || self.interface.contains('/') {
            return invalid(format!("interface name {:?} is not a valid Linux interface name", self.interface));
        }
        if self.dhcp.cluster && self.dhcp.mode != DhcpMode::Full {
            return invalid(
                "dhcp.cluster = true answers in full mode when elected: it needs dhcp.mode = \"full\"".into(),
            );
        }
        match (&self.dhcp.mode, &self.dhcp.pool) {
            (DhcpMode::Full, None) => return invalid("dhcp.mode = \"full\" needs a [dhcp.pool]".into()),
            (_, Some(pool)) => {
                let [first, last] = pool.range;
                if !pool.net.contains(first) || !pool.net.contains(last) {
                    return invalid(format!("pool range {first}-{last} is not inside {}", pool.net));
                }
                if u32::from(first) > u32::from(last) {
                    return invalid(format!("pool range {first}-{last} is reversed"));
                }
                if pool.lease_secs < 60 {
                    return invalid(format!("lease_secs {} is below 60", pool.lease_secs));
                }
                if let Some(gw) = pool.gateway {
                    if !pool.net.contains(gw) {
                        return invalid(format!("gateway {gw} is not inside {}", pool.net));
                    }
                }
            }
            _ => {}
        }
        if let Some(server) = &self.join_server {
            if self.ca_dir.is_some() {
                return invalid(
                    "join_server is for a server without ca_dir: one that holds the CA issues itself".into(),
                );
            }
            if !is_http_base(server) {
                return invalid(format!("join_server {server:?} is not http://<IPv4 address>[:port]"));
            }
        }
        if !(30..=86_400).contains(&self.join_token_ttl_secs) {
            return invalid(format!("join_token_ttl_secs {} is not from 30 to 86400", self.join_token_ttl_secs));
        }
        let known = |action: &BootAction| match action {
            BootAction::Disk => true,
            BootAction::Image(name) => self.images.contains_key(name),
        };
        if !known(&self.boot.default) && !self.images.is_empty() {
            return invalid(format!("boot.default names an image that is not in [images]: {:?}", self.boot.default));
        }
        for (i, m) in self.machines.iter().enumerate() {
            if m.mac.is_none() && m.uuid.is_none() {
                return invalid(format!("machines[{i}] has neither mac nor uuid"));
            }
            if !known(&m.boot) {
                return invalid(format!("machines[{i}] boots image {:?}, which is not in [images]", m.boot));
            }
        }
        for name in self.images.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return invalid(format!("image name {name:?} must be letters, digits, '-', '_' or '.'"));
            }
        }
        for file in [&self.boot.bios_bootfile, &self.boot.uefi_bootfile] {
            if file.is_empty() || file.len() > 127 {
                return invalid(format!("boot file name {file:?} must be 1..127 bytes (DHCP file field)"));
            }
        }
        if self.http_limits.max_header_bytes < 8192 {
            return invalid("http_limits.max_header_bytes must be at least 8192".into());
        }
        let tftp = &self.tftp_limits;
        if !(512..=65464).contains(&tftp.max_block_size) {
            return invalid("tftp_limits.max_block_size must be 512..=65464 (RFC 2348)".into());
        }
        if tftp.max_window == 0 || tftp.max_transfers == 0 || tftp.max_transfers_per_source == 0 {
            return invalid(
                "tftp_limits.max_window, max_transfers and max_transfers_per_source must be at least 1".into(),
            );
        }
        if tftp.timeout_secs == 0 || tftp.max_transfer_secs == 0 {
            return invalid("tftp_limits.timeout_secs and max_transfer_secs must be at least 1".into());
        }
        let http = &self.http_limits;
        if http.max_connections_per_source == 0 || http.max_connections_per_source >= http.max_connections {
            return invalid(format!(
                "http_limits.max_connections_per_source must be at least 1 and below max_connections ({})",
                http.max_connections
            ));
        }
        Ok(())
    }

    /// The decision for a machine: the first entry matching its MAC, then its UUID, else the default.
    pub fn decide(&self, mac: Option<MacAddr>, uuid: Option<uuid::Uuid>) -> (&BootAction, &str) {
        let by_mac = mac.and_then(|mac| self.machines.iter().find(|m| m.mac == Some(mac)));
        let by_uuid = || uuid.and_then(|u| self.machines.iter().find(|m| m.uuid == Some(u)));
        match by_mac.or_else(by_uuid) {
            Some(m) => (&m.boot, m.cmdline.as_str()),
            None => (&self.boot.default, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
interface = "mgmt0"
[dhcp]
mode = "full"
[dhcp.pool]
net = "10.9.0.0/24"
range = ["10.9.0.100", "10.9.0.200"]
gateway = "10.9.0.1"
dns = ["10.9.0.1"]
lease_secs = 3600
[images.cerana]
kernel = "/k"
initrd = "/i"
[[machines]]
mac = "52:54:00:00:00:02"
boot = "disk"
[[machines]]
uuid = "4c4c4544-0000-1000-8000-000000000001"
boot = { image = "cerana" }
cmdline = "cerana.rescue"
"#;

    #[test]
    fn parses_and_decides() {
        let c: Config = toml::from_str(SAMPLE).unwrap();
        c.validate().unwrap();
        let mac2: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(c.decide(Some(mac2), None).0, &BootAction::Disk);
        let u: uuid::Uuid = "4c4c4544-0000-1000-8000-000000000001".parse().unwrap();
        let (action, extra) = c.decide(Some("52:54:00:00:00:09".parse().unwrap()), Some(u));
        assert_eq!((action, extra), (&BootAction::Image("cerana".into()), "cerana.rescue"));
        assert_eq!(c.decide(None, None).0, &BootAction::Image("cerana".into()));
        assert_eq!(c.http_port, 80);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<Config>(&SAMPLE.replace("lease_secs", "lease_seconds")).is_err());
        assert!(toml::from_str::<Config>(&SAMPLE.replace("52:54:00:00:00:02", "52:54:00:00:02")).is_err());
        assert!(toml::from_str::<Config>(&SAMPLE.replace("10.9.0.0/24", "10.9.0.1/24")).is_err());
        let c: Config = toml::from_str(&SAMPLE.replace("10.9.0.200", "10.9.1.200")).unwrap();
        assert!(c.validate().is_err());
        let c: Config =
            toml::from_str(&SAMPLE.replace("boot = { image = \"cerana\" }", "boot = { image = \"nope\" }")).unwrap();
        assert!(c.validate().is_err());
        let c: Config =
            toml::from_str(&format!("{SAMPLE}[http_limits]\nmax_connections = 8\nmax_connections_per_source = 8\n"))
                .unwrap();
        assert!(c.validate().is_err());
        let clustered = SAMPLE.replace("mode = \"full\"", "mode = \"full\"\ncluster = true");
        toml::from_str::<Config>(&clustered).unwrap().validate().unwrap();
        let c: Config = toml::from_str(&clustered.replace("mode = \"full\"", "mode = \"proxy\"")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("dhcp.cluster = true"), "{err}");
    }

    #[test]
    fn ipv4net_math() {
        let n: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.255.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 1, 255, 255));
        assert!("10.1.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().contains(Ipv4Addr::BROADCAST));
    }
}
