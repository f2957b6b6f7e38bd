//! Durability: reopening recovers committed data, snapshots purge the log, and damaged data
//! directories are refused with an error naming the file.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{key, next_event, open};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use strake_store::raft::open_storage;
use strake_store::{RangeRequest, Store, StoreConfig, StoreError, WatchRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_recovers_data_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(key("/p/a"), key("1")).await.unwrap(); // 2
    store.put(key("/p/b"), key("1")).await.unwrap(); // 3
    store.put(key("/p/a"), key("2")).await.unwrap(); // 4
    store.delete(key("/p/b")).await.unwrap(); // 5
    store.compact(3).await.unwrap();
    store.shutdown().await.unwrap();

    let store = open(dir.path()).await;
    assert_eq!(store.revision(), 5);
    let kv = store
        .get(b"/p/a")
        .await
        .unwrap()
        .0
        .expect("committed key survives a restart");
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (b"2".as_slice(), 2, 4, 2)
    );
    assert_eq!(store.get(b"/p/b").await.unwrap().0, None);
    assert!(matches!(
        store.watch(WatchRequest {
            prefix: key("/p/"),
            start_revision: 2
        }),
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/p/"),
            start_revision: 3,
        })
        .unwrap();
    for expected in 3..=5 {
        assert_eq!(
            next_event(&mut watch).await.revision,
            expected,
            "history survives a restart"
        );
    }
    assert_eq!(
        store.put(key("/p/c"), key("1")).await.unwrap(),
        6,
        "revisions continue after a restart"
    );
    assert_eq!(next_event(&mut watch).await.revision, 6);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_releases_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(key("/d"), key("kept")).await.unwrap();
    drop(store);
    let deadline = std::time::Instant::now() + common::STEP;
    let store = loop {
        match Store::open(StoreConfig::single(1, dir.path())).await {
            Ok(store) => break store,
            Err(StoreError::OpenDatabase { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(err) => panic!("reopen after drop failed: {err}"),
        }
    };
    assert_eq!(store.get(b"/d").await.unwrap().0.unwrap().value, b"kept");
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..50 {
        store
            .put(key(&format!("/s/{i:02}")), key(&i.to_string()))
            .await
            .unwrap();
    }
    let upto = store
        .snapshot()
        .await
        .unwrap()
        .expect("a snapshot was built");
    assert!(
        upto >= 51,
        "the snapshot covers every applied entry (got index {upto})"
    );
    for i in 50..60 {
        store
            .put(key(&format!("/s/{i:02}")), key(&i.to_string()))
            .await
            .unwrap();
    }
    store.shutdown().await.unwrap();

    let store = open(dir.path()).await;
    let all = store
        .range(RangeRequest {
            prefix: key("/s/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 60);
    assert_eq!(all.revision, 61);
    let kv = store.get(b"/s/07").await.unwrap().0.unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (b"7".as_slice(), 9));
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/s/"),
            start_revision: 2,
        })
        .unwrap();
    assert_eq!(
        next_event(&mut watch).await.revision,
        2,
        "a local snapshot keeps the history"
    );
    store.shutdown().await.unwrap();
}

/// A snapshot built on one node and installed on another replaces its keyspace; the new node
/// then opens as a store serving that data (the follower catch-up path and a restore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_snapshot_replaces_keyspace() {
    let source = tempfile::tempdir().unwrap();
    let store = open(source.path()).await;
    store.put(key("/i/a"), key("1")).await.unwrap();
    store.put(key("/i/b"), key("2")).await.unwrap();
    store.delete(key("/i/a")).await.unwrap(); // revision 4
    store.shutdown().await.unwrap();

    let snapshot = {
        let (_log, mut sm) = open_storage(source.path(), 1).unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    let target = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open_storage(target.path(), 1).unwrap();
        let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
        *receiving = *snapshot.snapshot;
        sm.install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot is current");
        assert_eq!(current.meta, snapshot.meta);
    }

    let restored = open(target.path()).await;
    assert_eq!(restored.revision(), 4);
    assert_eq!(restored.get(b"/i/a").await.unwrap().0, None);
    assert_eq!(
        restored.get(b"/i/b").await.unwrap().0.unwrap().mod_revision,
        3
    );
    assert!(matches!(
        restored.watch(WatchRequest {
            prefix: key("/i/"),
            start_revision: 4
        }),
        Err(StoreError::Compacted {
            requested: 4,
            compacted: 5
        })
    ));
    assert_eq!(restored.put(key("/i/c"), key("3")).await.unwrap(), 5);
    restored.shutdown().await.unwrap();
}

async fn populated_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..20 {
        store
            .put(key(&format!("/k/{i}")), vec![i as u8; 2000])
            .await
            .unwrap();
    }
    store.shutdown().await.unwrap();
    dir
}

