//! The raft state machine: applies committed commands to the MVCC keyspace in `state.redb`,
//! records history, publishes events to watchers, and builds and installs snapshots.
//!
//! Applies commit to redb without an fsync, and durably at least every [`DURABLE_EVERY`] (and
//! whenever one changes the membership); the raft log is what makes a write durable. After a
//! crash the state file reopens at its last durable commit, with `last_applied` to match, and
//! raft applies the rest again from the log. That takes the state file's fsync off every
//! write. Snapshots commit durably, so the log is only ever purged up to a durable state.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

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
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a read waits for writes answered early to be applied.
const ACKED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
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
    last_durable: Mutex<std::time::Instant>,
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
    pub(crate) async fn applied(&self, revision: u64, timeout: std::time::Duration) -> bool {
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
        let deadline = std::time::Instant::now() + ACKED_WAIT;
        let mut guard = self.applied.0.lock().unwrap_or_else(|p| p.into_inner());
        while self.revision.load(Ordering::Acquire) < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
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
            last_durable: Mutex::new(std::time::Instant::now()),
        })
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
        let db = &*self.shared.db;
        let durable = {
            let mut last = self
                .shared
                .last_durable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= DURABLE_EVERY
                || entries
                    .iter()
                    .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        let (responses, published, revision) = db.with(|d| {
            let mut txn = d.begin_write().db(db, "begin write")?;
            if !durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| StoreError::Internal(format!("setting apply durability: {e}")))?;
            }
            let mut responses = Vec::new();
            let mut published = Vec::new();
            let meta = {
                let mut meta_table = txn.open_table(SM_META).db(db, "open sm_meta")?;
                let mut meta = SmMeta::read(db, &meta_table)?;
                let mut kv_table = txn.open_table(KV).db(db, "open kv")?;
                let mut history = txn.open_table(HISTORY).db(db, "open history")?;
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
                            // The entry is committed, so these are its responses whatever
                            // happens to this node from here; its proposer need not wait for
                            // the fsync below.
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
                meta.write(db, &mut meta_table)?;
                meta
            };
            txn.commit().db(db, "commit apply")?;
            Ok((responses, published, meta.revision))
        })?;
        // Publish only after the commit, in order, so a watcher that reads history after
        // subscribing finds every revision either on disk or in the channel.
        self.shared.set_revision(revision);
        for batch in published {
            self.shared.publish(WatchMessage::Revision(Arc::new(batch)));
        }
        Ok(responses)
    }

    fn read_applied_state(&self) -> Result<SmMeta, StoreError> {
        crate::keyspace::read_meta(&self.shared.db)
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
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
                let mut kv = txn.open_table(KV).db(db, "open kv")?;
                kv.retain(|_, _| false).db(db, "clear kv")?;
                for item in &payload.kvs {
                    let bytes = encode("stored key", &StoredKv::from_kv(item))?;
                    kv.insert(item.key.as_slice(), bytes.as_slice())
                        .db(db, "write kv")?;
                }
                let mut history = txn.open_table(HISTORY).db(db, "open history")?;
                history.retain(|_, _| false).db(db, "clear history")?;
                let mut meta_table = txn.open_table(SM_META).db(db, "open sm_meta")?;
                sm_meta.write(db, &mut meta_table)?;
                let mut snapshots = txn.open_table(SNAPSHOT).db(db, "open snapshot")?;
                snapshots
                    .insert(CURRENT_SNAPSHOT, stored.as_slice())
                    .db(db, "write snapshot")?;
            }
            txn.commit().db(db, "commit snapshot install")
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
        let db = &*self.shared.db;
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
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
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
            }
            txn.commit().db(db, "commit snapshot")
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
        // The commit blocks on an fsync: off the async workers, which the log append, the peer
        // transport and the next writers need meanwhile.
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
        tokio::task::spawn_blocking(move || machine.apply_entries(entries))
            .await
            .map_err(|e| StoreError::Internal(format!("applying entries panicked: {e}")))
            .and_then(|applied| applied)
            .map_err(sm_write_err)
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
