//! Watch: the current state as ADDED events when the client gives no resourceVersion (or asks
//! for initial events), then every change after it, filtered by selectors, with bookmarks, a
//! timeout, and an ERROR event (410 Expired) when history has been compacted.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::{Filter, ListOptions, Registry, parse_rv};
use crate::resource::ResourceDef;
use crate::storage::{ChangeKind, StorageError};

/// One item of a watch stream.
#[derive(Debug)]
pub enum WatchItem {
    Event {
        kind: &'static str,
        object: Value,
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

fn decode(def: &ResourceDef, bytes: &[u8], rev: u64) -> Option<Value> {
    let mut o: Value = serde_json::from_slice(bytes).ok()?;
    o["metadata"]["resourceVersion"] = rev.to_string().into();
    if def.storage_version.is_some() {
        o["apiVersion"] = def.api_version().into();
    }
    Some(o)
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
    let mut prefix = def.key_prefix(opts.namespace.as_deref());
    if let Some(name) = &opts.name {
        prefix.push_str(name);
    }
    let exact = opts.name.as_ref().map(|_| prefix.clone().into_bytes());
    let mut inner = reg
        .store()
        .watch(prefix.into_bytes(), start)
        .map_err(|e| match e {
            StorageError::Compacted {
                requested,
                compacted,
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            other => other.into(),
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchItem>(256);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + opts.timeout;
        for obj in initial {
            if tx
                .send(WatchItem::Event {
                    kind: "ADDED",
                    object: obj,
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
            let change = match next {
                None => return,
                Some(Err(e)) => {
                    let err = match e {
                        StorageError::Compacted {
                            requested,
                            compacted,
                        } => ApiError::Expired(format!(
                            "too old resource version: {requested} ({compacted})"
                        )),
                        other => ApiError::Expired(format!("watch ended, please re-list: {other}")),
                    };
                    let _ = tx.send(WatchItem::Error(err)).await;
                    return;
                }
                Some(Ok(c)) => c,
            };
            last_rev = change.revision;
            if exact.as_ref().is_some_and(|k| *k != change.key) {
                continue;
            }
            let old = change
                .prev
                .as_ref()
                .and_then(|p| decode(&def, &p.value, p.revision));
            let old_match = old.as_ref().is_some_and(|o| opts.filter.matches(o));
            let item = match change.kind {
                ChangeKind::Put => {
                    let Some(new) = change
                        .value
                        .as_ref()
                        .and_then(|v| decode(&def, v, change.revision))
                    else {
                        continue;
                    };
                    match (old_match, opts.filter.matches(&new)) {
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
                    }
                }
                ChangeKind::Delete => match old {
                    Some(mut o) if old_match => {
                        o["metadata"]["resourceVersion"] = change.revision.to_string().into();
                        WatchItem::Event {
                            kind: "DELETED",
                            object: o,
                        }
                    }
                    _ => continue,
                },
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
