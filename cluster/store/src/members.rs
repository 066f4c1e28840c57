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

impl Store {
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
