//! What a node's kernel command line says about the quorum.

use std::net::IpAddr;
use std::time::Duration;

/// Why the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("cerana.etcd_members={0:?}: expected 1, 3 or 5")]
    Members(String),
    #[error("cerana.etcd_grace={0:?}: expected seconds from 5 to 3600")]
    Grace(String),
    #[error("cerana.cluster_ips={0:?}: expected comma-separated IP addresses")]
    ClusterIps(String),
    #[error("cerana.mgmt_ip={0:?}: expected ADDRESS/PREFIX")]
    MgmtIp(String),
}

/// The quorum's settings from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineSettings {
    /// `cerana.cluster_bootstrap`: this node may start a new cluster.
    pub bootstrap: bool,
    /// `cerana.cluster_ips`: nodes to ask for the cluster (the boot server writes its own).
    pub seeds: Vec<IpAddr>,
    /// `cerana.mgmt_ip`'s address.
    pub address: Option<IpAddr>,
    /// `cerana.etcd_members`: 1, 3 or 5 voters (default 3).
    pub voters: usize,
    /// `cerana.etcd_grace`: how long a voter may be unreachable before it is replaced.
    pub grace: Duration,
}

pub const DEFAULT_VOTERS: usize = 3;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// The value of `KEY=` (the last one wins, as init reads it); `Some("")` for a bare flag.
fn setting<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().rev().find_map(|w| match w.strip_prefix(key)? {
        "" => Some(""),
        rest => rest.strip_prefix('='),
    })
}

impl CmdlineSettings {
    pub fn parse(cmdline: &str) -> Result<Self, SettingsError> {
        let voters = match setting(cmdline, "cerana.etcd_members") {
            None => DEFAULT_VOTERS,
            Some(v) => match v.parse() {
                Ok(n @ (1 | 3 | 5)) => n,
                _ => return Err(SettingsError::Members(v.into())),
            },
        };
        let grace = match setting(cmdline, "cerana.etcd_grace") {
            None => DEFAULT_GRACE,
            Some(v) => match v.trim_end_matches('s').parse::<u64>() {
                Ok(secs @ 5..=3600) => Duration::from_secs(secs),
                _ => return Err(SettingsError::Grace(v.into())),
            },
        };
        let seeds = match setting(cmdline, "cerana.cluster_ips") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|ip| ip.parse().map_err(|_| SettingsError::ClusterIps(v.into())))
                .collect::<Result<_, _>>()?,
        };
        let address = match setting(cmdline, "cerana.mgmt_ip") {
            None => None,
            Some(v) => Some(
                v.split_once('/').and_then(|(ip, _)| ip.parse().ok()).ok_or_else(|| SettingsError::MgmtIp(v.into()))?,
            ),
        };
        let bootstrap = setting(cmdline, "cerana.cluster_bootstrap").is_some_and(|v| v != "false");
        Ok(Self { bootstrap, seeds, address, voters, grace })
    }
}

/// The source address this host uses toward `peer` (no packet is sent: connecting a UDP
/// socket only picks the route).
pub fn address_toward(peer: IpAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = if peer.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    socket.connect((peer, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values_come_from_the_command_line() {
        let s = CmdlineSettings::parse("console=ttyS0 cerana.mgmt_ip=10.0.0.5/24").unwrap();
        assert_eq!((s.voters, s.grace, s.bootstrap), (3, DEFAULT_GRACE, false));
        assert_eq!(s.address, Some("10.0.0.5".parse().unwrap()));
        let s = CmdlineSettings::parse(
            "cerana.cluster_bootstrap cerana.etcd_members=5 cerana.etcd_grace=20s cerana.cluster_ips=10.0.0.2,10.0.0.3",
        )
        .unwrap();
        assert_eq!((s.voters, s.grace, s.bootstrap), (5, Duration::from_secs(20), true));
        assert_eq!(s.seeds.len(), 2);
        assert!(!CmdlineSettings::parse("cerana.cluster_bootstrap=false").unwrap().bootstrap);
        assert!(!CmdlineSettings::parse("cerana.cluster_bootstrapx").unwrap().bootstrap);
    }

    #[test]
    fn malformed_settings_are_named() {
        for (line, want) in [
            ("cerana.etcd_members=2", "cerana.etcd_members=\"2\": expected 1, 3 or 5"),
            ("cerana.etcd_members=", "cerana.etcd_members=\"\": expected 1, 3 or 5"),
            ("cerana.etcd_grace=1", "cerana.etcd_grace=\"1\": expected seconds from 5 to 3600"),
            ("cerana.etcd_grace=1h", "cerana.etcd_grace=\"1h\": expected seconds from 5 to 3600"),
            (
                "cerana.cluster_ips=10.0.0.1,x",
                "cerana.cluster_ips=\"10.0.0.1,x\": expected comma-separated IP addresses",
            ),
            ("cerana.mgmt_ip=10.0.0.1", "cerana.mgmt_ip=\"10.0.0.1\": expected ADDRESS/PREFIX"),
        ] {
            assert_eq!(CmdlineSettings::parse(line).unwrap_err().to_string(), want, "{line}");
        }
    }

    #[test]
    fn the_route_toward_loopback_starts_on_loopback() {
        assert_eq!(address_toward("127.0.0.1".parse().unwrap()).unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
