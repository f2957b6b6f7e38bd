//! Backup and restore, the disaster-recovery path: [`Store::backup`] writes the keyspace from
//! one consistent read to a file while the store serves; [`Store::restore`] starts a new
//! one-member cluster from such a file.
//!
//! File layout: the magic `STRAKEBK`, the format (u32 LE), the body length (u64 LE), the body
//! (postcard [`BackupBody`]), then the SHA-256 of everything before it. Format 2 adds named
//! attachments to the body (what else the owner needs to bring the data back, such as the
//! keys Secrets are encrypted with); format 1 files, which have none, still restore.
//!
//! Backup files are written readable by their owner only (0600): they hold every object, and
//! their attachments may be keys.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::StoreConfig;
use crate::db::{DbResultExt, KV, SM_META, encode, open_data_dir};
use crate::error::StoreError;
use crate::keyspace::{SmMeta, StoredKv};
use crate::raft_types::NodeId;
use crate::store::{Store, wait_for};
use crate::types::KeyValue;

const MAGIC: &[u8; 8] = b"STRAKEBK";
const FORMAT: u32 = 2;
/// The first format, without attachments.
const FORMAT_V1: u32 = 1;
const HEADER_LEN: usize = MAGIC.len() + 4 + 8;
const CHECKSUM_LEN: usize = 32;
/// How long a restore waits for its snapshot to be built and the log purged under it.
const RESTORE_SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a backup file carries.
#[derive(Debug, Serialize, Deserialize)]
struct BackupBody {
    /// The node that wrote it.
    node_id: NodeId,
    /// The keyspace revision the backup is a picture of.
    revision: u64,
    kvs: Vec<KeyValue>,
    /// Named files the backup's owner attached, by name.
    attachments: BTreeMap<String, Vec<u8>>,
}

/// A format 1 body: no attachments.
#[derive(Debug, Deserialize)]
struct BackupBodyV1 {
    node_id: NodeId,
    revision: u64,
    kvs: Vec<KeyValue>,
}

/// What [`Store::backup`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// Keyspace revision of the backup: it holds every change up to and including this one.
    pub revision: u64,
    /// Live keys in it.
    pub keys: usize,
    /// Size of the file.
    pub bytes: u64,
}

/// What a backup file holds, as [`read_backup`] found it (whole and undamaged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupContents {
    /// Keyspace revision of the backup.
    pub revision: u64,
    /// Live keys in it.
    pub keys: usize,
    /// The store node that wrote it.
    pub written_by: NodeId,
    /// The files attached to it, by name.
    pub attachments: BTreeMap<String, Vec<u8>>,
}

