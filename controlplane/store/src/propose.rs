//! Concurrent transactions share raft log entries (group commit).
//!
//! openraft 0.9 appends and fsyncs every proposal on its own, so 64 concurrent writers would
//! cost 64 sequential log writes on every voter. Instead, at most [`MAX_IN_FLIGHT`] proposals
//! are in raft at a time; transactions that arrive meanwhile queue, and when a proposal
//! finishes everything queued goes into the next one as a single [`Command::Batch`] entry. The
//! state machine applies a batch's transactions one after another, each with a revision of its
//! own, exactly as if they had been proposed one by one in that order. A lone writer never
//! waits: with nothing in flight its transaction is proposed at once.

use std::sync::{Arc, Mutex};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::raft_types::{Command, CommandResponse, NodeId, TypeConfig};
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
#[derive(Default)]
pub(crate) struct Proposer {
    queue: Mutex<Queue>,
}

impl Proposer {
    /// Proposes `txn` (already validated) and returns its response once applied.
    pub(crate) async fn propose(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
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
            tokio::spawn(self.clone().run(raft.clone(), batch));
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
    async fn run(self: Arc<Self>, raft: Raft<TypeConfig>, mut batch: Vec<Waiting>) {
        loop {
            propose_batch(&raft, batch).await;
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

async fn propose_batch(raft: &Raft<TypeConfig>, batch: Vec<Waiting>) {
    let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
    let count = txns.len();
    let command = match <[Txn; 1]>::try_from(txns) {
        Ok([txn]) => Command::Txn(txn),
        Err(txns) => Command::Batch(txns),
    };
    let outcomes: Vec<Outcome> = match raft.client_write(command).await {
        Ok(written) => match written.data {
            CommandResponse::Txn(response) if count == 1 => vec![Ok(response)],
            CommandResponse::Batch(responses) if responses.len() == count => {
                responses.into_iter().map(Ok).collect()
            }
            other => {
                let problem =
                    format!("a batch of {count} transactions was answered with {other:?}");
                vec![Err(Failure::Answer(problem)); count]
            }
        },
        Err(err) => vec![Err(Failure::Raft(err)); count],
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A writer that stopped waiting is no error; its transaction is applied all the same.
        let _ = reply.send(outcome);
    }
}
