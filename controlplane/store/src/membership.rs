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
    /// does nothing; promoting a node that is not a learner is refused.
    pub async fn promote(&self, id: NodeId) -> Result<(), StoreError> {
        self.change_members(MemberChange::Promote { id }, FORWARD_TIMEOUT)
            .await
    }

    /// Removes node `id` from the cluster, voter or learner; removing an unknown node does
    /// nothing. The removed node stops receiving replication; shut it down afterwards.
    pub async fn remove(&self, id: NodeId) -> Result<(), StoreError> {
        self.change_members(MemberChange::Remove { id }, FORWARD_TIMEOUT)
            .await
    }
}

/// Membership changes as the leader makes them (for itself or for a follower that forwarded
/// them).
impl Local {
    pub(crate) async fn change_members(&self, change: MemberChange) -> Result<(), StoreError> {
        match change {
            MemberChange::AddLearner { id, addr } => self.add_learner(id, addr).await,
            MemberChange::Promote { id } => self.promote(id).await,
            MemberChange::Remove { id } => self.remove(id).await,
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
        let adding = self.raft.add_learner(id, BasicNode { addr }, true);
        match tokio::time::timeout(CATCH_UP_TIMEOUT, adding).await {
            Ok(result) => result.map(|_| ()).map_err(write_error),
            Err(_) => Err(StoreError::LearnerLagging {
                node_id: id,
                waited: CATCH_UP_TIMEOUT,
            }),
        }
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
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// See [`Store::remove`].
    async fn remove(&self, id: NodeId) -> Result<(), StoreError> {
        let members = members_of(&self.raft);
        let change = if members.voters.contains_key(&id) {
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
