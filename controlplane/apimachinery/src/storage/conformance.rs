//! The one suite every [`ObjectStore`] passes: the memory store in unit tests, the raft store in
//! the crate's integration tests. Each check names the invariant it proves.

use futures::StreamExt;

use super::{ChangeKind, Guard, ObjectStore, StorageError};

fn k(s: &str) -> Vec<u8> {
    format!("/conformance/{s}").into_bytes()
}

/// Runs every check against a fresh, empty store. Panics on the first broken invariant.
pub async fn run(store: &dyn ObjectStore) {
    create_is_exclusive_and_get_reads_it(store).await;
    updates_compare_the_revision(store).await;
    deletes_compare_and_report_missing_keys(store).await;
    guarded_writes_are_all_or_none(store).await;
    lists_page_in_key_order_and_read_old_revisions(store).await;
    watches_replay_from_a_revision_then_follow(store).await;
    compaction_expires_old_reads_and_watches(store).await;
}

async fn create_is_exclusive_and_get_reads_it(s: &dyn ObjectStore) {
    let a = s.create(k("a/1"), b"one".to_vec()).await.expect("create");
    assert!(a.revision > 0, "a write gets a revision");
    assert_eq!(
        s.create(k("a/1"), b"again".to_vec()).await,
        Err(StorageError::AlreadyExists)
    );
    let got = s
        .get(&k("a/1"))
        .await
        .unwrap()
        .expect("created key reads back");
    assert_eq!(
        (got.value.as_slice(), got.revision),
        (b"one".as_slice(), a.revision)
    );
    assert_eq!(s.get(&k("a/missing")).await.unwrap(), None);
    assert!(
        s.revision().await.unwrap() >= a.revision,
        "the store's revision covers every write"
    );
}

async fn updates_compare_the_revision(s: &dyn ObjectStore) {
    let first = s.create(k("b/1"), b"v1".to_vec()).await.unwrap();
    let second = s
        .update(k("b/1"), b"v2".to_vec(), first.revision)
        .await
        .expect("update at the current revision");
    assert!(second.revision > first.revision);
    let stale = s.update(k("b/1"), b"v3".to_vec(), first.revision).await;
    assert_eq!(
        stale,
        Err(StorageError::Conflict {
            current: second.revision
        }),
        "a stale writer loses"
    );
    assert_eq!(s.get(&k("b/1")).await.unwrap().unwrap().value, b"v2");
    assert_eq!(
        s.update(k("b/none"), b"x".to_vec(), 1).await,
        Err(StorageError::NotFound)
    );
}

