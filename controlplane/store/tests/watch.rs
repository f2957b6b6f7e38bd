//! Watches: replay from history, hand-off to live events, ordering, filtering, slow watchers.

mod common;

use std::time::Instant;

use common::{key, next_event, next_item, open};
use strake_store::{EventKind, Op, StoreError, Txn, WatchRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_then_follows_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(key("/w/a"), key("1")).await.unwrap(); // 2
    store.put(key("/x/a"), key("1")).await.unwrap(); // 3
    store.put(key("/w/b"), key("1")).await.unwrap(); // 4
    store.put(key("/w/a"), key("2")).await.unwrap(); // 5
    store.delete(key("/w/b")).await.unwrap(); // 6

    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/w/"),
            start_revision: 3,
        })
        .unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.revision, ev.kind, ev.kv.key.as_slice()),
        (4, EventKind::Put, b"/w/b".as_slice())
    );
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.revision, ev.kv.version), (5, 2));
    assert_eq!(
        ev.prev_kv.as_ref().map(|p| p.value.as_slice()),
        Some(b"1".as_slice())
    );
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.revision, ev.kind), (6, EventKind::Delete));
    assert_eq!(ev.kv.key, b"/w/b");
    assert_eq!(
        ev.kv.mod_revision, 6,
        "a delete event carries the delete's revision"
    );
    assert_eq!(ev.prev_kv.as_ref().map(|p| p.mod_revision), Some(4));

    // Live: /x/ is filtered out, both /w/ events of one txn share its revision.
    store.put(key("/x/b"), key("1")).await.unwrap(); // 7
    let txn = Txn {
        success: vec![
            Op::Put {
                key: key("/w/c"),
                value: key("1"),
            },
            Op::Put {
                key: key("/w/d"),
                value: key("1"),
            },
        ],
        ..Txn::default()
    };
    store.txn(txn).await.unwrap(); // 8
    let c = next_event(&mut watch).await;
    let d = next_event(&mut watch).await;
    assert_eq!((c.revision, c.kv.key.as_slice()), (8, b"/w/c".as_slice()));
    assert_eq!((d.revision, d.kv.key.as_slice()), (8, b"/w/d".as_slice()));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_now_sees_only_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(key("/n"), key("old")).await.unwrap();
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/n"),
            start_revision: 0,
        })
        .unwrap();
    store.put(key("/n"), key("new")).await.unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.revision, ev.kv.value.as_slice()),
        (3, b"new".as_slice())
    );

    // A start revision in the future waits for it.
    let mut future = store
        .watch(WatchRequest {
            prefix: key("/n"),
            start_revision: 5,
        })
        .unwrap();
    store.put(key("/n"), key("r4")).await.unwrap();
    store.put(key("/n"), key("r5")).await.unwrap();
    assert_eq!(next_event(&mut future).await.revision, 5);
    store.shutdown().await.unwrap();
}

/// Writers race with watches started at many points: each watch must see every revision from
/// its start exactly once, in order, across the replay-to-live hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_under_concurrent_writes_has_no_gaps_or_duplicates() {
    const WRITES: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                store
                    .put(key(&format!("/g/{}", i % 7)), key(&i.to_string()))
                    .await
                    .unwrap();
            }
        })
    };
    let mut watches = Vec::new();
    let deadline = Instant::now() + common::STEP;
    while watches.len() < 10 {
        let current = store.revision();
        if current > (watches.len() as u64) * (WRITES / 10) {
            let start = current.saturating_sub(3).max(1);
            watches.push((
                start,
                store
                    .watch(WatchRequest {
                        prefix: key("/g/"),
                        start_revision: start,
                    })
                    .unwrap(),
            ));
        }
        assert!(Instant::now() < deadline, "writer made no progress");
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let last = 1 + WRITES;
    for (start, mut watch) in watches {
        let first = start.max(2);
        for expected in first..=last {
            let ev = next_event(&mut watch).await;
            assert_eq!(
                ev.revision, expected,
                "watch from {start}: gap or duplicate"
            );
        }
    }
    store.shutdown().await.unwrap();
}

async fn write_many(store: &strake_store::Store, count: usize) {
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(32) {
                store
                    .put(key(&format!("/slow/{i}")), vec![1])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A watcher that falls more than the live channel's capacity behind catches up from history
/// without losing an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_catches_up_from_history() {
    const WRITES: usize = 4600; // more than the live channel holds (4096 revisions)
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/slow/"),
            start_revision: 0,
        })
        .unwrap();
    write_many(&store, WRITES).await;
    assert_eq!(store.revision(), 1 + WRITES as u64);
    for expected in 2..=(1 + WRITES as u64) {
        assert_eq!(next_event(&mut watch).await.revision, expected);
    }
    store.put(key("/slow/live"), vec![2]).await.unwrap();
    assert_eq!(next_event(&mut watch).await.kv.key, b"/slow/live");
    store.shutdown().await.unwrap();
}

/// If the history a slow watcher needs was compacted meanwhile, it gets an error, never a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_behind_compaction_gets_compacted_error() {
    const WRITES: usize = 4200;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/slow/"),
            start_revision: 0,
        })
        .unwrap();
    write_many(&store, WRITES).await;
    let current = store.revision();
    store.compact(current).await.unwrap();
    match next_item(&mut watch).await {
        Some(Err(StoreError::Compacted {
            requested: 2,
            compacted,
        })) => assert_eq!(compacted, current),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next_item(&mut watch).await.is_none());
    store.shutdown().await.unwrap();
}
