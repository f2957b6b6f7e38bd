//! The raft log store: entries in the write-ahead log ([`crate::wal`]); vote and last-purged
//! log id in `raft-log.redb`.
//!
//! Appends, truncations, purges and votes are synced (fsync) before they are acknowledged, so
//! an appended entry or a saved vote survives a crash. The committed log id is not stored: it
//! is only a hint, and after a restart the state machine catches up once the leader commits.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
use crate::wal::Wal;

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";

/// Raft log storage: entries in the write-ahead log ([`Wal`], `raft-wal/`), vote and
/// last-purged log id in `raft-log.redb`. Clones share both; openraft serializes all writes
/// through the one `&mut` handle it owns.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DbCell>,
    wal: Arc<Mutex<Option<Wal>>>,
    disk: Arc<DiskState>,
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
    /// Opens the log of a data directory whose files [`crate::db::open_data_dir`] opened.
    pub(crate) fn open(db: Arc<DbCell>, wal_dir: &Path, reserve: u64) -> Result<Self, StoreError> {
        let store = Self {
            db,
            wal: Arc::new(Mutex::new(None)),
            disk: Arc::new(DiskState {
                full: watch::Sender::new(None),
                stopping: AtomicBool::new(false),
            }),
        };
        let last_purged = store.read_meta(LAST_PURGED)?;
        let wal = Wal::open(wal_dir, last_purged, reserve)?;
        *store.lock() = Some(wal);
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Wal>> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_wal<R>(
        &self,
        f: impl FnOnce(&mut Wal) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self.lock().as_mut() {
            Some(wal) => f(wal),
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
    async fn append_waiting_for_space(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<(), StoreError> {
        loop {
            // Inline although it blocks on an fsync: raft waits for the append before it does
            // anything else, and a hop to a blocking thread costs more than it frees.
            let appended = self.with_wal(|wal| wal.append(&entries));
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
                result => {
                    if result.is_ok() && self.disk.full.borrow().is_some() {
                        tracing::info!("disk space is back; raft log appends go on");
                        self.disk.full.send_replace(None);
                    }
                    return result;
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
        let bytes = encode(name, value)?;
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
                let mut table = txn.open_table(LOG_META).db(db, "open raft_meta")?;
                table
                    .insert(name, bytes.as_slice())
                    .db(db, "write raft_meta")?;
            }
            txn.commit().db(db, "commit raft_meta")
        })
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
        self.with_wal(|wal| wal.purge(log_id))
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
            .map_err(|e| StorageIOError::write_vote(&e).into())
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
        // The append is synced when it returns, so the flush is reported right away.
        match self
            .append_waiting_for_space(entries.into_iter().collect())
            .await
        {
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
        self.with_wal(|wal| wal.truncate(log_id.index))
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).map_err(write_err)
    }
}
