//! Kubernetes watch over the store's watch: ADDED/MODIFIED/DELETED with selector transitions,
//! initial ADDED events for watches without a resourceVersion, bookmarks, timeouts, 410 Expired.

use std::time::Duration;

use futures::Stream;
use serde_json::{Value, json};
use strake_store::{EventKind, WatchRequest};

use crate::error::ApiError;
use crate::kinds::ApiKind;
use crate::registry::{Filter, Registry, parse_rv, prefix};

/// One event as sent to the client (before Table conversion).
pub struct Event<K> {
    pub kind: &'static str,
    pub object: K,
}

/// What the watch should send.
pub enum Item<K> {
    Event(Event<K>),
    Bookmark(u64),
    Error(ApiError),
}

pub struct WatchParams {
    pub namespace: Option<String>,
    pub filter: Filter,
    /// None or "0": send current state as ADDED first.
    pub resource_version: Option<String>,
    pub timeout: Duration,
    pub bookmarks: bool,
    /// For a single-object watch (`fieldSelector=metadata.name=x`): narrow the key prefix.
    pub name: Option<String>,
}

/// Starts a watch and returns a stream of items; it ends at the timeout or on the first error.
pub async fn watch<K: ApiKind>(reg: &Registry, p: WatchParams) -> Result<impl Stream<Item = Item<K>> + Send + use<K>, ApiError> {
    let mut initial: Vec<K> = Vec::new();
    let start = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => {
            let (items, rev, _) = reg.list::<K>(p.namespace.as_deref(), &p.filter, 0, None).await?;
            initial = items;
            rev + 1
        }
        Some(rv) => parse_rv(rv)? + 1,
    };
    let mut key_prefix = prefix::<K>(p.namespace.as_deref());
    if let Some(name) = &p.name {
        key_prefix.push_str(name);
    }
    let exact = p.name.as_ref().map(|_| key_prefix.clone());
    let mut inner = reg
        .store()
        .watch(WatchRequest { prefix: key_prefix.into_bytes(), start_revision: start })
        .map_err(crate::registry::map_store_err)?;
    let filter = p.filter;
    let deadline = tokio::time::Instant::now() + p.timeout;
    let bookmarks = p.bookmarks;
    Ok(async_stream_lite(move |tx| async move {
        for obj in initial {
            if tx.send(Item::Event(Event { kind: "ADDED", object: obj })).await.is_err() {
                return;
            }
        }
        let mut last_rev = start - 1;
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        tick.tick().await;
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if bookmarks && tx.send(Item::Bookmark(last_rev)).await.is_err() { return; }
                    continue;
                }
                n = inner.next() => n,
            };
            let ev = match next {
                None => return,
                Some(Err(e)) => {
                    let err = match e {
                        strake_store::StoreError::Compacted { requested, compacted } => {
                            ApiError::Expired(format!("too old resource version: {requested} ({compacted})"))
                        }
                        other => ApiError::Expired(format!("watch ended, please re-list: {other}")),
                    };
                    let _ = tx.send(Item::Error(err)).await;
                    return;
                }
                Some(Ok(ev)) => ev,
            };
            last_rev = ev.revision;
            if let Some(exact) = &exact
                && ev.kv.key != exact.as_bytes() {
                    continue;
                }
            let decode = |bytes: &[u8], rev: u64| -> Option<K> {
                let mut o: K = serde_json::from_slice(bytes).ok()?;
                o.metadata_mut().resource_version = Some(rev.to_string());
                Some(o)
            };
            let old = ev.prev_kv.as_ref().and_then(|kv| decode(&kv.value, kv.mod_revision));
            let old_match = old.as_ref().is_some_and(|o| filter.matches(o));
            let item = match ev.kind {
                EventKind::Put => {
                    let Some(new) = decode(&ev.kv.value, ev.kv.mod_revision) else { continue };
                    match (old_match, filter.matches(&new)) {
                        (false, true) => Event { kind: "ADDED", object: new },
                        (true, true) => Event { kind: "MODIFIED", object: new },
                        (true, false) => Event { kind: "DELETED", object: new },
                        (false, false) => continue,
                    }
                }
                EventKind::Delete => match old {
                    Some(mut o) if old_match => {
                        o.metadata_mut().resource_version = Some(ev.revision.to_string());
                        Event { kind: "DELETED", object: o }
                    }
                    _ => continue,
                },
            };
            if tx.send(Item::Event(item)).await.is_err() {
                return;
            }
        }
    }))
}

/// A tiny channel-backed stream generator (keeps us off extra macro crates).
fn async_stream_lite<T, F, Fut>(f: F) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The JSON line for an item.
pub fn encode_item<K: ApiKind>(item: Item<K>, render: &dyn Fn(&K) -> Value) -> Value {
    match item {
        Item::Event(e) => json!({"type": e.kind, "object": render(&e.object)}),
        Item::Bookmark(rev) => json!({
            "type": "BOOKMARK",
            "object": {"kind": K::KIND, "apiVersion": K::API_VERSION, "metadata": {"resourceVersion": rev.to_string()}},
        }),
        Item::Error(e) => json!({"type": "ERROR", "object": e.status()}),
    }
}
