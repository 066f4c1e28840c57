//! The cluster's certificates (issue #16): one CA per cluster, made by the bootstrap node on its
//! first boot and kept on its pool, and one certificate per node, issued for a key the node made
//! itself (the private key never leaves the node). A node certificate names the node (DNS name
//! and common name) and its addresses, and serves both ends of mutual TLS: etcd's peer and client
//! traffic, and the store clients on the node.
//!
//! Files: a CA directory holds `ca.key` (0600) and `ca.crt`; a node's TLS directory holds
//! `ca.crt`, `node.key` (0600) and `node.crt`, the last written last, so a directory with
//! `node.crt` is complete.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// How long a node certificate is valid. Nodes get a new one at every boot; renewal of a node
/// that runs longer comes with the node identity issue (#17).
pub const NODE_CERT_DAYS: i64 = 365;
const CA_YEARS: i64 = 20;
/// Clocks of nodes that just booted may lag the issuer's.
const CLOCK_SKEW: Duration = Duration::hours(1);
const CA_NAME: &str = "Cerana cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the cluster CA is not in {} (the bootstrap node makes it on its first boot)", .0.display())]
    NoCa(PathBuf),
    #[error("{}: not a usable key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("public key: {0}")]
    PublicKey(&'static str),
    #[error("node name {0:?}: expected a host name (letters, digits, '-' and '.', at most 253)")]
    Name(String),
    #[error("making a certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// Writes `data` to `path` through a temporary file (fsynced) and a rename, with `mode`: a
/// reader sees the old file or the whole new one. Also for the other secrets and records kept
/// beside the CA.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(data).and_then(|()| file.sync_all()).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error(dir))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The CA's parameters: the same every time, so the CA loaded from its key signs certificates
/// whose issuer name and key identifier match the `ca.crt` made with it.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    key: KeyPair,
    issuer: Certificate,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// The CA in `dir`; [`PkiError::NoCa`] when it has not been made (yet).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (key_path, cert_path) = (dir.join(CA_KEY), dir.join(CA_CERT));
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PkiError::NoCa(dir.to_path_buf())),
            Err(e) => Err(PkiError::Io { path: path.to_path_buf(), source: e }),
        };
        let (key_pem, cert_pem) = (read(&key_path)?, read(&cert_path)?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::BadKey { path: key_path.clone(), reason: e.to_string() })?;
        let issuer = ca_params().self_signed(&key)?;
        Ok(Self { key, issuer, cert_pem })
    }

    /// The CA in `dir`, made there first when there is none. Two callers racing both end with
    /// the one CA that was written first.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        match Self::load(dir) {
            Err(PkiError::NoCa(_)) => {}
            other => return other,
        }
        create_dir(dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params();
        params.not_before = now() - CLOCK_SKEW;
        params.not_after = now() + Duration::days(365 * CA_YEARS);
        let cert_pem = params.self_signed(&key)?.pem();
        let key_path = dir.join(CA_KEY);
        let key_tmp = key_path.with_extension(format!("tmp-{}", std::process::id()));
        write_file(&key_tmp, key.serialize_pem().as_bytes(), 0o600)?;
        // The key's name is taken with a hard link, which fails when another CA's key is there.
        let linked = std::fs::hard_link(&key_tmp, &key_path);
        let _ = std::fs::remove_file(&key_tmp);
        match linked {
            Ok(()) => write_file(&dir.join(CA_CERT), cert_pem.as_bytes(), 0o644)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load(dir),
            Err(e) => return Err(PkiError::Io { path: key_path, source: e }),
        }
        Self::load(dir)
    }

    /// The CA's certificate (PEM): what every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `node`'s `key`, naming `node` and `addresses`, for TLS servers and
    /// clients alike (PEM).
    pub fn issue(&self, key: &NodePublicKey, node: &str, addresses: &[IpAddr]) -> Result<String, PkiError> {
        check_node_name(node)?;
        let mut params = CertificateParams::new(vec![node.to_string()])?;
        params.subject_alt_names.extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(DnType::CommonName, node);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now() - CLOCK_SKEW;
        params.not_after = now() + Duration::days(NODE_CERT_DAYS);
        Ok(params.signed_by(key, &self.issuer, &self.key)?.pem())
    }
}

/// The SHA-256 of a certificate's DER (what `openssl x509 -noout -fingerprint -sha256` shows,
/// without the colons, in lower case), for an operator to check the CA they were handed
/// against the one the bootstrap node announced on its console.
pub fn fingerprint(cert_pem: &str) -> Option<String> {
    use sha2::Digest;
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next()?.ok()?;
    Some(sha2::Sha256::digest(der.as_ref()).iter().map(|b| format!("{b:02x}")).collect())
}

fn check_node_name(node: &str) -> Result<(), PkiError> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !node.starts_with(['-', '.']);
    ok.then_some(()).ok_or_else(|| PkiError::Name(node.to_string()))
}

/// A node's public key: an uncompressed P-256 point (65 bytes), written as 130 hex digits on
/// the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct NodePublicKey(Vec<u8>);

const POINT_LEN: usize = 65;

