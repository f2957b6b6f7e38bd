//! [`ObjectStore`] on the raft-replicated store: creates and updates are transactions that
//! compare the key's version or mod revision, so concurrent writers cannot both win.

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use strake_store::{
    CmpOp, Compare, EventKind, KeyValue, Op, OpResult, RangeRequest, Store, StoreError, Txn,
    WatchRequest,
};

use super::{Change, ChangeKind, Guard, ObjectStore, Page, StorageError, StorageResult, Stored};

/// The replicated store, seen as an object keyspace.
#[derive(Clone)]
pub struct RaftStore {
    store: Store,
}

impl RaftStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn inner(&self) -> &Store {
        &self.store
    }
}

fn stored(kv: KeyValue) -> Stored {
    Stored {
        key: kv.key,
        value: kv.value,
        revision: kv.mod_revision,
    }
}

fn map(e: StoreError) -> StorageError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => StorageError::Compacted {
            requested,
            compacted,
        },
        StoreError::FutureRevision { requested, current } => {
            StorageError::FutureRevision { requested, current }
        }
        StoreError::ValueTooLarge { size, max, .. } => StorageError::TooLarge { size, max },
        e @ (StoreError::NotLeader { .. }
        | StoreError::NoQuorum(_)
        | StoreError::CatchingUp { .. }
        | StoreError::LeaderUnreachable { .. }
        | StoreError::DiskFull { .. }
        | StoreError::Stopped) => StorageError::Unavailable(e.to_string()),
        other => StorageError::Internal(other.to_string()),
    }
}

/// Runs a one-op transaction guarded by `compare`; `Ok(None)` when the compare failed, with the
/// key's current state read in the same transaction.
async fn guarded(
    store: &Store,
    compare: Compare,
    op: Op,
    key: Vec<u8>,
) -> StorageResult<Result<(u64, Option<KeyValue>), Option<KeyValue>>> {
    let resp = store
        .txn(Txn {
            compare: vec![compare],
            success: vec![op],
            failure: vec![Op::Get { key }],
        })
        .await
        .map_err(map)?;
    let first = resp.results.into_iter().next();
    if resp.succeeded {
        let kv = match first {
            Some(OpResult::Put { kv, .. }) => Some(kv),
            _ => None,
        };
        Ok(Ok((resp.revision, kv)))
    } else {
        match first {
            Some(OpResult::Get { kv }) => Ok(Err(kv)),
            _ => Ok(Err(None)),
        }
    }
}

impl ObjectStore for RaftStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StorageResult<Option<Stored>>> {
        Box::pin(async move { Ok(self.store.get(key).await.map_err(map)?.0.map(stored)) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: Option<&'a [u8]>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'a, StorageResult<Page>> {
        Box::pin(async move {
            let resp = self
                .store
                .range(RangeRequest {
                    prefix: prefix.to_vec(),
                    start_after: start_after.map(<[u8]>::to_vec),
                    limit,
                    revision,
                })
                .await
                .map_err(map)?;
            // A read at a past revision was served as of that revision.
            let at = if revision == 0 {
                resp.revision
            } else {
                revision
            };
            Ok(Page {
                items: resp.kvs.into_iter().map(stored).collect(),
                more: resp.more,
                revision: at,
            })
        })
    }

    fn create(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let cmp = Compare::Version {
                key: key.clone(),
                op: CmpOp::Equal,
                value: 0,
            };
            match guarded(
                &self.store,
                cmp,
                Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                key.clone(),
            )
            .await?
            {
                Ok((rev, kv)) => Ok(kv.map(stored).unwrap_or(Stored {
                    key,
                    value,
                    revision: rev,
                })),
                Err(_) => Err(StorageError::AlreadyExists),
            }
        })
    }

