//! The garbage collector: a graph of every object's ownerReferences, across every kind the
//! table serves (CRDs included), kept from one watch of the whole keyspace (only metadata is
//! kept). It deletes dependents whose owners are all gone (Background), finishes owners
//! deleted with `propagationPolicy=Orphan` (their references are removed from the dependents,
//! then the `orphan` finalizer) and with `Foreground` (the dependents are deleted, and the
//! `foregroundDeletion` finalizer goes once no dependent with `blockOwnerDeletion` is left),
//! as upstream's collector does. Writes go through the registry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use strake_apimachinery::registry::Propagation;
use strake_apimachinery::registry::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use strake_apimachinery::{ApiError, DeleteOptions, Part, Registry, WriteOptions};

use crate::queue::Queue;
use crate::runtime::Action;

pub const NAME: &str = "garbage-collector-controller";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct OwnerRef {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    block_owner_deletion: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    finalizers: Vec<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
}

/// One object in the graph.
#[derive(Clone, Debug)]
struct Node {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerRef>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    by_key: HashMap<Vec<u8>, String>,
    /// Owner uid → dependent uids, whether or not the owner is in the graph.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Applies a put; returns the uids whose state this may change.
    fn put(&mut self, key: &[u8], head: Head) -> Vec<String> {
        let uid = head.metadata.uid.clone();
        if uid.is_empty() {
            return Vec::new();
        }
        let node = Node {
            api_version: head.api_version,
            kind: head.kind,
            namespace: head.metadata.namespace,
            name: head.metadata.name,
            owners: head.metadata.owner_references,
            deleting: head.metadata.deletion_timestamp.is_some(),
            finalizers: head.metadata.finalizers,
        };
        let mut touched = vec![uid.clone()];
        if let Some(old) = self.by_key.insert(key.to_vec(), uid.clone())
            && old != uid
        {
            // The key holds a new object (deleted and created again between our looks).
            touched.extend(self.remove_uid(&old));
        }
        let old = self.nodes.insert(uid.clone(), node.clone());
        if let Some(old) = &old {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(&uid);
                }
            }
            // A change in deletion state matters to the dependents (foreground) and owners.
            if old.deleting != node.deleting || old.finalizers != node.finalizers {
                touched.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        touched.extend(node.owners.iter().map(|o| o.uid.clone()));
        touched
    }

    fn delete(&mut self, key: &[u8]) -> Vec<String> {
        match self.by_key.remove(key) {
            Some(uid) => self.remove_uid(&uid),
            None => Vec::new(),
        }
    }

    /// Removes an object; its dependents (maybe dangling now) and owners (maybe waiting for
    /// it) are touched.
    fn remove_uid(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut touched: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for o in &old.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
            touched.push(o.uid.clone());
        }
        if self.dependents.get(uid).is_some_and(HashSet::is_empty) {
            self.dependents.remove(uid);
        }
        touched
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

pub struct Collector {
    reg: Registry,
    graph: Mutex<Graph>,
    queue: Queue<String>,
    ready: tokio::sync::watch::Sender<bool>,
}

fn parse(bytes: &[u8]) -> Option<Head> {
    serde_json::from_slice::<Head>(bytes).ok()
}

impl Collector {
    pub fn new(reg: Registry) -> Arc<Self> {
        Arc::new(Self {
            reg,
            graph: Mutex::new(Graph::default()),
            queue: Queue::default(),
            ready: tokio::sync::watch::channel(false).0,
        })
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, uids: Vec<String>) {
        for u in uids {
            self.queue.add(u);
        }
    }

