//! Disk full: a single voter whose data dir sits on a small tmpfs. Once a filler file takes
//! the rest of the space, writes fail with an error that says the disk is full and names the
//! log; after the filler is deleted the same store takes writes again, a shutdown on a full disk
//! completes, and a reopened store holds every acknowledged write. Needs root (it mounts a
//! tmpfs).

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

/// Room the store keeps free for its state file; small, to fit the tmpfs.
const RESERVE: u64 = 1024 * 1024;

async fn open(dir: &PathBuf) -> Store {
    let cfg = StoreConfig {
        disk_reserve_bytes: RESERVE,
        ..StoreConfig::single(1, dir)
    };
    tokio::time::timeout(common::STEP, Store::open(cfg))
        .await
        .expect("store opens within the deadline")
        .expect("store opens")
}

/// Puts 256 KiB values until one fails; returns the error, recording acknowledged puts.
async fn put_until_full(
    store: &Store,
    round: &str,
    acknowledged: &mut Vec<(String, Vec<u8>)>,
) -> String {
    let value = vec![b'x'; 256 * 1024];
    for i in 0..200 {
        let key = format!("/full/{round}-{i}");
        match tokio::time::timeout(
            Duration::from_secs(10),
            store.put(key.clone().into_bytes(), value.clone()),
        )
        .await
        {
            Ok(Ok(_)) => acknowledged.push((key, value.clone())),
            Ok(Err(err)) => return err.to_string(),
            Err(_) => panic!("a put on a full disk hung instead of failing"),
        }
    }
    panic!("200 puts of 256 KiB all succeeded on a full 16 MiB tmpfs");
}

fn assert_says_disk_full(failure: &str) {
    eprintln!("write on a full disk failed with: {failure}");
    assert!(
        failure.contains("disk full"),
        "the error does not say the disk is full: {failure}"
    );
    assert!(
        failure.contains("raft-wal"),
        "the error does not name the log: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_the_store_goes_on_once_space_is_freed() {
    let fs = Tmpfs::mount("16m");
    let data = fs.path().join("data");
    let store = open(&data).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("/full/before-{i}");
        let value = format!("v{i}").repeat(100).into_bytes();
        store
            .put(key.clone().into_bytes(), value.clone())
            .await
            .expect("put with space left");
        acknowledged.push((key, value));
    }

    // Full: writes fail, clearly, and the same store takes writes again once space is freed.
    let filler = fs.path().join("filler");
    fill(&filler);
    assert_says_disk_full(&put_until_full(&store, "first", &mut acknowledged).await);
    assert_says_disk_full(
        &store
            .put(b"/full/refused".to_vec(), b"r".to_vec())
            .await
            .expect_err("a put while the disk is still full")
            .to_string(),
    );
    std::fs::remove_file(&filler).expect("remove the filler file");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match store.put(b"/full/probe".to_vec(), b"p".to_vec()).await {
                Ok(_) => break,
                Err(err) => {
                    eprintln!("put right after freeing space: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
    .expect("the same store takes writes again within 10 s of space being freed");
    acknowledged.push(("/full/probe".into(), b"p".to_vec()));

    // Full again, and shut down while full: the shutdown must not wait for space.
    fill(&filler);
    assert_says_disk_full(&put_until_full(&store, "second", &mut acknowledged).await);
    let closed = tokio::time::timeout(common::STEP, store.shutdown())
        .await
        .expect("shutdown on a full disk completes");
    // Closing may fail to write the files' last bookkeeping; it must say so, and lose nothing.
    if let Err(err) = closed {
        assert!(
            err.to_string().contains("No space left on device"),
            "shutdown on a full disk failed for another reason: {err}"
        );
    }
    std::fs::remove_file(&filler).expect("remove the filler file");

    let store = open(&data).await;
    for (key, value) in &acknowledged {
        let (kv, _) = store.get(key.as_bytes()).await.expect("read back");
        let kv = kv.unwrap_or_else(|| panic!("{key} was acknowledged but is gone"));
        assert_eq!(&kv.value, value, "{key} changed");
    }
    store
        .put(b"/full/later".to_vec(), b"fine".to_vec())
        .await
        .expect("a put after space was freed");
    let (kv, _) = store.get(b"/full/later").await.expect("read");
    assert_eq!(kv.expect("written").value, b"fine");
    store.shutdown().await.expect("clean shutdown");
}
