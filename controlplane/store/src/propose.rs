//! Concurrent transactions share raft log entries (group commit).
//!
//! openraft 0.9 appends and fsyncs every proposal on its own, so 64 concurrent writers would
//! cost 64 sequential log writes on every voter. Instead, at most [`MAX_IN_FLIGHT`] proposals
//! are in raft at a time; transactions that arrive meanwhile queue, and when a proposal
//! finishes everything queued goes into the next one as a single [`Command::Batch`] entry. The
//! state machine applies a batch's transactions one after another, each with a revision of its
//! own, exactly as if they had been proposed one by one in that order. A lone writer never
//! waits: with nothing in flight its transaction is proposed at once.
//!
//! The proposer is answered by the state machine as soon as it has computed a committed
//! entry's responses, before the apply's fsync: the entry is durable in a quorum's logs, so
//! the responses stand whatever happens next. Reads still see every acknowledged write: a
//! read-index round waits until raft counts the entry applied, and serializable reads, watches
//! and [`crate::Store::revision`] on this node wait for the writes it answered early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::raft_types::{Command, CommandResponse, NodeId, ProposalId, TypeConfig};
use crate::state_machine::Shared;
use crate::store::write_error;
use crate::types::{Txn, TxnResponse};

/// Proposals in raft at once.
const MAX_IN_FLIGHT: usize = 2;
/// Transactions in one batch.
const MAX_BATCH_TXNS: usize = 512;
/// Key and value bytes in one batch (a lone transaction may be larger; see [`Txn::validate`]).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Outcome = Result<TxnResponse, Failure>;

/// Why a proposal failed: raft's own error (shared by every transaction of the batch) or ours.
#[derive(Debug, Clone)]
enum Failure {
    Raft(RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
    Answer(String),
}

struct Waiting {
    txn: Txn,
    bytes: usize,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: Vec<Waiting>,
}

/// The queue of transactions waiting to be proposed.
pub(crate) struct Proposer {
    node: NodeId,
    queue: Mutex<Queue>,
    /// The sequence number of the next proposal.
    seq: AtomicU64,
}

impl Proposer {
    pub(crate) fn new(node: NodeId) -> Self {
        // A different starting point in every process: a proposal from before a restart that
        // commits only now must not meet a new proposal's id.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            node,
            queue: Mutex::default(),
            seq: AtomicU64::new(start),
        }
    }

    /// Proposes `txn` (already validated) and returns its response once applied.
    pub(crate) async fn propose(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
        shared: &Arc<Shared>,
        txn: Txn,
    ) -> Result<TxnResponse, StoreError> {
        let (reply, answer) = oneshot::channel();
        let bytes = txn.payload_bytes();
        let batch = {
            let mut queue = self.lock();
            queue.waiting.push(Waiting { txn, bytes, reply });
            if queue.in_flight < MAX_IN_FLIGHT {
                queue.in_flight += 1;
                Some(take_batch(&mut queue.waiting))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            // A task of its own: a caller that gives up must not strand the batch it carries.
            tokio::spawn(self.clone().run(raft.clone(), shared.clone(), batch));
        }
        match answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(Failure::Raft(err))) => Err(write_error(err)),
            Ok(Err(Failure::Answer(problem))) => Err(StoreError::Internal(problem)),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Proposes `batch`, then whatever queued meanwhile, until the queue is empty.
    async fn run(
        self: Arc<Self>,
        raft: Raft<TypeConfig>,
        shared: Arc<Shared>,
        mut batch: Vec<Waiting>,
    ) {
        loop {
            let id = ProposalId {
                node: self.node,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            };
            propose_batch(&raft, &shared, id, batch).await;
            let mut queue = self.lock();
            if queue.waiting.is_empty() {
                queue.in_flight -= 1;
                return;
            }
            batch = take_batch(&mut queue.waiting);
        }
    }
}

/// Takes the oldest transactions that fit in one batch (at least one).
fn take_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut bytes = 0;
    let mut count = 0;
    for w in waiting.iter() {
        if count > 0 && (count == MAX_BATCH_TXNS || bytes + w.bytes > MAX_BATCH_BYTES) {
            break;
        }
        bytes += w.bytes;
        count += 1;
    }
    let rest = waiting.split_off(count);
    std::mem::replace(waiting, rest)
}

async fn propose_batch(
    raft: &Raft<TypeConfig>,
    shared: &Shared,
    id: ProposalId,
    batch: Vec<Waiting>,
) {
    let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
    let count = txns.len();
    let (early_tx, early_rx) = oneshot::channel();
    shared.lock_early().insert(id, early_tx);
    let outcomes: Vec<Outcome> = tokio::select! {
        // Answered by the apply as soon as it computed the responses, before its fsync.
        Ok(responses) = early_rx => match_count(responses, count),
        written = raft.client_write(Command::Txns { id, txns }) => match written {
            Ok(written) => match written.data {
                CommandResponse::Txns(responses) => match_count(responses, count),
                other => {
                    let problem = format!("a batch of {count} transactions was answered with {other:?}");
                    vec![Err(Failure::Answer(problem)); count]
                }
            },
            Err(err) => vec![Err(Failure::Raft(err)); count],
        },
    };
    shared.lock_early().remove(&id);
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A writer that stopped waiting is no error; its transaction is applied all the same.
        let _ = reply.send(outcome);
    }
}

fn match_count(responses: Vec<TxnResponse>, count: usize) -> Vec<Outcome> {
    if responses.len() == count {
        responses.into_iter().map(Ok).collect()
    } else {
        let problem = format!(
            "a batch of {count} transactions was answered with {} responses",
            responses.len()
        );
        vec![Err(Failure::Answer(problem)); count]
    }
}
