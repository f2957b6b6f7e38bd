//! A linearizability checker for histories of single-key registers, and a [`Recorder`] that
//! builds such histories from concurrent clients.
//!
//! Each key is an independent register (absent until written) supporting read, write, delete
//! and compare-and-set. An [`Operation`] has an invocation and a completion time on one
//! monotonic clock; operation A precedes operation B in real time only if A completed strictly
//! before B was invoked. An operation whose outcome is [`Outcome::Unknown`] (timeout, dropped
//! connection, node stopped) may have taken effect at any time after its invocation, or never.
//!
//! [`check`] splits the history by key (registers compose) and, per key, searches for a
//! linearization with the Wing & Gong algorithm as refined by Lowe: operations are linearized
//! "just in time" while walking the history in time order, backtracking when an operation's
//! completion is reached before it could be linearized, and remembering every
//! (linearized set, register state) configuration already explored so none is explored twice.

mod search;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A point on the history's clock. Only the order of ticks matters.
pub type Tick = u64;

/// Search configurations [`check`] explores per key before giving up as inconclusive.
pub const DEFAULT_EXPLORATION_LIMIT: u64 = 2_000_000;

/// What a client asked of a register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call<V> {
    /// Read the current value.
    Read,
    /// Set the value.
    Write(V),
    /// Remove the value (the register becomes absent).
    Delete,
    /// Set the value to `new` if it currently is `expected` (`None`: if it is absent).
    Cas { expected: Option<V>, new: V },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<V> {
    /// A read returned this value (`None`: absent).
    Read(Option<V>),
    /// A write or delete was acknowledged, or a compare-and-set succeeded.
    Done,
    /// A compare-and-set was refused because the value was not the expected one.
    CasFailed,
    /// No answer: the operation may have taken effect at any time after its invocation, or
    /// never.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<K, V> {
    /// Who issued it; only for reports.
    pub client: usize,
    pub key: K,
    pub call: Call<V>,
    pub outcome: Outcome<V>,
    pub invoked: Tick,
    /// When the outcome arrived; ignored for [`Outcome::Unknown`].
    pub completed: Tick,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Operation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.call {
            Call::Read => write!(f, "read({:?})", self.key)?,
            Call::Write(v) => write!(f, "write({:?}, {v:?})", self.key)?,
            Call::Delete => write!(f, "delete({:?})", self.key)?,
            Call::Cas { expected, new } => {
                write!(f, "cas({:?}, {expected:?} -> {new:?})", self.key)?;
            }
        }
        match &self.outcome {
            Outcome::Read(v) => write!(f, " = {v:?}")?,
            Outcome::Done => write!(f, " = ok")?,
            Outcome::CasFailed => write!(f, " = failed")?,
            Outcome::Unknown => write!(f, " = unknown")?,
        }
        if matches!(self.outcome, Outcome::Unknown) {
            write!(f, " [invoked at {}]", self.invoked)
        } else {
            write!(
                f,
                " [invoked at {}, completed at {}]",
                self.invoked, self.completed
            )
        }
    }
}

/// Why a history is not linearizable: no order of its operations on `key` respects both the
/// real-time order and the register's semantics. `operation` is the one the search could never
/// get past: the furthest-completing operation that had to take effect but could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation<K, V> {
    pub key: K,
    /// Position of the offending operation in the checked slice.
    pub index: usize,
    pub operation: Operation<K, V>,
    /// Values the register could hold (`None`: absent) when the offending operation had to
    /// take effect, over the explored linearizations (at most a few are kept).
    pub possible_values: Vec<Option<V>>,
    /// How many operations on the key were linearized in the longest explored prefix.
    pub longest_prefix: usize,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Violation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?}: operation #{} ({}) fits no linearization; when it had to take effect the \
             register could only hold one of {:?} (longest linearizable prefix: {} operations)",
            self.key, self.index, self.operation, self.possible_values, self.longest_prefix
        )
    }
}

/// Why [`check`] did not accept a history.
#[derive(Debug, thiserror::Error)]
pub enum CheckError<K: fmt::Debug, V: fmt::Debug> {
    #[error("history is not linearizable: {0}")]
    NotLinearizable(Box<Violation<K, V>>),

    #[error("operation #{index} ({operation}) is malformed: {problem}")]
    Malformed {
        index: usize,
        operation: Box<Operation<K, V>>,
        problem: &'static str,
    },

    #[error(
        "inconclusive: gave up on key {key:?} after exploring {explored} configurations (limit {limit})"
    )]
    Inconclusive { key: K, explored: u64, limit: u64 },
}

/// What an accepted history amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub keys: usize,
    pub operations: usize,
    /// Operations with an [`Outcome::Unknown`].
    pub unknown: usize,
    /// Search configurations explored over all keys.
    pub explored: u64,
}

