//! Following one kind for as long as the server runs: its stored state, then every change, as
//! the server's own components keep in-memory views (the authorizer's policy and node graph,
//! the admission webhooks). A broken watch resumes where it stopped; when history is gone the
//! kind is listed again, and what was known but is not listed any more is reported deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::Registry;
use crate::resource::ResourceDef;
use crate::watch::{WatchItem, WatchOptions};

/// What a follower is told.
pub enum Followed<'a> {
    /// An object as it now is (added or modified).
    Applied(&'a Value),
    /// An object that is gone, by namespace ("" for cluster-scoped) and name.
    Deleted { namespace: &'a str, name: &'a str },
    /// The stored state has been delivered (after every (re)list).
    Synced,
}

/// An object's namespace ("" when cluster-scoped) and name.
pub fn key_of(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// Feeds `on` with the kind's state and changes, forever.
pub async fn follow(reg: Registry, def: Arc<ResourceDef>, mut on: impl FnMut(Followed<'_>) + Send) {
    let mut known: HashSet<(String, String)> = HashSet::new();
    let mut resume: Option<u64> = None;
    loop {
        let opts = WatchOptions {
            resource_version: resume.map(|r| r.to_string()),
            send_initial_events: resume.is_none(),
            bookmarks: true,
            timeout: Duration::from_secs(3600),
            bookmark_interval: Duration::from_secs(5),
            ..Default::default()
        };
        let mut stream = match crate::watch::watch(&reg, def.clone(), opts).await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                if matches!(e, ApiError::Expired(_)) {
                    resume = None;
                }
                tracing::warn!(kind = %def.kind, error = %e, "cannot watch a followed kind");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Set while a (re)list is delivered: what it holds.
        let mut listing: Option<HashSet<(String, String)>> = resume.is_none().then(HashSet::new);
        while let Some(item) = stream.next().await {
            match item {
                WatchItem::Event { kind, object } => {
                    let v = object.value();
                    let key = key_of(v);
                    if let Some(rev) = v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                    {
                        resume = Some(resume.unwrap_or(0).max(rev));
                    }
                    if kind == "DELETED" {
                        on(Followed::Deleted {
                            namespace: &key.0,
                            name: &key.1,
                        });
                        known.remove(&key);
                        continue;
                    }
                    on(Followed::Applied(v));
                    if let Some(seen) = &mut listing {
                        seen.insert(key.clone());
                    }
                    known.insert(key);
                }
                WatchItem::Bookmark {
                    revision,
                    initial_events_end,
                } => {
                    resume = Some(revision);
                    if initial_events_end && let Some(seen) = listing.take() {
                        // Whatever was known and is not listed again went away meanwhile.
                        for gone in known.difference(&seen).cloned().collect::<Vec<_>>() {
                            on(Followed::Deleted {
                                namespace: &gone.0,
                                name: &gone.1,
                            });
                            known.remove(&gone);
                        }
                        on(Followed::Synced);
                    }
                }
                WatchItem::Error(e) => {
                    if matches!(e, ApiError::Expired(_)) {
                        resume = None;
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Objects of a cluster-scoped kind by name, as a follower keeps them.
pub type ByName<T> = std::sync::RwLock<std::collections::BTreeMap<String, T>>;

/// Follows a cluster-scoped kind into `into`, each object by name as `read` makes it (one
/// `read` refuses is left out, and logged); returns once the stored state is in.
pub async fn follow_by_name<T: Send + Sync + 'static>(
    reg: &Registry,
    def: Arc<ResourceDef>,
    into: Arc<ByName<T>>,
    read: fn(&Value) -> Result<T, String>,
) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let kind = def.kind.clone();
    let logged = kind.clone();
    tokio::spawn(follow(reg.clone(), def, move |f| {
        let mut map = into.write().unwrap_or_else(|p| p.into_inner());
        match f {
            Followed::Applied(v) => {
                let name = key_of(v).1;
                match read(v) {
                    Ok(t) => {
                        map.insert(name, t);
                    }
                    Err(e) => {
                        tracing::warn!(kind = %logged, %name, error = %e, "an unreadable object is left out");
                    }
                }
            }
            Followed::Deleted { name, .. } => {
                map.remove(name);
            }
            Followed::Synced => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    }));
    rx.await
        .map_err(|_| ApiError::Internal(format!("the follower of {kind} stopped")))
}
