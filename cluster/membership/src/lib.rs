//! The etcd quorum the nodes keep themselves (issue #16).
//!
//! [`plan`] is pure: from the members as etcd lists them, how long each has been unreachable,
//! and the nodes that could host a member, it picks **one** step — or says why it takes none.
//! Called again and again (level-triggered), it walks the cluster to `desired` voters:
//!
//! - a learner that has caught up is promoted;
//! - a voter unreachable for longer than the grace period is removed first (etcd's advice:
//!   remove the failed member, then add its replacement), but only while the voters still
//!   reachable stay a quorum of what is left — a cluster is never talked out of its quorum;
//! - with fewer voters than desired and no learner pending, one candidate is added as a learner
//!   (it starts etcd with the member list the step returns, and is promoted once in sync).
//!
//! [`apply`] carries a step out through the store.

use cerana_store::{Store, StoreError, StoreMember};
use std::time::Duration;

/// How many voters, and how long an unreachable one is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// 1, 3 or 5 (`cerana.etcd_members`).
    pub voters: usize,
    pub grace: Duration,
}

/// A member as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub member: StoreMember,
    /// How long it has been unreachable; `None`: it answers.
    pub down_for: Option<Duration>,
}

/// A node that could host a member: it runs the store client only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub peer_url: String,
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Promote { id: u64, name: String },
    Remove { id: u64, name: String, why: String },
    AddLearner { name: String, peer_url: String },
}

/// What to do now: a step, or why nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Act(Step),
    Wait(String),
    Done,
}

/// The fewest voters that make a quorum of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// See the crate docs.
pub fn plan(desired: Desired, members: &[Observed], candidates: &[Candidate]) -> Plan {
    let voters: Vec<&Observed> = members.iter().filter(|m| !m.member.learner).collect();
    let learners: Vec<&Observed> = members.iter().filter(|m| m.member.learner).collect();
    let reachable = voters.iter().filter(|m| m.down_for.is_none()).count();

    // A learner that has come up and caught up becomes a voter; one that never came up is
    // given up on after the grace period so that another node can take its place.
    if let Some(learner) = learners.first() {
        return match learner.down_for {
            None if voters.len() < desired.voters => {
                Plan::Act(Step::Promote { id: learner.member.id, name: learner.member.name.clone() })
            }
            Some(down) if down > desired.grace => Plan::Act(Step::Remove {
                id: learner.member.id,
                name: learner.member.name.clone(),
                why: format!("learner unreachable for {} s", down.as_secs()),
            }),
            None => Plan::Wait(format!("learner {} waits: {} voters already", learner.member.name, voters.len())),
            Some(_) => Plan::Wait(format!("learner {} is not up yet", learner.member.name)),
        };
    }

    if let Some(dead) = voters.iter().find(|m| m.down_for.is_some_and(|d| d > desired.grace)) {
        let left = voters.len() - 1;
        if left == 0 || reachable < quorum(left) {
            return Plan::Wait(format!(
                "voter {} is down, but removing it would leave {reachable} reachable of {left}: below quorum",
                dead.member.name
            ));
        }
        return Plan::Act(Step::Remove {
            id: dead.member.id,
            name: dead.member.name.clone(),
            why: format!(
                "unreachable for {} s (grace {} s)",
                dead.down_for.unwrap_or_default().as_secs(),
                desired.grace.as_secs()
            ),
        });
    }

    if voters.len() < desired.voters {
        let taken =
            |c: &Candidate| members.iter().any(|m| m.member.name == c.name || m.member.peer_urls.contains(&c.peer_url));
        return match candidates.iter().find(|c| !taken(c)) {
            Some(c) => Plan::Act(Step::AddLearner { name: c.name.clone(), peer_url: c.peer_url.clone() }),
            None => Plan::Wait(format!("{} voters of {} desired, and no node to add", voters.len(), desired.voters)),
        };
    }
    Plan::Done
}

/// Why a step could not be carried out.
#[derive(Debug, thiserror::Error)]
#[error("{step:?}: {source}")]
pub struct ApplyError {
    pub step: Step,
    pub source: StoreError,
}

/// What a node needs to start a member added as a learner: `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joining {
    pub id: u64,
    /// `name=peer_url,...`, the new member included.
    pub initial_cluster: String,
}

