//! Cluster membership for the node join flow: add a learner, promote it to voter, remove a
//! member, and list who is in the cluster. Changes are made by the leader; a follower forwards
//! them to it (see [`crate::forward`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics};

use crate::config::parse_peer_addr;
use crate::error::StoreError;
use crate::forward::{FORWARD_TIMEOUT, Local, MemberChange};
use crate::raft_types::{NodeId, TypeConfig};
use crate::store::{Store, write_error};

/// How long [`Store::add_learner`] waits for the learner to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    /// Voters and their peer addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners (replicated to, not voting) and their peer addresses.
    pub learners: BTreeMap<NodeId, String>,
    /// The current leader, if known.
    pub leader: Option<NodeId>,
}

/// The cluster membership as last applied by `raft`.
fn members_of(raft: &Raft<TypeConfig>) -> Members {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut members = Members {
        leader: metrics.current_leader,
        ..Members::default()
    };
    for (id, node) in membership.nodes() {
        let side = if voter_ids.contains(id) {
            &mut members.voters
        } else {
            &mut members.learners
        };
        side.insert(*id, node.addr.clone());
    }
    members
}

impl Store {
    /// The cluster membership as last applied on this node.
    pub fn members(&self) -> Members {
        members_of(&self.inner.raft)
    }

    /// The current leader's id, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this node leads and a quorum of voters acknowledged it within `within` (a lone
    /// voter is its own quorum): what a holder of something only the leader may hold (the
    /// control planes' virtual IP) checks, since an openraft 0.9 leader cut off from the
    /// others does not step down by itself.
    pub fn leads_with_quorum(&self, within: Duration) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return false;
        }
        // Winning the election was a quorum's answer too: a new leader need not wait for the
        // first round of acknowledgements (which took up to a second on a loaded machine).
        m.membership_config.membership().voter_ids().count() == 1
            || m.millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) < within.as_millis())
            || self
                .inner
                .local
                .leader_contact
                .led_for()
                .is_some_and(|d| d < within)
    }

    /// Raft's view of this node (state, term, log, snapshot, replication): for operators and
    /// tests.
    pub fn raft_metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Adds node `id`, reachable at `addr` ("ip:port"), as a learner, and waits until it has
    /// caught up with the leader's log (by log replication or a snapshot install). Adding an
    /// existing learner again updates its address. Voters are refused.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), StoreError> {
        let change = MemberChange::AddLearner { id, addr };
        self.change_members(change, CATCH_UP_TIMEOUT + FORWARD_TIMEOUT)
            .await
    }

    /// Makes learner `id` a voter (a joint-consensus membership change). Promoting a voter
    /// does nothing; promoting a node that is not a learner, or one that would leave fewer
    /// reachable voters than a quorum, is refused.
    pub async fn promote(&self, id: NodeId) -> Result<(), StoreError> {
        self.change_members(MemberChange::Promote { id }, FORWARD_TIMEOUT)
            .await
    }

    /// Adds node `id` at `addr` as a learner, waits for it to catch up and promotes it to
    /// voter, holding off every other membership change meanwhile: how a control plane
    /// joins. A voter joining again at the same address changes nothing.
    pub async fn join_member(&self, id: NodeId, addr: String) -> Result<(), StoreError> {
        if self.members().voters.get(&id) == Some(&addr) {
            return Ok(());
        }
        let change = MemberChange::Join { id, addr };
        self.change_members(change, CATCH_UP_TIMEOUT + FORWARD_TIMEOUT)
            .await
    }

    /// Records that this node's peer address is `addr`, if the membership says otherwise (a
    /// store first opened as a single voter, or a node whose address changed).
    pub(crate) async fn record_own_address(&self, addr: &str) -> Result<(), StoreError> {
        let me = self.node_id();
        let members = self.members();
        let recorded = members.voters.get(&me).or(members.learners.get(&me));
        if recorded.is_none_or(|r| r == addr) {
            return Ok(());
        }
        tracing::info!(node = me, from = ?recorded, to = addr, "recording this node's new peer address");
        let change = MemberChange::SetAddress {
            id: me,
            addr: addr.to_string(),
        };
        self.change_members(change, FORWARD_TIMEOUT).await
    }

    /// Removes node `id` from the cluster, voter or learner; removing an unknown node does
    /// nothing. The removed node stops receiving replication; shut it down afterwards. A
    /// removal that would leave no voter, or fewer reachable voters than a quorum of those
    /// left, is refused with [`StoreError::Membership`] naming them.
    pub async fn remove(&self, id: NodeId) -> Result<(), StoreError> {
        self.change_members(MemberChange::Remove { id }, FORWARD_TIMEOUT)
            .await
    }
}

/// A voter that answered the leader within this long counts as reachable when a change is
/// checked for quorum (a few heartbeats and an election timeout).
const REACHABLE_WITHIN: Duration = Duration::from_secs(5);

/// Why a change to `after` would leave the cluster without a reachable quorum, if it would.
/// `reachable` says which of them answer now; the leader counts itself.
fn quorum_problem(
    after: &BTreeSet<NodeId>,
    reachable: impl Fn(NodeId) -> bool,
    what: &str,
) -> Option<String> {
    if after.is_empty() {
        return Some(format!(
            "{what} would leave no voter; a cluster keeps at least one (replace it, or reset the store from a backup)"
        ));
    }
    let up: Vec<NodeId> = after.iter().copied().filter(|id| reachable(*id)).collect();
    let quorum = after.len() / 2 + 1;
    (up.len() < quorum).then(|| {
        let down: Vec<NodeId> = after.iter().copied().filter(|id| !reachable(*id)).collect();
        format!(
            "{what} would leave voters {after:?} of which only {up:?} answer ({down:?} do not): a quorum of them needs {quorum}; bring the others back or remove the unreachable ones first"
        )
    })
}

