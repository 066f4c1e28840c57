//! Node certificates at check-in (issues #16, #17): the bootstrap node's boot server signs, with
//! the cluster CA, the public key a node it booted sends when it checks in. A certificate is
//! issued only
//!
//! - for the one-time join token of a boot script this server served to that machine (MAC and
//!   SMBIOS UUID), unexpired and unspent: it is spent by the issuance ([`JoinTokens`]);
//! - for a token from a boot script: to the address this server's DHCP holds an active lease of
//!   for the machine's MAC, checking in from that address (an operator's token, for a machine
//!   booted from USB or ISO with an address of its own, names the address it checks in from);
//! - naming the host name it reports and that address, nothing the caller picks besides; a
//!   name is one machine's: the first to get a certificate for it keeps it ([`claim_name`]),
//!   and this boot server's own node's name is nobody else's.

use crate::join_tokens::{JoinKind, JoinRefusal, JoinTokens, Redeemer};
use cerana_pki::{ClusterCa, NodePublicKey, PkiError};
use cerana_protocol::boot_wire::{CheckIn, CheckInReply, Lease};
use cerana_protocol::tasks::boot::MacAddr;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Mutex;

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

impl From<JoinRefusal> for Refusal {
    fn from(refusal: JoinRefusal) -> Self {
        match refusal {
            JoinRefusal::Malformed(_) => Refusal::Malformed(refusal.to_string()),
            JoinRefusal::Store(_) => Refusal::Unavailable(refusal.to_string()),
            other => Refusal::Denied(other.to_string()),
        }
    }
}

