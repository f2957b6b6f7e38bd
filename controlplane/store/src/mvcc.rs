//! The MVCC rules, free of I/O: how a transaction changes keys and which events it produces,
//! and how events are undone to read an older revision.
//!
//! The state machine runs [`apply_txn`] against a redb-backed [`KvState`]; tests run it against a
//! `BTreeMap`.

#[cfg(test)]
use std::collections::BTreeMap;

use crate::types::{EventKind, KeyValue, Op, OpResult, Txn, TxnResponse, WatchEvent};

/// The latest state of every key, as the MVCC rules see it.
pub(crate) trait KvState {
    type Error;
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Self::Error>;
    fn put(&mut self, kv: &KeyValue) -> Result<(), Self::Error>;
    fn remove(&mut self, key: &[u8]) -> Result<(), Self::Error>;
}

/// What a transaction did: its response and the events of the new revision (empty if the
/// transaction changed nothing, in which case the revision did not move).
#[derive(Debug)]
pub(crate) struct TxnOutcome {
    pub response: TxnResponse,
    pub events: Vec<WatchEvent>,
}

/// Applies `txn` on top of `state`, whose latest revision is `revision`.
///
/// Every write of the transaction gets revision `revision + 1`; the revision only counts as used
/// if at least one key changed (a delete of an absent key changes nothing).
pub(crate) fn apply_txn<S: KvState>(
    state: &mut S,
    revision: u64,
    txn: &Txn,
) -> Result<TxnOutcome, S::Error> {
    let mut succeeded = true;
    for cmp in &txn.compare {
        let current = state.get(cmp.key())?;
        if !cmp.holds(current.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let new_revision = revision + 1;
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match op {
            Op::Get { key } => OpResult::Get {
                kv: state.get(key)?,
            },
            Op::Put { key, value } => {
                let prev = state.get(key)?;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(new_revision, |p| p.create_revision),
                    mod_revision: new_revision,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                };
                state.put(&kv)?;
                events.push(WatchEvent {
                    revision: new_revision,
                    kind: EventKind::Put,
                    kv: kv.clone(),
                    prev_kv: prev.clone(),
                });
                OpResult::Put { prev, kv }
            }
            Op::Delete { key } => {
                let prev = state.get(key)?;
                if prev.is_some() {
                    state.remove(key)?;
                    events.push(WatchEvent {
                        revision: new_revision,
                        kind: EventKind::Delete,
                        kv: tombstone(key, new_revision),
                        prev_kv: prev.clone(),
                    });
                }
                OpResult::Delete { prev }
            }
        };
        results.push(result);
    }
    let revision = if events.is_empty() {
        revision
    } else {
        new_revision
    };
    Ok(TxnOutcome {
        response: TxnResponse {
            succeeded,
            revision,
            results,
        },
        events,
    })
}

/// The `kv` of a delete event: the key and the revision of the delete.
pub(crate) fn tombstone(key: &[u8], revision: u64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: Vec::new(),
        create_revision: 0,
        mod_revision: revision,
        version: 0,
    }
}

