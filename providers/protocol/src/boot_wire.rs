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

/// What a booted node posts to a bootserver's `/checkin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub mac: MacAddr,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
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
    fn what_a_server_accepts_is_strict_and_what_a_client_receives_is_not() {
        let checkin: CheckIn = serde_json::from_str(r#"{"mac":"52:54:00:00:00:01","hostname":"n1"}"#).unwrap();
        assert_eq!(checkin.hostname.as_deref(), Some("n1"));
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
