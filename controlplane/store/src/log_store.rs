//! The raft log store: entries in the write-ahead log ([`crate::wal`]); vote and last-purged
//! log id in `raft-log.redb`.
//!
//! Truncations, purges and votes are synced (fsync) before they are acknowledged, and so are
//! a follower's appends: a follower tells the leader it holds an entry only once the entry
//! survives a crash. The syncer thread runs a follower's fsync too, while the append awaits it,
//! so a slow disk holds up raft but not the async worker and whatever else it runs. The
//! committed log id is not stored: it is only a hint, and after a
//! restart the state machine catches up once the leader commits.
//!
//! # The leader syncs while it replicates
//!
//! openraft 0.9 sends an entry to followers only once the leader's own append returns, which
//! would put two fsyncs (the leader's, then a follower's) one after the other on every write.
//! As etcd does (Raft thesis §10.2.1), the leader's appends return once written, and a syncer
//! thread makes them durable while they are replicated. raft then counts the leader's copy
//! towards a quorum before it is on disk. That is safe as long as nothing outside this process
//! learns an entry is committed before the leader's copy is durable, and three gates see to it
//! ([`Durable`]):
//! - the state machine applies an entry (and so answers its writer and serves reads of it)
//!   only once it is durable here;
//! - append-entries carrying a commit index wait until the log is durable that far, so no
//!   follower applies what this leader could still lose (after 50 ms they carry a lower
//!   commit index instead, so a slow disk does not run out openraft's RPC timeout);
//! - a vote request waits until the log it claims is durable.
//!
//! A node that stops leading syncs what it wrote before it saves the new vote: as a follower,
//! openraft acknowledges entries it already holds without appending them.
//!
//! And a leader never writes in the same term after it lost unsynced entries: openraft 0.9
//! resumes leading in the old term after a restart, and it could then write other entries at
//! the indexes of lost ones, with the same term, while a follower holds the lost ones. Only a
//! crash of the machine loses written entries; a killed process leaves them in the page cache,
//! and [`Wal::open`] syncs them. So [`LogStore::open`] compares the kernel's boot id with the
//! one it recorded: after a reboot it turns a vote that made this node leader back into a
//! plain vote for itself, and the node must win a new term.
//!
//! A failed fsync is the other way to lose written entries: the kernel may drop the pages it
//! could not write, yet a later fsync through a new file handle reports success. So a failed
//! sync stops the log (no more appends) and records where the unsynced entries began
//! (`sync_failed_from`); the next open drops the entries from there on and makes the node win
//! a new term before it leads, as after a reboot.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::ReadableDatabase;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::db::{DbCell, DbResultExt, LOG_META, decode, encode};
use crate::error::StoreError;
use crate::raft_types::{NodeId, TypeConfig};
use crate::wal::{PendingSync, Wal};

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
/// The kernel boot id when the log was last opened.
const BOOT_ID: &str = "boot_id";
/// Where the kernel tells its boot id, which changes with every boot.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
/// Set when a sync of the log failed: entries from this index on may not be on disk.
const SYNC_FAILED_FROM: &str = "sync_failed_from";

/// Raft log storage: entries in the write-ahead log ([`Wal`], `raft-wal/`), vote and
/// last-purged log id in `raft-log.redb`. Clones share both; openraft serializes all writes
/// through the one `&mut` handle it owns.
#[derive(Debug, Clone)]
pub struct LogStore {
    me: NodeId,
    db: Arc<DbCell>,
    wal: Arc<Mutex<Option<Wal>>>,
    disk: Arc<DiskState>,
    /// The term in which this node leads, by its last saved vote; 0 while it does not.
    leading: Arc<AtomicU64>,
    /// How far the log is on disk.
    durable: Arc<watch::Sender<DurableState>>,
    /// Syncs for the syncer thread, which ends when the last clone of the log store is gone.
    syncs: mpsc::Sender<PendingSync>,
}

#[derive(Debug, Clone, Default)]
struct DurableState {
    /// Entries before this index are on disk...
    end: u64,
    /// ...and those from there up to this one are written but not yet synced.
    written: u64,
    /// Why the log could not be synced; the log takes no more appends.
    failed: Option<String>,
}