/// Checks a whole backup file (`path` only names it in errors) and says what it holds,
/// without restoring anything.
pub fn read_backup(path: &Path, file: &[u8]) -> Result<BackupContents, StoreError> {
    let body = decode_file(path, file)?;
    Ok(BackupContents {
        revision: body.revision,
        keys: body.kvs.len(),
        written_by: body.node_id,
        attachments: body.attachments,
    })
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

fn encode_file(body: &BackupBody) -> Result<Vec<u8>, StoreError> {
    let body = encode("backup", body)?;
    let mut file = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    let checksum = Sha256::digest(&file);
    file.extend_from_slice(&checksum);
    Ok(file)
}

fn decode_file(path: &Path, file: &[u8]) -> Result<BackupBody, StoreError> {
    let corrupt = |problem: String| StoreError::CorruptBackup {
        path: path.to_path_buf(),
        problem,
    };
    if !file.starts_with(MAGIC) {
        return Err(corrupt(
            "it does not start with STRAKEBK (not a strake store backup)".into(),
        ));
    }
    if file.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(corrupt(format!(
            "it is {} bytes, shorter than a header and a checksum",
            file.len()
        )));
    }
    let mut format = [0u8; 4];
    format.copy_from_slice(&file[MAGIC.len()..MAGIC.len() + 4]);
    let format = u32::from_le_bytes(format);
    if format != FORMAT && format != FORMAT_V1 {
        return Err(corrupt(format!(
            "it has format {format}; this version reads formats {FORMAT_V1} and {FORMAT}"
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&file[MAGIC.len() + 4..HEADER_LEN]);
    let len = u64::from_le_bytes(len);
    let expected = (HEADER_LEN + CHECKSUM_LEN) as u64 + len;
    if file.len() as u64 != expected {
        return Err(corrupt(format!(
            "it is {} bytes but its header promises {expected} (truncated or appended to)",
            file.len()
        )));
    }
    let (content, checksum) = file.split_at(file.len() - CHECKSUM_LEN);
    if Sha256::digest(content).as_slice() != checksum {
        return Err(corrupt(
            "its SHA-256 checksum does not match its content".into(),
        ));
    }
    let body = &content[HEADER_LEN..];
    let undecodable = |e: postcard::Error| corrupt(format!("its body does not decode: {e}"));
    if format == FORMAT_V1 {
        let v1: BackupBodyV1 = postcard::from_bytes(body).map_err(undecodable)?;
        return Ok(BackupBody {
            node_id: v1.node_id,
            revision: v1.revision,
            kvs: v1.kvs,
            attachments: BTreeMap::new(),
        });
    }
    postcard::from_bytes(body).map_err(undecodable)
}

/// Writes `bytes` to `path` by way of a temporary file in the same directory, so `path` only
/// ever holds a complete file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .ok_or_else(|| StoreError::InvalidConfig {
            field: "backup path".into(),
            problem: format!("{} does not name a file", path.display()),
        })?
        .to_string_lossy();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let partial = dir.join(format!(".{name}.partial"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io_error("cannot create", &partial))?;
        file.write_all(bytes)
            .map_err(io_error("cannot write", &partial))?;
        file.sync_all().map_err(io_error("cannot sync", &partial))?;
        std::fs::rename(&partial, path).map_err(io_error("cannot rename into place", path))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("cannot sync directory", &dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Builds a fresh data directory at `dir` holding `body`'s keyspace and no raft state.
fn build_data_dir(dir: &Path, node_id: NodeId, body: &BackupBody) -> Result<(), StoreError> {
    let data = open_data_dir(dir, node_id)?;
    let state = &data.state;
    let written = state.with(|db| {
        let txn = db.begin_write().db(state, "begin write")?;
        {
            let mut kv = txn.open_table(KV).db(state, "open kv")?;
            for item in &body.kvs {
                let bytes = encode("stored key", &StoredKv::from_kv(item))?;
                kv.insert(item.key.as_slice(), bytes.as_slice())
                    .db(state, "write kv")?;
            }
            let mut meta = txn.open_table(SM_META).db(state, "open sm_meta")?;
            SmMeta {
                revision: body.revision,
                // No history travels in a backup: watches start after the restored revision.
                compacted: body.revision + 1,
                ..SmMeta::default()
            }
            .write(state, &mut meta)?;
        }
        txn.commit().db(state, "commit restored keyspace")
    });
    let closed = data.log.close().and(data.state.close());
    written.and(closed)
}

fn is_empty_dir(dir: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StoreError::Io {
            op: "cannot list",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Restores `backup` into `cfg.data_dir`, which must not exist or be empty. The keyspace is
/// built in a sibling directory and renamed into place, so a crash leaves no half-restored
/// data directory behind.
fn restore_data_dir(backup: &Path, cfg: &StoreConfig) -> Result<BackupInfo, StoreError> {
    let dir = &cfg.data_dir;
    if !is_empty_dir(dir)? {
        return Err(StoreError::RestoreTargetNotEmpty { path: dir.clone() });
    }
    let file = std::fs::read(backup).map_err(io_error("cannot read backup", backup))?;
    let body = decode_file(backup, &file)?;
    let name = dir
        .file_name()
        .ok_or_else(|| StoreError::InvalidConfig {
            field: "data_dir".into(),
            problem: format!("{} does not name a directory", dir.display()),
        })?
        .to_string_lossy();
    let staging = dir.with_file_name(format!(".{name}.restoring"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(io_error("cannot remove a stale restore", &staging))?;
    }
    let built = build_data_dir(&staging, cfg.node_id, &body).and_then(|()| {
        if dir.exists() {
            // Empty, as checked: make room for the rename.
            std::fs::remove_dir(dir).map_err(io_error("cannot replace empty directory", dir))?;
        }
        std::fs::rename(&staging, dir).map_err(io_error("cannot move restored data into", dir))
    });
    if let Err(err) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    Ok(BackupInfo {
        revision: body.revision,
        keys: body.kvs.len(),
        bytes: file.len() as u64,
    })
}

impl Store {
    /// Writes a backup of the keyspace to `path` (replacing any file there, atomically) while
    /// the store keeps serving. The backup is one consistent picture at one revision, holding
    /// every write acknowledged before the call: a read-index round first (a follower asks
    /// the leader and applies that far), so it needs a quorum.
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<BackupInfo, StoreError> {
        self.backup_with(path, BTreeMap::new()).await
    }

    /// [`Store::backup`], with named files attached (checksummed with the keyspace, and
    /// handed back by [`read_backup`]).
    pub async fn backup_with(
        &self,
        path: impl AsRef<Path>,
        attachments: BTreeMap<String, Vec<u8>>,
    ) -> Result<BackupInfo, StoreError> {
        self.ensure_linearizable().await?;
        let store = self.clone();
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let (meta, kvs) = crate::keyspace::read_all(store.state_db()?)?;
            let body = BackupBody {
                node_id: store.node_id(),
                revision: meta.revision,
                kvs,
                attachments,
            };
            let file = encode_file(&body)?;
            write_atomically(&path, &file)?;
            Ok(BackupInfo {
                revision: body.revision,
                keys: body.kvs.len(),
                bytes: file.len() as u64,
            })
        })
        .await
        .map_err(|e| StoreError::Internal(format!("writing the backup panicked: {e}")))?
    }

    /// Starts a NEW one-member cluster from a backup: `cfg` names this node (a single voter,
    /// or a clustered lone voter that members join later; `peers` must be empty), and
    /// `cfg.data_dir` must not exist or be empty. The keyspace comes back at the backup's
    /// revision, with its create/mod revisions and versions; history before it is gone
    /// (watches start after it).
    ///
    /// Refuses a damaged backup ([`StoreError::CorruptBackup`], saying what is wrong) and a
    /// data directory with anything in it ([`StoreError::RestoreTargetNotEmpty`]); neither
    /// touches the data directory.
    pub async fn restore(backup: impl AsRef<Path>, cfg: StoreConfig) -> Result<Store, StoreError> {
        if !cfg.peers.is_empty() || cfg.join {
            return Err(StoreError::InvalidConfig {
                field: if cfg.join { "join" } else { "peers" }.into(),
                problem: "a restore starts a new one-member cluster; add members afterwards".into(),
            });
        }
        cfg.validate()?;
        let backup = backup.as_ref().to_path_buf();
        let target = cfg.clone();
        tokio::task::spawn_blocking(move || restore_data_dir(&backup, &target))
            .await
            .map_err(|e| StoreError::Internal(format!("restoring the backup panicked: {e}")))??;
        let store = Store::open(cfg).await?;
        if let Err(err) = store.snapshot_over_log().await {
            if let Err(close_err) = store.close().await {
                tracing::warn!(error = %close_err, "closing the store after a failed restore");
            }
            return Err(err);
        }
        Ok(store)
    }

    /// After a restore, the restored keyspace is in no log entry: a member added later that
    /// replayed the log from its start would miss all of it (and count revisions from zero).
    /// So the new cluster's log is folded into a snapshot and purged at once, and members
    /// added later start from that snapshot.
    async fn snapshot_over_log(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        // Leading and applied up to what it committed (its membership and its first entry).
        self.ensure_linearizable().await?;
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .map(|id| id.index)
            .ok_or_else(|| StoreError::Internal("the restored store applied nothing".into()))?;
        raft.trigger().snapshot().await?;
        let timeout = RESTORE_SNAPSHOT_TIMEOUT;
        wait_for(raft, timeout, "a snapshot of the restored keyspace", |m| {
            m.snapshot.is_some_and(|s| s.index >= applied)
        })
        .await?;
        raft.trigger().purge_log(applied).await?;
        wait_for(raft, timeout, "the log purged up to the snapshot", |m| {
            m.purged.is_some_and(|p| p.index >= applied)
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> BackupBody {
        BackupBody {
            node_id: 3,
            revision: 9,
            kvs: vec![KeyValue {
                key: b"/a".to_vec(),
                value: b"1".to_vec(),
                create_revision: 2,
                mod_revision: 9,
                version: 4,
            }],
            attachments: BTreeMap::from([("k".to_string(), b"secret".to_vec())]),
        }
    }

    fn problem(file: &[u8]) -> String {
        match decode_file(Path::new("b"), file) {
            Err(StoreError::CorruptBackup { problem, .. }) => problem,
            other => panic!("expected CorruptBackup, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_and_names_each_kind_of_damage() {
        let file = encode_file(&body()).unwrap();
        let back = decode_file(Path::new("b"), &file).unwrap();
        assert_eq!((back.node_id, back.revision), (3, 9));
        assert_eq!(back.kvs, body().kvs);

        let mut flipped = file.clone();
        flipped[HEADER_LEN + 2] ^= 0x40;
        assert!(problem(&flipped).contains("checksum"));

        assert!(problem(&file[..file.len() - 1]).contains("truncated"));
        assert!(problem(&file[..10]).contains("shorter"));

        let mut other = file.clone();
        other[0] = b'X';
        assert!(problem(&other).contains("STRAKEBK"));

        let mut future = file.clone();
        future[MAGIC.len()] = 3;
        assert!(problem(&future).contains("format 3"));
    }

    #[test]
    fn attachments_travel_and_format_one_files_still_read() {
        let file = encode_file(&body()).unwrap();
        let contents = read_backup(Path::new("b"), &file).unwrap();
        assert_eq!(
            (contents.revision, contents.keys, contents.written_by),
            (9, 1, 3)
        );
        assert_eq!(contents.attachments["k"], b"secret");

        // A file as the first format wrote it.
        #[derive(Serialize)]
        struct V1<'a> {
            node_id: NodeId,
            revision: u64,
            kvs: &'a [KeyValue],
        }
        let b = body();
        let v1 = encode(
            "backup",
            &V1 {
                node_id: 3,
                revision: 9,
                kvs: &b.kvs,
            },
        )
        .unwrap();
        let mut old = Vec::new();
        old.extend_from_slice(MAGIC);
        old.extend_from_slice(&FORMAT_V1.to_le_bytes());
        old.extend_from_slice(&(v1.len() as u64).to_le_bytes());
        old.extend_from_slice(&v1);
        let sum = Sha256::digest(&old);
        old.extend_from_slice(&sum);
        let back = decode_file(Path::new("old"), &old).unwrap();
        assert_eq!((back.revision, back.kvs.len()), (9, 1));
        assert!(back.attachments.is_empty());
    }

    #[test]
    fn backup_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.backup");
        write_atomically(&path, b"data").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
