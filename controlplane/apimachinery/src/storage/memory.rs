//! [`ObjectStore`] in memory, with the same MVCC rules as the raft store: every write bumps one
//! global revision, old versions stay readable until compacted, and watches replay history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use super::{Change, ChangeKind, Guard, ObjectStore, Page, StorageError, StorageResult, Stored};

/// Largest value accepted, as the raft store bounds it.
const MAX_VALUE: usize = strake_store::MAX_VALUE_SIZE;

/// One key's versions, oldest first: (revision, value or None for a delete).
type Versions = Vec<(u64, Option<Vec<u8>>)>;

#[derive(Default)]
struct State {
    revision: u64,
    /// The oldest revision whose changes are still kept (0: nothing compacted).
    compacted: u64,
    keys: BTreeMap<Vec<u8>, Versions>,
    /// Every change at or after `compacted`, in order.
    history: Vec<Change>,
}

impl State {
    fn current(&self, key: &[u8]) -> Option<Stored> {
        let (rev, value) = self.keys.get(key)?.last()?;
        value.as_ref().map(|v| Stored {
            key: key.to_vec(),
            value: v.clone(),
            revision: *rev,
        })
    }

    fn at(&self, key: &[u8], versions: &Versions, revision: u64) -> Option<Stored> {
        let (rev, value) = versions.iter().rev().find(|(r, _)| *r <= revision)?;
        value.as_ref().map(|v| Stored {
            key: key.to_vec(),
            value: v.clone(),
            revision: *rev,
        })
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> (u64, Change) {
        self.revision += 1;
        self.write_at(self.revision, key, value)
    }

    /// A write at `rev`, the current revision (several keys written in one revision).
    fn write_at(&mut self, rev: u64, key: Vec<u8>, value: Option<Vec<u8>>) -> (u64, Change) {
        let prev = self.current(&key);
        self.keys
            .entry(key.clone())
            .or_default()
            .push((rev, value.clone()));
        let kind = if value.is_some() {
            ChangeKind::Put
        } else {
            ChangeKind::Delete
        };
        let change = Change {
            kind,
            key,
            revision: rev,
            value,
            prev,
        };
        self.history.push(change.clone());
        (rev, change)
    }
}

/// An in-memory keyspace for tests of everything above the store.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Change>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, change: Change) {
        let _ = self.events.send(change);
    }
}

fn check_size(value: &[u8]) -> StorageResult<()> {
    if value.len() > MAX_VALUE {
        return Err(StorageError::TooLarge {
            size: value.len(),
            max: MAX_VALUE,
        });
    }
    Ok(())
}

impl ObjectStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StorageResult<Option<Stored>>> {
        Box::pin(async move { Ok(self.lock().current(key)) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: Option<&'a [u8]>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'a, StorageResult<Page>> {
        Box::pin(async move {
            let s = self.lock();
            if revision != 0 && revision + 1 < s.compacted {
                return Err(StorageError::Compacted {
                    requested: revision,
                    compacted: s.compacted,
                });
            }
            if revision > s.revision {
                return Err(StorageError::FutureRevision {
                    requested: revision,
                    current: s.revision,
                });
            }
            let at = if revision == 0 { s.revision } else { revision };
            let mut items = Vec::new();
            let mut more = false;
            for (key, versions) in s.keys.range(prefix.to_vec()..) {
                if !key.starts_with(prefix) {
                    break;
                }
                if start_after.is_some_and(|after| key.as_slice() <= after) {
                    continue;
                }
                if let Some(item) = s.at(key, versions, at) {
                    if limit != 0 && items.len() == limit {
                        more = true;
                        break;
                    }
                    items.push(item);
                }
            }
            Ok(Page {
                items,
                more,
                revision: at,
            })
        })
    }

    fn create(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            check_size(&value)?;
            let change = {
                let mut s = self.lock();
                if s.current(&key).is_some() {
                    return Err(StorageError::AlreadyExists);
                }
                s.write(key.clone(), Some(value.clone())).1
            };
            let revision = change.revision;
            self.publish(change);
            Ok(Stored {
                key,
                value,
                revision,
            })
        })
    }

