//! Watch: the current state as ADDED events when the client gives no resourceVersion (or asks
//! for initial events), then every change after it, filtered by selectors, with bookmarks, a
//! timeout, and an ERROR event (410 Expired) when history is gone.
//!
//! The watch cache keeps one store watch per resource: each change is decoded once, its JSON
//! serialized once, kept in a window of recent changes, and fanned out to every watcher of that
//! resource. A watch from a revision inside the window is served from the cache; an older one
//! reads the store's history directly.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::registry::{Filter, ListOptions, Registry, parse_rv};
use crate::resource::ResourceDef;
use crate::storage::{ChangeKind, ObjectStore, StorageError};

/// An object shared by every watcher that receives it, with its JSON encoded at most once.
#[derive(Clone, Debug)]
pub struct Shared {
    value: Arc<Value>,
    json: Arc<OnceLock<Vec<u8>>>,
}

impl Shared {
    pub fn new(value: Value) -> Self {
        Self {
            value: Arc::new(value),
            json: Arc::new(OnceLock::new()),
        }
    }
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The object as JSON, encoded once for all watchers.
    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| serde_json::to_vec(&*self.value).unwrap_or_default())
    }
}

/// One item of a watch stream.
#[derive(Debug)]
pub enum WatchItem {
    Event {
        kind: &'static str,
        object: Shared,
    },
    /// A progress marker; `initial_events_end` marks the end of `sendInitialEvents`.
    Bookmark {
        revision: u64,
        initial_events_end: bool,
    },
    Error(ApiError),
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub namespace: Option<String>,
    pub filter: Filter,
    /// None, "" or "0": start with the current state as ADDED events.
    pub resource_version: Option<String>,
    pub timeout: Duration,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: current state first, then a bookmark marking its end.
    pub send_initial_events: bool,
    /// A single-object watch (`fieldSelector=metadata.name=x`) narrows the key prefix.
    pub name: Option<String>,
    /// How often bookmarks are sent.
    pub bookmark_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            filter: Filter::default(),
            resource_version: None,
            timeout: Duration::from_secs(1800),
            bookmarks: false,
            send_initial_events: false,
            name: None,
            bookmark_interval: Duration::from_secs(15),
        }
    }
}

/// A change as the cache keeps it: decoded once.
#[derive(Debug)]
pub struct Decoded {
    pub revision: u64,
    pub key: Vec<u8>,
    pub kind: ChangeKind,
    /// The new object (puts), with its resourceVersion.
    pub new: Option<Shared>,
    /// The object before the change, with the change's resourceVersion for deletes.
    pub old: Option<Shared>,
    /// Bytes of the stored values behind it, for the window's memory budget.
    pub size: usize,
}

fn decode_value(bytes: &[u8], rev: u64) -> Option<Value> {
    let mut o: Value = serde_json::from_slice(bytes).ok()?;
    o["metadata"]["resourceVersion"] = rev.to_string().into();
    Some(o)
}

fn decode_change(c: crate::storage::Change) -> Decoded {
    let size = c.value.as_ref().map_or(0, Vec::len) + c.prev.as_ref().map_or(0, |p| p.value.len());
    let new = c
        .value
        .as_ref()
        .and_then(|v| decode_value(v, c.revision))
        .map(Shared::new);
    // A deleted object is reported with the delete's revision.
    let old_rev = if c.kind == ChangeKind::Delete {
        c.revision
    } else {
        c.prev.as_ref().map_or(0, |p| p.revision)
    };
    let old = c
        .prev
        .as_ref()
        .and_then(|p| decode_value(&p.value, old_rev))
        .map(Shared::new);
    Decoded {
        revision: c.revision,
        key: c.key,
        kind: c.kind,
        new,
        old,
        size,
    }
}

/// Changes one feed keeps for watchers that start a little in the past: at most this many...
const WINDOW: usize = 1024;
/// ...and at most this many bytes of stored JSON (a decoded object takes several times that).
const WINDOW_BYTES: usize = 2 * 1024 * 1024;
/// Changes a slow watcher may fall behind the broadcast before it must re-list.
const LAG: usize = 1024;