/// Membership changes as the leader makes them (for itself or for a follower that forwarded
/// them), one at a time.
impl Local {
    pub(crate) async fn change_members(&self, change: MemberChange) -> Result<(), StoreError> {
        let _one_at_a_time = self.changing.lock().await;
        match change {
            MemberChange::AddLearner { id, addr } => self.add_learner(id, addr).await,
            MemberChange::Promote { id } => self.promote(id).await,
            MemberChange::Remove { id } => self.remove(id).await,
            MemberChange::Join { id, addr } => {
                self.add_learner(id, addr).await?;
                self.promote(id).await
            }
            MemberChange::SetAddress { id, addr } => self.set_address(id, addr).await,
        }
    }

    /// Whether `id` answered this node lately (this node always does).
    fn reachable(&self, id: NodeId) -> bool {
        id == self.raft.metrics().borrow().id || self.contacts.recent(id, REACHABLE_WITHIN)
    }

    /// Refuses a change of the voters to `after` that would lose a reachable quorum.
    fn check_quorum(&self, after: &BTreeSet<NodeId>, what: &str) -> Result<(), StoreError> {
        match quorum_problem(after, |id| self.reachable(id), what) {
            Some(problem) => Err(StoreError::Membership { problem }),
            None => Ok(()),
        }
    }

    /// See [`Store::add_learner`].
    async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), StoreError> {
        parse_peer_addr(&addr).map_err(|problem| StoreError::InvalidPeerAddr {
            addr: addr.clone(),
            problem,
        })?;
        if members_of(&self.raft).voters.contains_key(&id) {
            return Err(StoreError::Membership {
                problem: format!("node {id} is already a voter"),
            });
        }
        let lagging = StoreError::LearnerLagging {
            node_id: id,
            waited: CATCH_UP_TIMEOUT,
        };
        let caught_up = async {
            self.raft
                .add_learner(id, BasicNode { addr }, true)
                .await
                .map_err(write_error)?;
            // openraft counts a learner within its lag threshold (thousands of entries) as
            // caught up, without waiting to hear from it: wait until it holds everything the
            // log held when it was added, as it answered itself.
            let target = self.raft.metrics().borrow().last_log_index;
            let mut metrics = self.raft.metrics();
            loop {
                let matched = metrics
                    .borrow()
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|log_id| log_id.index);
                if matched >= target && self.contacts.recent(id, REACHABLE_WITHIN) {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    return Err(StoreError::Stopped);
                }
            }
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
            .await
            .unwrap_or(Err(lagging))
    }

    /// See [`Store::promote`].
    async fn promote(&self, id: NodeId) -> Result<(), StoreError> {
        let members = members_of(&self.raft);
        if members.voters.contains_key(&id) {
            return Ok(());
        }
        if !members.learners.contains_key(&id) {
            return Err(StoreError::Membership {
                problem: format!("node {id} is not a learner; add it with add_learner first"),
            });
        }
        let mut after: BTreeSet<NodeId> = members.voters.keys().copied().collect();
        after.insert(id);
        self.check_quorum(&after, &format!("promoting node {id}"))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Records member `id`'s new peer address.
    async fn set_address(&self, id: NodeId, addr: String) -> Result<(), StoreError> {
        parse_peer_addr(&addr).map_err(|problem| StoreError::InvalidPeerAddr {
            addr: addr.clone(),
            problem,
        })?;
        let members = members_of(&self.raft);
        if !members.voters.contains_key(&id) && !members.learners.contains_key(&id) {
            return Err(StoreError::Membership {
                problem: format!("node {id} is not a member"),
            });
        }
        let nodes = BTreeMap::from([(id, BasicNode { addr })]);
        self.raft
            .change_membership(ChangeMembers::SetNodes(nodes), false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// See [`Store::remove`].
    async fn remove(&self, id: NodeId) -> Result<(), StoreError> {
        let members = members_of(&self.raft);
        let change = if members.voters.contains_key(&id) {
            let mut after: BTreeSet<NodeId> = members.voters.keys().copied().collect();
            after.remove(&id);
            self.check_quorum(&after, &format!("removing voter {id}"))?;
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if members.learners.contains_key(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Ok(());
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn changes_that_lose_a_reachable_quorum_are_refused_with_the_reason() {
        let all = |_| true;
        // Shrinking is allowed while the rest answer: 2 -> 1, 4 -> 3, 3 -> 2.
        assert_eq!(quorum_problem(&set(&[1]), all, "x"), None);
        assert_eq!(quorum_problem(&set(&[1, 2, 3]), all, "x"), None);
        assert_eq!(quorum_problem(&set(&[1, 2]), all, "x"), None);
        // The last voter never goes.
        let none = quorum_problem(&set(&[]), all, "removing voter 1").unwrap();
        assert!(none.contains("would leave no voter"), "{none}");
        // Three voters, one dead: removing a live one leaves {1, 3} with only 1 answering.
        let dead3 = |id| id != 3;
        let lost = quorum_problem(&set(&[1, 3]), dead3, "removing voter 2").unwrap();
        assert!(
            lost.contains("only [1] answer ([3] do not)") && lost.contains("needs 2"),
            "{lost}"
        );
        // ...while removing the dead one is fine.
        assert_eq!(quorum_problem(&set(&[1, 2]), dead3, "x"), None);
        // Growing 3 -> 4 with one dead still has 3 of 4 answering.
        assert_eq!(quorum_problem(&set(&[1, 2, 3, 4]), dead3, "x"), None);
        // Growing 2 -> 3 with one dead and a silent learner does not.
        let two_up = |id| id == 1 || id == 2;
        assert!(quorum_problem(&set(&[1, 3, 4]), two_up, "x").is_some());
    }
}
