//! The CLI's cluster configuration (`--config FILE` or `CERANA_CONFIG`), which `make cluster`
//! writes: the cluster's nodes and its credential, so that `cerana` works without flags.
//!
//! ```toml
//! cluster = "cerana-cl"
//! nodes = ["http://10.99.0.2:8080", "http://10.99.0.100:8080"]
//! token_file = "api-token"   # relative to this file's folder
//! # ca_cert = "ca.crt"       # for https nodes
//! ```

use cerana_protocol::NodeUrl;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Nodes a configuration may list.
const MAX_NODES: usize = 64;
/// How long a node has to accept a connection before the next one is tried.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The cluster's name, for people.
    pub cluster: String,
    /// Coordinator URLs, tried in order.
    pub nodes: Vec<NodeUrl>,
    /// File holding the bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) for https nodes.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the CLI configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the CLI configuration {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("none of the {count} nodes of cluster {cluster} accepted a connection within {timeout:?}: {tried}")]
    Unreachable { cluster: String, count: usize, timeout: Duration, tried: String },
}

impl CliConfig {
    /// Reads `path`; relative files in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let malformed = |message: String| ConfigError::Malformed { path: path.to_owned(), message };
        let mut config: CliConfig = toml::from_str(&text).map_err(|e| malformed(e.message().to_owned()))?;
        if config.nodes.is_empty() || config.nodes.len() > MAX_NODES {
            return Err(malformed(format!("nodes: 1 to {MAX_NODES} coordinator URLs")));
        }
        let folder = path.parent().unwrap_or(Path::new("."));
        for file in [&mut config.token_file, &mut config.ca_cert].into_iter().flatten() {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
        }
        Ok(config)
    }

    /// The first node that accepts a TCP connection.
    pub async fn reachable_node(&self) -> Result<NodeUrl, ConfigError> {
        let mut tried = Vec::new();
        for node in &self.nodes {
            let Some(addr) = node.origin().map(|o| o.host_port()) else {
                tried.push(format!("{node}: no host and port"));
                continue;
            };
            match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => return Ok(node.clone()),
                Ok(Err(e)) => tried.push(format!("{node}: {e}")),
                Err(_) => tried.push(format!("{node}: no answer")),
            }
        }
        Err(ConfigError::Unreachable {
            cluster: self.cluster.clone(),
            count: self.nodes.len(),
            timeout: REACH_TIMEOUT,
            tried: tried.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> NodeUrl {
        NodeUrl::new(s).unwrap()
    }

    #[test]
    fn loads_and_resolves_files_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cerana.toml");
        std::fs::write(
            &path,
            "cluster = \"lab\"\nnodes = [\"http://10.99.0.2:8080\"]\ntoken_file = \"api-token\"\nca_cert = \"/etc/ca.crt\"\n",
        )
        .unwrap();
        let config = CliConfig::load(&path).unwrap();
        assert_eq!(config.token_file, Some(dir.path().join("api-token")));
        assert_eq!(config.ca_cert, Some(PathBuf::from("/etc/ca.crt")));
        for (text, says) in [
            ("cluster = \"lab\"\nnodes = []\n", "1 to 64"),
            ("cluster = \"lab\"\nnodes = [\"ftp://x\"]\n", "http"),
            ("cluster = \"lab\"\nnodes = [\"http://x\"]\ntoken = \"secret\"\n", "unknown field"),
            ("nodes = [\"http://x\"]\n", "missing field"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = CliConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert!(matches!(CliConfig::load(&dir.path().join("none")), Err(ConfigError::Read { .. })));
    }

    #[tokio::test]
    async fn the_first_node_that_answers_is_used() {
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down_url = url(&format!("http://{}", down.local_addr().unwrap()));
        drop(down);
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_url = url(&format!("http://{}", up.local_addr().unwrap()));
        let config = CliConfig {
            cluster: "lab".into(),
            nodes: vec![down_url.clone(), up_url.clone()],
            token_file: None,
            ca_cert: None,
        };
        assert_eq!(config.reachable_node().await.unwrap(), up_url);
        let config = CliConfig { nodes: vec![down_url], ..config };
        let err = config.reachable_node().await.unwrap_err().to_string();
        assert!(err.contains("none of the 1 nodes of cluster lab"), "{err}");
    }
}