    fn update(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            check_size(&value)?;
            let change = {
                let mut s = self.lock();
                match s.current(&key) {
                    None => return Err(StorageError::NotFound),
                    Some(cur) if cur.revision != expected => {
                        return Err(StorageError::Conflict {
                            current: cur.revision,
                        });
                    }
                    Some(_) => s.write(key.clone(), Some(value.clone())).1,
                }
            };
            let revision = change.revision;
            self.publish(change);
            Ok(Stored {
                key,
                value,
                revision,
            })
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
            check_size(&value)?;
            for g in &guards {
                check_size(&g.value)?;
            }
            let changes = {
                let mut s = self.lock();
                match (expected, s.current(&key)) {
                    (None, Some(_)) => return Err(StorageError::AlreadyExists),
                    (Some(_), None) => return Err(StorageError::NotFound),
                    (Some(e), Some(cur)) if cur.revision != e => {
                        return Err(StorageError::Conflict {
                            current: cur.revision,
                        });
                    }
                    _ => {}
                }
                for g in &guards {
                    let now = s.current(&g.key).map(|c| c.revision);
                    if now.unwrap_or(0) != g.expected {
                        return Err(StorageError::GuardFailed {
                            key: g.key.clone(),
                            current: now,
                        });
                    }
                }
                s.revision += 1;
                let rev = s.revision;
                let mut changes = vec![s.write_at(rev, key.clone(), Some(value.clone())).1];
                for g in guards {
                    changes.push(s.write_at(rev, g.key, Some(g.value)).1);
                }
                changes
            };
            let revision = changes[0].revision;
            for c in changes {
                self.publish(c);
            }
            Ok(Stored {
                key,
                value,
                revision,
            })
        })
    }

    fn delete(&self, key: Vec<u8>, expected: Option<u64>) -> BoxFuture<'_, StorageResult<u64>> {
        Box::pin(async move {
            let change = {
                let mut s = self.lock();
                match s.current(&key) {
                    None => return Err(StorageError::NotFound),
                    Some(cur) if expected.is_some_and(|e| e != cur.revision) => {
                        return Err(StorageError::Conflict {
                            current: cur.revision,
                        });
                    }
                    Some(_) => s.write(key, None).1,
                }
            };
            let revision = change.revision;
            self.publish(change);
            Ok(revision)
        })
    }

    fn watch(
        &self,
        prefix: Vec<u8>,
        from: u64,
    ) -> StorageResult<BoxStream<'static, StorageResult<Change>>> {
        let (replay, rx, start) = {
            let s = self.lock();
            if from != 0 && from < s.compacted {
                return Err(StorageError::Compacted {
                    requested: from,
                    compacted: s.compacted,
                });
            }
            let replay: Vec<Change> = if from == 0 {
                Vec::new()
            } else {
                s.history
                    .iter()
                    .filter(|c| c.revision >= from && c.key.starts_with(&prefix))
                    .cloned()
                    .collect()
            };
            // Subscribing under the lock: every later write is published after we saw history.
            (replay, self.events.subscribe(), s.revision)
        };
        let live = tokio_stream_from(rx).filter_map(move |item| {
            let prefix = prefix.clone();
            async move {
                match item {
                    Ok(c) if c.revision > start && c.key.starts_with(&prefix) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(n) => Some(Err(StorageError::Unavailable(format!(
                        "watch fell {n} events behind"
                    )))),
                }
            }
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    fn revision(&self) -> BoxFuture<'_, StorageResult<u64>> {
        Box::pin(async move { Ok(self.lock().revision) })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move {
            let mut s = self.lock();
            if revision > s.revision {
                return Err(StorageError::FutureRevision {
                    requested: revision,
                    current: s.revision,
                });
            }
            if revision <= s.compacted {
                return Ok(());
            }
            // As the raft store: `compacted` is the oldest revision whose changes are kept, and
            // reads stay possible as of the revision just before it.
            s.compacted = revision;
            let floor = revision - 1;
            for versions in s.keys.values_mut() {
                if let Some(keep) = versions.iter().rposition(|(r, _)| *r <= floor) {
                    versions.drain(..keep);
                }
            }
            s.keys
                .retain(|_, v| !(v.len() == 1 && v[0].1.is_none() && v[0].0 <= floor));
            s.history.retain(|c| c.revision >= revision);
            Ok(())
        })
    }
}

/// A broadcast receiver as a stream of results (lagging shows as an error with the count).
fn tokio_stream_from(rx: broadcast::Receiver<Change>) -> BoxStream<'static, Result<Change, u64>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(c) => Some((Ok(c), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((Err(n), rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}
