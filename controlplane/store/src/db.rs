//! The two redb files of a data directory, their tables, and the checks made when opening them.
//!
//! `raft-wal/` holds the raft log's entries (see [`crate::wal`]); `raft-log.redb` the vote and
//! the last-purged log id; `state.redb` the keyspace, its history, the applied state and the
//! current snapshot.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::wal::WAL_DIR;

pub(crate) const LOG_FILE: &str = "raft-log.redb";
pub(crate) const STATE_FILE: &str = "state.redb";

/// Version of the on-disk layout; bumped on any incompatible change.
const FORMAT_VERSION: u64 = 2;

/// Who a file belongs to: "node_id", "format".
pub(crate) const IDENTITY: TableDefinition<'_, &str, u64> = TableDefinition::new("identity");

/// Raft log metadata: "vote", "last_purged" -> postcard.
pub(crate) const LOG_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

/// Latest state of every key: key -> postcard(StoredKv).
pub(crate) const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
/// Change history: revision -> postcard(Vec<WatchEvent>).
pub(crate) const HISTORY: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("history");
/// State-machine metadata: "last_applied", "membership", "revision", "compacted" -> postcard.
pub(crate) const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
/// The current snapshot: "current" -> postcard(StoredSnapshot).
pub(crate) const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

/// A redb database that can be closed while other handles to it still exist: after
/// [`DbCell::close`], every use fails with [`StoreError::Stopped`] and the file is released.
#[derive(Debug)]
pub(crate) struct DbCell {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

impl DbCell {
    /// Runs `f` on the open database. Holding the read lock for the whole call keeps `close`
    /// from pulling the database away in the middle of a transaction.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let guard = self.db.read().map_err(|_| {
            StoreError::Internal(format!("lock of {} poisoned", self.path.display()))
        })?;
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Stopped),
        }
    }

    /// Closes the database, waiting for running transactions to finish. Idempotent.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().map_err(|_| {
            StoreError::Internal(format!("lock of {} poisoned", self.path.display()))
        })?;
        match guard.take() {
            Some(db) => db.close().map_err(|source| StoreError::Database {
                path: self.path.clone(),
                op: "close",
                source: Box::new(source.into()),
            }),
            None => Ok(()),
        }
    }

    /// Maps a redb error of this file to a [`StoreError`] naming the file and what was done.
    pub(crate) fn error(&self, op: &'static str, source: redb::Error) -> StoreError {
        match source {
            redb::Error::Corrupted(problem) => StoreError::CorruptFile {
                path: self.path.clone(),
                problem,
            },
            source => StoreError::Database {
                path: self.path.clone(),
                op,
                source: Box::new(source),
            },
        }
    }
}

