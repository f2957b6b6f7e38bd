//! The raft state machine: applies committed commands to the MVCC keyspace in `state.redb`,
//! records history, publishes events to watchers, and builds and installs snapshots.
//!
//! Applies go into one open write transaction of the state file that later applies extend
//! ([`Pending`]), the way etcd batches its backend. It is committed [`FLUSH_AFTER`] after the
//! first of them, after [`MAX_PENDING`] entries, and whenever a read, a watch replay, a snapshot
//! or a membership change needs the file to hold everything applied ([`Shared::visible`]). So a
//! reader always sees every applied entry, and a stream of writes with nobody reading pays for
//! one commit per batch instead of one per entry. Watchers are told of a revision as it is
//! applied; a replay reads history only after committing what is pending.
//!
//! Commits skip the fsync, except at least every [`DURABLE_EVERY`], for membership changes
//! and snapshots, and at shutdown; the raft log is what makes a write durable. After a crash
//! the state file reopens at its last durable commit, with `last_applied` to match, and raft
//! applies the rest again from the log. Snapshots commit durably, so the log is only ever
//! purged up to a durable state. A failed commit loses applies raft counts as done, so it
//! stops this node's reads and applies until a restart applies them again from the log.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::db::{DbCell, DbResultExt, HISTORY, KV, SM_META, SNAPSHOT, decode, encode};
use crate::error::StoreError;
use crate::keyspace::{SmMeta, StoredKv};
use crate::log_store::Durable;
use crate::mvcc::{KvState, apply_txn};
use crate::raft_types::{Command, CommandResponse, NodeId, ProposalId, TypeConfig};
use crate::types::{KeyValue, Txn, TxnResponse, WatchEvent};

const CURRENT_SNAPSHOT: &str = "current";
const SNAPSHOT_FORMAT: u32 = 1;
/// Applies commit durably at least this often; in between they stay in memory (raft re-applies
/// them from its log after a crash).
const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// Pending applies are committed at the latest this long after the first of them.
const FLUSH_AFTER: Duration = Duration::from_millis(10);
/// Pending applies are committed once they hold this many entries.
const MAX_PENDING: usize = 1024;
/// How long a read waits for writes answered early to be applied.
const ACKED_WAIT: Duration = Duration::from_secs(5);
/// Revisions a watcher may fall behind the live channel before it is told it lagged.
pub(crate) const WATCH_CHANNEL_CAPACITY: usize = 4096;

/// The events of one revision, as published to live watchers.
#[derive(Debug)]
pub(crate) struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<WatchEvent>,
}

/// What live watchers receive.
#[derive(Debug, Clone)]
pub(crate) enum WatchMessage {
    Revision(Arc<RevisionEvents>),
    /// A snapshot replaced the keyspace: history before `compacted` is gone.
    Reset {
        compacted: u64,
    },
    /// The store shut down.
    Closed,
}

/// State shared by the state machine, its snapshot builders, the store and watches.
#[derive(Debug)]
pub(crate) struct Shared {
    pub db: Arc<DbCell>,
    /// Latest applied revision.
    pub revision: AtomicU64,
    pub events: broadcast::Sender<WatchMessage>,
    snapshot_seq: AtomicUsize,
    /// Proposers waiting for their transactions' responses, answered as soon as an apply has
    /// computed them (see [`crate::propose`]).
    pub early: Mutex<HashMap<ProposalId, oneshot::Sender<Vec<TxnResponse>>>>,
    /// The highest revision answered early; reads on this node wait until it is applied.
    acked: AtomicU64,
    /// Signalled whenever `revision` moves.
    applied: (Mutex<()>, Condvar),
    /// `revision`, for async waiters.
    applied_revision: tokio::sync::watch::Sender<u64>,
    /// When an apply last committed durably.
    last_durable: Mutex<Instant>,
    /// Applies not yet committed to the state file.
    pending: Mutex<Option<Pending>>,
    /// Whether `pending` may hold applies: readers that find it false need not take the lock.
    /// It turns false only once they are committed.
    has_pending: AtomicBool,
    /// Whether a timer will commit what is pending.
    flush_scheduled: AtomicBool,
    /// Pending applies are committed at the latest this long after the first of them.
    flush_after: Duration,
    /// Why a write to the state file failed, once one has.
    failed: OnceLock<String>,
}

