//! Linearizable reads share read-index rounds.
//!
//! A read-index round asks a quorum whether this node still leads (one heartbeat to every
//! peer) and waits until the state machine has applied everything committed before it. One
//! round per read costs a quorum round trip each, so 64 concurrent readers would send 128
//! heartbeats at once. Instead, readers queue, and one task runs rounds back to back: each round
//! answers every reader that queued before it started. A round that starts after a read arrived
//! is exactly what that read needs to be linearizable, so sharing it loses nothing.
//!
//! A node that restarts as leader needs more than openraft's read index. openraft 0.9 restores
//! a leader's role at startup in the same term, without committing a new entry, and starts
//! its commit index at what its state machine had applied. Entries that a quorum held before
//! the restart (and that clients were told are written) may lie beyond that, so its read index
//! would let a read miss them. Until this node has applied every entry its log held when it
//! opened, reads wait for that too. (Found by `kill9.rs`: after SIGKILLing every voter, the
//! old leader answered reads from before its last writes.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::raft_types::{NodeId, TypeConfig};
use crate::store::read_error;

/// How long a read waits for a restarted leader to apply the log it held before.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum RoundError {
    Raft(RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>),
    CatchingUp { needed: u64, applied: Option<u64> },
}

/// The log index a read must see applied (`None` for an empty log), or why not.
type RoundResult = Result<Option<u64>, RoundError>;

#[derive(Default)]
struct Queue {
    /// Whether a task is running rounds.
    running: bool,
    waiting: Vec<oneshot::Sender<RoundResult>>,
}

/// The queue of reads waiting for the next read-index round.
pub(crate) struct ReadIndex {
    queue: Mutex<Queue>,
    /// The last log index when this node opened: reads wait until it is applied.
    opened_with: Option<u64>,
    /// Whether `opened_with` has been applied.
    caught_up: AtomicBool,
}

impl ReadIndex {
    /// Reads of a node whose log ended at `opened_with` when it opened.
    pub(crate) fn new(opened_with: Option<u64>) -> Self {
        Self {
            queue: Mutex::default(),
            opened_with,
            caught_up: AtomicBool::new(opened_with.is_none()),
        }
    }

    /// Returns once a read-index round that started after this call has confirmed leadership
    /// and the state machine has caught up with it; reads of the applied state are then
    /// linearizable. Returns the read index: a follower whose read this was forwarded for
    /// waits until it has applied that far.
    pub(crate) async fn ensure(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
    ) -> Result<Option<u64>, StoreError> {
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
            Ok(Ok(index)) => Ok(index),
            Ok(Err(RoundError::Raft(err))) => Err(read_error(err)),
            Ok(Err(RoundError::CatchingUp { needed, applied })) => {
                Err(StoreError::CatchingUp { needed, applied })
            }
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// One round: leadership confirmed by a quorum, then everything committed before it (and
    /// the log this node opened with) applied.
    async fn round(&self, raft: &Raft<TypeConfig>) -> RoundResult {
        let read_index = raft
            .ensure_linearizable()
            .await
            .map_err(RoundError::Raft)?
            .map(|id| id.index);
        if self.caught_up.load(Ordering::Acquire) {
            return Ok(read_index);
        }
        let Some(needed) = self.opened_with else {
            return Ok(read_index);
        };
        let waited = raft
            .wait(Some(CATCH_UP_WAIT))
            .applied_index_at_least(Some(needed), "applying the log held at startup")
            .await;
        match waited {
            Ok(_) => {
                self.caught_up.store(true, Ordering::Release);
                Ok(read_index.max(Some(needed)))
            }
            Err(_) => Err(RoundError::CatchingUp {
                needed,
                applied: raft.metrics().borrow().last_applied.map(|l| l.index),
            }),
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
            let result = self.round(&raft).await;
            for reader in waiting {
                // A reader that stopped waiting is no error.
                let _ = reader.send(result.clone());
            }
        }
    }
}
