//! Tasks of the bootserver (`boot-*`): what happened while machines booted from this node.
//!
//! The bootserver keeps, per MAC address, a bounded timeline of [`BootEvent`]s (DHCP exchange,
//! TFTP transfers, HTTP script/kernel/initrd downloads, the node's own check-in). `boot-events`
//! returns that timeline, `boot-machines` one summary line per machine, so an operator sees
//! where a machine's boot stopped.

use crate::task::NoArgs;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

crate::declare_tasks! {
    BootEvents = "boot-events", Read, "Boot timeline (DHCP, TFTP, HTTP, check-in) of one machine or all, kept by this node's bootserver", BootEventsArgs => BootEventsResult;
    BootMachines = "boot-machines", Read, "One line per machine this node's bootserver has seen: address, furthest boot stage, last seen", NoArgs => BootMachinesResult;
    BootDhcp = "boot-dhcp", Write, "Switches this node's DHCP server to full, proxy or off (one DHCP server per segment; overrides the cluster's election), optionally importing another server's leases, or back to the election (cluster)", BootDhcpArgs => BootDhcpResult;
    BootJoinTokenCreate = "boot-join-token-create", Admin, "Mints a one-time join token for a machine that does not boot from the network (USB, ISO): with it, the machine checks in with this node's boot server for its node certificate", JoinTokenCreateArgs => JoinTokenCreated;
}

/// Lifetimes `boot-join-token-create` accepts, in seconds: a minute to a day.
pub const JOIN_TOKEN_TTL_SECONDS: std::ops::RangeInclusive<u64> = 60..=86_400;

fn default_join_token_ttl() -> u64 {
    600
}

/// Arguments of `boot-join-token-create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreateArgs {
    /// Lifetime in seconds (default 600), within [`JOIN_TOKEN_TTL_SECONDS`].
    #[serde(default = "default_join_token_ttl")]
    pub ttl_seconds: u64,
    /// Binds the token to this machine's MAC address; any machine may spend it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

impl JoinTokenCreateArgs {
    pub fn validate(&self) -> Result<(), String> {
        if !JOIN_TOKEN_TTL_SECONDS.contains(&self.ttl_seconds) {
            let (lo, hi) = (JOIN_TOKEN_TTL_SECONDS.start(), JOIN_TOKEN_TTL_SECONDS.end());
            return Err(format!("ttl_seconds: {} is outside {lo}..={hi}", self.ttl_seconds));
        }
        Ok(())
    }
}

/// The minted join token: `token` is the only copy of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenCreated {
    pub id: crate::tasks::auth::TokenId,
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// What to add to the machine's kernel command line (`cerana.boot_server=...
    /// cerana.join_token=...`, and `cerana.mgmt_mac` when bound to a MAC), next to its
    /// `cerana.mgmt_ip`.
    pub cmdline: String,
}

/// An Ethernet MAC address; parsed from `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (any case),
/// always printed lower-case with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets separated by ':' or '-'")]
pub struct MacAddrError {
    pub input: String,
}

impl MacAddr {
    /// The MAC from a DHCP `chaddr` field, if it holds exactly six bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrError { input: s.to_string() };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Arguments of `boot-events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootEventsArgs {
    /// Only this machine; all machines when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// At most this many of the newest events (per machine).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Result of `boot-events`, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootEventsResult {
    pub events: Vec<BootEvent>,
}

/// How a bootserver answers DHCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDhcpMode {
    /// Addresses from the pool, with boot information.
    Full,
    /// Boot information only; another server hands out addresses.
    Proxy,
    /// No DHCP (HTTP and TFTP still serve).
    Off,
    /// Whatever the cluster's election of the segment's responder says (full while this node
    /// is elected, off otherwise): the end of an override.
    Cluster,
}

/// Arguments of `boot-dhcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDhcpArgs {
    pub mode: BootDhcpMode,
    /// Another bootserver (`http://host[:port]`) whose active leases are imported before full
    /// mode starts, so addresses it handed out are not given again.
    #[serde(default)]
    pub import_leases_from: Option<String>,
}

/// Result of `boot-dhcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDhcpResult {
    pub previous: BootDhcpMode,
    pub mode: BootDhcpMode,
    /// Active leases inside this server's pool taken from `import_leases_from`.
    pub imported_leases: u32,
}

/// Result of `boot-machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootMachinesResult {
    pub machines: Vec<BootMachine>,
}

/// What the bootserver knows about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootMachine {
    pub mac: MacAddr,
    /// Address last offered or acknowledged.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The furthest stage the machine reached.
    pub stage: BootStage,
    /// Milliseconds since the Unix epoch of the machine's first and newest event.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Events recorded (including ones dropped from the bounded timeline).
    pub events: u64,
}