/// Waits until the log is on disk up to an index (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Durable(watch::Receiver<DurableState>);

impl Durable {
    /// Returns once the entry at `index` is on disk, or at once if the log never wrote it.
    /// Fails if the log cannot be synced or is closed.
    pub(crate) async fn holds(&self, index: u64) -> Result<(), StoreError> {
        let mut durable = self.0.clone();
        let state = durable
            .wait_for(|d| index < d.end || index >= d.written || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Stopped)?;
        match &state.failed {
            Some(problem) => Err(StoreError::LogSync {
                problem: problem.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Entries before this index are on disk. Fails if the log cannot be synced.
    pub(crate) fn end(&self) -> Result<u64, StoreError> {
        let state = self.0.borrow();
        match &state.failed {
            Some(problem) => Err(StoreError::LogSync {
                problem: problem.clone(),
            }),
            None => Ok(state.end),
        }
    }
}

/// Whether appends are held up by a full disk.
#[derive(Debug)]
struct DiskState {
    /// Why the disk is full, while it is.
    full: watch::Sender<Option<String>>,
    /// Set when the store shuts down: an append waiting for space gives up.
    stopping: AtomicBool,
}

/// How often an append held up by a full disk tries again.
const DISK_FULL_RETRY: Duration = Duration::from_millis(200);

fn read_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&err).into()
}

fn write_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&err).into()
}

impl LogStore {
    /// Opens the log of node `me` in a data directory whose files
    /// [`crate::db::open_data_dir`] opened.
    pub(crate) fn open(
        me: NodeId,
        db: Arc<DbCell>,
        wal_dir: &Path,
        reserve: u64,
    ) -> Result<Self, StoreError> {
        let (syncs, requests) = mpsc::channel();
        let store = Self {
            me,
            db,
            wal: Arc::new(Mutex::new(None)),
            disk: Arc::new(DiskState {
                full: watch::Sender::new(None),
                stopping: AtomicBool::new(false),
            }),
            leading: Arc::new(AtomicU64::new(0)),
            durable: Arc::new(watch::Sender::new(DurableState::default())),
            syncs,
        };
        let last_purged = store.read_meta(LAST_PURGED)?;
        let mut wal = Wal::open(wal_dir, last_purged, reserve)?;
        let sync_failed_from: Option<u64> = store.read_meta(SYNC_FAILED_FROM)?;
        if let Some(from) = sync_failed_from {
            // A new file handle's fsync succeeds even though pages an earlier one failed to
            // write are gone from the disk (they are still readable from the page cache).
            tracing::warn!(
                from,
                "a sync of the raft log failed before this start: the entries from {from} on may \
                 not be on disk, so they are dropped and this node must win a new term to lead"
            );
            wal.truncate(from)?;
        }
        store.publish(&wal);
        *store.lock() = Some(wal);
        let leading = store.resume_or_forget_leading(boot_id(), sync_failed_from.is_some())?;
        store.leading.store(leading.unwrap_or(0), Ordering::Release);
        if sync_failed_from.is_some() {
            store.remove_meta(SYNC_FAILED_FROM)?;
        }
        // Weak: a dropped log store releases its files at once, whatever the thread is doing.
        let (wal, durable) = (store.wal.clone(), store.durable.clone());
        let db = Arc::downgrade(&store.db);
        std::thread::Builder::new()
            .name(format!("raft-log-sync-{me}"))
            .spawn(move || run_syncer(&wal, &durable, &db, &requests))
            .map_err(|source| StoreError::Io {
                op: "cannot start the raft log syncer thread for",
                path: wal_dir.to_path_buf(),
                source,
            })?;
        Ok(store)
    }