    fn update(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let cmp = Compare::ModRevision {
                key: key.clone(),
                op: CmpOp::Equal,
                value: expected,
            };
            match guarded(
                &self.store,
                cmp,
                Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                key.clone(),
            )
            .await?
            {
                Ok((rev, kv)) => Ok(kv.map(stored).unwrap_or(Stored {
                    key,
                    value,
                    revision: rev,
                })),
                Err(None) => Err(StorageError::NotFound),
                Err(Some(kv)) => Err(StorageError::Conflict {
                    current: kv.mod_revision,
                }),
            }
        })
    }

    fn write_with(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: Option<u64>,
        guards: Vec<Guard>,
    ) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let mut compare = vec![match expected {
                None => Compare::Version {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    value: 0,
                },
                Some(rev) => Compare::ModRevision {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    value: rev,
                },
            }];
            let mut success = vec![Op::Put {
                key: key.clone(),
                value: value.clone(),
            }];
            let mut failure = vec![Op::Get { key: key.clone() }];
            for g in &guards {
                compare.push(Compare::ModRevision {
                    key: g.key.clone(),
                    op: CmpOp::Equal,
                    value: g.expected,
                });
                success.push(Op::Put {
                    key: g.key.clone(),
                    value: g.value.clone(),
                });
                failure.push(Op::Get { key: g.key.clone() });
            }
            let resp = self
                .store
                .txn(Txn {
                    compare,
                    success,
                    failure,
                })
                .await
                .map_err(map)?;
            let mut results = resp.results.into_iter();
            if resp.succeeded {
                return Ok(match results.next() {
                    Some(OpResult::Put { kv, .. }) => stored(kv),
                    _ => Stored {
                        key,
                        value,
                        revision: resp.revision,
                    },
                });
            }
            // Which compare failed, from the state read in the same transaction.
            let current = |r: Option<OpResult>| match r {
                Some(OpResult::Get { kv }) => kv.map(|kv| kv.mod_revision),
                _ => None,
            };
            match (expected, current(results.next())) {
                (None, Some(_)) => return Err(StorageError::AlreadyExists),
                (Some(_), None) => return Err(StorageError::NotFound),
                (Some(e), Some(c)) if e != c => {
                    return Err(StorageError::Conflict { current: c });
                }
                _ => {}
            }
            for (g, r) in guards.into_iter().zip(results) {
                let now = current(Some(r));
                if now != Some(g.expected) {
                    return Err(StorageError::GuardFailed {
                        key: g.key,
                        current: now,
                    });
                }
            }
            Err(StorageError::Internal(
                "a guarded write failed with every compare holding".into(),
            ))
        })
    }

    fn delete(&self, key: Vec<u8>, expected: Option<u64>) -> BoxFuture<'_, StorageResult<u64>> {
        Box::pin(async move {
            let cmp = match expected {
                Some(rev) => Compare::ModRevision {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    value: rev,
                },
                None => Compare::Version {
                    key: key.clone(),
                    op: CmpOp::Greater,
                    value: 0,
                },
            };
            match guarded(&self.store, cmp, Op::Delete { key: key.clone() }, key).await? {
                Ok((rev, _)) => Ok(rev),
                Err(None) => Err(StorageError::NotFound),
                Err(Some(kv)) => Err(StorageError::Conflict {
                    current: kv.mod_revision,
                }),
            }
        })
    }

    fn watch(
        &self,
        prefix: Vec<u8>,
        from: u64,
    ) -> StorageResult<BoxStream<'static, StorageResult<Change>>> {
        let stream = self
            .store
            .watch(WatchRequest {
                prefix,
                start_revision: from,
            })
            .map_err(map)?;
        Ok(stream
            .map(|ev| {
                let ev = ev.map_err(map)?;
                let kind = match ev.kind {
                    EventKind::Put => ChangeKind::Put,
                    EventKind::Delete => ChangeKind::Delete,
                };
                Ok(Change {
                    kind,
                    revision: ev.revision,
                    value: (kind == ChangeKind::Put).then_some(ev.kv.value),
                    key: ev.kv.key,
                    prev: ev.prev_kv.map(stored),
                })
            })
            .boxed())
    }

    fn revision(&self) -> BoxFuture<'_, StorageResult<u64>> {
        Box::pin(async move {
            Ok(self
                .store
                .get(b"/registry/\0revision")
                .await
                .map_err(map)?
                .1)
        })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move { self.store.compact(revision).await.map_err(map) })
    }
}
