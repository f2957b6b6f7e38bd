//! Reads, writes, transactions and compaction through the public `Store` API of a single voter.

mod common;

use common::{key, open};
use strake_store::{
    CmpOp, Compare, MAX_VALUE_SIZE, Op, OpResult, RangeRequest, StoreError, Txn, WatchRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_starts_at_revision_one_and_tracks_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert_eq!(store.revision(), 1);
    assert_eq!(store.get(b"/a").await.unwrap(), (None, 1));

    assert_eq!(store.put(key("/a"), key("one")).await.unwrap(), 2);
    assert_eq!(store.put(key("/a"), key("two")).await.unwrap(), 3);
    let (kv, header) = store.get(b"/a").await.unwrap();
    let kv = kv.expect("key exists");
    assert_eq!(header, 3);
    assert_eq!(kv.value, b"two");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let prev = store
        .delete(key("/a"))
        .await
        .unwrap()
        .expect("delete returns the previous value");
    assert_eq!(prev.value, b"two");
    assert_eq!(store.revision(), 4);
    assert_eq!(store.delete(key("/a")).await.unwrap(), None);
    assert_eq!(
        store.revision(),
        4,
        "deleting an absent key must not bump the revision"
    );

    store.put(key("/a"), key("again")).await.unwrap();
    let kv = store.get(b"/a").await.unwrap().0.unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (5, 1),
        "a delete resets create_revision and version"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_honours_prefix_limit_and_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for name in ["/r/e", "/r/a", "/r/c", "/r/b", "/r/d", "/s/x", "/r"] {
        store.put(key(name), key(name)).await.unwrap();
    }
    let keys = |kvs: &[strake_store::KeyValue]| -> Vec<String> {
        kvs.iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    };

    let page = store
        .range(RangeRequest {
            prefix: key("/r/"),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.kvs), ["/r/a", "/r/b"]);
    assert!(page.more);
    assert_eq!(page.revision, store.revision());

    let page = store
        .range(RangeRequest {
            prefix: key("/r/"),
            limit: 2,
            start_after: Some(key("/r/b")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.kvs), ["/r/c", "/r/d"]);
    assert!(page.more);

    let page = store
        .range(RangeRequest {
            prefix: key("/r/"),
            limit: 2,
            start_after: Some(key("/r/d")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.kvs), ["/r/e"]);
    assert!(!page.more);

    let all = store
        .range(RangeRequest {
            prefix: key("/r/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 5);
    assert!(!all.more);
    let everything = store.range(RangeRequest::default()).await.unwrap();
    assert_eq!(
        keys(&everything.kvs),
        ["/r", "/r/a", "/r/b", "/r/c", "/r/d", "/r/e", "/s/x"]
    );
    let exact_limit = store
        .range(RangeRequest {
            prefix: key("/r/"),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !exact_limit.more,
        "more must be false when exactly `limit` keys match"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_older_revisions_until_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(key("/h/a"), key("a1")).await.unwrap(); // 2
    store.put(key("/h/b"), key("b1")).await.unwrap(); // 3
    store.put(key("/h/a"), key("a2")).await.unwrap(); // 4
    store.delete(key("/h/b")).await.unwrap(); // 5
    store.put(key("/other"), key("x")).await.unwrap(); // 6

    let at = |revision: u64| RangeRequest {
        prefix: key("/h/"),
        revision,
        ..Default::default()
    };
    let values = |resp: strake_store::RangeResponse| -> Vec<String> {
        resp.kvs
            .into_iter()
            .map(|kv| String::from_utf8(kv.value).unwrap())
            .collect()
    };
    assert_eq!(
        values(store.range(at(1)).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(values(store.range(at(2)).await.unwrap()), ["a1"]);
    assert_eq!(values(store.range(at(3)).await.unwrap()), ["a1", "b1"]);
    assert_eq!(values(store.range(at(4)).await.unwrap()), ["a2", "b1"]);
    assert_eq!(values(store.range(at(5)).await.unwrap()), ["a2"]);
    let old = store.range(at(3)).await.unwrap();
    assert_eq!(old.revision, 6, "the header revision is the current one");
    assert_eq!(old.kvs[1].mod_revision, 3);
    let limited = store
        .range(RangeRequest { limit: 1, ..at(3) })
        .await
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.more), (1, true));

    match store.range(at(7)).await {
        Err(StoreError::FutureRevision {
            requested: 7,
            current: 6,
        }) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }

    store.compact(4).await.unwrap();
    assert_eq!(
        values(store.range(at(3)).await.unwrap()),
        ["a1", "b1"],
        "revision 3 is still readable"
    );
    match store.range(at(2)).await {
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 4,
        }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_selects_branch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let create = |value: &str| Txn {
        compare: vec![Compare::Version {
            key: key("/t"),
            op: CmpOp::Equal,
            value: 0,
        }],
        success: vec![Op::Put {
            key: key("/t"),
            value: key(value),
        }],
        failure: vec![Op::Get { key: key("/t") }],
    };

    let first = store.txn(create("v1")).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.revision, 2);
    match &first.results[..] {
        [OpResult::Put { prev: None, kv }] => assert_eq!(kv.mod_revision, 2),
        other => panic!("unexpected results {other:?}"),
    }

    // Creating again conflicts: the failure branch reports the current object.
    let second = store.txn(create("v2")).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(
        second.revision, 2,
        "a txn that changes nothing keeps the revision"
    );
    match &second.results[..] {
        [OpResult::Get { kv: Some(kv) }] => assert_eq!(kv.value, b"v1"),
        other => panic!("unexpected results {other:?}"),
    }

    // Compare-and-swap on mod_revision: stale fails, current succeeds.
    let cas = |expected: u64, value: &str| Txn {
        compare: vec![Compare::ModRevision {
            key: key("/t"),
            op: CmpOp::Equal,
            value: expected,
        }],
        success: vec![
            Op::Put {
                key: key("/t"),
                value: key(value),
            },
            Op::Delete {
                key: key("/t-lock"),
            },
        ],
        failure: vec![],
    };
    let stale = store.txn(cas(1, "stale")).await.unwrap();
    assert!(!stale.succeeded);
    assert!(stale.results.is_empty());
    let fresh = store.txn(cas(2, "fresh")).await.unwrap();
    assert!(fresh.succeeded);
    assert_eq!(fresh.revision, 3);
    match &fresh.results[..] {
        [
            OpResult::Put {
                prev: Some(prev),
                kv,
            },
            OpResult::Delete { prev: None },
        ] => {
            assert_eq!(prev.value, b"v1");
            assert_eq!((kv.version, kv.mod_revision), (2, 3));
        }
        other => panic!("unexpected results {other:?}"),
    }

    // Several writes in one txn share one revision.
    let multi = Txn {
        success: vec![
            Op::Put {
                key: key("/m1"),
                value: key("1"),
            },
            Op::Put {
                key: key("/m2"),
                value: key("2"),
            },
        ],
        ..Txn::default()
    };
    assert_eq!(store.txn(multi).await.unwrap().revision, 4);
    assert_eq!(store.get(b"/m2").await.unwrap().0.unwrap().mod_revision, 4);

    let dup = Txn {
        success: vec![
            Op::Put {
                key: key("/d"),
                value: key("1"),
            },
            Op::Put {
                key: key("/d"),
                value: key("2"),
            },
        ],
        ..Txn::default()
    };
    assert!(matches!(
        store.txn(dup).await,
        Err(StoreError::DuplicateKeyInTxn { .. })
    ));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_refused_before_raft() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let err = store
        .put(key("/big"), vec![0; MAX_VALUE_SIZE + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ValueTooLarge { size, max, .. } if size == MAX_VALUE_SIZE + 1 && max == MAX_VALUE_SIZE)
    );
    assert!(err.to_string().contains("/big"), "{err}");
    assert_eq!(store.revision(), 1, "nothing was proposed");
    assert!(matches!(
        store.put(Vec::new(), key("x")).await,
        Err(StoreError::EmptyKey)
    ));

    assert_eq!(
        store
            .put(key("/big"), vec![7; MAX_VALUE_SIZE])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.get(b"/big").await.unwrap().0.unwrap().value.len(),
        MAX_VALUE_SIZE
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_refuses_old_watches_and_future_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..5 {
        store.put(key("/c"), key(&i.to_string())).await.unwrap(); // revisions 2..=6
    }
    match store.compact(7).await {
        Err(StoreError::FutureRevision {
            requested: 7,
            current: 6,
        }) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    store.compact(4).await.unwrap();
    store.compact(3).await.unwrap(); // already compacted: no-op

    match store.watch(WatchRequest {
        prefix: key("/c"),
        start_revision: 3,
    }) {
        Err(StoreError::Compacted {
            requested: 3,
            compacted: 4,
        }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    let err = store
        .watch(WatchRequest {
            prefix: key("/c"),
            start_revision: 2,
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "revision 2 has been compacted; the oldest available revision is 4"
    );

    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/c"),
            start_revision: 4,
        })
        .unwrap();
    for expected in 4..=6 {
        assert_eq!(common::next_event(&mut watch).await.revision, expected);
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_other_clones_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let other = store.clone();
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/"),
            start_revision: 0,
        })
        .unwrap();
    store.shutdown().await.unwrap();
    match common::next_item(&mut watch).await {
        Some(Err(StoreError::Stopped)) => {}
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(
        common::next_item(&mut watch).await.is_none(),
        "the stream ends after its error"
    );
    assert!(matches!(
        other.put(key("/a"), key("b")).await,
        Err(StoreError::Stopped)
    ));
    assert!(matches!(other.get(b"/a").await, Err(StoreError::Stopped)));
    assert!(matches!(
        other.watch(WatchRequest::default()),
        Err(StoreError::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_log_entries_but_get_a_revision_each() {
    const WRITERS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let start = store.revision();
    let mut watch = store
        .watch(WatchRequest {
            prefix: key("/c/"),
            start_revision: start + 1,
        })
        .unwrap();
    let log_before = store.raft_metrics().last_log_index.unwrap();

    // Every writer puts a key of its own, then increments a shared counter by compare-and-set
    // on its mod_revision, retrying when another writer got there first.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut revisions = vec![
                store
                    .put(key(&format!("/c/own/{w}")), key("x"))
                    .await
                    .unwrap(),
            ];
            let mut proposed = 1;
            loop {
                proposed += 1;
                let (current, _) = store.get(b"/c/counter").await.unwrap();
                let (seen, count) = match current {
                    Some(kv) => (
                        kv.mod_revision,
                        String::from_utf8(kv.value).unwrap().parse::<u64>().unwrap(),
                    ),
                    None => (0, 0),
                };
                let response = store
                    .txn(Txn {
                        compare: vec![Compare::ModRevision {
                            key: key("/c/counter"),
                            op: CmpOp::Equal,
                            value: seen,
                        }],
                        success: vec![Op::Put {
                            key: key("/c/counter"),
                            value: key(&(count + 1).to_string()),
                        }],
                        failure: vec![],
                    })
                    .await
                    .unwrap();
                if response.succeeded {
                    revisions.push(response.revision);
                    return (revisions, proposed);
                }
            }
        }));
    }
    let mut revisions = Vec::new();
    let mut proposed = 0;
    for writer in writers {
        let (written, tries) = writer.await.unwrap();
        revisions.extend(written);
        proposed += tries;
    }
    revisions.sort_unstable();
    let expected: Vec<u64> = (start + 1..=start + 2 * WRITERS).collect();
    assert_eq!(
        revisions, expected,
        "every write has a revision of its own, with no gaps"
    );
    let (counter, _) = store.get(b"/c/counter").await.unwrap();
    assert_eq!(
        counter.unwrap().value,
        WRITERS.to_string().into_bytes(),
        "no increment was lost"
    );

    // The watch sees every revision once, in order, even those applied from one entry.
    for revision in expected {
        let event = common::next_event(&mut watch).await;
        assert_eq!(event.revision, revision);
    }
    let entries = store.raft_metrics().last_log_index.unwrap() - log_before;
    eprintln!("{proposed} transactions took {entries} log entries");
    assert!(
        entries * 2 <= proposed,
        "{proposed} transactions took {entries} log entries: concurrent writes were not batched"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_at_a_past_revision_see_that_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for name in ["/p/a", "/p/b", "/p/c", "/p/d", "/p/e", "/q/x"] {
        store.put(key(name), key(name)).await.unwrap();
    }
    let at = store.revision();
    // After `at`: one key changes, one goes, one appears inside and one outside the prefix.
    store.put(key("/p/b"), b"new".to_vec()).await.unwrap();
    store.delete(key("/p/c")).await.unwrap();
    store.put(key("/p/bb"), key("/p/bb")).await.unwrap();
    store.put(key("/q/y"), key("/q/y")).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .range(RangeRequest {
                prefix: key("/p/"),
                limit: 2,
                start_after: after.clone(),
                revision: at,
            })
            .await
            .unwrap();
        assert!(page.kvs.len() <= 2);
        for kv in &page.kvs {
            seen.push((
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
            ));
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    let want: Vec<(String, String)> = ["/p/a", "/p/b", "/p/c", "/p/d", "/p/e"]
        .iter()
        .map(|k| (k.to_string(), k.to_string()))
        .collect();
    assert_eq!(seen, want, "the keys and values as of revision {at}");
    store.shutdown().await.unwrap();
}