    /// Keeps the graph: lists the whole keyspace, then follows its changes. Runs on every
    /// instance, leader or not, so a new leader starts with a full graph.
    pub async fn feed(self: Arc<Self>) {
        let store = self.reg.store().clone();
        loop {
            let mut revision = 0;
            let mut after: Option<Vec<u8>> = None;
            let mut fresh = Graph::default();
            let listed = loop {
                let page = match store
                    .list(b"/registry/", after.as_deref(), 500, revision)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                revision = page.revision;
                for s in &page.items {
                    if let Some(h) = parse(&s.value) {
                        fresh.put(&s.key, h);
                    }
                }
                after = page.items.last().map(|s| s.key.clone());
                if !page.more {
                    break Ok(());
                }
            };
            if let Err(e) = listed {
                tracing::warn!(error = %e, "the garbage collector cannot list the store");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let all: Vec<String> = fresh.nodes.keys().cloned().collect();
            *self.graph() = fresh;
            self.touch(all);
            self.ready.send_replace(true);
            let mut changes = match store.watch(b"/registry/".to_vec(), revision + 1) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "the garbage collector cannot watch the store");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(change) = changes.next().await {
                let Ok(c) = change else { break };
                let touched = match &c.value {
                    Some(v) => match parse(v) {
                        Some(h) => self.graph().put(&c.key, h),
                        None => Vec::new(),
                    },
                    None => self.graph().delete(&c.key),
                };
                self.touch(touched);
            }
        }
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _ = self.ready.subscribe().wait_for(|r| *r).await;
        self.queue.requeue_active();
        let all: Vec<String> = self.graph().nodes.keys().cloned().collect();
        self.touch(all);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let me = self.clone();
            tasks.spawn(async move {
                loop {
                    let uid = me.queue.next().await;
                    match me.attempt(&uid).await {
                        Ok(Action::Requeue(d)) => {
                            me.queue.forget(&uid);
                            me.queue.add_after(uid.clone(), d);
                        }
                        Ok(Action::AwaitChange) => me.queue.forget(&uid),
                        Err(e) => {
                            tracing::debug!(%uid, error = %e, "garbage collection failed; retrying");
                            me.queue.add_rate_limited(uid.clone());
                        }
                    }
                    me.queue.done(&uid);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    fn def(&self, api_version: &str, kind: &str) -> Option<Arc<strake_apimachinery::ResourceDef>> {
        self.reg
            .table()
            .snapshot()
            .by_gvk(api_version, kind)
            .cloned()
    }

    /// One look at one object: as an owner being deleted, then as a dependent.
    async fn attempt(&self, uid: &str) -> Result<Action, ApiError> {
        let Some(node) = self.graph().nodes.get(uid).cloned() else {
            return Ok(Action::await_change());
        };
        if node.deleting {
            if node.has_finalizer(ORPHAN_FINALIZER) {
                return self.orphan(uid, &node).await;
            }
            if node.has_finalizer(FOREGROUND_FINALIZER) {
                return self.foreground(uid, &node).await;
            }
            return Ok(Action::await_change());
        }
        if node.owners.is_empty() {
            return Ok(Action::await_change());
        }
        // Decide on the object as it is now, not as the graph last saw it: another worker may
        // just have removed the very reference that looks dangling here.
        let Some(def) = self.def(&node.api_version, &node.kind) else {
            return Ok(Action::await_change());
        };
        let live = match self
            .reg
            .get(&def, node.namespace.as_deref(), &node.name)
            .await
        {
            Ok(v) => v,
            Err(ApiError::NotFound { .. }) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        };
        let Ok(head) = serde_json::from_value::<Head>(live) else {
            return Ok(Action::await_change());
        };
        if head.metadata.uid != uid || head.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let live_rv = head.metadata.resource_version.clone();
        let node = Node {
            owners: head.metadata.owner_references,
            finalizers: head.metadata.finalizers,
            ..node
        };
        if node.owners.is_empty() {
            return Ok(Action::await_change());
        }
        let mut solid = Vec::new();
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for o in &node.owners {
            let known = self.graph().nodes.get(&o.uid).cloned();
            match known {
                Some(owner) if owner.deleting && owner.has_finalizer(FOREGROUND_FINALIZER) => {
                    waiting.push(o.uid.clone())
                }
                Some(_) => solid.push(o.uid.clone()),
                None => match self.owner_exists(&node, o).await? {
                    Some(true) => solid.push(o.uid.clone()),
                    Some(false) => dangling.push(o.uid.clone()),
                    // A kind the table does not serve (yet): look again later.
                    None => return Ok(Action::requeue(Duration::from_secs(30))),
                },
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(Action::await_change());
            }
            // Some owners stay: only the references to the others go.
            let gone: HashSet<String> = dangling.into_iter().chain(waiting).collect();
            self.remove_refs(&node, &gone).await?;
            return Ok(Action::await_change());
        }
        let has_dependents = !self.graph().dependents_of(uid).is_empty();
        let propagation = if !waiting.is_empty() && has_dependents {
            Propagation::Foreground
        } else if node.has_finalizer(ORPHAN_FINALIZER) {
            Propagation::Orphan
        } else if node.has_finalizer(FOREGROUND_FINALIZER) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        tracing::info!(kind = %node.kind, object = %describe(&node), ?propagation, "deleting a dependent whose owners are gone");
        self.delete(uid, &node, propagation, live_rv).await?;
        Ok(Action::await_change())
    }

    /// Whether the owner a reference names exists with that uid, asked of the API (the graph
    /// may lag); None when its kind is not served.
    async fn owner_exists(&self, dependent: &Node, o: &OwnerRef) -> Result<Option<bool>, ApiError> {
        let Some(def) = self.def(&o.api_version, &o.kind) else {
            return Ok(None);
        };
        let ns = if def.namespaced {
            dependent.namespace.as_deref()
        } else {
            None
        };
        match self.reg.get(&def, ns, &o.name).await {
            Ok(v) => Ok(Some(v["metadata"]["uid"].as_str() == Some(o.uid.as_str()))),
            Err(ApiError::NotFound { .. }) => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }

    /// Deletes `node` if it is still the object with `uid` (and, given `rv`, still the version
    /// that was judged).
    async fn delete(
        &self,
        uid: &str,
        node: &Node,
        propagation: Propagation,
        rv: Option<String>,
    ) -> Result<(), ApiError> {
        let Some(def) = self.def(&node.api_version, &node.kind) else {
            return Ok(());
        };
        let opts = DeleteOptions {
            precondition_uid: Some(uid.to_string()),
            precondition_rv: rv,
            propagation: Some(propagation),
            ..Default::default()
        };
        match self
            .reg
            .delete(&def, node.namespace.as_deref(), &node.name, &opts)
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            // Another object of that name now: ours is gone.
            Err(ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_refs(&self, node: &Node, gone: &HashSet<String>) -> Result<(), ApiError> {
        let Some(def) = self.def(&node.api_version, &node.kind) else {
            return Ok(());
        };
        let res = self
            .reg
            .update_with(
                &def,
                node.namespace.as_deref(),
                &node.name,
                Part::Main,
                &WriteOptions {
                    field_manager: Some(NAME.into()),
                    ..Default::default()
                },
                |mut v: Value| {
                    if let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| !r["uid"].as_str().is_some_and(|u| gone.contains(u)));
                        if refs.is_empty() {
                            v["metadata"]
                                .as_object_mut()
                                .map(|m| m.remove("ownerReferences"));
                        }
                    }
                    v["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("resourceVersion"));
                    Ok(v)
                },
            )
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), ApiError> {
        let Some(def) = self.def(&node.api_version, &node.kind) else {
            return Ok(());
        };
        let res = self
            .reg
            .update_with(
                &def,
                node.namespace.as_deref(),
                &node.name,
                Part::Main,
                &WriteOptions::default(),
                |mut v: Value| {
                    if let Some(f) = v["metadata"]["finalizers"].as_array_mut() {
                        f.retain(|x| x.as_str() != Some(finalizer));
                    }
                    v["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("resourceVersion"));
                    Ok(v)
                },
            )
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An owner deleted with Orphan: its dependents lose their reference to it, then it goes.
    async fn orphan(&self, uid: &str, node: &Node) -> Result<Action, ApiError> {
        let gone: HashSet<String> = [uid.to_string()].into();
        let deps = self.graph().dependents_of(uid);
        for (_, dep) in deps {
            self.remove_refs(&dep, &gone).await?;
        }
        self.remove_finalizer(node, ORPHAN_FINALIZER).await?;
        tracing::info!(kind = %node.kind, object = %describe(node), "orphaned the dependents");
        Ok(Action::await_change())
    }

    /// An owner deleted with Foreground: its dependents are deleted first; it goes once none
    /// that blocks its deletion is left.
    async fn foreground(&self, uid: &str, node: &Node) -> Result<Action, ApiError> {
        let deps = self.graph().dependents_of(uid);
        let mut blocking = 0;
        for (dep_uid, dep) in &deps {
            if dep
                .owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            {
                blocking += 1;
            }
            if !dep.deleting {
                let has_own = !self.graph().dependents_of(dep_uid).is_empty();
                // A dependent with other live owners only loses this reference.
                let others_live = dep.owners.iter().any(|o| {
                    o.uid != uid && self.graph().nodes.get(&o.uid).is_some_and(|n| !n.deleting)
                });
                if others_live {
                    let gone: HashSet<String> = [uid.to_string()].into();
                    self.remove_refs(dep, &gone).await?;
                    continue;
                }
                let p = if has_own {
                    Propagation::Foreground
                } else {
                    Propagation::Background
                };
                self.delete(dep_uid, dep, p, None).await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(node, FOREGROUND_FINALIZER).await?;
            return Ok(Action::await_change());
        }
        // The dependents' deletions touch this owner again; look anyway in a while.
        Ok(Action::requeue(Duration::from_secs(15)))
    }
}

fn describe(n: &Node) -> String {
    match &n.namespace {
        Some(ns) => format!("{ns}/{}", n.name),
        None => n.name.clone(),
    }
}
