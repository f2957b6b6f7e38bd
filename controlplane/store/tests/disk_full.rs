//! Disk full: a single voter whose data dir sits on a small tmpfs. Once a filler file takes
//! the rest of the space, writes fail with an error that says the disk is full; after the
//! filler is deleted the store (reopened: a failed log write stops raft) holds every write that
//! was acknowledged before and accepts new ones. Needs root (it mounts a tmpfs).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strake_store::{Store, StoreConfig};

/// errno of "No space left on device".
const ENOSPC: i32 = 28;

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {:?} failed: {status}",
            dir.path()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes zeros to `path` until the file system is full; returns how much was written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler file");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(ENOSPC) => break,
            Err(err) => panic!("filling {path:?}: {err}"),
        }
    }
    let _ = file.sync_all();
    written
}

async fn open(dir: &PathBuf) -> Store {
    tokio::time::timeout(common::STEP, Store::open(StoreConfig::single(1, dir)))
        .await
        .expect("store opens within the deadline")
        .expect("store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_loses_nothing() {
    let fs = Tmpfs::mount("16m");
    let data = fs.path().join("data");
    let store = open(&data).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("/full/before-{i}");
        let value = format!("v{i}").repeat(100);
        store
            .put(key.clone().into_bytes(), value.clone().into_bytes())
            .await
            .expect("put with space left");
        acknowledged.push((key, value));
    }

    let filler = fs.path().join("filler");
    fill(&filler);
    let value = vec![b'x'; 256 * 1024];
    let mut failure = None;
    for i in 0..200 {
        let key = format!("/full/after-{i}").into_bytes();
        match tokio::time::timeout(Duration::from_secs(10), store.put(key, value.clone())).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                failure = Some(err.to_string());
                break;
            }
            Err(_) => panic!("a put on a full disk hung instead of failing"),
        }
    }
    let failure = failure.expect("200 puts of 256 KiB all succeeded on a full 16 MiB tmpfs");
    eprintln!("write on a full disk failed with: {failure}");
    assert!(
        failure.contains("No space left on device"),
        "the error does not say the disk is full: {failure}"
    );
    assert!(
        failure.contains(".redb"),
        "the error does not name the file: {failure}"
    );

    std::fs::remove_file(&filler).expect("remove the filler file");
    // A write failure may have stopped raft; if a put still works the store kept going.
    let still_up = tokio::time::timeout(
        Duration::from_secs(10),
        store.put(b"/full/probe".to_vec(), b"p".to_vec()),
    )
    .await;
    eprintln!("after freeing space, the same store answers a put with {still_up:?}");
    let _ = tokio::time::timeout(common::STEP, store.shutdown()).await;

    let store = open(&data).await;
    for (key, value) in &acknowledged {
        let (kv, _) = store.get(key.as_bytes()).await.expect("read back");
        let kv = kv.unwrap_or_else(|| panic!("{key} was acknowledged but is gone"));
        assert_eq!(kv.value, value.as_bytes(), "{key} changed");
    }
    store
        .put(b"/full/later".to_vec(), b"fine".to_vec())
        .await
        .expect("a put after space was freed");
    let (kv, _) = store.get(b"/full/later").await.expect("read");
    assert_eq!(kv.expect("written").value, b"fine");
    store.shutdown().await.expect("clean shutdown");
}