    /// After a reboot (or when the boot id is unknown), or with `lost_writes` (a sync of the
    /// log failed), makes a vote that made this node leader a plain vote for itself (see the
    /// module docs); then records `boot`. Returns the term this node still leads in, if any:
    /// openraft resumes leading it without saving the vote again.
    fn resume_or_forget_leading(
        &self,
        boot: Option<String>,
        lost_writes: bool,
    ) -> Result<Option<u64>, StoreError> {
        let recorded: Option<String> = self.read_meta(BOOT_ID)?;
        let same_boot = boot.is_some() && recorded == boot;
        let mut leading = None;
        if let Some(vote) = self.read_meta::<Vote<NodeId>>(VOTE)?
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(self.me)
        {
            let term = vote.leader_id().term;
            if same_boot && !lost_writes {
                leading = Some(term);
            } else {
                tracing::info!(
                    term,
                    "this node led before it lost unsynced writes (a reboot, or a failed sync): \
                     it must win a new term to lead again"
                );
                self.write_meta(VOTE, &Vote::new(term, self.me))?;
            }
        }
        if let Some(boot) = boot
            && !same_boot
        {
            self.write_meta(BOOT_ID, &boot)?;
        }
        Ok(leading)
    }

    /// Asks the syncer thread to run `sync`; if the thread is gone, the log is failed.
    fn request_sync(&self, sync: PendingSync) {
        if self.syncs.send(sync).is_err() {
            fail(&self.durable, "the raft log syncer thread is gone".into());
        }
    }

    /// Returns once everything written to the log is on disk. A node that stops leading must
    /// not let the next leader count its own unsynced entries: openraft answers an append of
    /// entries it already holds without writing (or syncing) anything.
    async fn sync_written(&self) -> Result<(), StoreError> {
        let last = self.with_wal(|wal| {
            self.publish(wal);
            if let Some(sync) = wal.pending_sync() {
                self.request_sync(sync);
            }
            Ok(wal.written_end().checked_sub(1))
        })?;
        match last {
            Some(last) => self.durable().holds(last).await,
            None => Ok(()),
        }
    }

    /// Waits for the log to be on disk.
    pub(crate) fn durable(&self) -> Durable {
        Durable(self.durable.subscribe())
    }

    /// Publishes how far `wal` is on disk.
    fn publish(&self, wal: &Wal) {
        publish(&self.durable, wal);
    }

