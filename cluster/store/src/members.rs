//! The store's own membership: who the etcd members are, and changing them.

use crate::{Kind, Store, StoreError};

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMember {
    pub id: u64,
    /// Empty for a member added but not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// A learner follows the log but does not vote until promoted.
    pub learner: bool,
}

fn member(m: &etcd_client::Member) -> StoreMember {
    StoreMember {
        id: m.id(),
        name: m.name().to_owned(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        learner: m.is_learner(),
    }
}

/// What one member says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member it believes leads (0: none).
    pub leader: u64,
    pub errors: Vec<String>,
}

/// How long a member has to answer a status probe.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Member clients kept for status probes, by client URL; bounded (a cluster has a few members).
#[derive(Clone, Default)]
pub(crate) struct Probes(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, etcd_client::Client>>>);

const MAX_PROBES: usize = 16;

impl Probes {
    fn get(&self, url: &str) -> Option<etcd_client::Client> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(url).cloned()
    }

    fn keep(&self, url: &str, client: etcd_client::Client) {
        let mut probes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if probes.len() >= MAX_PROBES {
            probes.clear();
        }
        probes.insert(url.to_owned(), client);
    }

    fn forget(&self, url: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(url);
    }
}

impl Store {
    /// Asks the member at `client_url` itself how it is (bounded: an unreachable member is
    /// unavailable within a second). The member's client is kept while it answers.
    pub async fn member_status(&self, client_url: &str) -> Result<MemberStatus, StoreError> {
        let mut options =
            etcd_client::ConnectOptions::new().with_timeout(STATUS_TIMEOUT).with_connect_timeout(STATUS_TIMEOUT);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options());
        }
        let probe = async {
            let client = match self.probes.get(client_url) {
                Some(client) => client,
                None => etcd_client::Client::connect([client_url], Some(options)).await?,
            };
            let status = client.maintenance_client().status().await?;
            Ok::<_, etcd_client::Error>((client, status))
        };
        match tokio::time::timeout(STATUS_TIMEOUT, probe).await {
            Ok(Ok((client, status))) => {
                self.probes.keep(client_url, client);
                Ok(MemberStatus { leader: status.leader(), errors: status.errors().to_vec() })
            }
            Ok(Err(e)) => {
                self.probes.forget(client_url);
                Err(StoreError::from_client("member-status", e))
            }
            Err(_) => {
                self.probes.forget(client_url);
                Err(StoreError::timed_out("member-status", STATUS_TIMEOUT))
            }
        }
    }

    /// Every member, voters and learners.
    pub async fn members(&self) -> Result<Vec<StoreMember>, StoreError> {
        let response = self
            .call("member-list", Kind::Repeatable, |c| async move { c.cluster_client().member_list().await })
            .await?;
        Ok(response.members().iter().map(member).collect())
    }

    /// Adds a learner at `peer_url`; returns it and the members the new one must be started
    /// with (`--initial-cluster`).
    pub async fn add_learner(&self, peer_url: &str) -> Result<(StoreMember, Vec<StoreMember>), StoreError> {
        let urls = vec![peer_url.to_owned()];
        let add = |c: etcd_client::Client| {
            let urls = urls.clone();
            async move {
                c.cluster_client().member_add(urls, Some(etcd_client::MemberAddOptions::new().with_is_learner())).await
            }
        };
        let response = self.call("member-add", Kind::Write, add).await?;
        let added = response
            .member()
            .map(member)
            .ok_or_else(|| StoreError::Failed { op: "member-add", reason: "no member in the answer".into() })?;
        Ok((added, response.member_list().iter().map(member).collect()))
    }

    /// Makes learner `id` a voter. A learner not yet in sync with the leader is refused as
    /// unavailable: try again later.
    pub async fn promote(&self, id: u64) -> Result<(), StoreError> {
        let promote = |c: etcd_client::Client| async move { c.cluster_client().member_promote(id).await };
        match self.call("member-promote", Kind::Write, promote).await {
            Ok(_) => Ok(()),
            Err(StoreError::Invalid(reason)) if reason.contains("in sync") || reason.contains("ready") => {
                Err(StoreError::Unavailable { op: "member-promote", reason })
            }
            Err(e) => Err(e),
        }
    }

    /// Removes member `id`.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let remove = |c: etcd_client::Client| async move { c.cluster_client().member_remove(id).await };
        self.call("member-remove", Kind::Write, remove).await.map(drop)
    }
}