struct Feed {
    tx: broadcast::Sender<Arc<Decoded>>,
    /// Recent changes, oldest first, complete from the revision, and their bytes.
    recent: Mutex<(u64, VecDeque<Arc<Decoded>>, usize)>,
}

/// One store watch per resource prefix, shared by every watcher of it.
#[derive(Clone, Default)]
pub struct WatchCache {
    feeds: Arc<Mutex<HashMap<Vec<u8>, Arc<Feed>>>>,
}

impl WatchCache {
    /// How many resources have a live feed.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn feed(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &[u8],
    ) -> Result<Arc<Feed>, ApiError> {
        if let Some(f) = self
            .feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
        {
            return Ok(f.clone());
        }
        let since = store.revision().await? + 1;
        let mut changes = store.watch(prefix.to_vec(), since)?;
        let (tx, _) = broadcast::channel(LAG);
        let feed = Arc::new(Feed {
            tx,
            recent: Mutex::new((since, VecDeque::new(), 0)),
        });
        {
            let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = feeds.get(prefix) {
                return Ok(f.clone());
            }
            feeds.insert(prefix.to_vec(), feed.clone());
        }
        let (feeds, key, f) = (self.feeds.clone(), prefix.to_vec(), feed.clone());
        tokio::spawn(async move {
            while let Some(next) = changes.next().await {
                let Ok(change) = next else { break };
                let d = Arc::new(decode_change(change));
                let mut recent = f.recent.lock().unwrap_or_else(|p| p.into_inner());
                recent.2 += d.size;
                recent.1.push_back(d.clone());
                while recent.1.len() > WINDOW || (recent.2 > WINDOW_BYTES && recent.1.len() > 1) {
                    if let Some(gone) = recent.1.pop_front() {
                        recent.2 -= gone.size;
                        // Complete from the first change still held (or the next one).
                        recent.0 = recent.1.front().map_or(gone.revision + 1, |c| c.revision);
                    }
                }
                // Sent under the lock: a watcher that copies the window and subscribes under it
                // sees every change exactly once.
                let _ = f.tx.send(d);
            }
            // The store watch ended (compaction, shutdown): drop the feed; its watchers end and
            // clients re-watch, which starts a new one.
            feeds.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
        Ok(feed)
    }

    /// Changes under `prefix` from revision `from` on, if the window still holds them.
    async fn subscribe(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &[u8],
        from: u64,
    ) -> Result<Option<BoxStream<'static, Result<Arc<Decoded>, ApiError>>>, ApiError> {
        let feed = self.feed(store, prefix).await?;
        let recent = feed.recent.lock().unwrap_or_else(|p| p.into_inner());
        if from < recent.0 {
            return Ok(None);
        }
        let replay: Vec<Arc<Decoded>> = recent
            .1
            .iter()
            .filter(|d| d.revision >= from)
            .cloned()
            .collect();
        let last = replay.last().map_or(from.saturating_sub(1), |d| d.revision);
        let rx = feed.tx.subscribe();
        drop(recent);
        let live = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(d) => Some((Ok(d), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(ApiError::Expired(format!(
                        "the watch fell {n} events behind; re-list and watch again"
                    ))),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .filter(move |r| futures::future::ready(!matches!(r, Ok(d) if d.revision <= last)));
        Ok(Some(
            futures::stream::iter(replay.into_iter().map(Ok))
                .chain(live)
                .boxed(),
        ))
    }
}

/// Changes from the store's own history, for watches older than the cache's window.
fn direct(
    store: &Arc<dyn ObjectStore>,
    prefix: Vec<u8>,
    from: u64,
) -> Result<BoxStream<'static, Result<Arc<Decoded>, ApiError>>, ApiError> {
    let s = store.watch(prefix, from).map_err(|e| match e {
        StorageError::Compacted {
            requested,
            compacted,
        } => ApiError::Expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        other => other.into(),
    })?;
    Ok(s.map(|r| match r {
        Ok(c) => Ok(Arc::new(decode_change(c))),
        Err(StorageError::Compacted {
            requested,
            compacted,
        }) => Err(ApiError::Expired(format!(
            "too old resource version: {requested} ({compacted})"
        ))),
        Err(other) => Err(ApiError::Expired(format!(
            "watch ended, please re-list: {other}"
        ))),
    })
    .boxed())
}

/// A stored object as the watched resource serves it; shared as it is in the common case.
fn as_version(def: &ResourceDef, s: &Shared) -> Shared {
    if def.storage_version.is_none() && def.stored_as.is_none() {
        return s.clone();
    }
    Shared::new(def.served(s.value().clone()))
}

/// Starts a watch; the stream ends at the timeout, when the client goes, or after an error.
pub async fn watch(
    reg: &Registry,
    def: Arc<ResourceDef>,
    opts: WatchOptions,
) -> Result<impl Stream<Item = WatchItem> + Send + use<>, ApiError> {
    let mut initial = Vec::new();
    let from_now = matches!(
        opts.resource_version.as_deref(),
        None | Some("") | Some("0")
    );
    let start = if from_now || opts.send_initial_events {
        let at = match opts.resource_version.as_deref() {
            None | Some("") | Some("0") => 0,
            Some(rv) => parse_rv(rv)?,
        };
        let list = reg
            .list(
                &def,
                opts.namespace.as_deref(),
                &ListOptions {
                    filter: opts.filter.clone(),
                    revision: at,
                    ..Default::default()
                },
            )
            .await?;
        initial = list.items;
        list.revision + 1
    } else {
        parse_rv(opts.resource_version.as_deref().unwrap_or("0"))? + 1
    };
    // Watchers of one resource share the feed of its whole key range and narrow it themselves.
    let resource_prefix = def.key_prefix(None).into_bytes();
    let mut narrow = def.key_prefix(opts.namespace.as_deref());
    if let Some(name) = &opts.name {
        narrow.push_str(name);
    }
    let exact = opts.name.is_some();
    let narrow = narrow.into_bytes();
    let mut inner = match reg
        .watch_cache()
        .subscribe(reg.store(), &resource_prefix, start)
        .await?
    {
        Some(s) => s,
        None => direct(reg.store(), narrow.clone(), start)?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchItem>(256);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + opts.timeout;
        for obj in initial {
            if tx
                .send(WatchItem::Event {
                    kind: "ADDED",
                    object: Shared::new(obj),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let mut last_rev = start - 1;
        if opts.send_initial_events
            && opts.bookmarks
            && tx
                .send(WatchItem::Bookmark {
                    revision: last_rev,
                    initial_events_end: true,
                })
                .await
                .is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval(opts.bookmark_interval);
        tick.tick().await;
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if opts.bookmarks && tx.send(WatchItem::Bookmark { revision: last_rev, initial_events_end: false }).await.is_err() { return; }
                    continue;
                }
                n = inner.next() => n,
            };
            let d = match next {
                None => return,
                Some(Err(e)) => {
                    let _ = tx.send(WatchItem::Error(e)).await;
                    return;
                }
                Some(Ok(d)) => d,
            };
            last_rev = d.revision;
            let in_range = if exact {
                d.key == narrow
            } else {
                d.key.starts_with(&narrow)
            };
            if !in_range {
                continue;
            }
            // Selectors see the object in the form this resource serves.
            let old = d.old.as_ref().map(|o| as_version(&def, o));
            let new = d.new.as_ref().map(|n| as_version(&def, n));
            let old_match = old.as_ref().is_some_and(|o| opts.filter.matches(o.value()));
            let item = match (d.kind, new) {
                (ChangeKind::Put, Some(new)) => match (old_match, opts.filter.matches(new.value()))
                {
                    (false, true) => WatchItem::Event {
                        kind: "ADDED",
                        object: new,
                    },
                    (true, true) => WatchItem::Event {
                        kind: "MODIFIED",
                        object: new,
                    },
                    (true, false) => WatchItem::Event {
                        kind: "DELETED",
                        object: new,
                    },
                    (false, false) => continue,
                },
                (ChangeKind::Delete, _) if old_match => match old {
                    Some(o) => WatchItem::Event {
                        kind: "DELETED",
                        object: o,
                    },
                    None => continue,
                },
                _ => continue,
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