/// Issues the certificate `checkin` asks for, from `peer`, with the CA in `ca_dir`, spending
/// its join token from `tokens`; `leases` are this server's DHCP leases. The caller records the
/// outcome in the machine's timeline.
pub async fn issue(
    ca_dir: &Path,
    tokens: &JoinTokens,
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
    let now = crate::events::now_ms() / 1000;
    // Checked first without spending it, so a request refused for another reason leaves the
    // token for the real node.
    let who = Redeemer { mac: checkin.mac, uuid: checkin.uuid, public_key };
    let record = tokens.check(checkin.join_token.as_deref(), &who, now).await?;
    if record.kind == JoinKind::BootScript {
        // The address the minting server leased the machine, or else this server's lease.
        match record.address {
            Some(leased) if leased != address => {
                return Err(Refusal::Denied(format!(
                    "join token {} went to {} at {leased}, not at {address}",
                    record.id, checkin.mac
                )))
            }
            Some(_) => {}
            None if leases.iter().any(|l| l.mac == checkin.mac && l.ip == address && l.is_active(now)) => {}
            None => {
                return Err(Refusal::Denied(format!(
                    "{address} is not the address this boot server leased to {}",
                    checkin.mac
                )))
            }
        }
    }
    let ca = match ClusterCa::load(ca_dir) {
        Ok(ca) => ca,
        Err(e @ PkiError::NoCa(_)) => return Err(Refusal::Unavailable(e.to_string())),
        Err(e) => return Err(Refusal::Failed(e.to_string())),
    };
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if name.as_str().eq_ignore_ascii_case(own.trim()) {
        return Err(Refusal::Denied(format!("{name} is the name of this boot server's own node")));
    }
    claim_name(ca_dir, name.as_str(), checkin.mac)?;
    let addresses = [IpAddr::V4(address), IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let certificate = ca.issue(&key, name.as_str(), &addresses).map_err(|e| match e {
        PkiError::Name(_) => Refusal::Malformed(e.to_string()),
        other => Refusal::Failed(other.to_string()),
    })?;
    // Spent only now, and atomically: of two check-ins with one token, one gets a certificate.
    tokens.redeem(checkin.join_token.as_deref(), &who, now).await?;
    let reply = CheckInReply { certificate: Some(certificate), ca: Some(ca.cert_pem().to_string()) };
    Ok((name.as_str().to_string(), reply))
}

/// Which machine each node name was issued to, kept beside the CA (so it lasts as long as the
/// CA does): a node certificate names its node, and peers act on that name.
const NODE_NAMES: &str = "node-names.json";
/// Names remembered; a cluster has far fewer nodes.
const MAX_NODE_NAMES: usize = 4096;
/// Check-ins are handled concurrently; the names file is read and written by one at a time.
static NAMES_LOCK: Mutex<()> = Mutex::new(());

/// Gives `name` to the machine `mac`, unless another machine has it.
pub fn claim_name(ca_dir: &Path, name: &str, mac: MacAddr) -> Result<(), Refusal> {
    let _one_at_a_time = NAMES_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = ca_dir.join(NODE_NAMES);
    let failed = |e: String| Refusal::Failed(format!("{}: {e}", path.display()));
    let mut names: BTreeMap<String, MacAddr> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(failed(e.to_string())),
    };
    let key = name.to_ascii_lowercase();
    match names.get(&key) {
        Some(holder) if *holder == mac => return Ok(()),
        Some(holder) => {
            return Err(Refusal::Denied(format!(
                "the node name {name} is another machine's ({holder}): a certificate names one node"
            )))
        }
        None if names.len() >= MAX_NODE_NAMES => {
            return Err(Refusal::Unavailable(format!("{MAX_NODE_NAMES} node names are taken")))
        }
        None => {}
    }
    names.insert(key, mac);
    let json = serde_json::to_vec_pretty(&names).map_err(|e| failed(e.to_string()))?;
    cerana_pki::write_file(&path, &json, 0o600).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_pki::NodeKey;
    use cerana_protocol::boot_wire::Hostname;

    const MAC: &str = "52:54:00:c1:00:02";
    const IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

    fn leased(mac: MacAddr) -> Vec<Lease> {
        let expires = crate::events::now_ms() / 1000 + 600;
        vec![
            Lease { mac: "52:54:00:c1:00:09".parse().unwrap(), ip: Ipv4Addr::new(10, 99, 0, 9), expires },
            Lease { mac, ip: IP, expires },
        ]
    }

    fn checkin(mac: MacAddr, join_token: &str) -> CheckIn {
        CheckIn {
            mac,
            hostname: Some(Hostname::new("cerana-node2").unwrap()),
            ip: Some(IP),
            public_key: None,
            join_token: Some(join_token.into()),
            uuid: None,
        }
    }

    async fn boot_script_token(tokens: &JoinTokens, mac: MacAddr) -> String {
        tokens.mint(mac, None, None, crate::events::now_ms() / 1000).await.unwrap().reveal()
    }

    #[tokio::test]
    async fn a_node_gets_one_certificate_per_join_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let tokens = JoinTokens::load(None, 600);
        let mac: MacAddr = MAC.parse().unwrap();
        let key = NodeKey::generate().unwrap().public().to_string();
        let leases = leased(mac);
        macro_rules! ask {
            ($peer:expr, $checkin:expr) => {
                issue(dir.path(), &tokens, &leases, $peer, &$checkin, &key).await
            };
        }

        let no_token = CheckIn { join_token: None, ..checkin(mac, "") };
        let err = ask!(IP.into(), no_token).unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)) && err.to_string().contains("join token"), "{err}");
        let token = boot_script_token(&tokens, mac).await;
        let (name, reply) = ask!(IP.into(), checkin(mac, &token)).unwrap();
        assert_eq!(name, "cerana-node2");
        assert_eq!(reply.ca.as_deref(), Some(ca.cert_pem()));
        assert!(reply.certificate.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));

        // The same check-in again (its answer lost) is answered again; another key is a replay.
        ask!(IP.into(), checkin(mac, &token)).expect("the node's own retry");
        let other_key = NodeKey::generate().unwrap().public().to_string();
        let err = issue(dir.path(), &tokens, &leases, IP.into(), &checkin(mac, &token), &other_key).await.unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)) && err.to_string().contains("already used"), "{err}");
        let next_boot = boot_script_token(&tokens, mac).await;
        ask!(IP.into(), checkin(mac, &next_boot)).expect("a new boot, a new token, a new certificate");
    }

    #[tokio::test]
    async fn other_addresses_machines_and_malformed_requests_are_refused_and_spend_nothing() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        let tokens = JoinTokens::load(None, 600);
        let mac: MacAddr = MAC.parse().unwrap();
        let token = boot_script_token(&tokens, mac).await;
        let key = NodeKey::generate().unwrap().public().to_string();
        let leases = leased(mac);
        macro_rules! ask {
            ($peer:expr, $checkin:expr, $key:expr) => {
                issue(dir.path(), &tokens, &leases, $peer, &$checkin, $key).await
            };
        }
        let expired = [Lease { expires: 1, ..leases[1].clone() }];
        let err = issue(dir.path(), &tokens, &expired, IP.into(), &checkin(mac, &token), &key).await.unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)), "an expired lease: {err}");

        let other_peer: IpAddr = "10.99.0.101".parse().unwrap();
        assert!(matches!(ask!(other_peer, checkin(mac, &token), &key), Err(Refusal::Denied(_))));
        let other_mac: MacAddr = "52:54:00:c1:00:03".parse().unwrap();
        let err = ask!(IP.into(), checkin(other_mac, &token), &key).unwrap_err();
        assert!(err.to_string().contains("was minted for 52:54:00:c1:00:02"), "{err}");
        let claims_other = CheckIn { ip: Some(Ipv4Addr::new(10, 99, 0, 7)), ..checkin(mac, &token) };
        assert!(matches!(ask!(IP.into(), claims_other, &key), Err(Refusal::Denied(_))));
        assert!(matches!(ask!(IP.into(), checkin(mac, &token), "04abc"), Err(Refusal::Malformed(_))));
        assert!(matches!(ask!(IP.into(), checkin(mac, "cerana-join-?"), &key), Err(Refusal::Malformed(_))));
        let nameless = CheckIn { hostname: None, ..checkin(mac, &token) };
        assert!(matches!(ask!(IP.into(), nameless, &key), Err(Refusal::Malformed(_))));
        let no_ca = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(no_ca.path(), &tokens, &leases, IP.into(), &checkin(mac, &token), &key).await,
            Err(Refusal::Unavailable(_))
        ));
        // None of that spent the boot's token.
        ask!(IP.into(), checkin(mac, &token), &key).unwrap();

        // An operator's token needs no lease: the certificate names the address checked in from.
        let usb: IpAddr = "10.99.0.50".parse().unwrap();
        let operator = tokens.mint_for_operator(None, 600, crate::events::now_ms() / 1000).await.unwrap().reveal();
        let from_usb = CheckIn { ip: None, ..checkin(other_mac, &operator) };
        let err = ask!(usb, from_usb, &key).unwrap_err();
        assert!(err.to_string().contains("cerana-node2 is another machine's (52:54:00:c1:00:02)"), "{err}");
        let named = Hostname::new("cerana-usb").unwrap();
        let from_usb = CheckIn { hostname: Some(named.clone()), ..from_usb };
        let (name, reply) = ask!(usb, from_usb, &key).expect("an operator's token, and a name of its own");
        assert_eq!(name, "cerana-usb");
        assert!(reply.certificate.is_some());
        let other_key = NodeKey::generate().unwrap().public().to_string();
        let again = ask!(usb, CheckIn { ip: None, hostname: Some(named), ..checkin(other_mac, &operator) }, &other_key)
            .unwrap_err();
        assert!(again.to_string().contains("already used"), "{again}");
    }

    /// A boot script served by one boot server (a replica, with DHCP, no CA) carries a token
    /// the CA's boot server redeems through the store: bound to the address the replica leased,
    /// spent once, and of two redemptions racing at two servers exactly one wins.
    #[tokio::test]
    async fn a_token_minted_at_one_boot_server_is_redeemed_once_at_another() {
        use crate::join_store::MemoryJoinStore;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        let store = Arc::new(MemoryJoinStore::default());
        let replica = JoinTokens::load(None, 600).with_store(store.clone(), false);
        let issuer = JoinTokens::load(None, 600).with_store(store.clone(), true);
        let other_issuer = JoinTokens::load(None, 600).with_store(store.clone(), true);
        let mac: MacAddr = MAC.parse().unwrap();
        let now = crate::events::now_ms() / 1000;
        let token = replica.mint(mac, None, Some(IP), now).await.unwrap().reveal();
        assert_eq!(store.records(), 1);
        // The issuing server holds no lease of the machine: the record's address stands in.
        let (no_leases, key) = (Vec::new(), NodeKey::generate().unwrap().public().to_string());
        let elsewhere: IpAddr = "10.99.0.77".parse().unwrap();
        let moved = CheckIn { ip: None, ..checkin(mac, &token) };
        let err = issue(dir.path(), &issuer, &no_leases, elsewhere, &moved, &key).await.unwrap_err();
        assert!(err.to_string().contains("not at 10.99.0.77"), "{err}");

        let (key_a, key_b) =
            (NodeKey::generate().unwrap().public().to_string(), NodeKey::generate().unwrap().public().to_string());
        let request = checkin(mac, &token);
        let (a, b) = tokio::join!(
            issue(dir.path(), &issuer, &no_leases, IP.into(), &request, &key_a),
            issue(dir.path(), &other_issuer, &no_leases, IP.into(), &request, &key_b),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one of two racing redemptions wins: {a:?} {b:?}");
        let loser = a.err().or(b.err()).unwrap();
        assert!(loser.to_string().contains("already used"), "{loser}");
        // Its own retry is answered at either server; a token nobody minted is unknown.
        let winner = if issuer.check(Some(&token), &Redeemer { mac, uuid: None, public_key: &key_a }, now).await.is_ok()
        {
            key_a
        } else {
            key_b
        };
        issue(dir.path(), &other_issuer, &no_leases, IP.into(), &checkin(mac, &token), &winner).await.unwrap();
        let stray = cerana_credentials::JoinToken::mint().unwrap().reveal();
        let err = issue(dir.path(), &issuer, &no_leases, IP.into(), &checkin(mac, &stray), &key).await.unwrap_err();
        assert!(err.to_string().contains("not minted in this cluster"), "{err}");

        // Without the store: the check-in is asked to come again, and nothing is spent.
        let next = replica.mint(mac, None, Some(IP), now).await.unwrap().reveal();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = issue(dir.path(), &issuer, &no_leases, IP.into(), &checkin(mac, &next), &key).await.unwrap_err();
        assert!(matches!(err, Refusal::Unavailable(_)), "{err}");
        // A replica does not hand out a token only it knows; the CA's server keeps one itself.
        assert!(replica.mint(mac, None, Some(IP), now).await.is_err());
        let local = issuer.mint(mac, None, Some(IP), now).await.unwrap().reveal();
        issue(dir.path(), &issuer, &no_leases, IP.into(), &checkin(mac, &local), &key).await.unwrap();
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        issue(dir.path(), &issuer, &no_leases, IP.into(), &checkin(mac, &next), &key).await.unwrap();
    }
}
