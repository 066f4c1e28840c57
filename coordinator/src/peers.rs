//! Where this coordinator may connect with the cluster's credentials: every task it forwards
//! (`node`), every result it delivers (`reply_to`) and every stream it pulls carries its peer
//! token, so with a member list they go to members only, refused before any connection is made.

use crate::address::Origin;
use cerana_protocol::NodeUrl;
use std::path::PathBuf;

/// Which coordinators this one sends to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any address a caller names: a coordinator used on its own, or in tests.
    #[default]
    Any,
    /// The cluster's members: `listed` (configured, e.g. the nodes to ask before a member list
    /// exists) and the base URLs in `file` (one per line, kept up to date by the node's quorum
    /// agent from the cluster store; read at each use).
    Members { listed: Vec<NodeUrl>, file: Option<PathBuf> },
}

impl PeerPolicy {
    /// Whether `url` is a member's: `Err` says why not.
    pub fn allows(&self, url: &NodeUrl) -> Result<(), String> {
        let PeerPolicy::Members { listed, file } = self else { return Ok(()) };
        let Some(origin) = Origin::of(url) else { return Err(format!("{url} has no usable host and port")) };
        let from_file = file.as_ref().map(|f| std::fs::read_to_string(f).unwrap_or_default()).unwrap_or_default();
        let known = listed.iter().cloned().chain(from_file.lines().filter_map(|l| NodeUrl::new(l.trim()).ok()));
        let mut count = 0;
        for member in known {
            count += 1;
            if Origin::of(&member).as_ref() == Some(&origin) {
                return Ok(());
            }
        }
        Err(format!(
            "{origin} is not a member of this cluster ({count} known): tasks and results carry the cluster's \
             credentials and go to members only"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> NodeUrl {
        NodeUrl::new(s).unwrap()
    }

    #[test]
    fn members_are_matched_by_scheme_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peers");
        std::fs::write(&file, "http://10.99.0.100:8080\n\nnot a url\nhttp://10.99.0.101:8080/\n").unwrap();
        let policy = PeerPolicy::Members { listed: vec![url("http://10.99.0.2:8080")], file: Some(file.clone()) };
        for member in ["http://10.99.0.2:8080", "http://10.99.0.100:8080/v1/tasks", "http://10.99.0.101:8080"] {
            assert_eq!(policy.allows(&url(member)), Ok(()), "{member}");
        }
        for stranger in
            ["http://10.99.0.1:9999", "http://10.99.0.100:8081", "https://10.99.0.100:8080", "http://evil:8080"]
        {
            let why = policy.allows(&url(stranger)).unwrap_err();
            assert!(why.contains("not a member"), "{stranger}: {why}");
        }
        // The file is read at each use: a node leaving the cluster is refused from then on.
        std::fs::write(&file, "").unwrap();
        assert!(policy.allows(&url("http://10.99.0.100:8080")).is_err());
        assert_eq!(PeerPolicy::Any.allows(&url("http://10.99.0.1:9999")), Ok(()));
    }

    #[test]
    fn a_missing_file_means_only_the_listed_members() {
        let policy = PeerPolicy::Members { listed: vec![], file: Some("/nonexistent/peers".into()) };
        assert!(policy.allows(&url("http://127.0.0.1:8080")).is_err());
    }
}