    /// Whether `entries` are this node's own, as the leader of the term it leads in: those
    /// are written without waiting for the sync.
    fn leads(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let term = self.leading.load(Ordering::Acquire);
        term != 0
            && entries.iter().all(|e| {
                e.log_id.leader_id.term == term && e.log_id.leader_id.voted_for() == Some(self.me)
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Wal>> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_wal<R>(
        &self,
        f: impl FnOnce(&mut Wal) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self.lock().as_mut() {
            Some(wal) => {
                let result = f(wal);
                if let Err(err @ StoreError::LogSync { .. }) = &result {
                    lost_writes(&self.durable, &self.db, wal.durable_end(), err);
                }
                result
            }
            None => Err(StoreError::Stopped),
        }
    }

    /// Fails with [`StoreError::DiskFull`] while appends are held up by a full disk.
    pub(crate) fn check_disk(&self) -> Result<(), StoreError> {
        match &*self.disk.full.borrow() {
            Some(problem) => Err(StoreError::DiskFull {
                problem: problem.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Returns, with the reason, once appends are held up by a full disk.
    pub(crate) async fn disk_full(&self) -> StoreError {
        let mut full = self.disk.full.subscribe();
        let problem = full
            .wait_for(Option::is_some)
            .await
            .ok()
            .map(|problem| problem.clone().unwrap_or_default());
        match problem {
            Some(problem) => StoreError::DiskFull { problem },
            // The log store is gone, and so is the store; the write fails with that.
            None => std::future::pending().await,
        }
    }

    /// Makes an append that waits for disk space give up, so raft can shut down.
    pub(crate) fn stop_waiting(&self) {
        self.disk.stopping.store(true, Ordering::Release);
    }

    /// Appends, waiting while the disk is full: raft must not see a failed append (it would
    /// stop for good), and nothing is acknowledged until it is on disk. Meanwhile new writes
    /// fail at once ([`Self::check_disk`]) and a follower whose leader stalls elects another.
    ///
    /// The syncer thread makes the entries durable. With `sync`, this returns once it has;
    /// meanwhile the async worker runs other tasks (raft waits for the append anyway).
    async fn append_waiting_for_space(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let last = entries.last().map(|e| e.log_id.index);
        loop {
            if let Some(problem) = &self.durable.borrow().failed {
                return Err(StoreError::LogSync {
                    problem: problem.clone(),
                });
            }
            let appended = self.with_wal(|wal| {
                let pending = wal.write(&entries)?;
                self.publish(wal);
                if let Some(pending) = pending {
                    self.request_sync(pending);
                }
                Ok(())
            });
            match appended {
                Err(StoreError::DiskFull { problem }) => {
                    if self.disk.stopping.load(Ordering::Acquire) {
                        return Err(StoreError::Stopped);
                    }
                    let first = self.disk.full.send_replace(Some(problem.clone())).is_none();
                    if first {
                        tracing::warn!("raft log append waits for disk space: {problem}");
                    }
                    tokio::time::sleep(DISK_FULL_RETRY).await;
                }
                Err(err) => return Err(err),
                Ok(()) => {
                    if self.disk.full.borrow().is_some() {
                        tracing::info!("disk space is back; raft log appends go on");
                        self.disk.full.send_replace(None);
                    }
                    if let (true, Some(last)) = (sync, last) {
                        self.durable().holds(last).await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Closes the log files; every later use fails with [`StoreError::Stopped`]. Idempotent.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        self.lock().take();
        self.db.close()
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &'static str) -> Result<Option<T>, StoreError> {
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_read().db(db, "begin read")?;
            let table = txn.open_table(LOG_META).db(db, "open raft_meta")?;
            let value = table.get(name).db(db, "read raft_meta")?;
            value.map(|v| decode(name, v.value())).transpose()
        })
    }

    fn write_meta<T: Serialize>(&self, name: &'static str, value: &T) -> Result<(), StoreError> {
        write_meta(&self.db, name, value)
    }

    fn remove_meta(&self, name: &'static str) -> Result<(), StoreError> {
        update_meta(&self.db, |table| table.remove(name).map(drop))
    }

    fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.with_wal(|wal| wal.read(start, end))
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
        let last_log_id = self.with_wal(|wal| Ok(wal.last_log_id()))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.or(last_purged_log_id),
        })
    }

    /// Records `log_id` as purged, then drops the entries up to it. A crash in between leaves
    /// entries that the next open skips.
    fn purge_upto(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.write_meta(LAST_PURGED, &log_id)?;
        self.with_wal(|wal| {
            wal.purge(log_id)?;
            self.publish(wal);
            Ok(())
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.read_entries(range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.log_state().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        let leads = vote.is_committed() && vote.leader_id().voted_for() == Some(self.me);
        let term = if leads { vote.leader_id().term } else { 0 };
        self.leading.store(term, Ordering::Release);
        if !leads {
            self.sync_written()
                .await
                .map_err(|e| StorageIOError::write_vote(&e))?;
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The flush is reported when the append returns: synced, or left to the syncer behind
        // the gates in the module docs.
        let entries: Vec<_> = entries.into_iter().collect();
        let sync = !self.leads(&entries);
        match self.append_waiting_for_space(entries, sync).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                Err(write_err(err))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.with_wal(|wal| {
            wal.truncate(log_id.index)?;
            self.publish(wal);
            Ok(())
        })
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).map_err(write_err)
    }
}

/// This boot's id, if the kernel tells it.
fn boot_id() -> Option<String> {
    match std::fs::read_to_string(BOOT_ID_FILE) {
        Ok(id) => Some(id.trim().to_owned()).filter(|id| !id.is_empty()),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read {BOOT_ID_FILE}; treating every start as a reboot");
            None
        }
    }
}

fn publish(durable: &watch::Sender<DurableState>, wal: &Wal) {
    let (end, written) = (wal.durable_end(), wal.written_end());
    durable.send_if_modified(|d| {
        let changed = (d.end, d.written) != (end, written);
        (d.end, d.written) = (end, written);
        changed
    });
}

/// Runs the syncs the leader's appends left behind, newest first: a sync of the last segment
/// covers every earlier write (a segment is synced before the next one starts).
fn run_syncer(
    wal: &Mutex<Option<Wal>>,
    durable: &watch::Sender<DurableState>,
    db: &Weak<DbCell>,
    requests: &mpsc::Receiver<PendingSync>,
) {
    let _failed_if_it_panics = FailOnPanic(durable);
    while let Ok(mut sync) = requests.recv() {
        while let Ok(newer) = requests.try_recv() {
            sync = newer;
        }
        let synced = sync.run();
        let mut guard = wal.lock().unwrap_or_else(|p| p.into_inner());
        let Some(wal) = guard.as_mut() else {
            continue;
        };
        match synced {
            Ok(()) => {
                wal.synced(&sync);
                publish(durable, wal);
            }
            Err(err) => match db.upgrade() {
                Some(db) => lost_writes(durable, &db, wal.durable_end(), &err),
                None => fail(durable, err.to_string()),
            },
        }
    }
}

fn write_meta<T: Serialize>(db: &DbCell, name: &'static str, value: &T) -> Result<(), StoreError> {
    let bytes = encode(name, value)?;
    update_meta(db, |table| table.insert(name, bytes.as_slice()).map(drop))
}

/// Changes the `raft_meta` table in one durable transaction.
fn update_meta(
    db: &DbCell,
    change: impl FnOnce(
        &mut redb::Table<'_, &'static str, &'static [u8]>,
    ) -> Result<(), redb::StorageError>,
) -> Result<(), StoreError> {
    db.with(|d| {
        let txn = d.begin_write().db(db, "begin write")?;
        {
            let mut table = txn.open_table(LOG_META).db(db, "open raft_meta")?;
            change(&mut table).db(db, "write raft_meta")?;
        }
        txn.commit().db(db, "commit raft_meta")
    })
}

/// After a failed fsync the kernel may have dropped the pages: the log can never again vouch
/// for what it holds, so it takes no more appends, and the next open drops what was not
/// synced (`SYNC_FAILED_FROM`).
fn lost_writes(
    durable: &watch::Sender<DurableState>,
    db: &DbCell,
    durable_end: u64,
    err: &StoreError,
) {
    tracing::error!(error = %err, "the raft log could not be synced; this node stops taking writes");
    if let Err(marking) = write_meta(db, SYNC_FAILED_FROM, &durable_end) {
        tracing::error!(error = %marking, "cannot record the failed sync of the raft log");
    }
    fail(durable, err.to_string());
}

fn fail(durable: &watch::Sender<DurableState>, problem: String) {
    durable.send_modify(|d| {
        d.failed.get_or_insert(problem);
    });
}

/// Fails the log if the syncer thread panics, so nothing waits for it forever.
struct FailOnPanic<'a>(&'a watch::Sender<DurableState>);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fail(self.0, "the raft log syncer thread panicked".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::db::open_data_dir;

    fn open(dir: &Path, me: NodeId) -> LogStore {
        let data = open_data_dir(dir, me).unwrap();
        LogStore::open(me, Arc::new(data.log), &data.wal, 0).unwrap()
    }

    fn blank(term: u64, leader: NodeId, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn only_the_leaders_own_entries_skip_waiting_for_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1);
        let own = [blank(2, 1, 1)];
        assert!(!log.leads(&own), "no vote saved yet");
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert!(!log.leads(&own), "a candidate's vote does not make it lead");
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        assert!(log.leads(&own));
        assert!(
            !log.leads(&[blank(1, 1, 1)]),
            "its entries from an older term"
        );
        assert!(!log.leads(&[blank(2, 1, 1), blank(1, 3, 2)]));
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        assert!(
            !log.leads(&own),
            "node 2 leads now: appends are a follower's"
        );
    }

    fn durable_end(log: &LogStore) -> u64 {
        log.with_wal(|wal| Ok(wal.durable_end())).unwrap()
    }

    /// Writes `entries` as the leader does, without asking the syncer for a sync.
    fn write_unsynced(log: &LogStore, entries: &[Entry<TypeConfig>]) {
        log.with_wal(|wal| wal.write(entries).map(drop)).unwrap();
    }

    async fn reopen(log: LogStore, dir: &Path) -> LogStore {
        log.close().unwrap();
        drop(log);
        open(dir, 1)
    }

    #[tokio::test]
    async fn after_a_reboot_a_vote_that_made_this_node_leader_is_a_plain_vote() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1);
        let boot = boot_id().expect("this kernel tells its boot id");
        assert_eq!(log.read_meta::<String>(BOOT_ID).unwrap(), Some(boot));
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();

        // The same boot (a restarted process): nothing written was lost, it may go on leading,
        // and its own appends skip waiting for the sync again.
        log = reopen(log, dir.path()).await;
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
        assert!(log.leads(&[blank(4, 1, 0)]));

        // Another boot: it must win a new term.
        log.write_meta(BOOT_ID, &"an earlier boot").unwrap();
        log = reopen(log, dir.path()).await;
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));

        // An unknown boot id counts as a reboot; a vote for another leader is kept as it is.
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        assert_eq!(log.resume_or_forget_leading(None, false).unwrap(), None);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        log.save_vote(&Vote::new_committed(5, 2)).await.unwrap();
        log.write_meta(BOOT_ID, &"an earlier boot").unwrap();
        let mut log = reopen(log, dir.path()).await;
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(5, 2))
        );
    }

