//! The raft type configuration: what a log entry carries and what applying it answers.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::types::{Txn, TxnResponse};

/// Raft node id. Node addresses live in [`openraft::BasicNode`] (`addr` = the peer URL).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A change to the keyspace, as carried by a raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Transactions proposed together (group commit), applied in order, each with a revision
    /// of its own as if proposed one by one.
    Txns {
        /// Who proposed them, so the proposer can be answered as soon as they are applied.
        id: ProposalId,
        txns: Vec<Txn>,
    },
    /// Drop history older than this revision.
    Compact { revision: u64 },
}

/// Names one proposal: the proposing node and a sequence number that starts at a random point
/// in every process, so an entry proposed before a restart is never taken for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: NodeId,
    pub seq: u64,
}

/// What applying one log entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Blank and membership entries change no key.
    Empty,
    /// The compaction took effect (or the revision was already compacted).
    Compacted { compacted: u64 },
    /// The compaction asked for a revision newer than the current one and was ignored.
    CompactRejected { requested: u64, current: u64 },
    /// The responses of a [`Command::Txns`], in its order.
    Txns(Vec<TxnResponse>),
}