/// The open was refused because `path` is damaged, and the error names it.
fn assert_corrupt_naming(err: &StoreError, path: &Path) {
    assert!(matches!(err, StoreError::CorruptFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

async fn open_err(dir: &Path) -> StoreError {
    match Store::open(StoreConfig::single(1, dir)).await {
        Ok(_) => panic!("open must fail on a damaged data directory"),
        Err(err) => {
            eprintln!("open refused: {err}");
            err
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_state_file_is_refused() {
    let dir = populated_dir().await;
    let path = dir.path().join("state.redb");
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_corrupt_naming(&open_err(dir.path()).await, &path);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len / 2,
        "the damaged file is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_log_file_is_refused() {
    let dir = populated_dir().await;
    let path = dir.path().join("raft-log.redb");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = open_err(dir.path()).await;
    assert!(
        err.to_string().contains("raft-log.redb") && err.to_string().contains("empty"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_header_is_refused() {
    let dir = populated_dir().await;
    let path = dir.path().join("raft-log.redb");
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&[0xAB; 512]).unwrap();
    drop(file);
    let err = open_err(dir.path()).await;
    assert!(matches!(err, StoreError::CorruptFile { .. }), "{err:?}");
    assert!(err.to_string().contains("raft-log.redb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_pages_are_refused() {
    let dir = populated_dir().await;
    let path = dir.path().join("state.redb");
    let len = std::fs::metadata(&path).unwrap().len();
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    // Scribble over everything past the header region: every data page is damaged.
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&vec![0x5A; (len - 4096) as usize]).unwrap();
    drop(file);
    let err = open_err(dir.path()).await;
    assert!(err.to_string().contains("state.redb"), "{err}");
}

/// The one segment of the raft write-ahead log of a populated data directory.
fn log_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("raft-wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_record_is_refused_and_left_alone() {
    let dir = populated_dir().await;
    let path = log_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // A flipped byte in the middle of the log's records, not in the last one.
    let middle = records_end(&bytes) / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt_naming(&open_err(dir.path()).await, &path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged log is left alone"
    );
}

/// Where the records of a log segment end: the segment goes on with zeros written ahead (a
/// record is a 12-byte header, whose first 4 bytes are the payload length, then the payload).
fn records_end(bytes: &[u8]) -> usize {
    let mut offset = 0;
    while offset + 12 <= bytes.len() && bytes[offset..offset + 12].iter().any(|b| *b != 0) {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
        offset += 12 + len as usize;
    }
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_short_by_a_crash_loses_only_its_unsynced_tail() {
    let dir = populated_dir().await;
    let path = log_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // As if the process died while writing an append of a new entry: half a record after the
    // last one, over the zeros written ahead.
    let end = records_end(&bytes);
    bytes[end..end + 10].copy_from_slice(&[0x10, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
    std::fs::write(&path, &bytes).unwrap();
    let store = open(dir.path()).await;
    for i in 0..20 {
        let (kv, _) = store.get(format!("/k/{i}").as_bytes()).await.unwrap();
        assert_eq!(
            kv.expect("acknowledged write kept").value,
            vec![i as u8; 2000]
        );
    }
    store.put(key("/k/after"), key("v")).await.unwrap();
    store.shutdown().await.unwrap();
    let store = open(dir.path()).await;
    let (kv, _) = store.get(b"/k/after").await.unwrap();
    assert_eq!(kv.expect("the log goes on after the cut").value, b"v");
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_directory_is_refused() {
    let dir = populated_dir().await;
    std::fs::rename(dir.path().join("raft-wal"), dir.path().join("moved")).unwrap();
    let err = open_err(dir.path()).await;
    assert!(
        matches!(err, StoreError::IncompleteDataDir { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("raft-wal"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_and_wrong_node_are_refused() {
    let dir = populated_dir().await;
    let err = match Store::open(StoreConfig::single(2, dir.path())).await {
        Ok(_) => panic!("another node id must be refused"),
        Err(err) => err,
    };
    assert!(
        matches!(
            err,
            StoreError::NodeIdMismatch {
                stored: 1,
                configured: 2,
                ..
            }
        ),
        "{err:?}"
    );

    std::fs::remove_file(dir.path().join("state.redb")).unwrap();
    let err = open_err(dir.path()).await;
    assert!(
        matches!(err, StoreError::IncompleteDataDir { .. }),
        "{err:?}"
    );
    assert!(
        !dir.path().join("state.redb").exists(),
        "nothing is reinitialized"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_transport_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        peers: vec![(2, "10.0.0.2:2380".into())],
        ..StoreConfig::single(1, dir.path())
    };
    match Store::open(cfg).await {
        Err(StoreError::InvalidConfig { field, problem }) => {
            assert_eq!(field, "listen_addr", "{problem}");
        }
        other => panic!("expected an invalid config, got {other:?}"),
    }
    assert!(
        !dir.path().join("state.redb").exists(),
        "nothing is created for an invalid config"
    );
}
