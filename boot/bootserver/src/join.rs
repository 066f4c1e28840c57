//! `cerana-bootserver join`, run once on every node that booted from the network: it checks in
//! with the boot server, so its timeline shows the node arrived and the cluster CA issues the
//! node its certificate, keeps a checked copy of the image it booted (self-replication), and
//! writes a configuration that serves that image and takes part in the segment's DHCP election:
//! one member at a time answers, with leases in the cluster store (`cluster_dhcp`); `boot-dhcp`
//! overrides the election.
//!
//! A machine booted from USB or an ISO has no `cerana.initrd_hash` (no boot server chose its
//! image): it only checks in, spending the join token an operator minted for it.

use crate::bootstrap::{self, Bootstrap, BootstrapError, DhcpRole};
use crate::config::{Config, ConfigError};
use crate::replicate::{self, CheckInError, FetchError};
use cerana_protocol::boot_wire::{CheckIn, CheckInReply, Hostname, ImageManifest};
use cerana_protocol::tasks::boot::MacAddr;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the command line has no {0} (this node did not boot from a CeranaOS boot server)")]
    Missing(&'static str),
    #[error("cerana.join_server={0:?} is not http://<IPv4 address>[:port]")]
    BadJoinServer(String),
    #[error("cerana.mgmt_mac={0:?}: {1}")]
    BadMac(String, String),
    #[error(transparent)]
    Address(#[from] BootstrapError),
    #[error("fetching this node's image: {0}")]
    Fetch(#[from] FetchError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the configuration written is not valid: {0}")]
    Config(#[from] ConfigError),
    #[error("making this node's key: {0}")]
    Key(cerana_pki::PkiError),
    #[error("no cerana.mgmt_mac, and the MAC address of {interface} cannot be read: {why}")]
    InterfaceMac { interface: String, why: String },
}

/// What `join` did.
#[derive(Debug, Clone, Serialize)]
pub struct Joined {
    /// The image kept and served, for a node booted from the network.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub served: Option<ServedImage>,
    pub interface: String,
    /// Whether the boot server took the check-in; a failed check-in does not undo the rest.
    pub checked_in: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_in_error: Option<String>,
    /// Where the node certificate the check-in brought was written, if it brought one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
}

/// The copy of its image a network-booted node keeps, and the configuration serving it.
#[derive(Debug, Clone, Serialize)]
pub struct ServedImage {
    pub image_dir: PathBuf,
    pub kernel: String,
    pub initrd: String,
    pub config: PathBuf,
}

/// The values of the command line a joining node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettings {
    pub boot_server: String,
    /// Where the check-in goes for the certificate, when not to the boot server: a boot server
    /// without the cluster CA sends its machines to the one that holds it.
    pub join_server: Option<String>,
    /// The image the boot server chose; none for a machine booted from USB or an ISO.
    pub initrd_hash: Option<String>,
    /// The management NIC's MAC; the address's interface's when the command line has none.
    pub mac: Option<MacAddr>,
    /// The boot script's one-time join token, which the check-in spends on a certificate.
    pub join_token: Option<String>,
    pub replica: Bootstrap,
}

impl JoinSettings {
    pub fn from_cmdline(cmdline: &str) -> Result<Self, JoinError> {
        let get = |key: &'static str| bootstrap::setting(cmdline, key).ok_or(JoinError::Missing(key));
        let boot_server = get("cerana.boot_server")?.trim_end_matches('/').to_string();
        let initrd_hash = bootstrap::setting(cmdline, "cerana.initrd_hash").map(str::to_string);
        let mac = match bootstrap::setting(cmdline, "cerana.mgmt_mac") {
            Some(text) => Some(
                text.parse()
                    .map_err(|e: <MacAddr as std::str::FromStr>::Err| JoinError::BadMac(text.into(), e.to_string()))?,
            ),
            None if initrd_hash.is_some() => return Err(JoinError::Missing("cerana.mgmt_mac")),
            None => None,
        };
        let join_token = bootstrap::setting(cmdline, "cerana.join_token").map(str::to_string);
        let join_server = match bootstrap::setting(cmdline, "cerana.join_server") {
            Some(text) => {
                let server = text.trim_end_matches('/');
                if !crate::config::is_http_base(server) {
                    return Err(JoinError::BadJoinServer(text.to_string()));
                }
                Some(server.to_string())
            }
            None => None,
        };
        Ok(JoinSettings {
            boot_server,
            join_server,
            initrd_hash,
            mac,
            join_token,
            replica: Bootstrap::for_replica(cmdline)?,
        })
    }

    /// The boot server that issues this node's certificate.
    pub fn issuer(&self) -> &str {
        self.join_server.as_deref().unwrap_or(&self.boot_server)
    }
}

/// The machine's SMBIOS UUID, which its join token is bound to (none on a machine without one).
fn smbios_uuid() -> Option<uuid::Uuid> {
    let text = std::fs::read_to_string("/sys/class/dmi/id/product_uuid").ok()?;
    text.trim().parse::<uuid::Uuid>().ok().filter(|u| !u.is_nil())
}

/// Attempts (with doubling pauses from 250 ms, about 30 s in all) before the fetch is given up:
/// the boot server may be busy booting other machines.
const FETCH_ATTEMPTS: u32 = 8;

async fn fetch_with_retries(
    boot_server: &str,
    initrd_hash: &str,
    dest: &Path,
) -> Result<(PathBuf, ImageManifest), FetchError> {
    let mut pause = std::time::Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match replicate::fetch(boot_server, initrd_hash, dest).await {
            // A wrong hash or a malformed one will not get better.
            Err(e @ (FetchError::Http { .. } | FetchError::Io { .. })) if attempt < FETCH_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "fetching this node's image; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(8));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// See the module docs. `dest` receives `<initrd hash>/{vmlinuz,initrd}`.
/// `tls_dir` receives the node's key and the certificate the check-in brings.
pub async fn join(
    cmdline: &str,
    dest: &Path,
    tftp_root: &Path,
    output: &Path,
    tls_dir: &Path,
) -> Result<Joined, JoinError> {
    let settings = JoinSettings::from_cmdline(cmdline)?;
    let interface = bootstrap::interface_with(settings.replica.address)?;
    let mac = match settings.mac {
        Some(mac) => mac,
        None => interface_mac(&interface)?,
    };
    // The check-in first: the node's etcd member and store clients wait for its certificate,
    // and fetching and hashing the image takes a while on a slow machine.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().and_then(|h| Hostname::new(h.trim()).ok());
    // The node's own key: only its public half leaves the node, for the certificate the
    // cluster CA issues at the check-in.
    let key = cerana_pki::NodeKey::generate().map_err(JoinError::Key)?;
    let checkin = CheckIn {
        mac,
        hostname,
        ip: Some(settings.replica.address),
        public_key: Some(key.public().to_string()),
        join_token: settings.join_token.clone(),
        uuid: smbios_uuid(),
    };
    if settings.join_server.is_some() {
        // The boot server that booted it sees it arrive too (its timeline); nothing to redeem there.
        let arrived = CheckIn { public_key: None, join_token: None, ..checkin.clone() };
        if let Err(e) = replicate::check_in(&settings.boot_server, &arrived).await {
            tracing::warn!(error = %e, server = %settings.boot_server, "check-in with the boot server failed");
        }
    }
    let (certificate, check_in_error) = match check_in_with_retries(settings.issuer(), &checkin).await {
        Ok(Some(CheckInReply { certificate: Some(cert), ca: Some(ca) })) => {
            let tls = cerana_pki::NodeTls::new(tls_dir);
            match tls.write(&ca, &key, &cert) {
                Ok(()) => (Some(tls.cert()), None),
                Err(e) => (None, Some(format!("writing this node's certificate: {e}"))),
            }
        }
        Ok(_) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    if let Some(e) = &check_in_error {
        tracing::warn!(error = %e, "check-in with the boot server failed");
    }
    let served = match &settings.initrd_hash {
        Some(hash) => Some(serve_own_image(&settings, hash, &interface, dest, tftp_root, output).await?),
        None => None,
    };
    Ok(Joined { served, interface, checked_in: check_in_error.is_none(), check_in_error, certificate })
}

/// Keeps a checked copy of the image this node booted and writes the configuration serving it.
async fn serve_own_image(
    settings: &JoinSettings,
    initrd_hash: &str,
    interface: &str,
    dest: &Path,
    tftp_root: &Path,
    output: &Path,
) -> Result<ServedImage, JoinError> {
    let (dir, manifest) = fetch_with_retries(&settings.boot_server, initrd_hash, dest).await?;
    // The machines this node boots check in where it did.
    let issuer = Some(crate::bootstrap::Issuer::At(settings.issuer()));
    let text = settings.replica.config(
        interface,
        &dir.join("vmlinuz"),
        &dir.join("initrd"),
        tftp_root,
        DhcpRole::Elected,
        issuer,
    );
    let write_err = |source| JoinError::Write { path: output.to_path_buf(), source };
    // Through a temporary file: a half-written configuration must never be read.
    let tmp = output.with_extension("tmp");
    std::fs::write(&tmp, &text).map_err(write_err)?;
    Config::load(&tmp)?;
    std::fs::rename(&tmp, output).map_err(write_err)?;
    Ok(ServedImage { image_dir: dir, kernel: manifest.kernel, initrd: manifest.initrd, config: output.to_path_buf() })
}

/// The MAC address of a network interface, from sysfs.
fn interface_mac(interface: &str) -> Result<MacAddr, JoinError> {
    let fail = |why: String| JoinError::InterfaceMac { interface: interface.to_string(), why };
    let text =
        std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).map_err(|e| fail(e.to_string()))?;
    text.trim().parse().map_err(|e: <MacAddr as std::str::FromStr>::Err| fail(e.to_string()))
}

/// Attempts of a check-in the boot server answers "later" (503: the cluster CA is not made
/// yet) or cannot be reached, 2 s apart.
const CHECK_IN_ATTEMPTS: u32 = 45;

async fn check_in_with_retries(server: &str, checkin: &CheckIn) -> Result<Option<CheckInReply>, CheckInError> {
    let mut attempt = 1;
    loop {
        match replicate::check_in(server, checkin).await {
            Err(e @ (CheckInError::Refused { status: 503, .. } | CheckInError::Transport(_)))
                if attempt < CHECK_IN_ATTEMPTS =>
            {
                if attempt == 1 {
                    tracing::info!(error = %e, "check-in: asking again");
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "console=ttyS0 cerana.boot_server=http://10.99.0.2/ cerana.cluster_ips=10.99.0.2 \
        cerana.mgmt_mac=52:54:00:c1:00:02 cerana.initrd_hash=sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
        cerana.mgmt_ip=10.99.0.100/24 cerana.api_token=abcdefghijklmnop \
        cerana.join_token=cerana-join-0123456789ab-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn settings_come_from_the_command_line_the_boot_server_wrote() {
        let s = JoinSettings::from_cmdline(LINE).unwrap();
        assert_eq!(s.boot_server, "http://10.99.0.2");
        assert_eq!(s.mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:c1:00:02"));
        assert!(s.initrd_hash.is_some());
        assert_eq!(s.replica.address.to_string(), "10.99.0.100");
        assert!(s.join_token.as_ref().is_some_and(|t| t.starts_with("cerana-join-0123456789ab-")));
        assert_eq!((s.join_server.as_deref(), s.issuer()), (None, "http://10.99.0.2"));
        // Booted by a replica: the certificate comes from the server it names.
        let s = JoinSettings::from_cmdline(&format!("{LINE} cerana.join_server=http://10.99.0.1/")).unwrap();
        assert_eq!((s.boot_server.as_str(), s.issuer()), ("http://10.99.0.2", "http://10.99.0.1"));
        for bad in ["https://10.99.0.1/", "http://evil.example/", "http://10.99.0.1/x", "http://10.99.0.1:0"] {
            let err = JoinSettings::from_cmdline(&format!("{LINE} cerana.join_server={bad}")).unwrap_err();
            assert!(matches!(err, JoinError::BadJoinServer(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_node_not_booted_from_the_network_is_told_so() {
        let err = JoinSettings::from_cmdline("console=ttyS0 cerana.mgmt_ip=10.99.0.100/24").unwrap_err();
        assert!(matches!(err, JoinError::Missing("cerana.boot_server")), "{err}");
        let err = JoinSettings::from_cmdline(&LINE.replace("52:54:00:c1:00:02", "52:54:zz")).unwrap_err();
        assert!(matches!(err, JoinError::BadMac(..)), "{err}");
        let err = JoinSettings::from_cmdline(&LINE.replace("cerana.mgmt_mac=52:54:00:c1:00:02", "")).unwrap_err();
        assert!(matches!(err, JoinError::Missing("cerana.mgmt_mac")), "a network boot names its NIC: {err}");
    }

    #[test]
    fn a_machine_booted_from_usb_checks_in_with_an_operators_token_only() {
        let line = "console=ttyS0 cerana.boot_server=http://10.99.0.2/ cerana.cluster_ips=10.99.0.2 \
            cerana.mgmt_ip=10.99.0.150/24 cerana.join_token=cerana-join-0123456789ab-00";
        let s = JoinSettings::from_cmdline(line).unwrap();
        assert_eq!((s.initrd_hash, s.mac), (None, None), "no image to keep; the MAC comes from the interface");
        assert_eq!(s.join_token.as_deref(), Some("cerana-join-0123456789ab-00"));
    }
}
