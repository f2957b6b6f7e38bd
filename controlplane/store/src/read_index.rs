//! Linearizable reads share read-index rounds.
//!
//! A read-index round asks a quorum whether this node still leads (one heartbeat to every
//! peer) and waits until the state machine has applied everything committed before it. One
//! round per read costs a quorum round trip each, so 64 concurrent readers would send 128
//! heartbeats at once. Instead, readers queue, and one task runs rounds back to back: each round
//! answers every reader that queued before it started. A round that starts after a read arrived
//! is exactly what that read needs to be linearizable, so sharing it loses nothing.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::raft_types::{NodeId, TypeConfig};
use crate::store::read_error;

type RoundResult = Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>>;

#[derive(Default)]
struct Queue {
    /// Whether a task is running rounds.
    running: bool,
    waiting: Vec<oneshot::Sender<RoundResult>>,
}

/// The queue of reads waiting for the next read-index round.
#[derive(Default)]
pub(crate) struct ReadIndex {
    queue: Mutex<Queue>,
}

impl ReadIndex {
    /// Returns once a read-index round that started after this call has confirmed leadership
    /// and the state machine has caught up with it; reads of the applied state are then
    /// linearizable.
    pub(crate) async fn ensure(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // A task of its own, not this caller: a reader that gives up must not strand the
            // others queued behind it.
            tokio::spawn(self.clone().run(raft.clone()));
        }
        match rx.await {
            Ok(result) => result.map_err(read_error),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    async fn run(self: Arc<Self>, raft: Raft<TypeConfig>) {
        loop {
            let waiting = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let result = raft.ensure_linearizable().await.map(|_| ());
            for reader in waiting {
                // A reader that stopped waiting is no error.
                let _ = reader.send(result.clone());
            }
        }
    }
}