/// Attaches the file and the operation to redb errors.
pub(crate) trait DbResultExt<T> {
    fn db(self, cell: &DbCell, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbResultExt<T> for Result<T, E> {
    fn db(self, cell: &DbCell, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| cell.error(op, e.into()))
    }
}

/// The databases of one data directory, and its log directory.
pub(crate) struct DataDir {
    pub log: DbCell,
    pub state: DbCell,
    pub wal: PathBuf,
}

/// The page cache of the state file. redb's default (1 GiB) keeps every page the process has
/// touched resident, so the control plane's memory grew with what it stores (10,000 pods of
/// about 6 KiB added 203 MiB); past this, reads come from the kernel's page cache, which the
/// kernel can reclaim. A list of those 10,000 pods took as long either way.
const STATE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// The page cache of the log file, which holds the vote and the last purged id.
const LOG_CACHE_BYTES: usize = 1024 * 1024;

/// Opens the data directory, creating it and both files if none of them exists yet.
///
/// A directory holding only one of the two files, a file that is empty, truncated or corrupt,
/// or a file written for another node id makes this fail; nothing is ever reinitialized over
/// existing data.
pub(crate) fn open_data_dir(dir: &Path, node_id: u64) -> Result<DataDir, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        op: "cannot create data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let log_path = dir.join(LOG_FILE);
    let state_path = dir.join(STATE_FILE);
    let wal = dir.join(WAL_DIR);
    let log_exists = exists(&log_path)?;
    let state_exists = exists(&state_path)?;
    match (log_exists, state_exists) {
        (true, true) => {
            if !exists(&wal)? {
                return Err(StoreError::IncompleteDataDir {
                    present: log_path,
                    missing: wal,
                });
            }
            Ok(DataDir {
                log: open_existing(&log_path, node_id, LOG_CACHE_BYTES)?,
                state: open_existing(&state_path, node_id, STATE_CACHE_BYTES)?,
                wal,
            })
        }
        (false, false) => {
            // The state file is created last: a crash in between leaves only the log file, which
            // the next open reports instead of silently starting over.
            std::fs::create_dir_all(&wal).map_err(|source| StoreError::Io {
                op: "cannot create log directory",
                path: wal.clone(),
                source,
            })?;
            let log = create_new(&log_path, node_id, LOG_CACHE_BYTES, |txn| {
                txn.open_table(LOG_META)?;
                Ok(())
            })?;
            let state = create_new(&state_path, node_id, STATE_CACHE_BYTES, |txn| {
                txn.open_table(KV)?;
                txn.open_table(HISTORY)?;
                txn.open_table(SM_META)?;
                txn.open_table(SNAPSHOT)?;
                Ok(())
            })?;
            Ok(DataDir { log, state, wal })
        }
        (true, false) => Err(StoreError::IncompleteDataDir {
            present: log_path,
            missing: state_path,
        }),
        (false, true) => Err(StoreError::IncompleteDataDir {
            present: state_path,
            missing: log_path,
        }),
    }
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            op: "cannot stat",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn open_error(path: &Path, source: redb::DatabaseError) -> StoreError {
    match source {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(problem)) => {
            StoreError::CorruptFile {
                path: path.to_path_buf(),
                problem,
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(err))
            if matches!(
                err.kind(),
                ErrorKind::InvalidData | ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::CorruptFile {
                path: path.to_path_buf(),
                problem: err.to_string(),
            }
        }
        source => StoreError::OpenDatabase {
            path: path.to_path_buf(),
            source: Box::new(source),
        },
    }
}

fn open_existing(path: &Path, node_id: u64, cache_bytes: usize) -> Result<DbCell, StoreError> {
    let len = std::fs::metadata(path)
        .map_err(|source| StoreError::Io {
            op: "cannot stat",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len == 0 {
        return Err(StoreError::CorruptFile {
            path: path.to_path_buf(),
            problem: "file is empty (truncated)".into(),
        });
    }
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(true)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let cell = DbCell {
        path: path.to_path_buf(),
        db: RwLock::new(Some(db)),
    };
    let (stored_node, format) = cell.with(|db| {
        let txn = db.begin_read().db(&cell, "begin read")?;
        let table = txn.open_table(IDENTITY).map_err(|e| match e {
            redb::TableError::TableDoesNotExist(_) => StoreError::CorruptFile {
                path: path.to_path_buf(),
                problem: "identity table is missing (not a strake store file?)".into(),
            },
            e => cell.error("open identity table", e.into()),
        })?;
        let read = |name: &'static str| -> Result<u64, StoreError> {
            let value = table.get(name).db(&cell, "read identity")?;
            value
                .map(|v| v.value())
                .ok_or_else(|| StoreError::CorruptFile {
                    path: path.to_path_buf(),
                    problem: format!("identity entry {name:?} is missing"),
                })
        };
        Ok((read("node_id")?, read("format")?))
    })?;
    if format != FORMAT_VERSION {
        return Err(StoreError::CorruptFile {
            path: path.to_path_buf(),
            problem: format!(
                "on-disk format version {format} is not the supported version {FORMAT_VERSION}"
            ),
        });
    }
    if stored_node != node_id {
        return Err(StoreError::NodeIdMismatch {
            path: path.to_path_buf(),
            stored: stored_node,
            configured: node_id,
        });
    }
    Ok(cell)
}

/// Creates a fresh database at `path` holding the identity and the tables `init` opens.
fn create_new(
    path: &Path,
    node_id: u64,
    cache_bytes: usize,
    init: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<DbCell, StoreError> {
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| open_error(path, e))?;
    let cell = DbCell {
        path: path.to_path_buf(),
        db: RwLock::new(Some(db)),
    };
    cell.with(|db| {
        let txn = db.begin_write().db(&cell, "begin write")?;
        {
            let mut identity = txn
                .open_table(IDENTITY)
                .db(&cell, "create identity table")?;
            identity
                .insert("node_id", node_id)
                .db(&cell, "write identity")?;
            identity
                .insert("format", FORMAT_VERSION)
                .db(&cell, "write identity")?;
        }
        init(&txn).db(&cell, "create tables")?;
        txn.commit().db(&cell, "commit")
    })?;
    Ok(cell)
}

/// Encodes a value for a table or the raft log.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|source| StoreError::Internal(format!("cannot encode {what}: {source}")))
}

/// Decodes a value read from a table or the raft log.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}
