//! Node certificates at check-in (issue #16): the bootstrap node's boot server signs, with the
//! cluster CA, the public key a node it booted sends when it checks in. Until one-time join
//! tokens (issue #17) bind a certificate to a boot script, a certificate is issued only
//!
//! - to the address this server's DHCP holds an active lease of for the machine's MAC, checking in
//!   from that address;
//! - once per boot: the machine must have fetched a kernel or initrd here since its last one;
//! - naming the host name it reports and that address, nothing the caller picks besides.

use crate::events::EventLog;
use cerana_pki::{ClusterCa, NodePublicKey, PkiError};
use cerana_protocol::boot_wire::{CheckIn, CheckInReply, Lease};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Why no certificate was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The CA is not made yet: ask again later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Failed(String),
}

/// One issuance at a time, so two check-ins of one boot cannot both pass the once-per-boot check.
static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Issues the certificate `checkin` asks for, from `peer`, with the CA in `ca_dir`; `leases` are
/// this server's DHCP leases. The caller
/// records the outcome in the machine's timeline (which the once-per-boot check reads).
pub fn issue(
    ca_dir: &Path,
    events: &EventLog,
    leases: &[Lease],
    peer: IpAddr,
    checkin: &CheckIn,
    public_key: &str,
) -> Result<(String, CheckInReply), Refusal> {
    let key: NodePublicKey = public_key.parse().map_err(|e: PkiError| Refusal::Malformed(e.to_string()))?;
    let Some(name) = &checkin.hostname else {
        return Err(Refusal::Malformed("a node certificate names the node: the check-in needs its hostname".into()));
    };
    let IpAddr::V4(address) = peer else {
        return Err(Refusal::Denied(format!("check-in from {peer}: certificates go to IPv4 DHCP leases")));
    };
    if checkin.ip.is_some_and(|claimed| claimed != address) {
        return Err(Refusal::Denied(format!("check-in from {address} for another address ({:?})", checkin.ip)));
    }
    let _one_at_a_time = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
    let now = crate::events::now_ms() / 1000;
    if !leases.iter().any(|l| l.mac == checkin.mac && l.ip == address && l.is_active(now)) {
        return Err(Refusal::Denied(format!(
            "{address} is not the address this boot server leased to {}",
            checkin.mac
        )));
    }
    if !events.booted_since_certificate(checkin.mac) {
        return Err(Refusal::Denied(format!(
            "{} was issued a certificate since it last fetched its kernel here (one per boot)",
            checkin.mac
        )));
    }
    let ca = match ClusterCa::load(ca_dir) {
        Ok(ca) => ca,
        Err(e @ PkiError::NoCa(_)) => return Err(Refusal::Unavailable(e.to_string())),
        Err(e) => return Err(Refusal::Failed(e.to_string())),
    };
    let addresses = [IpAddr::V4(address), IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let certificate = ca.issue(&key, name.as_str(), &addresses).map_err(|e| match e {
        PkiError::Name(_) => Refusal::Malformed(e.to_string()),
        other => Refusal::Failed(other.to_string()),
    })?;
    let reply = CheckInReply { certificate: Some(certificate), ca: Some(ca.cert_pem().to_string()) };
    Ok((name.as_str().to_string(), reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventSource;
    use cerana_pki::NodeKey;
    use cerana_protocol::boot_wire::Hostname;
    use cerana_protocol::tasks::boot::{BootEventKind, MacAddr};

    const MAC: &str = "52:54:00:c1:00:02";
    const IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

    fn booted(events: &EventLog, mac: MacAddr) {
        events.record(EventSource::Peer(IP.into()), mac, BootEventKind::HttpKernel { hash: "h".into(), bytes: 1 });
    }

    fn leased(mac: MacAddr) -> Vec<Lease> {
        let expires = crate::events::now_ms() / 1000 + 600;
        vec![
            Lease { mac: "52:54:00:c1:00:09".parse().unwrap(), ip: Ipv4Addr::new(10, 99, 0, 9), expires },
            Lease { mac, ip: IP, expires },
        ]
    }

    fn checkin(mac: MacAddr) -> CheckIn {
        CheckIn { mac, hostname: Some(Hostname::new("cerana-node2").unwrap()), ip: Some(IP), public_key: None }
    }

    #[test]
    fn a_node_that_booted_here_gets_one_certificate_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let events = EventLog::new();
        let mac: MacAddr = MAC.parse().unwrap();
        let key = NodeKey::generate().unwrap().public().to_string();
        let leases = leased(mac);
        let ask = |peer: IpAddr, c: &CheckIn| issue(dir.path(), &events, &leases, peer, c, &key);

        let err = ask(IP.into(), &checkin(mac)).unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)), "no kernel fetched here yet: {err}");
        booted(&events, mac);
        let (name, reply) = ask(IP.into(), &checkin(mac)).unwrap();
        assert_eq!(name, "cerana-node2");
        assert_eq!(reply.ca.as_deref(), Some(ca.cert_pem()));
        assert!(reply.certificate.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        events.record(EventSource::Peer(IP.into()), mac, BootEventKind::CertificateIssued { name });

        let err = ask(IP.into(), &checkin(mac)).unwrap_err();
        assert!(err.to_string().contains("one per boot"), "{err}");
        booted(&events, mac);
        ask(IP.into(), &checkin(mac)).expect("a new boot, a new certificate");
    }

    #[test]
    fn other_addresses_machines_and_malformed_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        let events = EventLog::new();
        let mac: MacAddr = MAC.parse().unwrap();
        booted(&events, mac);
        let key = NodeKey::generate().unwrap().public().to_string();
        let leases = leased(mac);
        let ask = |peer: IpAddr, c: &CheckIn, key: &str| issue(dir.path(), &events, &leases, peer, c, key);
        let expired = [Lease { expires: 1, ..leases[1].clone() }];
        let err = issue(dir.path(), &events, &expired, IP.into(), &checkin(mac), &key).unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)), "an expired lease: {err}");

        let other_peer: IpAddr = "10.99.0.101".parse().unwrap();
        assert!(matches!(ask(other_peer, &checkin(mac), &key), Err(Refusal::Denied(_))));
        let other_mac: MacAddr = "52:54:00:c1:00:03".parse().unwrap();
        assert!(matches!(ask(IP.into(), &checkin(other_mac), &key), Err(Refusal::Denied(_))));
        let claims_other = CheckIn { ip: Some(Ipv4Addr::new(10, 99, 0, 7)), ..checkin(mac) };
        assert!(matches!(ask(IP.into(), &claims_other, &key), Err(Refusal::Denied(_))));
        assert!(matches!(ask(IP.into(), &checkin(mac), "04abc"), Err(Refusal::Malformed(_))));
        let nameless = CheckIn { hostname: None, ..checkin(mac) };
        assert!(matches!(ask(IP.into(), &nameless, &key), Err(Refusal::Malformed(_))));
        let no_ca = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(no_ca.path(), &events, &leases, IP.into(), &checkin(mac), &key),
            Err(Refusal::Unavailable(_))
        ));
        // None of that used up the boot's certificate.
        ask(IP.into(), &checkin(mac), &key).unwrap();
    }
}