/// Stages of a network boot, in the order a successful boot passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootStage {
    Dhcp,
    Leased,
    Firmware,
    Script,
    Kernel,
    Initrd,
    CheckedIn,
}

/// One step of a machine's boot: a result (of `boot-events`), so fields a newer bootserver adds
/// are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub mac: MacAddr,
    #[serde(flatten)]
    pub kind: BootEventKind,
}

/// Which client sent a DHCP request, as far as the server can tell.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DhcpClientInfo {
    /// Option 93 (client system architecture), e.g. 0 = BIOS, 7/9 = UEFI x86-64.
    #[serde(default)]
    pub arch: Option<u16>,
    /// The client said it is iPXE (option 77 user class).
    #[serde(default)]
    pub ipxe: bool,
    /// The client is a PXE ROM (option 60 starts with `PXEClient`).
    #[serde(default)]
    pub pxe: bool,
    /// Relay agent address (giaddr) when the request was relayed.
    #[serde(default)]
    pub relay: Option<Ipv4Addr>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BootEventKind {
    DhcpDiscover {
        client: DhcpClientInfo,
    },
    DhcpOffer {
        /// None for a proxyDHCP offer (boot information only).
        ip: Option<Ipv4Addr>,
        bootfile: Option<String>,
    },
    DhcpRequest {
        client: DhcpClientInfo,
        ip: Option<Ipv4Addr>,
    },
    DhcpAck {
        ip: Option<Ipv4Addr>,
        bootfile: Option<String>,
        lease_secs: Option<u32>,
    },
    DhcpNak {
        reason: String,
    },
    DhcpRelease {
        ip: Ipv4Addr,
    },
    DhcpDecline {
        ip: Option<Ipv4Addr>,
    },
    /// No offer was possible (pool exhausted, unsupported architecture, ...).
    DhcpIgnored {
        reason: String,
    },
    TftpFile {
        path: String,
        bytes: u64,
        /// The whole file was read by the client.
        complete: bool,
    },
    TftpRefused {
        path: String,
        reason: String,
    },
    HttpScript {
        /// Image the script boots, or None for "boot from disk".
        image: Option<String>,
    },
    HttpKernel {
        hash: String,
        bytes: u64,
    },
    HttpInitrd {
        hash: String,
        bytes: u64,
    },
    /// The booted node reported in (`POST /checkin`).
    CheckedIn {
        #[serde(default)]
        hostname: Option<String>,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
    },
    /// The cluster CA issued the node a certificate at its check-in.
    CertificateIssued {
        name: String,
    },
    /// A certificate asked for at a check-in was refused, and why.
    CertificateRefused {
        reason: String,
    },
}

impl BootEventKind {
    /// The stage this event shows the machine has reached.
    pub fn stage(&self) -> BootStage {
        match self {
            BootEventKind::DhcpDiscover { .. }
            | BootEventKind::DhcpOffer { .. }
            | BootEventKind::DhcpRequest { .. }
            | BootEventKind::DhcpNak { .. }
            | BootEventKind::DhcpRelease { .. }
            | BootEventKind::DhcpDecline { .. }
            | BootEventKind::DhcpIgnored { .. } => BootStage::Dhcp,
            BootEventKind::DhcpAck { .. } => BootStage::Leased,
            BootEventKind::TftpFile { .. } | BootEventKind::TftpRefused { .. } => BootStage::Firmware,
            BootEventKind::HttpScript { .. } => BootStage::Script,
            BootEventKind::HttpKernel { .. } => BootStage::Kernel,
            BootEventKind::HttpInitrd { .. } => BootStage::Initrd,
            BootEventKind::CheckedIn { .. }
            | BootEventKind::CertificateIssued { .. }
            | BootEventKind::CertificateRefused { .. } => BootStage::CheckedIn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_both_separators_and_prints_canonically() {
        let mac: MacAddr = "52-54-00-AB-cd-0F".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52:54:00:ab:cd:0f".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn mac_rejects_bad_input() {
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "5:54:00:ab:cd:0f", "zz:54:00:ab:cd:0f", "52:54-00:ab:cd:0f"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn event_json_shape() {
        let ev = BootEvent {
            at_ms: 5,
            mac: MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            kind: BootEventKind::TftpFile { path: "undionly.kpxe".into(), bytes: 10, complete: true },
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["event"], "tftp_file");
        assert_eq!(json["mac"], "52:54:00:01:02:03");
        let back: BootEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
        assert!(serde_json::from_str::<BootEventsArgs>(r#"{"mac":"x"}"#).is_err());
        assert!(serde_json::from_str::<BootEventsArgs>(r#"{"bogus":1}"#).is_err());
    }
}