/// Carries `step` out; for [`Step::AddLearner`] returns how the new member must start.
pub async fn apply(store: &Store, step: &Step) -> Result<Option<Joining>, ApplyError> {
    let failed = |source| ApplyError { step: step.clone(), source };
    match step {
        Step::Promote { id, .. } => store.promote(*id).await.map(|()| None).map_err(failed),
        Step::Remove { id, .. } => store.remove_member(*id).await.map(|()| None).map_err(failed),
        Step::AddLearner { name, peer_url } => {
            let (added, all) = store.add_learner(peer_url).await.map_err(failed)?;
            let initial_cluster = all
                .iter()
                .flat_map(|m| {
                    // The new member has no name yet: it is the one we name.
                    let name = if m.id == added.id { name.clone() } else { m.name.clone() };
                    m.peer_urls.iter().map(move |url| format!("{name}={url}"))
                })
                .collect::<Vec<_>>()
                .join(",");
            Ok(Some(Joining { id: added.id, initial_cluster }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn member(id: u64, learner: bool, down: Option<u64>) -> Observed {
        Observed {
            member: StoreMember {
                id,
                name: format!("n{id}"),
                peer_urls: vec![format!("http://10.0.0.{id}:2380")],
                client_urls: vec![],
                learner,
            },
            down_for: down.map(Duration::from_secs),
        }
    }

    fn candidate(id: u64) -> Candidate {
        Candidate { name: format!("n{id}"), peer_url: format!("http://10.0.0.{id}:2380") }
    }

    fn three() -> Desired {
        Desired { voters: 3, grace: GRACE }
    }

    #[test]
    fn a_cluster_grows_one_learner_at_a_time_to_its_voters() {
        let mut members = vec![member(1, false, None)];
        let candidates = [candidate(1), candidate(2), candidate(3), candidate(4)];
        let step = plan(three(), &members, &candidates);
        assert_eq!(step, Plan::Act(Step::AddLearner { name: "n2".into(), peer_url: "http://10.0.0.2:2380".into() }));
        members.push(member(2, true, Some(5)));
        assert_eq!(plan(three(), &members, &candidates), Plan::Wait("learner n2 is not up yet".into()));
        members[1].down_for = None;
        assert_eq!(plan(three(), &members, &candidates), Plan::Act(Step::Promote { id: 2, name: "n2".into() }));
        members[1].member.learner = false;
        assert!(
            matches!(plan(three(), &members, &candidates), Plan::Act(Step::AddLearner { ref name, .. }) if name == "n3")
        );
        members.push(member(3, false, None));
        assert_eq!(plan(three(), &members, &candidates), Plan::Done, "n4 stays a client");
    }

    #[test]
    fn a_dead_voter_is_replaced_without_losing_quorum() {
        let candidates = [candidate(4)];
        let mut members = vec![member(1, false, None), member(2, false, None), member(3, false, Some(30))];
        assert_eq!(plan(three(), &members, &candidates), Plan::Done, "within the grace period");
        members[2].down_for = Some(Duration::from_secs(61));
        let Plan::Act(Step::Remove { id: 3, .. }) = plan(three(), &members, &candidates) else { panic!() };
        members.pop();
        assert!(
            matches!(plan(three(), &members, &candidates), Plan::Act(Step::AddLearner { ref name, .. }) if name == "n4")
        );
    }

    #[test]
    fn never_below_quorum() {
        // Two of three down: removing one would leave 1 reachable of 2, below a quorum of 2.
        let members = vec![member(1, false, None), member(2, false, Some(120)), member(3, false, Some(120))];
        let Plan::Wait(why) = plan(three(), &members, &[candidate(4)]) else { panic!() };
        assert!(why.contains("below quorum"), "{why}");
        // The last voter is never removed.
        let alone = vec![member(1, false, Some(120))];
        assert!(matches!(plan(Desired { voters: 1, grace: GRACE }, &alone, &[]), Plan::Wait(_)));
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    #[test]
    fn a_learner_that_never_comes_up_is_given_up() {
        let members = vec![member(1, false, None), member(2, true, Some(61))];
        assert!(matches!(plan(three(), &members, &[]), Plan::Act(Step::Remove { id: 2, .. })));
    }
}