async fn guarded_writes_are_all_or_none(s: &dyn ObjectStore) {
    let quota = s.create(k("g/quota"), b"used=0".to_vec()).await.unwrap();
    let guard = |value: &[u8], expected| Guard {
        key: k("g/quota"),
        value: value.to_vec(),
        expected,
    };
    let a = s
        .write_with(
            k("g/a"),
            b"a".to_vec(),
            None,
            vec![guard(b"used=1", quota.revision)],
        )
        .await
        .expect("a write with a guard at its revision");
    let q = s.get(&k("g/quota")).await.unwrap().unwrap();
    assert_eq!(
        (q.value.as_slice(), q.revision),
        (b"used=1".as_slice(), a.revision),
        "the guard is written in the same revision"
    );
    // A second writer that read the quota before the first wrote loses, and writes nothing.
    let lost = s
        .write_with(
            k("g/b"),
            b"b".to_vec(),
            None,
            vec![guard(b"used=1", quota.revision)],
        )
        .await;
    assert_eq!(
        lost,
        Err(StorageError::GuardFailed {
            key: k("g/quota"),
            current: Some(a.revision)
        })
    );
    assert_eq!(s.get(&k("g/b")).await.unwrap(), None, "all or none");
    // The key's own precondition is checked as create and update check it.
    let exists = s
        .write_with(
            k("g/a"),
            b"x".to_vec(),
            None,
            vec![guard(b"used=2", a.revision)],
        )
        .await;
    assert_eq!(exists, Err(StorageError::AlreadyExists));
    let stale = s
        .write_with(k("g/a"), b"x".to_vec(), Some(quota.revision), vec![])
        .await;
    assert_eq!(
        stale,
        Err(StorageError::Conflict {
            current: a.revision
        })
    );
    assert_eq!(
        s.get(&k("g/quota")).await.unwrap().unwrap().value,
        b"used=1"
    );
    let updated = s
        .write_with(
            k("g/a"),
            b"a2".to_vec(),
            Some(a.revision),
            vec![guard(b"used=2", a.revision)],
        )
        .await
        .expect("an update with a guard");
    assert!(updated.revision > a.revision);
    // A guard on a key that does not exist fails with no revision.
    let missing = s
        .write_with(
            k("g/c"),
            b"c".to_vec(),
            None,
            vec![Guard {
                key: k("g/none"),
                value: b"x".to_vec(),
                expected: 1,
            }],
        )
        .await;
    assert_eq!(
        missing,
        Err(StorageError::GuardFailed {
            key: k("g/none"),
            current: None
        })
    );
    // A guard at 0 is a claim: the key must be absent, and is created with the write.
    let claim = |value: &[u8], expected| Guard {
        key: k("g/claim"),
        value: value.to_vec(),
        expected,
    };
    let first = s
        .write_with(k("g/d"), b"d".to_vec(), None, vec![claim(b"d", 0)])
        .await
        .expect("a claim on an absent key");
    let held = s.get(&k("g/claim")).await.unwrap().unwrap();
    assert_eq!(
        (held.value.as_slice(), held.revision),
        (b"d".as_slice(), first.revision)
    );
    let second = s
        .write_with(k("g/e"), b"e".to_vec(), None, vec![claim(b"e", 0)])
        .await;
    assert_eq!(
        second,
        Err(StorageError::GuardFailed {
            key: k("g/claim"),
            current: Some(first.revision)
        })
    );
    assert_eq!(s.get(&k("g/e")).await.unwrap(), None, "all or none");
}

async fn deletes_compare_and_report_missing_keys(s: &dyn ObjectStore) {
    let c = s.create(k("c/1"), b"x".to_vec()).await.unwrap();
    assert_eq!(
        s.delete(k("c/1"), Some(c.revision + 1000)).await,
        Err(StorageError::Conflict {
            current: c.revision
        })
    );
    let rev = s
        .delete(k("c/1"), Some(c.revision))
        .await
        .expect("delete at the current revision");
    assert!(rev > c.revision);
    assert_eq!(s.get(&k("c/1")).await.unwrap(), None);
    assert_eq!(s.delete(k("c/1"), None).await, Err(StorageError::NotFound));
    // A deleted key can be created again.
    s.create(k("c/1"), b"y".to_vec())
        .await
        .expect("re-create after delete");
    s.delete(k("c/1"), None)
        .await
        .expect("unconditional delete");
}

