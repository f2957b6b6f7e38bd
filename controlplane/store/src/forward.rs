//! Followers hand writes and linearizable reads to the leader, so every member serves the whole
//! API (as etcd members do).
//!
//! A follower sends a transaction or a compaction to the leader over the peer transport
//! ([`crate::transport`], the same mutual-TLS HTTP/2 connection raft uses) and returns the
//! leader's answer. For a linearizable read it asks the leader for a read index (the leader
//! confirms its leadership with a quorum, see [`crate::read_index`]) and then waits until it
//! has applied that far itself before reading its own state; the data never crosses the wire.
//! The leader answers forwarded requests only from its own state and never forwards them on,
//! so a request makes at most one hop; a follower whose leader moved meanwhile follows the new
//! leader's name a few times before giving up with [`StoreError::NotLeader`].

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use openraft::error::QuorumNotEnough;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::propose::Proposer;
use crate::raft_types::{Command, CommandResponse, NodeId, TypeConfig};
use crate::read_index::ReadIndex;
use crate::state_machine::Shared;
use crate::store::write_error;
use crate::transport::client::Contacts;
use crate::types::{Txn, TxnResponse};

/// How long a forward still waits for the leader it went to once this node has seen another
/// leader elected: enough for a leader that handed over to answer, little next to the
/// election a dead leader costs.
pub(crate) const MOVED_GRACE: Duration = Duration::from_millis(500);
/// How long a follower waits for the leader to answer a forwarded request.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a follower waits to apply up to the leader's read index.
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Leaders a forwarded request follows (when the one asked names another) before giving up.
pub(crate) const MAX_HOPS: usize = 3;

/// What a follower asks the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    Txn(Txn),
    ReadIndex,
    Compact {
        revision: u64,
    },
    Members(MemberChange),
    /// Would this voter vote for a candidate whose log ends at `last_log_id`? (see
    /// [`crate::election`]). Asked of every voter, not only the leader.
    PreVote {
        candidate: NodeId,
        last_log_id: Option<openraft::LogId<NodeId>>,
    },
    /// The leader hands over: campaign now (see [`crate::election`]).
    CampaignNow {
        leader: NodeId,
    },
}

/// A membership change (see [`crate::Store::add_learner`] and the rest).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MemberChange {
    AddLearner {
        id: NodeId,
        addr: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    /// Add as a learner, wait for it to catch up, promote: one change as far as others see.
    Join {
        id: NodeId,
        addr: String,
    },
    /// A member's peer address changed (or was never recorded: a store first opened as a
    /// single voter without a listener).
    SetAddress {
        id: NodeId,
        addr: String,
    },
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Txn(TxnResponse),
    /// The log index a linearizable read must see applied.
    ReadIndex(Option<u64>),
    Compacted,
    MembersChanged,
    PreVote(crate::election::PreVoteAnswer),
    Failed(Failure),
    /// Added after `Failed`, so older members still read the rest.
    Campaigning(crate::election::PreVoteAnswer),
}

/// A [`StoreError`] as it crosses the wire: the variants a caller acts on keep their meaning.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    NoQuorum(QuorumNotEnough<NodeId>),
    CatchingUp {
        needed: u64,
        applied: Option<u64>,
    },
    DiskFull {
        problem: String,
    },
    FutureRevision {
        requested: u64,
        current: u64,
    },
    Stopped,
    InvalidPeerAddr {
        addr: String,
        problem: String,
    },
    Membership {
        problem: String,
    },
    LearnerLagging {
        node_id: NodeId,
        waited: Duration,
    },
    Other(String),
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotLeader {
                leader_id,
                leader_addr,
            } => Failure::NotLeader {
                leader_id,
                leader_addr,
            },
            StoreError::NoQuorum(q) => Failure::NoQuorum(*q),
            StoreError::CatchingUp { needed, applied } => Failure::CatchingUp { needed, applied },
            StoreError::DiskFull { problem } => Failure::DiskFull { problem },
            StoreError::FutureRevision { requested, current } => {
                Failure::FutureRevision { requested, current }
            }
            StoreError::Stopped => Failure::Stopped,
            StoreError::InvalidPeerAddr { addr, problem } => {
                Failure::InvalidPeerAddr { addr, problem }
            }
            StoreError::Membership { problem } => Failure::Membership { problem },
            StoreError::LearnerLagging { node_id, waited } => {
                Failure::LearnerLagging { node_id, waited }
            }
            other => Failure::Other(other.to_string()),
        }
    }
}