/// Undoes one event on a view of the keyspace, moving it back to before the event.
/// Events must be undone newest first. (The tests' model of reads at past revisions.)
#[cfg(test)]
pub(crate) fn undo_event(view: &mut BTreeMap<Vec<u8>, KeyValue>, event: &WatchEvent) {
    match &event.prev_kv {
        Some(prev) => {
            view.insert(prev.key.clone(), prev.clone());
        }
        None => {
            view.remove(&event.kv.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::types::{CmpOp, Compare};

    #[derive(Default)]
    struct MapState(BTreeMap<Vec<u8>, KeyValue>);

    impl KvState for MapState {
        type Error = Infallible;
        fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Infallible> {
            Ok(self.0.get(key).cloned())
        }
        fn put(&mut self, kv: &KeyValue) -> Result<(), Infallible> {
            self.0.insert(kv.key.clone(), kv.clone());
            Ok(())
        }
        fn remove(&mut self, key: &[u8]) -> Result<(), Infallible> {
            self.0.remove(key);
            Ok(())
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn run(state: &mut MapState, revision: u64, txn: Txn) -> TxnOutcome {
        match apply_txn(state, revision, &txn) {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

    #[test]
    fn put_tracks_create_mod_and_version() {
        let mut state = MapState::default();
        let first = run(
            &mut state,
            1,
            Txn {
                success: vec![put("/a", "1")],
                ..Txn::default()
            },
        );
        assert_eq!(first.response.revision, 2);
        let second = run(
            &mut state,
            2,
            Txn {
                success: vec![put("/a", "2")],
                ..Txn::default()
            },
        );
        assert_eq!(second.response.revision, 3);
        let kv = &state.0[b"/a".as_slice()];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(second.events.len(), 1);
        assert_eq!(
            second.events[0].prev_kv.as_ref().map(|p| p.version),
            Some(1)
        );
    }

    #[test]
    fn delete_resets_version_and_absent_delete_keeps_revision() {
        let mut state = MapState::default();
        run(
            &mut state,
            1,
            Txn {
                success: vec![put("/a", "1"), put("/b", "1")],
                ..Txn::default()
            },
        );
        let del = run(
            &mut state,
            2,
            Txn {
                success: vec![Op::Delete {
                    key: b"/a".to_vec(),
                }],
                ..Txn::default()
            },
        );
        assert_eq!(del.response.revision, 3);
        assert_eq!(del.events[0].kind, EventKind::Delete);
        assert_eq!(del.events[0].kv.mod_revision, 3);
        let noop = run(
            &mut state,
            3,
            Txn {
                success: vec![Op::Delete {
                    key: b"/a".to_vec(),
                }],
                ..Txn::default()
            },
        );
        assert_eq!(
            noop.response.revision, 3,
            "deleting an absent key must not bump the revision"
        );
        assert!(noop.events.is_empty());
        let again = run(
            &mut state,
            3,
            Txn {
                success: vec![put("/a", "x")],
                ..Txn::default()
            },
        );
        let kv = &state.0[b"/a".as_slice()];
        assert_eq!((kv.create_revision, kv.version), (4, 1));
        assert_eq!(again.events[0].prev_kv, None);
    }

    #[test]
    fn failed_compare_runs_failure_branch() {
        let mut state = MapState::default();
        run(
            &mut state,
            1,
            Txn {
                success: vec![put("/a", "1")],
                ..Txn::default()
            },
        );
        let txn = Txn {
            compare: vec![Compare::ModRevision {
                key: b"/a".to_vec(),
                op: CmpOp::Equal,
                value: 1,
            }],
            success: vec![put("/a", "2")],
            failure: vec![Op::Get {
                key: b"/a".to_vec(),
            }],
        };
        let out = run(&mut state, 2, txn);
        assert!(!out.response.succeeded);
        assert_eq!(out.response.revision, 2);
        match &out.response.results[0] {
            OpResult::Get { kv: Some(kv) } => assert_eq!(kv.value, b"1"),
            other => panic!("unexpected result {other:?}"),
        }
    }

    #[test]
    fn reads_in_a_txn_see_earlier_writes() {
        let mut state = MapState::default();
        let out = run(
            &mut state,
            5,
            Txn {
                success: vec![
                    put("/a", "1"),
                    Op::Get {
                        key: b"/a".to_vec(),
                    },
                ],
                ..Txn::default()
            },
        );
        match &out.response.results[1] {
            OpResult::Get { kv: Some(kv) } => assert_eq!(kv.mod_revision, 6),
            other => panic!("unexpected result {other:?}"),
        }
    }

    #[test]
    fn undo_restores_older_view() {
        let mut state = MapState::default();
        let a = run(
            &mut state,
            1,
            Txn {
                success: vec![put("/a", "1")],
                ..Txn::default()
            },
        );
        let b = run(
            &mut state,
            2,
            Txn {
                success: vec![put("/a", "2"), put("/b", "1")],
                ..Txn::default()
            },
        );
        let c = run(
            &mut state,
            3,
            Txn {
                success: vec![Op::Delete {
                    key: b"/a".to_vec(),
                }],
                ..Txn::default()
            },
        );
        let mut view = state.0.clone();
        for ev in c.events.iter().rev().chain(b.events.iter().rev()) {
            undo_event(&mut view, ev);
        }
        assert_eq!(view.len(), 1);
        assert_eq!(view[b"/a".as_slice()], a.events[0].kv);
    }
}
