//! What bootservers and the nodes they boot exchange over HTTP, outside the Task API: a booted
//! node's check-in, the manifest of an image a node fetches to serve it itself, and the leases one
//! bootserver exports to another (`boot-dhcp` with `import_leases_from`).
//!
//! The upgrade rule of the Task API holds here too: what a server accepts is strict
//! ([`CheckIn`]); what a client receives back ([`ImageManifest`], [`Lease`]) ignores fields a
//! newer bootserver adds.

use crate::tasks::boot::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Longest host name accepted (RFC 1123: 253 characters of labels and dots).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest label of a host name.
pub const MAX_HOSTNAME_LABEL_LEN: usize = 63;

crate::names::validated_name!(
    /// A host name as RFC 1123 writes it: dot-separated labels of 1 to 63 ASCII letters, digits
    /// and inner hyphens, at most 253 characters. Nothing else reaches a bootserver's timeline
    /// (and from there a terminal or a log).
    Hostname,
    HostnameError,
    check_hostname
);

/// Why a string is not a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("host name is longer than {MAX_HOSTNAME_LEN} characters")]
    TooLong,
    #[error(
        "invalid host name {0:?}: dot-separated labels of 1 to {MAX_HOSTNAME_LABEL_LEN} ASCII letters, digits and \
         inner hyphens (RFC 1123)"
    )]
    Grammar(String),
}

fn check_hostname(value: String) -> Result<String, HostnameError> {
    if value.len() > MAX_HOSTNAME_LEN {
        return Err(HostnameError::TooLong);
    }
    let label_ok = |label: &str| {
        (1..=MAX_HOSTNAME_LABEL_LEN).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !value.split('.').all(label_ok) {
        return Err(HostnameError::Grammar(value));
    }
    Ok(value)
}

/// What a booted node posts to a bootserver's `/checkin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub mac: MacAddr,
    #[serde(default)]
    pub hostname: Option<Hostname>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// This node's public key (an uncompressed P-256 point, hex): asks the boot server for a
    /// node certificate from the cluster CA, answered in [`CheckInReply`].
    #[serde(default)]
    pub public_key: Option<String>,
    /// The one-time join token of the boot script this node booted from (`cerana.join_token`),
    /// which a certificate is issued for, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// The machine's SMBIOS UUID, which the join token is bound to when iPXE reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

/// A boot server's answer to a check-in that asked for a certificate (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInReply {
    #[serde(default)]
    pub certificate: Option<String>,
    /// The cluster CA's certificate, which the node trusts from then on.
    #[serde(default)]
    pub ca: Option<String>,
}

/// `GET /images/sha256-<initrd hash>/manifest`: what belongs to an image, named by its initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// `sha256-<hex>` of the kernel.
    pub kernel: String,
    /// `sha256-<hex>` of the initrd.
    pub initrd: String,
    /// The image's own extra command line.
    pub cmdline: String,
}

/// A bound DHCP lease, as `GET /leases` lists them (and a bootserver's lease journal keeps them).
/// Expired leases are kept so the same MAC gets the same address back, until the address is
/// needed for someone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

impl Lease {
    pub fn is_active(&self, now: u64) -> bool {
        self.expires > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_rfc_1123() {
        for good in ["n1", "node-1", "Node-1.lab.example", "1a", &"a".repeat(63), &vec!["a".repeat(63); 3].join(".")] {
            assert_eq!(Hostname::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "-a", "a-", "a..b", ".a", "a.", "a b", "a_b", "a\u{1b}]0;x\u{7}", "ä", &"a".repeat(64)] {
            assert!(matches!(Hostname::new(bad), Err(HostnameError::Grammar(_))), "{bad:?}");
        }
        assert_eq!(Hostname::new(vec!["a".repeat(63); 4].join(".")), Err(HostnameError::TooLong));
    }

    #[test]
    fn what_a_server_accepts_is_strict_and_what_a_client_receives_is_not() {
        let checkin: CheckIn = serde_json::from_str(r#"{"mac":"52:54:00:00:00:01","hostname":"n1"}"#).unwrap();
        assert_eq!(checkin.hostname.as_ref().map(Hostname::as_str), Some("n1"));
        let err =
            serde_json::from_str::<CheckIn>(r#"{"mac":"52:54:00:00:00:01","hostname":"a\u001b[2J"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid host name"), "{err}");
        let err = serde_json::from_str::<CheckIn>(r#"{"mac":"52:54:00:00:00:01","uptime":5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let manifest: ImageManifest =
            serde_json::from_str(r#"{"kernel":"sha256-a","initrd":"sha256-b","cmdline":"","signature":"x"}"#).unwrap();
        assert_eq!(manifest.initrd, "sha256-b");
        let leases: Vec<Lease> =
            serde_json::from_str(r#"[{"mac":"52:54:00:00:00:01","ip":"10.0.0.5","expires":10,"hostname":"n1"}]"#)
                .unwrap();
        assert!(leases[0].is_active(9) && !leases[0].is_active(10));
    }
}