/// Applied entries not yet committed: the open write transaction that holds them, and the
/// metadata as of the last of them (written to `sm_meta` when the transaction commits).
struct Pending {
    txn: redb::WriteTransaction,
    meta: SmMeta,
    entries: usize,
    since: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("entries", &self.entries)
            .field("since", &self.since)
            .field("revision", &self.meta.revision)
            .finish_non_exhaustive()
    }
}

/// Whether a commit of the state file syncs it to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsync {
    /// Never: a reader waits for this commit.
    Never,
    /// When the last durable commit is [`DURABLE_EVERY`] old.
    IfDue,
    /// Always: membership changes, snapshots and shutdown.
    Always,
}

impl Shared {
    pub(crate) fn lock_early(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ProposalId, oneshot::Sender<Vec<TxnResponse>>>> {
        self.early.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
        self.applied_revision.send_replace(revision);
        let _guard = self.applied.0.lock().unwrap_or_else(|p| p.into_inner());
        self.applied.1.notify_all();
    }

    /// Waits, without holding a thread, until `revision` is applied here (a write this node
    /// had the leader make for it); false if that took longer than `timeout`.
    pub(crate) async fn applied(&self, revision: u64, timeout: Duration) -> bool {
        let mut applied = self.applied_revision.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The applied revision once every write answered early on this node is applied.
    pub(crate) fn acked_revision(&self) -> u64 {
        self.wait_for_acked();
        self.revision.load(Ordering::Acquire)
    }

    /// Waits until every write answered early on this node is applied, so reads here see the
    /// writes acknowledged here. The wait is one apply's commit; it gives up after
    /// [`ACKED_WAIT`] (only a failing state file takes that long, and raft stops then).
    pub(crate) fn wait_for_acked(&self) {
        let target = self.acked.load(Ordering::Acquire);
        if self.revision.load(Ordering::Acquire) >= target {
            return;
        }
        let deadline = Instant::now() + ACKED_WAIT;
        let mut guard = self.applied.0.lock().unwrap_or_else(|p| p.into_inner());
        while self.revision.load(Ordering::Acquire) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = match self.applied.1.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    pub(crate) fn new(db: Arc<DbCell>, revision: u64) -> Arc<Self> {
        Self::with_flush_after(db, revision, FLUSH_AFTER)
    }

    fn with_flush_after(db: Arc<DbCell>, revision: u64, flush_after: Duration) -> Arc<Self> {
        let (events, _) = broadcast::channel(WATCH_CHANNEL_CAPACITY);
        Arc::new(Self {
            db,
            revision: AtomicU64::new(revision),
            events,
            snapshot_seq: AtomicUsize::new(0),
            early: Mutex::default(),
            acked: AtomicU64::new(revision),
            applied: (Mutex::new(()), Condvar::new()),
            applied_revision: tokio::sync::watch::Sender::new(revision),
            last_durable: Mutex::new(Instant::now()),
            pending: Mutex::new(None),
            has_pending: AtomicBool::new(false),
            flush_scheduled: AtomicBool::new(false),
            flush_after,
            failed: OnceLock::new(),
        })
    }

    fn lock_pending(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(problem) => Err(StoreError::StateFailed {
                problem: problem.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&self, err: &StoreError) {
        if self.failed.set(err.to_string()).is_ok() {
            tracing::error!(error = %err, "the state file failed; reads and applies stop until a restart");
        }
    }

    /// The state file with every entry applied so far committed to it: what reads open.
    pub(crate) fn visible(&self) -> Result<&DbCell, StoreError> {
        if self.has_pending.load(Ordering::Acquire) {
            self.flush(Fsync::Never)?;
        }
        self.check_failed()?;
        Ok(&self.db)
    }

    /// Commits what is pending, if anything.
    fn flush(&self, fsync: Fsync) -> Result<(), StoreError> {
        let mut slot = self.lock_pending();
        self.commit(&mut slot, fsync)
    }

    /// Commits the applies in `slot`, if any. The caller holds the lock, so `has_pending`
    /// turns false only once they are visible to readers.
    fn commit(&self, slot: &mut Option<Pending>, fsync: Fsync) -> Result<(), StoreError> {
        let Some(pending) = slot.take() else {
            return Ok(());
        };
        let committed = self.commit_pending(pending, fsync);
        self.has_pending.store(false, Ordering::Release);
        if let Err(err) = &committed {
            self.fail(err);
        }
        committed
    }

    fn commit_pending(&self, mut pending: Pending, fsync: Fsync) -> Result<(), StoreError> {
        let db = &*self.db;
        {
            let mut table = pending.txn.open_table(SM_META).db(db, "open sm_meta")?;
            pending.meta.write(db, &mut table)?;
        }
        if !self.durable_now(fsync) {
            pending
                .txn
                .set_durability(redb::Durability::None)
                .map_err(|e| StoreError::Internal(format!("setting apply durability: {e}")))?;
        }
        pending.txn.commit().db(db, "commit apply")
    }

    fn durable_now(&self, fsync: Fsync) -> bool {
        let mut last = self.last_durable.lock().unwrap_or_else(|p| p.into_inner());
        let durable = match fsync {
            Fsync::Never => false,
            Fsync::IfDue => last.elapsed() >= DURABLE_EVERY,
            Fsync::Always => true,
        };
        if durable {
            *last = Instant::now();
        }
        durable
    }

    /// A write transaction for applies, with the metadata as committed.
    fn begin(&self) -> Result<Pending, StoreError> {
        let db = &*self.db;
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            let meta = SmMeta::read(db, &txn.open_table(SM_META).db(db, "open sm_meta")?)?;
            Ok(Pending {
                txn,
                meta,
                entries: 0,
                since: Instant::now(),
            })
        })
    }

    /// Runs `write` on the pending transaction in `slot` (begun if there is none), which then
    /// holds applies. A failure loses the transaction with every apply in it, so it fails the
    /// state file.
    fn extend<R>(
        &self,
        slot: &mut Option<Pending>,
        write: impl FnOnce(&mut Pending) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.check_failed()?;
        let mut pending = match slot.take() {
            Some(pending) => pending,
            None => self.begin()?,
        };
        match write(&mut pending) {
            Ok(value) => {
                *slot = Some(pending);
                self.has_pending.store(true, Ordering::Release);
                Ok(value)
            }
            Err(err) => {
                drop(pending);
                self.has_pending.store(false, Ordering::Release);
                self.fail(&err);
                Err(err)
            }
        }
    }

    /// Runs `write` in the write transaction with whatever is pending, and commits it durably.
    fn write_durably<R>(
        &self,
        write: impl FnOnce(&redb::WriteTransaction, &mut SmMeta) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self.lock_pending();
        let value = self.extend(&mut slot, |pending| write(&pending.txn, &mut pending.meta))?;
        self.commit(&mut slot, Fsync::Always)?;
        Ok(value)
    }

    /// Commits what is pending, durably, and closes the state file. Idempotent.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        let committed = self.flush(Fsync::Always);
        let closed = self.db.close();
        committed.and(closed)
    }

    /// Commits what is pending `flush_after` from now, unless a timer already will.
    fn schedule_flush(self: &Arc<Self>) {
        if !self.has_pending.load(Ordering::Acquire)
            || self.flush_scheduled.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(shared.flush_after).await;
            shared.flush_scheduled.store(false, Ordering::Release);
            let flushing = shared.clone();
            let flushed = tokio::task::spawn_blocking(move || flushing.flush(Fsync::IfDue)).await;
            // A failed commit has failed the state file, which says why on every later use.
            if let Ok(Err(err)) = flushed {
                tracing::debug!(error = %err, "committing pending applies");
            }
        });
    }