    #[tokio::test]
    async fn a_node_that_stops_leading_syncs_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1);
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        // Written as the leader writes, with no sync asked of the syncer yet.
        let entries: Vec<_> = (0..3).map(|i| blank(2, 1, i)).collect();
        write_unsynced(&log, &entries);
        assert_eq!(durable_end(&log), 0);

        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        assert_eq!(durable_end(&log), 3);
    }

    #[tokio::test]
    async fn after_a_failed_sync_the_next_open_drops_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1);
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        let synced: Vec<_> = (0..3).map(|i| blank(2, 1, i)).collect();
        log.append_waiting_for_space(synced, true).await.unwrap();
        let unsynced: Vec<_> = (3..5).map(|i| blank(2, 1, i)).collect();
        write_unsynced(&log, &unsynced);
        let err = StoreError::LogSync {
            problem: "injected".into(),
        };
        let end = durable_end(&log);
        lost_writes(&log.durable, &log.db, end, &err);
        let refused = log
            .append_waiting_for_space(vec![blank(2, 1, 5)], false)
            .await;
        assert!(
            matches!(refused, Err(StoreError::LogSync { .. })),
            "{refused:?}"
        );

        // The same boot: the unsynced entries are dropped and leading needs a new term.
        let mut log = reopen(log, dir.path()).await;
        assert_eq!(
            log.log_state().unwrap().last_log_id.map(|id| id.index),
            Some(2)
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert!(!log.leads(&[blank(2, 1, 3)]));
        assert_eq!(log.read_meta::<u64>(SYNC_FAILED_FROM).unwrap(), None);
        log.append_waiting_for_space(vec![blank(3, 1, 3)], true)
            .await
            .expect("the reopened log takes appends");
    }

    #[tokio::test]
    async fn the_gate_opens_once_what_was_written_is_synced() {
        let durable = watch::Sender::new(DurableState {
            end: 3,
            written: 5,
            failed: None,
        });
        let gate = Durable(durable.subscribe());
        gate.holds(2).await.expect("synced already");
        gate.holds(5)
            .await
            .expect("never written here: nothing to wait for");
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.holds(4).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "entry 4 is written, not synced");
        durable.send_modify(|d| d.end = 5);
        waiting.await.unwrap().expect("synced now");

        durable.send_modify(|d| {
            d.written = 8;
            d.failed = Some("EIO".into());
        });
        let err = gate.holds(6).await.unwrap_err();
        assert!(matches!(err, StoreError::LogSync { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_leaders_writes_are_synced_by_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1);
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        let entries: Vec<_> = (0..3).map(|i| blank(2, 1, i)).collect();
        assert!(log.leads(&entries));
        log.append_waiting_for_space(entries, false).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), log.durable().holds(2))
            .await
            .expect("the syncer syncs the write")
            .unwrap();
        assert_eq!(durable_end(&log), 3);
    }

    #[tokio::test]
    async fn a_followers_append_returns_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1);
        for round in 0..20 {
            let entries: Vec<_> = (0..3).map(|i| blank(1, 2, 3 * round + i)).collect();
            assert!(!log.leads(&entries));
            log.append_waiting_for_space(entries, true).await.unwrap();
            assert_eq!(durable_end(&log), 3 * round + 3, "round {round}");
        }
    }
}
