//! The cache a controller reads: one watch per kind (the [`Reflector`]) is the only writer of
//! a [`Store`] of decoded objects; [`Reader`]s are cheap clones that see snapshots of it, with
//! indexes by namespace, by owner, by label and by any key a controller registers (pods by
//! node, say). Handlers registered on the reflector hear of every change after the store
//! holds it, which is how controllers turn changes into work-queue keys.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strake_apimachinery::watch::{WatchItem, WatchOptions};
use strake_apimachinery::{ApiError, Registry};

use crate::api::Object;
use strake_scheduler::labels::Selector;

/// Names an object: its namespace (None for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    pub fn of<K: Object>(obj: &K) -> Self {
        let m = obj.metadata();
        Self::new(
            m.namespace.as_deref(),
            m.name.as_deref().unwrap_or_default(),
        )
    }

    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Keys an object is found under in an index.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// A change the reflector applied: an object appeared (`old` None), changed, or went (`new`
/// None).
pub struct Change<K> {
    pub old: Option<Arc<K>>,
    pub new: Option<Arc<K>>,
}

impl<K> Change<K> {
    /// The object as it is now, or as it was last seen when it went.
    pub fn latest(&self) -> &Arc<K> {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .expect("a change has an old or a new object")
    }
}

pub type Handler<K> = Box<dyn Fn(&Change<K>) + Send + Sync>;

struct Index<K> {
    name: &'static str,
    keys: IndexFn<K>,
    entries: HashMap<String, BTreeSet<ObjectRef>>,
}

struct Inner<K> {
    objects: HashMap<ObjectRef, Arc<K>>,
    indexes: Vec<Index<K>>,
    /// The revision the store reflects.
    revision: u64,
}

impl<K: Object> Inner<K> {
    fn put(&mut self, key: ObjectRef, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.objects.insert(key.clone(), obj.clone());
        for idx in &mut self.indexes {
            if let Some(old) = &old {
                for k in (idx.keys)(old) {
                    if let Some(set) = idx.entries.get_mut(&k) {
                        set.remove(&key);
                        if set.is_empty() {
                            idx.entries.remove(&k);
                        }
                    }
                }
            }
            for k in (idx.keys)(&obj) {
                idx.entries.entry(k).or_default().insert(key.clone());
            }
        }
        old
    }

    fn remove(&mut self, key: &ObjectRef) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        for idx in &mut self.indexes {
            for k in (idx.keys)(&old) {
                if let Some(set) = idx.entries.get_mut(&k) {
                    set.remove(key);
                    if set.is_empty() {
                        idx.entries.remove(&k);
                    }
                }
            }
        }
        Some(old)
    }
}

/// The index of every object by namespace ("" for cluster-scoped objects).
pub const BY_NAMESPACE: &str = "namespace";
/// The index of every object by the uid of each of its owners.
pub const BY_OWNER: &str = "owner";
/// The index of every object by each `key=value` of its labels.
pub const BY_LABEL: &str = "label";

/// A read view of a cache; clones share it.
pub struct Reader<K> {
    inner: Arc<RwLock<Inner<K>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Object> Reader<K> {
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects an index files under `value`.
    pub fn indexed(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let inner = self.read();
        let Some(idx) = inner.indexes.iter().find(|i| i.name == index) else {
            tracing::error!(index, "no such cache index");
            return Vec::new();
        };
        idx.entries
            .get(value)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).cloned())
            .collect()
    }

    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.indexed(BY_NAMESPACE, ns)
    }

    /// Objects with an ownerReference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        self.indexed(BY_OWNER, uid)
    }

    /// Objects in `ns` whose labels `selector` selects (an empty selector selects all of them;
    /// an invalid one selects nothing).
    pub fn selected(&self, ns: &str, selector: &LabelSelector) -> Vec<Arc<K>> {
        let Ok(sel) = Selector::new(selector) else {
            return Vec::new();
        };
        let candidates = match sel.anchor() {
            Some((k, v)) => self.indexed(BY_LABEL, &format!("{k}={v}")),
            None => self.in_namespace(ns),
        };
        candidates
            .into_iter()
            .filter(|o| {
                o.metadata().namespace.as_deref() == Some(ns) && sel.matches(&o.metadata().labels)
            })
            .collect()
    }

    /// The revision the cache reflects (0 before the first list).
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Waits until the cache holds a full list.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|ready| *ready).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps a cache of one kind in step with the API: lists, then watches from the list's
/// revision; resumes a broken watch where it stopped, and lists again when history is gone.
pub struct Reflector<K> {
    reg: Registry,
    inner: Arc<RwLock<Inner<K>>>,
    ready_tx: tokio::sync::watch::Sender<bool>,
    ready_rx: tokio::sync::watch::Receiver<bool>,
    handlers: Vec<Handler<K>>,
}