    fn publish(&self, message: WatchMessage) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(message);
    }
}

/// The keyspace as a snapshot carries it.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    format: u32,
    revision: u64,
    kvs: Vec<KeyValue>,
}

/// The current snapshot as kept in the `snapshot` table.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// Raft state machine backed by `state.redb`.
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<Shared>,
    /// The raft log's sync: an entry is applied only once it is on disk in the log.
    log: Durable,
}

/// Builds snapshots from a consistent read of the state file.
#[derive(Debug)]
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

fn sm_read_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&err).into()
}

fn sm_write_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&err).into()
}

/// [`KvState`] over the `kv` table of an open write transaction.
struct TableKv<'a, 't> {
    db: &'a DbCell,
    table: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl KvState for TableKv<'_, '_> {
    type Error = StoreError;

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let value = self.table.get(key).db(self.db, "read kv")?;
        value
            .map(|v| decode::<StoredKv>("stored key", v.value()).map(|s| s.into_kv(key.to_vec())))
            .transpose()
    }

    fn put(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        let bytes = encode("stored key", &StoredKv::from_kv(kv))?;
        self.table
            .insert(kv.key.as_slice(), bytes.as_slice())
            .db(self.db, "write kv")?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.table.remove(key).db(self.db, "delete kv")?;
        Ok(())
    }
}

