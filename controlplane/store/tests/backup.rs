//! Backup while serving, restore into a new one-member cluster, and the refusals of a damaged
//! backup or an occupied data directory.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strake_store::{PeerTls, Store, StoreConfig, StoreError, WatchRequest};
use support::{Cluster, DEADLINE, free_addr};

async fn open(cfg: StoreConfig) -> Store {
    tokio::time::timeout(DEADLINE, Store::open(cfg))
        .await
        .expect("store opens within the deadline")
        .expect("store opens")
}

async fn restore(backup: &std::path::Path, cfg: StoreConfig) -> Result<Store, StoreError> {
    tokio::time::timeout(DEADLINE, Store::restore(backup, cfg))
        .await
        .expect("restore finishes within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_writing_restores_a_new_single_member_cluster() {
    let root = tempfile::tempdir().unwrap();
    let store = open(StoreConfig::single(1, root.path().join("a"))).await;
    for i in 0..100 {
        store
            .put(
                format!("/b/{i:03}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    store
        .put(b"/b/007".to_vec(), b"again".to_vec())
        .await
        .unwrap();
    store.delete(b"/b/050".to_vec()).await.unwrap();

    // A writer keeps going while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let revision = store
                    .put(format!("/w/{n}").into_bytes(), b"x".to_vec())
                    .await
                    .unwrap();
                acked.push((n, revision));
                n += 1;
            }
            acked
        })
    };
    support::eventually("the writer to get going", || async {
        (store.revision() > 110).then_some(())
    })
    .await;
    let acked_before = store.revision();
    let file = root.path().join("store.backup");
    let info = store.backup(&file).await.unwrap();
    support::eventually("the writer to write past the backup", || async {
        (store.revision() > info.revision + 5).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        info.revision >= acked_before,
        "{info:?} misses acknowledged writes"
    );
    assert_eq!(info.bytes, std::fs::metadata(&file).unwrap().len());

    let restored = restore(&file, StoreConfig::single(7, root.path().join("b")))
        .await
        .unwrap();
    assert_eq!(restored.revision(), info.revision);
    let members = restored.members();
    assert_eq!(members.voters.keys().copied().collect::<Vec<_>>(), [7]);
    // The keyspace is the original's, MVCC bookkeeping included.
    for i in 0..100 {
        let key = format!("/b/{i:03}");
        let (original, _) = store.get_serializable(key.as_bytes()).unwrap();
        let (copy, _) = restored.get(key.as_bytes()).await.unwrap();
        assert_eq!(copy, original, "{key}");
    }
    assert!(restored.get(b"/b/050").await.unwrap().0.is_none());
    // One consistent picture: exactly the writes up to the backup's revision.
    for (n, revision) in &acked {
        let (kv, _) = restored.get(format!("/w/{n}").as_bytes()).await.unwrap();
        assert_eq!(
            kv.is_some(),
            *revision <= info.revision,
            "/w/{n} written at revision {revision}, backup at {}",
            info.revision
        );
    }
    assert_eq!(
        info.keys,
        99 + acked.iter().filter(|(_, r)| *r <= info.revision).count()
    );

    // The new cluster carries on from the backup's revision; older history is gone.
    let next = restored
        .put(b"/after".to_vec(), b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(next, info.revision + 1);
    assert!(matches!(
        restored.watch(WatchRequest {
            prefix: b"/".to_vec(),
            start_revision: info.revision,
        }),
        Err(StoreError::Compacted { .. })
    ));

    // It persists like any store, and a second restore into its directory is refused.
    restored.shutdown().await.unwrap();
    let reopened = open(StoreConfig::single(7, root.path().join("b"))).await;
    assert_eq!(
        reopened.get(b"/after").await.unwrap().0.unwrap().value,
        b"1"
    );
    reopened.shutdown().await.unwrap();
    let err = restore(&file, StoreConfig::single(7, root.path().join("b")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RestoreTargetNotEmpty { .. }),
        "{err}"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_damaged_backup_and_touches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = open(StoreConfig::single(1, root.path().join("a"))).await;
    for i in 0..20 {
        store
            .put(format!("/k{i}").into_bytes(), vec![b'v'; 100])
            .await
            .unwrap();
    }
    let file = root.path().join("good.backup");
    store.backup(&file).await.unwrap();
    store.shutdown().await.unwrap();
    let good = std::fs::read(&file).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let cases = [
        ("flipped", flipped, "checksum"),
        ("truncated", good[..good.len() - 7].to_vec(), "truncated"),
        (
            "foreign",
            b"not a backup at all, just text".to_vec(),
            "STRAKEBK",
        ),
    ];
    for (name, bytes, problem_word) in cases {
        let path = root.path().join(format!("{name}.backup"));
        std::fs::write(&path, bytes).unwrap();
        let dir = root.path().join(format!("restore-{name}"));
        let err = restore(&path, StoreConfig::single(2, &dir))
            .await
            .unwrap_err();
        match &err {
            StoreError::CorruptBackup { path: p, problem } => {
                assert_eq!(p, &path);
                assert!(problem.contains(problem_word), "{name}: {err}");
            }
            other => panic!("{name}: expected CorruptBackup, got {other}"),
        }
        assert!(!dir.exists(), "{name}: a refused restore created {dir:?}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("restoring") || name.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let missing = restore(
        &root.path().join("missing.backup"),
        StoreConfig::single(2, root.path().join("m")),
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, StoreError::Io { .. }), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_occupied_data_dir_and_extra_members() {
    let root = tempfile::tempdir().unwrap();
    let store = open(StoreConfig::single(1, root.path().join("a"))).await;
    store.put(b"/k".to_vec(), b"v".to_vec()).await.unwrap();
    let file = root.path().join("b.backup");
    store.backup(&file).await.unwrap();
    store.shutdown().await.unwrap();

    let occupied = root.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"precious").unwrap();
    let err = restore(&file, StoreConfig::single(2, &occupied))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RestoreTargetNotEmpty { path } if path == &occupied),
        "{err}"
    );
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"precious");

    // The live store's own directory is occupied too.
    let err = restore(&file, StoreConfig::single(1, root.path().join("a")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RestoreTargetNotEmpty { .. }),
        "{err}"
    );

    let ca = strake_pki::ClusterCa::generate("restore-test").unwrap();
    let with_peers = StoreConfig::cluster(
        2,
        root.path().join("p"),
        free_addr(),
        vec![(3, free_addr())],
        PeerTls::issue(&ca, 2).unwrap(),
    );
    let err = restore(&file, with_peers).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidConfig { field, .. } if field == "peers"),
        "{err}"
    );
    assert!(!root.path().join("p").exists());

    // An existing but empty directory is fine.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let restored = restore(&file, StoreConfig::single(2, &empty))
        .await
        .unwrap();
    assert_eq!(restored.get(b"/k").await.unwrap().0.unwrap().value, b"v");
    restored.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_three_voter_cluster_restores_as_a_lone_clustered_voter() {
    let mut cluster = Cluster::new(&[1, 2, 3], strake_store::DEFAULT_SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    for i in 0..30 {
        cluster.put(&format!("/c/{i}"), &i.to_string()).await;
    }
    let leader = cluster.leader().await;
    let file = cluster.root.path().join("cluster.backup");
    let info = cluster.store(leader).backup(&file).await.unwrap();
    // A follower's backup holds what it applied: no more than the leader's.
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let follower_file = cluster.root.path().join("follower.backup");
    let follower_info = cluster
        .store(follower)
        .backup(&follower_file)
        .await
        .unwrap();
    assert!(follower_info.revision <= info.revision);
    cluster.stop_all().await;

    // Disaster: the old members are gone. A new member 9 starts a cluster from the backup,
    // listening for peers that will join it.
    let cfg = StoreConfig::cluster(
        9,
        cluster.root.path().join("node-9"),
        free_addr(),
        Vec::new(),
        PeerTls::issue(&cluster.ca, 9).unwrap(),
    );
    let restored = restore(&file, cfg).await.unwrap();
    assert_eq!(restored.revision(), info.revision);
    let members = restored.members();
    assert_eq!(members.voters.keys().copied().collect::<Vec<_>>(), [9]);
    for i in 0..30 {
        let (kv, _) = restored.get(format!("/c/{i}").as_bytes()).await.unwrap();
        assert_eq!(kv.unwrap().value, i.to_string().as_bytes());
    }
    restored
        .put(b"/c/new".to_vec(), b"after".to_vec())
        .await
        .unwrap();
    restored.shutdown().await.unwrap();
}

/// The restored keyspace is in no log entry: a member that joins the restored cluster must
/// get it from a snapshot, not replay a log that lacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_a_restored_cluster_get_its_data() {
    let root = tempfile::tempdir().unwrap();
    let store = open(StoreConfig::single(1, root.path().join("a"))).await;
    for i in 0..20 {
        store
            .put(
                format!("/k/{i:02}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    let file = root.path().join("store.backup");
    let info = store.backup(&file).await.unwrap();
    store.shutdown().await.unwrap();

    let mut cluster = Cluster::new(&[5], 1000);
    let restored = restore(&file, cluster.config(5, false)).await.unwrap();
    cluster.running.insert(5, restored);
    let written = cluster.put("/after", "1").await;
    assert_eq!(written, info.revision + 1);
    let joiner = cluster.define(6);
    cluster.start_joining(6).await;
    tokio::time::timeout(
        DEADLINE,
        cluster.store(5).join_member(6, joiner.addr.clone()),
    )
    .await
    .expect("the join finishes within the deadline")
    .unwrap();
    cluster.caught_up(6, written).await;
    cluster.assert_holds(6, "/k/07", "v7");
    cluster.assert_holds(6, "/after", "1");
    // Both count revisions alike: the next write has the same revision on each.
    let next = cluster.put("/next", "2").await;
    cluster.caught_up(6, next).await;
    assert_eq!(
        cluster
            .store(6)
            .get_serializable(b"/next")
            .unwrap()
            .0
            .unwrap()
            .mod_revision,
        next
    );
    cluster.stop_all().await;
}