async fn lists_page_in_key_order_and_read_old_revisions(s: &dyn ObjectStore) {
    for name in ["d/3", "d/1", "d/2"] {
        s.create(k(name), name.as_bytes().to_vec()).await.unwrap();
    }
    s.create(k("dd/other"), b"outside the prefix".to_vec())
        .await
        .unwrap();
    let all = s.list(&k("d/"), None, 0, 0).await.unwrap();
    let keys: Vec<_> = all
        .items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.key).to_string())
        .collect();
    assert_eq!(
        keys,
        ["/conformance/d/1", "/conformance/d/2", "/conformance/d/3"],
        "prefix, key order"
    );
    assert!(!all.more);
    let page = s.list(&k("d/"), None, 2, 0).await.unwrap();
    assert_eq!((page.items.len(), page.more), (2, true), "a limit pages");
    let rest = s
        .list(&k("d/"), Some(&page.items[1].key), 2, page.revision)
        .await
        .unwrap();
    assert_eq!(
        (rest.items.len(), rest.more),
        (1, false),
        "the next page continues after the last key"
    );
    let before = all.revision;
    let d1 = all.items[0].clone();
    s.update(k("d/1"), b"changed".to_vec(), d1.revision)
        .await
        .unwrap();
    s.delete(k("d/2"), None).await.unwrap();
    let old = s.list(&k("d/"), None, 0, before).await.unwrap();
    assert_eq!(
        old.items, all.items,
        "a list at an old revision sees the keys as they were"
    );
    assert_eq!(old.revision, before);
    let now = s.revision().await.unwrap();
    assert!(matches!(
        s.list(&k("d/"), None, 0, now + 100).await,
        Err(StorageError::FutureRevision { .. })
    ));
}

async fn watches_replay_from_a_revision_then_follow(s: &dyn ObjectStore) {
    let start = s.revision().await.unwrap() + 1;
    let e1 = s.create(k("e/1"), b"1".to_vec()).await.unwrap();
    s.create(k("other/x"), b"not watched".to_vec())
        .await
        .unwrap();
    let mut w = s.watch(k("e/"), start).unwrap();
    let e2 = s
        .update(k("e/1"), b"2".to_vec(), e1.revision)
        .await
        .unwrap();
    let del = s.delete(k("e/1"), None).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let c = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("watch delivers")
            .unwrap()
            .unwrap();
        got.push(c);
    }
    assert_eq!(
        got.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [e1.revision, e2.revision, del]
    );
    assert_eq!(got[0].kind, ChangeKind::Put);
    assert_eq!(got[0].prev, None, "a create has no previous value");
    assert_eq!(
        got[1].prev.as_ref().map(|p| p.value.clone()),
        Some(b"1".to_vec()),
        "an update carries the old value"
    );
    assert_eq!(
        (got[2].kind, got[2].value.clone()),
        (ChangeKind::Delete, None)
    );
    assert_eq!(
        got[2].prev.as_ref().map(|p| p.revision),
        Some(e2.revision),
        "a delete carries the last value"
    );
    // A watch from 0 sees only later changes.
    let mut live = s.watch(k("e/"), 0).unwrap();
    let e3 = s.create(k("e/3"), b"3".to_vec()).await.unwrap();
    let c = tokio::time::timeout(std::time::Duration::from_secs(10), live.next())
        .await
        .expect("live watch delivers")
        .unwrap()
        .unwrap();
    assert_eq!(c.revision, e3.revision);
}

async fn compaction_expires_old_reads_and_watches(s: &dyn ObjectStore) {
    let a = s.create(k("f/1"), b"1".to_vec()).await.unwrap();
    let b = s.update(k("f/1"), b"2".to_vec(), a.revision).await.unwrap();
    let c = s.update(k("f/1"), b"3".to_vec(), b.revision).await.unwrap();
    s.compact(c.revision).await.expect("compact");
    assert!(
        matches!(
            s.watch(k("f/"), a.revision),
            Err(StorageError::Compacted { .. })
        ),
        "a watch from before the compaction expires"
    );
    assert!(
        matches!(
            s.list(&k("f/"), None, 0, a.revision).await,
            Err(StorageError::Compacted { .. })
        ),
        "so does a read"
    );
    let at = s
        .list(&k("f/"), None, 0, c.revision)
        .await
        .expect("a read at the compaction revision");
    assert_eq!(at.items[0].value, b"3");
    assert_eq!(
        s.get(&k("f/1")).await.unwrap().unwrap().value,
        b"3",
        "compaction keeps current values"
    );
    s.compact(b.revision)
        .await
        .expect("compacting an older revision again is a no-op");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_store_passes() {
        super::run(&super::super::MemoryStore::new()).await;
    }
}