/// Checks that `history` is linearizable, key by key; see the module docs.
pub fn check<K, V>(history: &[Operation<K, V>]) -> Result<Summary, CheckError<K, V>>
where
    K: Ord + Clone + fmt::Debug,
    V: Eq + Hash + Clone + fmt::Debug,
{
    check_with_limit(history, DEFAULT_EXPLORATION_LIMIT)
}

/// [`check`] with a bound on the configurations explored per key.
pub fn check_with_limit<K, V>(
    history: &[Operation<K, V>],
    limit: u64,
) -> Result<Summary, CheckError<K, V>>
where
    K: Ord + Clone + fmt::Debug,
    V: Eq + Hash + Clone + fmt::Debug,
{
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Some(problem) = malformed(op) {
            return Err(CheckError::Malformed {
                index,
                operation: Box::new(op.clone()),
                problem,
            });
        }
        by_key.entry(&op.key).or_default().push(index);
    }
    let mut summary = Summary {
        keys: by_key.len(),
        operations: history.len(),
        unknown: history
            .iter()
            .filter(|op| op.outcome == Outcome::Unknown)
            .count(),
        explored: 0,
    };
    for (key, indices) in by_key {
        match search::check_register(history, &indices, limit) {
            search::Verdict::Linearizable { explored } => summary.explored += explored,
            search::Verdict::Violation(found) => {
                return Err(CheckError::NotLinearizable(Box::new(Violation {
                    key: key.clone(),
                    index: found.index,
                    operation: history[found.index].clone(),
                    possible_values: found.possible_values,
                    longest_prefix: found.longest_prefix,
                })));
            }
            search::Verdict::GaveUp { explored } => {
                return Err(CheckError::Inconclusive {
                    key: key.clone(),
                    explored,
                    limit,
                });
            }
        }
    }
    Ok(summary)
}

fn malformed<K, V>(op: &Operation<K, V>) -> Option<&'static str> {
    let fits = matches!(
        (&op.call, &op.outcome),
        (_, Outcome::Unknown)
            | (Call::Read, Outcome::Read(_))
            | (Call::Write(_) | Call::Delete, Outcome::Done)
            | (Call::Cas { .. }, Outcome::Done | Outcome::CasFailed)
    );
    if !fits {
        return Some("its outcome does not answer its call");
    }
    if !matches!(op.outcome, Outcome::Unknown) && op.completed < op.invoked {
        return Some("it completed before it was invoked");
    }
    None
}

/// Records a history from concurrent clients: [`Recorder::begin`] right before sending a
/// request, [`Pending::finish`] right after its answer. Ticks come from one shared counter,
/// so real-time order between clients is exact. Clones share the history.
#[derive(Debug)]
pub struct Recorder<K, V> {
    inner: Arc<Shared<K, V>>,
}

impl<K, V> Clone for Recorder<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<K, V> {
    clock: AtomicU64,
    ops: Mutex<Vec<Operation<K, V>>>,
}

impl<K, V> Shared<K, V> {
    fn tick(&self) -> Tick {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn push(&self, op: Operation<K, V>) {
        let mut ops = match self.ops.lock() {
            Ok(ops) => ops,
            Err(poisoned) => poisoned.into_inner(),
        };
        ops.push(op);
    }
}

impl<K: Clone, V: Clone> Default for Recorder<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone, V: Clone> Recorder<K, V> {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Shared {
                clock: AtomicU64::new(0),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Marks the invocation of `call` on `key` by `client`.
    pub fn begin(&self, client: usize, key: K, call: Call<V>) -> Pending<K, V> {
        let invoked = self.inner.tick();
        Pending {
            shared: self.inner.clone(),
            started: Some((client, key, call, invoked)),
        }
    }

    /// Everything finished so far, in completion order.
    pub fn history(&self) -> Vec<Operation<K, V>> {
        match self.inner.ops.lock() {
            Ok(ops) => ops.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// An invoked operation awaiting its outcome. Dropping it unfinished (a cancelled or panicked
/// client) records it as [`Outcome::Unknown`], which is what it is.
#[derive(Debug)]
#[must_use = "finish the operation with its outcome"]
pub struct Pending<K, V> {
    shared: Arc<Shared<K, V>>,
    started: Option<(usize, K, Call<V>, Tick)>,
}

impl<K, V> Pending<K, V> {
    /// Records the outcome, completed now.
    pub fn finish(mut self, outcome: Outcome<V>) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome<V>) {
        if let Some((client, key, call, invoked)) = self.started.take() {
            let completed = self.shared.tick();
            self.shared.push(Operation {
                client,
                key,
                call,
                outcome,
                invoked,
                completed,
            });
        }
    }
}

impl<K, V> Drop for Pending<K, V> {
    fn drop(&mut self) {
        self.record(Outcome::Unknown);
    }
}