impl std::str::FromStr for NodePublicKey {
    type Err = PkiError;

    fn from_str(hex: &str) -> Result<Self, PkiError> {
        if hex.len() != POINT_LEN * 2 {
            return Err(PkiError::PublicKey("expected 130 hex digits (an uncompressed P-256 point)"));
        }
        let digit = |c: u8| (c as char).to_digit(16).ok_or(PkiError::PublicKey("not hex"));
        let bytes = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
            .collect::<Result<Vec<u8>, PkiError>>()?;
        if bytes[0] != 0x04 {
            return Err(PkiError::PublicKey("not an uncompressed point (it must start with 04)"));
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodePublicKey({self})")
    }
}

impl PublicKeyData for NodePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A key a node makes for itself at boot.
pub struct NodeKey(KeyPair);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeKey").field(&self.public()).finish()
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?))
    }

    pub fn public(&self) -> NodePublicKey {
        NodePublicKey(self.0.public_key_raw().to_vec())
    }

    fn pem(&self) -> String {
        self.0.serialize_pem()
    }
}

/// A node's TLS directory: the CA it trusts, its key and its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTls {
    pub dir: PathBuf,
}

impl NodeTls {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(NODE_CERT)
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join(NODE_KEY)
    }

    /// Whether the node has its certificate.
    pub fn is_complete(&self) -> bool {
        self.cert().exists()
    }

    /// Writes the CA, the key and, last, the certificate.
    pub fn write(&self, ca_pem: &str, key: &NodeKey, cert_pem: &str) -> Result<(), PkiError> {
        create_dir(&self.dir)?;
        write_file(&self.ca(), ca_pem.as_bytes(), 0o644)?;
        write_file(&self.key(), key.pem().as_bytes(), 0o600)?;
        write_file(&self.cert(), cert_pem.as_bytes(), 0o644)
    }

    /// For the CA's own node: a new key and its certificate, issued here.
    pub fn issue_own(&self, ca: &ClusterCa, node: &str, addresses: &[IpAddr]) -> Result<(), PkiError> {
        let key = NodeKey::generate()?;
        let cert = ca.issue(&key.public(), node, addresses)?;
        self.write(ca.cert_pem(), &key, &cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pem_certs(pem: &str) -> usize {
        rustls_pemfile::certs(&mut pem.as_bytes()).filter(|c| c.is_ok()).count()
    }

    #[test]
    fn the_ca_is_made_once_and_loaded_the_same_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        assert!(matches!(ClusterCa::load(&ca_dir), Err(PkiError::NoCa(_))));
        let made = ClusterCa::load_or_create(&ca_dir).unwrap();
        let again = ClusterCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(made.cert_pem(), again.cert_pem());
        assert_eq!(pem_certs(made.cert_pem()), 1);
        let mode = std::fs::metadata(ca_dir.join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is the owner's only");
        let other = ClusterCa::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(made.cert_pem(), other.cert_pem());
        assert!(!format!("{made:?}").contains("PRIVATE"));
        let print = fingerprint(made.cert_pem()).unwrap();
        assert_eq!((print.len(), fingerprint(again.cert_pem())), (64, Some(print.clone())));
        assert_ne!(fingerprint(other.cert_pem()), Some(print));
        assert_eq!(fingerprint("not a certificate"), None);
    }

    #[test]
    fn a_node_certificate_is_issued_for_the_node_key_and_written_complete() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(&dir.path().join("ca")).unwrap();
        let tls = NodeTls::new(dir.path().join("tls"));
        assert!(!tls.is_complete());
        tls.issue_own(&ca, "cerana-node1", &["10.99.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()]).unwrap();
        assert!(tls.is_complete());
        assert_eq!(std::fs::read_to_string(tls.ca()).unwrap(), ca.cert_pem());
        assert_eq!(pem_certs(&std::fs::read_to_string(tls.cert()).unwrap()), 1);
        let key = std::fs::read(tls.key()).unwrap();
        assert!(rustls_pemfile::private_key(&mut key.as_slice()).unwrap().is_some());
        assert_eq!(std::fs::metadata(tls.key()).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn public_keys_round_trip_and_malformed_ones_are_named() {
        let key = NodeKey::generate().unwrap();
        let text = key.public().to_string();
        assert_eq!(text.len(), 130);
        assert_eq!(text.parse::<NodePublicKey>().unwrap(), key.public());
        for bad in ["", "04", &"zz".repeat(65), &format!("02{}", &text[2..]), &format!("{text}00")] {
            assert!(matches!(bad.parse::<NodePublicKey>(), Err(PkiError::PublicKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn node_names_are_host_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let public = NodeKey::generate().unwrap().public();
        for bad in ["", "-a", "a b", "a/b", "a\u{1b}", &"a".repeat(254)] {
            assert!(matches!(ca.issue(&public, bad, &[]), Err(PkiError::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_ca_key_that_is_not_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        std::fs::write(dir.path().join(CA_CERT), "not a cert").unwrap();
        let err = ClusterCa::load(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::BadKey { .. }), "{err}");
    }
}
