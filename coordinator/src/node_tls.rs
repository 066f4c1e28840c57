//! The node's own certificate as the API's TLS identity (issue #17).
//!
//! A cluster node gets its certificate after its coordinator has started (the check-in, or the
//! bootstrap node's own CA), and may get a new one later. With `--node-tls DIR` the coordinator
//! watches DIR (`ca.crt`, `node.key`, `node.crt`, as `cerana_pki::NodeTls` writes them): once a
//! certificate is there, the API takes HTTPS from the cluster CA's clients and plain HTTP from
//! loopback only, and peers are called over mutual TLS with the node's certificate. A node that
//! never gets one (not in a cluster) serves plain HTTP as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What the node's TLS files were when they were loaded: a change reloads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok()?, len: meta.len() })
}

/// The loaded identity: an acceptor for the API and the generation peer clients are built for.
#[derive(Clone)]
pub struct Loaded {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Counts loads from 1, so clients built for an older certificate are dropped.
    pub generation: u64,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// The watched TLS directory and what was last loaded from it.
#[derive(Debug)]
pub struct NodeTlsWatch {
    files: cerana_pki::NodeTls,
    loaded: RwLock<Option<Arc<Loaded>>>,
    last: Mutex<Option<(Stamp, Stamp, Stamp)>>,
}

impl NodeTlsWatch {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { files: cerana_pki::NodeTls::new(dir), loaded: RwLock::new(None), last: Mutex::new(None) }
    }

    pub fn ca(&self) -> PathBuf {
        self.files.ca()
    }

    pub fn cert(&self) -> PathBuf {
        self.files.cert()
    }

    pub fn key(&self) -> PathBuf {
        self.files.key()
    }

    /// The identity in force, if the node has one yet.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded.read().expect("node TLS lock").clone()
    }

    /// Loads the files when they changed since the last look. `Ok(true)`: a new identity is in
    /// force. A half-written or broken set keeps the previous identity (and says why); files
    /// that vanish keep it too: once a node speaks TLS it never falls back to plain HTTP.
    pub fn refresh(&self) -> Result<bool, String> {
        let (Some(ca), Some(key), Some(cert)) = (stamp(&self.ca()), stamp(&self.key()), stamp(&self.cert())) else {
            return Ok(false);
        };
        let mut last = self.last.lock().expect("node TLS stamp lock");
        if *last == Some((ca, key, cert)) {
            return Ok(false);
        }
        // Remembered even when loading fails, so a broken set is reported once, not every second.
        *last = Some((ca, key, cert));
        let acceptor = crate::http::tls_acceptor(&self.cert(), &self.key(), Some(&self.ca()))?;
        let mut loaded = self.loaded.write().expect("node TLS lock");
        let generation = loaded.as_ref().map_or(1, |l| l.generation + 1);
        *loaded = Some(Arc::new(Loaded { acceptor, generation }));
        Ok(true)
    }
}

/// How a connection to a node-TLS listener that has its certificate is taken, from its first
/// byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Tls,
    Plain,
    /// Plain HTTP from off the node.
    RefusePlain,
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub fn admit(first: u8, from_loopback: bool) -> Admit {
    match (first == TLS_HANDSHAKE, from_loopback) {
        (true, _) => Admit::Tls,
        (false, true) => Admit::Plain,
        (false, false) => Admit::RefusePlain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_once_the_node_has_its_certificate() {
        assert_eq!(admit(TLS_HANDSHAKE, false), Admit::Tls);
        assert_eq!(admit(TLS_HANDSHAKE, true), Admit::Tls);
        assert_eq!(admit(b'P', true), Admit::Plain);
        assert_eq!(admit(b'G', false), Admit::RefusePlain);
    }

    #[test]
    fn the_identity_loads_once_complete_and_reloads_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let watch = NodeTlsWatch::new(dir.path());
        assert_eq!(watch.refresh(), Ok(false), "nothing there yet");
        assert!(watch.current().is_none());
        let ca = cerana_pki::ClusterCa::load_or_create(&dir.path().join("ca")).unwrap();
        let tls = cerana_pki::NodeTls::new(dir.path());
        tls.issue_own(&ca, "node-a", &["10.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(watch.refresh(), Ok(true));
        assert_eq!(watch.current().map(|l| l.generation), Some(1));
        assert_eq!(watch.refresh(), Ok(false), "unchanged");
        std::thread::sleep(std::time::Duration::from_millis(20));
        tls.issue_own(&ca, "node-a", &["10.0.0.2".parse().unwrap()]).unwrap();
        assert_eq!(watch.refresh(), Ok(true), "a new certificate");
        assert_eq!(watch.current().map(|l| l.generation), Some(2));
        std::fs::write(watch.key(), "not a key").unwrap();
        assert!(watch.refresh().is_err(), "a broken key is reported");
        assert_eq!(watch.current().map(|l| l.generation), Some(2), "and the last good identity stays");
        assert_eq!(watch.refresh(), Ok(false), "reported once");
        std::fs::remove_file(watch.cert()).unwrap();
        assert_eq!(watch.refresh(), Ok(false));
        assert!(watch.current().is_some(), "never back to plain HTTP");
    }
}
