//! The raft log store on redb: entries, vote, committed and last-purged log ids.
//!
//! Appends, truncations, purges and votes commit with immediate durability (fsync) before they
//! are acknowledged, so an appended entry or a saved vote survives a crash. The committed log
//! id is only a hint (after a restart raft re-applies up to it at once instead of waiting for
//! the leader), so it is written without an fsync of its own; the next durable commit carries
//! it to disk.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::{DbCell, DbResultExt, LOG, LOG_META, decode, encode};
use crate::error::StoreError;
use crate::raft_types::{NodeId, TypeConfig};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Raft log storage backed by `raft-log.redb`. Clones share the database; openraft serializes
/// all writes through the one `&mut` handle it owns.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DbCell>,
}

fn read_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&err).into()
}

fn write_err(err: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&err).into()
}

impl LogStore {
    pub(crate) fn new(db: Arc<DbCell>) -> Self {
        Self { db }
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

    fn write_meta<T: Serialize>(
        &self,
        name: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = encode(name, value)?;
        let db = &self.db;
        db.with(|d| {
            let mut txn = d.begin_write().db(db, "begin write")?;
            txn.set_durability(durability).db(db, "set durability")?;
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
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_read().db(db, "begin read")?;
            let table = txn.open_table(LOG).db(db, "open raft_log")?;
            let mut entries = Vec::new();
            for item in table.range(range).db(db, "range raft_log")? {
                let (_, value) = item.db(db, "read raft_log")?;
                entries.push(decode("raft log entry", value.value())?);
            }
            Ok(entries)
        })
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
        let db = &self.db;
        let last_entry: Option<Entry<TypeConfig>> = db.with(|d| {
            let txn = d.begin_read().db(db, "begin read")?;
            let table = txn.open_table(LOG).db(db, "open raft_log")?;
            let last = table.last().db(db, "read last raft_log entry")?;
            last.map(|(_, v)| decode("raft log entry", v.value()))
                .transpose()
        })?;
        let last_log_id = last_entry.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
                let mut table = txn.open_table(LOG).db(db, "open raft_log")?;
                for entry in entries {
                    let bytes = encode("raft log entry", &entry)?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .db(db, "append raft_log")?;
                }
            }
            txn.commit().db(db, "commit raft_log append")
        })
    }

    /// Removes entries with index >= `from`.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
                let mut table = txn.open_table(LOG).db(db, "open raft_log")?;
                table
                    .retain_in(from.., |_, _| false)
                    .db(db, "truncate raft_log")?;
            }
            txn.commit().db(db, "commit raft_log truncate")
        })
    }

    /// Records `log_id` as purged and removes entries up to it, in one transaction.
    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), StoreError> {
        let bytes = encode(LAST_PURGED, log_id)?;
        let db = &self.db;
        db.with(|d| {
            let txn = d.begin_write().db(db, "begin write")?;
            {
                let mut meta = txn.open_table(LOG_META).db(db, "open raft_meta")?;
                meta.insert(LAST_PURGED, bytes.as_slice())
                    .db(db, "write last_purged")?;
                let mut table = txn.open_table(LOG).db(db, "open raft_log")?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .db(db, "purge raft_log")?;
            }
            txn.commit().db(db, "commit raft_log purge")
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
        self.write_meta(VOTE, vote, Durability::Immediate)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_meta(COMMITTED, &committed, Durability::None)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED)
            .map_err(read_err)?
            .flatten())
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
        // The commit is durable when it returns, so the flush is reported right away.
        match self.append_entries(entries) {
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
        self.truncate_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(&log_id).map_err(write_err)
    }
}