impl Failure {
    /// The error the follower returns; `leader` at `addr` is the member that answered.
    pub(crate) fn into_error(self, leader: NodeId, addr: &str) -> StoreError {
        match self {
            Failure::NotLeader {
                leader_id,
                leader_addr,
            } => StoreError::NotLeader {
                leader_id,
                leader_addr,
            },
            Failure::NoQuorum(q) => StoreError::NoQuorum(Box::new(q)),
            Failure::CatchingUp { needed, applied } => StoreError::CatchingUp { needed, applied },
            Failure::DiskFull { problem } => StoreError::DiskFull {
                problem: format!("on the leader (node {leader}): {problem}"),
            },
            Failure::FutureRevision { requested, current } => {
                StoreError::FutureRevision { requested, current }
            }
            Failure::Stopped => StoreError::LeaderUnreachable {
                leader_id: leader,
                leader_addr: addr.to_owned(),
                problem: "it is shutting down".into(),
            },
            Failure::InvalidPeerAddr { addr, problem } => {
                StoreError::InvalidPeerAddr { addr, problem }
            }
            Failure::Membership { problem } => StoreError::Membership { problem },
            Failure::LearnerLagging { node_id, waited } => {
                StoreError::LearnerLagging { node_id, waited }
            }
            Failure::Other(problem) => StoreError::Forwarded {
                leader_id: leader,
                problem,
            },
        }
    }
}

/// What this node does by itself, whether a local caller or a follower asked: the leader's half
/// of forwarding. Handles, not state: the store and the peer server each hold one.
pub(crate) struct Local {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: LogStore,
    /// Linearizable reads waiting for a shared read-index round.
    pub(crate) reads: Arc<ReadIndex>,
    /// Transactions waiting to share a raft entry.
    pub(crate) writes: Arc<Proposer>,
    /// When each peer last answered this node.
    pub(crate) contacts: Contacts,
    /// When this node last heard from a leader.
    pub(crate) leader_contact: crate::election::LeaderContact,
    /// Held through each membership change, so at most one is in flight.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Set while this leader hands over; writes wait it out.
    pub(crate) handover: crate::election::Handover,
}

impl Local {
    /// Proposes a validated transaction; fails with [`StoreError::NotLeader`] on a follower.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.log.check_disk()?;
        // After a handover, raft answers that another node leads.
        self.handover.wait_out().await;
        tokio::select! {
            response = self.writes.propose(&self.raft, &self.shared, txn) => response,
            full = self.log.disk_full() => Err(full),
        }
    }

    /// A read-index round; see [`ReadIndex::ensure`].
    pub(crate) async fn read_index(&self) -> Result<Option<u64>, StoreError> {
        self.reads.ensure(&self.raft).await
    }

    pub(crate) async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        // Writes are acknowledged before their apply is visible here; a read-index round
        // waits for everything acknowledged so far.
        self.read_index().await?;
        let current = self.shared.acked_revision();
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let response = self
            .raft
            .client_write(Command::Compact { revision })
            .await
            .map_err(write_error)?;
        match response.data {
            CommandResponse::Compacted { .. } => Ok(()),
            CommandResponse::CompactRejected { requested, current } => {
                Err(StoreError::FutureRevision { requested, current })
            }
            other => Err(StoreError::Internal(format!(
                "a compact command was answered with {other:?}"
            ))),
        }
    }

    /// Answers a request a follower forwarded.
    pub(crate) async fn answer(&self, request: Forwarded) -> Answer {
        let answered = match request {
            Forwarded::Txn(txn) => match txn.validate() {
                Ok(()) => self.txn(txn).await.map(Answer::Txn),
                Err(err) => Err(err),
            },
            Forwarded::ReadIndex => self.read_index().await.map(Answer::ReadIndex),
            Forwarded::Compact { revision } => {
                self.compact(revision).await.map(|()| Answer::Compacted)
            }
            Forwarded::Members(change) => self
                .change_members(change)
                .await
                .map(|()| Answer::MembersChanged),
            Forwarded::PreVote {
                candidate,
                last_log_id,
            } => Ok(Answer::PreVote(self.pre_vote(candidate, last_log_id).await)),
            Forwarded::CampaignNow { leader } => {
                Ok(Answer::Campaigning(self.campaign_now(leader).await))
            }
        };
        answered.unwrap_or_else(|err| Answer::Failed(err.into()))
    }
}