impl<K: Object> Reflector<K> {
    pub fn new(reg: Registry) -> Self {
        let mut inner = Inner {
            objects: HashMap::new(),
            indexes: Vec::new(),
            revision: 0,
        };
        inner.indexes.push(Index {
            name: BY_NAMESPACE,
            keys: Arc::new(|o: &K| vec![o.metadata().namespace.clone().unwrap_or_default()]),
            entries: HashMap::new(),
        });
        inner.indexes.push(Index {
            name: BY_OWNER,
            keys: Arc::new(|o: &K| {
                o.metadata()
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|r| r.uid.clone())
                    .collect()
            }),
            entries: HashMap::new(),
        });
        inner.indexes.push(Index {
            name: BY_LABEL,
            keys: Arc::new(|o: &K| {
                o.metadata()
                    .labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            }),
            entries: HashMap::new(),
        });
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        Self {
            reg,
            inner: Arc::new(RwLock::new(inner)),
            ready_tx,
            ready_rx,
            handlers: Vec::new(),
        }
    }

    /// Adds an index; register indexes before the reflector runs.
    pub fn index(
        &mut self,
        name: &'static str,
        keys: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let keys: IndexFn<K> = Arc::new(keys);
        let mut entries: HashMap<String, BTreeSet<ObjectRef>> = HashMap::new();
        for (k, o) in &inner.objects {
            for v in keys(o) {
                entries.entry(v).or_default().insert(k.clone());
            }
        }
        inner.indexes.push(Index {
            name,
            keys,
            entries,
        });
    }

    /// Calls `f` for every change once the store holds it.
    pub fn on_change(&mut self, f: impl Fn(&Change<K>) + Send + Sync + 'static) {
        self.handlers.push(Box::new(f));
    }

    pub fn reader(&self) -> Reader<K> {
        Reader {
            inner: self.inner.clone(),
            ready: self.ready_rx.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<K>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, change: Change<K>) {
        for h in &self.handlers {
            h(&change);
        }
    }

    /// Runs until the registry has no entry for `K`... which for built-in kinds is forever.
    pub async fn run(self) {
        let def = loop {
            match crate::api::Client::new(self.reg.clone(), "reflector").def::<K>() {
                Ok(d) => break d,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        let mut resume: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let opts = WatchOptions {
                resource_version: resume.map(|r| r.to_string()),
                send_initial_events: resume.is_none(),
                bookmarks: true,
                timeout: Duration::from_secs(3600),
                bookmark_interval: Duration::from_secs(5),
                ..Default::default()
            };
            let mut stream =
                match strake_apimachinery::watch::watch(&self.reg, def.clone(), opts).await {
                    Ok(s) => Box::pin(s),
                    Err(e) => {
                        if matches!(e, ApiError::Expired(_)) {
                            resume = None;
                        }
                        tracing::warn!(kind = %def.kind, error = %e, "cache cannot watch");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
            // While listing, the keys seen so far: at the end, whatever the cache held that
            // the list lacked was deleted meanwhile.
            let mut listing: Option<HashSet<ObjectRef>> = resume.is_none().then(HashSet::new);
            while let Some(item) = stream.next().await {
                match item {
                    WatchItem::Event { kind, object } => {
                        let obj = match K::deserialize(object.value()) {
                            Ok(o) => o,
                            Err(e) => {
                                tracing::warn!(kind = %def.kind, error = %e, "cache cannot decode an object");
                                continue;
                            }
                        };
                        let rev = obj
                            .metadata()
                            .resource_version
                            .as_deref()
                            .and_then(|r| r.parse::<u64>().ok());
                        let key = ObjectRef::of(&obj);
                        if let Some(seen) = &mut listing {
                            seen.insert(key.clone());
                        }
                        let obj = Arc::new(obj);
                        let change = {
                            let mut inner = self.write();
                            if let Some(rev) = rev {
                                inner.revision = inner.revision.max(rev);
                            }
                            if kind == "DELETED" {
                                inner.remove(&key).map(|old| Change {
                                    old: Some(old),
                                    new: None,
                                })
                            } else {
                                let old = inner.put(key, obj.clone());
                                Some(Change {
                                    old,
                                    new: Some(obj),
                                })
                            }
                        };
                        if let Some(rev) = rev {
                            resume = Some(resume.unwrap_or(0).max(rev));
                        }
                        if let Some(c) = change {
                            self.notify(c);
                        }
                    }
                    WatchItem::Bookmark {
                        revision,
                        initial_events_end,
                    } => {
                        resume = Some(revision);
                        self.write().revision = revision;
                        if initial_events_end && let Some(seen) = listing.take() {
                            let gone: Vec<Arc<K>> = {
                                let mut inner = self.write();
                                let stale: Vec<ObjectRef> = inner
                                    .objects
                                    .keys()
                                    .filter(|k| !seen.contains(*k))
                                    .cloned()
                                    .collect();
                                stale.iter().filter_map(|k| inner.remove(k)).collect()
                            };
                            for old in gone {
                                self.notify(Change {
                                    old: Some(old),
                                    new: None,
                                });
                            }
                            let _ = self.ready_tx.send(true);
                            backoff = Duration::from_millis(100);
                        }
                    }
                    WatchItem::Error(e) => {
                        if matches!(e, ApiError::Expired(_)) {
                            resume = None;
                        } else {
                            tracing::warn!(kind = %def.kind, error = %e, "cache watch failed");
                        }
                        break;
                    }
                }
            }
            if listing.is_some() {
                // The list never finished: start it again.
                resume = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