/// Applies transactions inside one write transaction of the state file.
struct ApplyTxn<'a, 't> {
    db: &'a DbCell,
    kv: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
    history: &'a mut redb::Table<'t, u64, &'static [u8]>,
    /// The current revision; a transaction that changes anything takes the next one.
    revision: &'a mut u64,
    /// The events of every revision applied, to publish once the write commits.
    published: &'a mut Vec<RevisionEvents>,
}

impl ApplyTxn<'_, '_> {
    fn apply(&mut self, request: &Txn) -> Result<TxnResponse, StoreError> {
        let mut state = TableKv {
            db: self.db,
            table: self.kv,
        };
        let outcome = apply_txn(&mut state, *self.revision, request)?;
        if !outcome.events.is_empty() {
            *self.revision = outcome.response.revision;
            let bytes = encode("history entry", &outcome.events)?;
            self.history
                .insert(*self.revision, bytes.as_slice())
                .db(self.db, "write history")?;
            self.published.push(RevisionEvents {
                revision: *self.revision,
                events: outcome.events,
            });
        }
        Ok(outcome.response)
    }
}

impl StateMachine {
    pub(crate) fn new(shared: Arc<Shared>, log: Durable) -> Self {
        Self { shared, log }
    }

    fn apply_entries(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<CommandResponse>, StoreError> {
        let shared = &*self.shared;
        let count = entries.len();
        let membership = entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        let mut slot = shared.lock_pending();
        let (responses, published, revision, due) = shared.extend(&mut slot, |pending| {
            let (responses, published) = self.apply_to(pending, entries)?;
            pending.entries += count;
            let due = membership
                || pending.entries >= MAX_PENDING
                || pending.since.elapsed() >= shared.flush_after;
            Ok((responses, published, pending.meta.revision, due))
        })?;
        if due {
            let sync = if membership {
                Fsync::Always
            } else {
                Fsync::IfDue
            };
            shared.commit(&mut slot, sync)?;
        }
        drop(slot);
        // In order, after `revision` moved: a watcher that subscribed earlier and replays
        // history commits what is pending first, so it finds every revision on disk or here.
        shared.set_revision(revision);
        for batch in published {
            shared.publish(WatchMessage::Revision(Arc::new(batch)));
        }
        Ok(responses)
    }

    /// Applies `entries` to the pending transaction; returns their responses and the events
    /// of each revision they made.
    fn apply_to(
        &self,
        pending: &mut Pending,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<(Vec<CommandResponse>, Vec<RevisionEvents>), StoreError> {
        let db = &*self.shared.db;
        let meta = &mut pending.meta;
        let mut kv_table = pending.txn.open_table(KV).db(db, "open kv")?;
        let mut history = pending.txn.open_table(HISTORY).db(db, "open history")?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut published = Vec::new();
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Membership(membership) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::Empty
                }
                EntryPayload::Normal(Command::Txns { id, txns }) => {
                    let mut apply = ApplyTxn {
                        db,
                        kv: &mut kv_table,
                        history: &mut history,
                        revision: &mut meta.revision,
                        published: &mut published,
                    };
                    let responses: Vec<TxnResponse> = txns
                        .iter()
                        .map(|request| apply.apply(request))
                        .collect::<Result<_, _>>()?;
                    // The entry is committed, so these are its responses whatever happens to
                    // this node from here; its proposer need not wait for the state file.
                    let early = self.shared.lock_early().remove(&id);
                    if let Some(proposer) = early {
                        let highest = responses.iter().map(|r| r.revision).max();
                        self.shared
                            .acked
                            .fetch_max(highest.unwrap_or(0), Ordering::AcqRel);
                        let _ = proposer.send(responses.clone());
                    }
                    CommandResponse::Txns(responses)
                }
                EntryPayload::Normal(Command::Compact { revision }) => {
                    if revision > meta.revision {
                        CommandResponse::CompactRejected {
                            requested: revision,
                            current: meta.revision,
                        }
                    } else {
                        if revision > meta.compacted {
                            history
                                .retain_in(..revision, |_, _| false)
                                .db(db, "compact history")?;
                            meta.compacted = revision;
                        }
                        CommandResponse::Compacted {
                            compacted: meta.compacted,
                        }
                    }
                }
            };
            responses.push(response);
        }
        Ok((responses, published))
    }

    fn read_applied_state(&self) -> Result<SmMeta, StoreError> {
        crate::keyspace::read_meta(self.shared.visible()?)
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let db = &*self.shared.db;
        let stored: Option<StoredSnapshot> = db.with(|d| {
            let txn = d.begin_read().db(db, "begin read")?;
            let table = txn.open_table(SNAPSHOT).db(db, "open snapshot")?;
            let value = table.get(CURRENT_SNAPSHOT).db(db, "read snapshot")?;
            value
                .map(|v| decode("stored snapshot", v.value()))
                .transpose()
        })?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }

    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let payload: SnapshotPayload = decode("snapshot", &data)?;
        if payload.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Internal(format!(
                "snapshot {} has format {}, this node reads format {SNAPSHOT_FORMAT}",
                meta.snapshot_id, payload.format
            )));
        }
        let sm_meta = SmMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: payload.revision,
            // The history before the snapshot is not carried: nothing before it can be replayed.
            compacted: payload.revision + 1,
        };
        let stored = encode(
            "stored snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        let db = &*self.shared.db;
        self.shared.write_durably(|txn, applied| {
            let mut kv = txn.open_table(KV).db(db, "open kv")?;
            kv.retain(|_, _| false).db(db, "clear kv")?;
            for item in &payload.kvs {
                let bytes = encode("stored key", &StoredKv::from_kv(item))?;
                kv.insert(item.key.as_slice(), bytes.as_slice())
                    .db(db, "write kv")?;
            }
            let mut history = txn.open_table(HISTORY).db(db, "open history")?;
            history.retain(|_, _| false).db(db, "clear history")?;
            let mut snapshots = txn.open_table(SNAPSHOT).db(db, "open snapshot")?;
            snapshots
                .insert(CURRENT_SNAPSHOT, stored.as_slice())
                .db(db, "write snapshot")?;
            *applied = sm_meta.clone();
            Ok(())
        })?;
        self.shared.set_revision(payload.revision);
        self.shared.publish(WatchMessage::Reset {
            compacted: sm_meta.compacted,
        });
        Ok(())
    }
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let db = self.shared.visible()?;
        let (meta, kvs) = crate::keyspace::read_all(db)?;
        let payload = SnapshotPayload {
            format: SNAPSHOT_FORMAT,
            revision: meta.revision,
            kvs,
        };
        let data = encode("snapshot", &payload)?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let last = meta.last_applied.map_or_else(
            || "none".to_string(),
            |id| format!("{}-{}", id.leader_id, id.index),
        );
        let snapshot_meta = SnapshotMeta {
            last_log_id: meta.last_applied,
            last_membership: meta.membership.clone(),
            snapshot_id: format!("{last}-rev{}-{seq}", meta.revision),
        };
        let stored = encode(
            "stored snapshot",
            &StoredSnapshot {
                meta: snapshot_meta.clone(),
                data: data.clone(),
            },
        )?;
        self.shared.write_durably(|txn, _| {
            let mut snapshots = txn.open_table(SNAPSHOT).db(db, "open snapshot")?;
            // An installed snapshot may be newer than this build: never replace it with an older one.
            let newer_exists = match snapshots.get(CURRENT_SNAPSHOT).db(db, "read snapshot")? {
                Some(current) => {
                    decode::<StoredSnapshot>("stored snapshot", current.value())?
                        .meta
                        .last_log_id
                        > snapshot_meta.last_log_id
                }
                None => false,
            };
            if !newer_exists {
                snapshots
                    .insert(CURRENT_SNAPSHOT, stored.as_slice())
                    .db(db, "write snapshot")?;
            }
            Ok(())
        })?;
        Ok(Snapshot {
            meta: snapshot_meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<openraft::LogId<NodeId>>,
            StoredMembership<NodeId, BasicNode>,
        ),
        StorageError<NodeId>,
    > {
        let meta = self.read_applied_state().map_err(sm_read_err)?;
        Ok((meta.last_applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // An apply may read pages from disk and commit with an fsync: off the async workers,
        // which the log append, the peer transport and the next writers need meanwhile.
        let entries: Vec<_> = entries.into_iter().collect();
        // The leader counts its own copy before it is synced (see `crate::log_store`): once
        // applied, an entry is answered and read, so it must not be lost with this node.
        if let Some(last) = entries.last() {
            self.log
                .holds(last.log_id.index)
                .await
                .map_err(sm_write_err)?;
        }
        let machine = StateMachine {
            shared: self.shared.clone(),
            log: self.log.clone(),
        };
        let applied = tokio::task::spawn_blocking(move || machine.apply_entries(entries))
            .await
            .map_err(|e| StoreError::Internal(format!("applying entries panicked: {e}")))
            .and_then(|applied| applied)
            .map_err(sm_write_err)?;
        self.shared.schedule_flush();
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.install(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::log_store::LogStore;
    use crate::raft_types::ProposalId;
    use crate::types::Op;

    /// A state machine over a fresh data dir, its pending applies committed after `flush_after`.
    fn open(dir: &std::path::Path, flush_after: Duration) -> (LogStore, StateMachine) {
        let data = crate::db::open_data_dir(dir, 1).unwrap();
        let state = Arc::new(data.state);
        let revision = crate::keyspace::read_meta(&state).unwrap().revision;
        let shared = Shared::with_flush_after(state, revision, flush_after);
        let log = LogStore::open(1, Arc::new(data.log), &data.wal, 0).unwrap();
        let durable = log.durable();
        (log, StateMachine::new(shared, durable))
    }

    fn put(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Txns {
                id: ProposalId {
                    node: 1,
                    seq: index,
                },
                txns: vec![Txn {
                    success: vec![Op::Put {
                        key: key.into(),
                        value: value.into(),
                    }],
                    ..Txn::default()
                }],
            }),
        }
    }

    /// The value of `key` as committed to the state file, without committing what is pending.
    fn committed_value(sm: &StateMachine, key: &str) -> Option<Vec<u8>> {
        crate::keyspace::get(&sm.shared.db, key.as_bytes())
            .unwrap()
            .0
            .map(|kv| kv.value)
    }

    fn read(sm: &StateMachine, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = sm.shared.visible()?;
        Ok(crate::keyspace::get(db, key.as_bytes())?
            .0
            .map(|kv| kv.value))
    }

    #[test]
    fn reads_see_applies_before_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = open(dir.path(), Duration::from_secs(3600));
        sm.apply_entries(vec![put(1, "a", "1"), put(2, "b", "2")])
            .unwrap();
        sm.apply_entries(vec![put(3, "a", "3")]).unwrap();
        assert_eq!(committed_value(&sm, "a"), None, "applies wait for a commit");
        assert_eq!(sm.shared.revision.load(Ordering::Acquire), 4);

        assert_eq!(read(&sm, "a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(read(&sm, "b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(committed_value(&sm, "a"), Some(b"3".to_vec()));
        let meta = sm.read_applied_state().unwrap();
        assert_eq!(meta.last_applied.map(|id| id.index), Some(3));
        assert_eq!(meta.revision, 4);
    }

    #[test]
    fn the_timer_commits_pending_applies() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(dir.path(), Duration::from_millis(20));
        runtime.block_on(async {
            sm.apply(vec![put(1, "a", "1")]).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while committed_value(&sm, "a").is_none() {
                assert!(
                    Instant::now() < deadline,
                    "pending applies were never committed"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(!sm.shared.has_pending.load(Ordering::Acquire));
    }

    #[test]
    fn a_snapshot_holds_pending_applies() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = open(dir.path(), Duration::from_secs(3600));
        sm.apply_entries(vec![put(1, "a", "1")]).unwrap();
        let builder = SnapshotBuilder {
            shared: sm.shared.clone(),
        };
        let snapshot = builder.build().unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(1));
        let payload: SnapshotPayload = decode("snapshot", snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(payload.revision, 2);
        assert_eq!(payload.kvs.len(), 1);
        assert_eq!(
            sm.current_snapshot().unwrap().map(|s| s.meta.snapshot_id),
            Some(snapshot.meta.snapshot_id)
        );
    }

    #[test]
    fn close_commits_pending_applies() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, sm) = open(dir.path(), Duration::from_secs(3600));
            sm.apply_entries(vec![put(1, "a", "1")]).unwrap();
            sm.shared.close().unwrap();
            log.close().unwrap();
        }
        let (_log, sm) = open(dir.path(), Duration::from_secs(3600));
        assert_eq!(read(&sm, "a").unwrap(), Some(b"1".to_vec()));
        let meta = sm.read_applied_state().unwrap();
        assert_eq!(meta.last_applied.map(|id| id.index), Some(1));
    }

    #[test]
    fn a_failed_write_stops_reads_and_applies_and_keeps_the_file_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, sm) = open(dir.path(), Duration::from_secs(3600));
            sm.apply_entries(vec![put(1, "a", "1")]).unwrap();
            read(&sm, "a").unwrap();
            sm.apply_entries(vec![put(2, "b", "2")]).unwrap();
            let failed = sm.shared.write_durably(|_, _| -> Result<(), StoreError> {
                Err(StoreError::Internal("injected failure".into()))
            });
            assert!(failed.is_err());
            for err in [
                read(&sm, "a").unwrap_err(),
                sm.apply_entries(vec![put(3, "c", "3")]).unwrap_err(),
            ] {
                assert!(
                    matches!(&err, StoreError::StateFailed { problem } if problem.contains("injected failure")),
                    "{err}"
                );
            }
            sm.shared.close().unwrap();
            log.close().unwrap();
        }
        // The entry lost with the pending transaction is applied again from the log on restart.
        let (_log, sm) = open(dir.path(), Duration::from_secs(3600));
        let meta = sm.read_applied_state().unwrap();
        assert_eq!(meta.last_applied.map(|id| id.index), Some(1));
        assert_eq!(read(&sm, "a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(read(&sm, "b").unwrap(), None);
    }
}
