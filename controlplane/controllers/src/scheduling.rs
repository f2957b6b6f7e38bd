//! The scheduler's loop on the controller runtime. The pod, node, namespace and budget caches
//! keep a `strake_scheduler::Cluster` snapshot up to date as they change (no re-listing per
//! decision); pending pods for `default-scheduler` go through one queue; one worker places each
//! with the pure framework, assumes the placement in the snapshot at once, and binds through
//! the `pods/binding` machinery in the background (so the next decision does not wait for the
//! store, and sees the last). A failed binding forgets the assumption and tries the pod again.
//!
//! A pod that fits nowhere either preempts (its nomination is written, the victims get the
//! DisruptionTarget condition and are deleted gracefully) or waits among the unschedulable
//! until a change that could make room: a node added or changed in what placement reads, a
//! placed pod gone or finished, or the pod itself updated; and at least every minute, as
//! upstream flushes them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::registry::DeleteOptions;
use strake_apimachinery::{ApiError, Part};
use strake_scheduler::labels::Selector;
use strake_scheduler::volumes::{self, SELECTED_NODE};
use strake_scheduler::{Budget, Cluster, Decision, PodInfo};
use tokio::sync::Semaphore;

use crate::api::Client;
use crate::cache::{Change, ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "default-scheduler";
/// Unschedulable pods are tried again at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Bindings in flight at once.
const BINDERS: usize = 128;

fn scheduler_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or(NAME)
}

/// Waiting for this scheduler: not bound, not being deleted, not finished.
fn pending(p: &Pod) -> bool {
    pods::node_name(p).is_none()
        && p.metadata.deletion_timestamp.is_none()
        && !matches!(pods::phase(p), "Succeeded" | "Failed")
        && scheduler_name(p) == NAME
}

/// Bound and holding resources.
fn placed(p: &Pod) -> bool {
    pods::node_name(p).is_some() && !matches!(pods::phase(p), "Succeeded" | "Failed")
}

/// What placement reads of a node: a change elsewhere (a heartbeat) moves no pod.
fn placement_view(n: &Node) -> impl PartialEq + '_ {
    let spec = n.spec.as_ref();
    let status = n.status.as_ref();
    (
        &n.metadata.labels,
        spec.and_then(|s| s.taints.as_ref()),
        spec.and_then(|s| s.unschedulable),
        status.and_then(|s| s.allocatable.as_ref()),
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str()),
    )
}

/// The caches of the storage objects placement reads.
pub struct Storage<'a> {
    pub claims: &'a mut Reflector<PersistentVolumeClaim>,
    pub volumes: &'a mut Reflector<PersistentVolume>,
    pub classes: &'a mut Reflector<StorageClass>,
}

/// The pod's claims that wait for their first consumer and are not bound yet: PreBind names
/// the chosen node on them.
fn delayed_claims(pod: &PodInfo, cluster: &Cluster) -> Vec<String> {
    pod.claims
        .iter()
        .filter(|name| {
            let Some(c) = cluster.storage.claim(&format!("{}/{name}", pod.namespace)) else {
                return false;
            };
            let unbound = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none_or(str::is_empty);
            let class = cluster.storage.class(volumes::claim_class(c));
            unbound && volumes::delayed(class.map(|c| c.as_ref()))
        })
        .cloned()
        .collect()
}

fn budget_of(b: &PodDisruptionBudget) -> Budget {
    Budget {
        namespace: b.metadata.namespace.clone().unwrap_or_default(),
        selector: Selector::optional(b.spec.as_ref().and_then(|s| s.selector.as_ref())),
        allowed: b.status.as_ref().map_or(0, |s| s.disruptions_allowed),
    }
}

/// The snapshot and the framework's own state (where the next search starts).
#[derive(Default)]
struct State {
    cluster: Cluster,
    framework: strake_scheduler::Scheduler,
}

pub struct Scheduler {
    client: Client,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    queue: Arc<Queue<ObjectRef>>,
    waiting: Arc<Mutex<Waiting>>,
    state: Arc<Mutex<State>>,
    binders: Arc<Semaphore>,
}

/// Unschedulable pods, and how many times a change moved them back to the queue: a pod found
/// unschedulable on a snapshot older than the latest move is tried again instead of waiting.
#[derive(Default)]
struct Waiting {
    keys: HashSet<ObjectRef>,
    moves: u64,
}

fn flush(queue: &Queue<ObjectRef>, waiting: &Mutex<Waiting>) {
    let keys: Vec<ObjectRef> = {
        let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.moves += 1;
        w.keys.drain().collect()
    };
    for k in keys {
        queue.add(k);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn pod_key(key: &ObjectRef) -> String {
    format!(
        "{}/{}",
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    )
}

impl Scheduler {
    pub fn new(
        client: &Client,
        pods: &mut Reflector<Pod>,
        nodes: &mut Reflector<Node>,
        namespaces: &mut Reflector<Namespace>,
        budgets: &mut Reflector<PodDisruptionBudget>,
        storage: Storage<'_>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let state: Arc<Mutex<State>> = Arc::default();
        {
            let (queue, waiting, state) = (queue.clone(), waiting.clone(), state.clone());
            pods.on_change(move |c: &Change<Pod>| {
                let latest = c.latest();
                let key = ObjectRef::of(latest.as_ref());
                match &c.new {
                    Some(p) => lock(&state).cluster.set_pod(p.clone()),
                    None => lock(&state).cluster.remove_pod(&pod_key(&key)),
                }
                if c.new.as_deref().is_some_and(pending) {
                    waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .keys
                        .remove(&key);
                    queue.add(key);
                    return;
                }
                let freed_before = c.old.as_deref().is_some_and(placed);
                let holds_now = c.new.as_deref().is_some_and(placed);
                if freed_before && !holds_now {
                    flush(&queue, &waiting);
                }
            });
        }
        {
            let (queue, waiting, state) = (queue.clone(), waiting.clone(), state.clone());
            nodes.on_change(move |c: &Change<Node>| {
                match &c.new {
                    Some(n) => lock(&state).cluster.set_node(n.clone()),
                    None => {
                        let name = c.latest().metadata.name.clone().unwrap_or_default();
                        lock(&state).cluster.remove_node(&name);
                    }
                }
                let relevant = match (&c.old, &c.new) {
                    (Some(o), Some(n)) => placement_view(o) != placement_view(n),
                    (None, Some(_)) => true,
                    _ => false,
                };
                if relevant {
                    flush(&queue, &waiting);
                }
            });
        }
        {
            let state = state.clone();
            namespaces.on_change(move |c: &Change<Namespace>| {
                let name = c.latest().metadata.name.clone().unwrap_or_default();
                match &c.new {
                    Some(n) => lock(&state)
                        .cluster
                        .set_namespace(&name, n.metadata.labels.clone().unwrap_or_default()),
                    None => lock(&state).cluster.remove_namespace(&name),
                }
            });
        }
        {
            let state = state.clone();
            budgets.on_change(move |c: &Change<PodDisruptionBudget>| {
                let key = pod_key(&ObjectRef::of(c.latest().as_ref()));
                match &c.new {
                    Some(b) => lock(&state).cluster.set_budget(&key, budget_of(b)),
                    None => lock(&state).cluster.remove_budget(&key),
                }
            });
        }
        {
            // Storage changes can make room for a pod waiting on its claims.
            let (queue, waiting, state) = (queue.clone(), waiting.clone(), state.clone());
            storage
                .claims
                .on_change(move |c: &Change<PersistentVolumeClaim>| {
                    let key = pod_key(&ObjectRef::of(c.latest().as_ref()));
                    match &c.new {
                        Some(v) => lock(&state).cluster.storage.set_claim(v.clone()),
                        None => lock(&state).cluster.storage.remove_claim(&key),
                    }
                    flush(&queue, &waiting);
                });
        }
        {
            let (queue, waiting, state) = (queue.clone(), waiting.clone(), state.clone());
            storage
                .volumes
                .on_change(move |c: &Change<PersistentVolume>| {
                    let name = c.latest().metadata.name.clone().unwrap_or_default();
                    match &c.new {
                        Some(v) => lock(&state).cluster.storage.set_volume(v.clone()),
                        None => lock(&state).cluster.storage.remove_volume(&name),
                    }
                    flush(&queue, &waiting);
                });
        }
        {
            let (queue, waiting, state) = (queue.clone(), waiting.clone(), state.clone());
            storage.classes.on_change(move |c: &Change<StorageClass>| {
                let name = c.latest().metadata.name.clone().unwrap_or_default();
                match &c.new {
                    Some(v) => lock(&state).cluster.storage.set_class(v.clone()),
                    None => lock(&state).cluster.storage.remove_class(&name),
                }
                flush(&queue, &waiting);
            });
        }
        Arc::new(Self {
            client: client.named(NAME),
            pods: pods.reader(),
            nodes: nodes.reader(),
            queue,
            waiting,
            state,
            binders: Arc::new(Semaphore::new(BINDERS)),
        })
    }

    pub async fn run(self: Arc<Self>) {
        self.pods.ready().await;
        self.nodes.ready().await;
        self.queue.requeue_active();
        for p in self.pods.list() {
            if pending(&p) {
                self.queue.add(ObjectRef::of(p.as_ref()));
            }
        }
        let flusher = {
            let (queue, waiting) = (self.queue.clone(), self.waiting.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    flush(&queue, &waiting);
                }
            })
        };
        let me = self.clone();
        // One worker: each decision sees every placement made before it.
        runtime::run(NAME, self.queue.clone(), 1, move |key| {
            let me = me.clone();
            async move { me.place(key).await }
        })
        .await;
        flusher.abort();
    }

    async fn place(self: Arc<Self>, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(pod) = self.pods.get(&key) else {
            return Ok(Action::await_change());
        };
        if !pending(&pod) {
            return Ok(Action::await_change());
        }
        let cycle = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).moves;
        let info = PodInfo::new(pod.clone());
        let decision = {
            let mut st = lock(&self.state);
            if st.cluster.is_assumed(&info.key) {
                return Ok(Action::await_change());
            }
            let State { cluster, framework } = &mut *st;
            let d = framework.schedule(&info, cluster);
            if let Decision::Bind(node) = &d {
                cluster.assume(&info, node);
            }
            (d, delayed_claims(&info, cluster))
        };
        let (decision, delayed) = decision;
        match decision {
            Decision::Bind(node) => {
                // Wait for a binder slot here, so a burst queues in the work queue.
                let permit = self
                    .binders
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let me = self.clone();
                tokio::spawn(async move {
                    me.bind(key, pod, node, delayed).await;
                    drop(permit);
                });
            }
            Decision::Preempt {
                node,
                victims,
                message,
            } => {
                lock(&self.state).cluster.nominate(&info, &node);
                self.preempt(&key, &pod, &node, &victims).await?;
                self.wait_unschedulable(&key, cycle);
                self.record_unschedulable(&key, &pod, &message, Some(&node))
                    .await?;
            }
            Decision::Unschedulable(message) => {
                self.wait_unschedulable(&key, cycle);
                self.record_unschedulable(&key, &pod, &message, None)
                    .await?;
            }
        }
        Ok(Action::await_change())
    }

    /// PreBind (the claims that wait for this pod learn its node, so their volumes are bound
    /// or provisioned there), then the binding.
    async fn bind(&self, key: ObjectRef, pod: Arc<Pod>, node: String, delayed: Vec<String>) {
        let ns = key.namespace.clone().unwrap_or_default();
        let mut selected = Ok(());
        for claim in &delayed {
            let res = self
                .client
                .modify::<PersistentVolumeClaim>(Some(&ns), claim, Part::Main, |c| {
                    let a = c.metadata.annotations.get_or_insert_default();
                    if a.get(SELECTED_NODE) == Some(&node) {
                        return false;
                    }
                    a.insert(SELECTED_NODE.into(), node.clone());
                    true
                })
                .await;
            if let Err(e) = res {
                // A claim gone is no reason to forget the pod: it waits for it again.
                selected = Err(match e {
                    ApiError::NotFound { .. } => {
                        ApiError::Internal(format!("persistentvolumeclaim \"{claim}\" went away"))
                    }
                    e => e,
                });
                break;
            }
        }
        let bound = match selected {
            Ok(()) => {
                strake_kinds::pods::bind(self.client.registry(), &ns, &key.name, &node, false).await
            }
            Err(e) => Err(e),
        };
        match bound {
            Ok(()) => {
                tracing::debug!(pod = %key, %node, "scheduled");
                let message = format!("Successfully assigned {key} to {node}");
                self.client
                    .event(&*pod, EventType::Normal, "Scheduled", &message)
                    .await;
            }
            Err(e) => {
                lock(&self.state).cluster.forget(&pod_key(&key));
                match e {
                    ApiError::NotFound { .. } => {}
                    ApiError::Conflict { message, .. } => {
                        tracing::debug!(pod = %key, %message, "binding conflicted");
                        self.queue.add(key);
                    }
                    e => {
                        tracing::warn!(pod = %key, error = %e, "binding failed");
                        self.queue.add_after(key, Duration::from_secs(1));
                    }
                }
            }
        }
    }

    fn wait_unschedulable(&self, key: &ObjectRef, cycle: u64) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.moves == cycle {
            w.keys.insert(key.clone());
        } else {
            // Room may have appeared while this pod was being placed.
            drop(w);
            self.queue
                .add_after(key.clone(), Duration::from_millis(100));
        }
    }

    /// Marks victims as disrupted and deletes them, gracefully, as upstream's preemption does.
    async fn preempt(
        &self,
        key: &ObjectRef,
        pod: &Pod,
        node: &str,
        victims: &[String],
    ) -> Result<(), ApiError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for v in victims {
            let Some((ns, name)) = v.split_once('/') else {
                continue;
            };
            let res = self
                .client
                .modify::<Pod>(Some(ns), name, Part::Status, |p| {
                    let conds = p
                        .status
                        .get_or_insert_default()
                        .conditions
                        .get_or_insert_default();
                    if conds.iter().any(|c| c.type_ == "DisruptionTarget") {
                        return false;
                    }
                    conds.push(PodCondition {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                        reason: Some("PreemptionByScheduler".into()),
                        message: Some(format!(
                            "{NAME}: preempting to accommodate a higher priority pod"
                        )),
                        last_transition_time: Some(Time(Timestamp::now())),
                        ..Default::default()
                    });
                    true
                })
                .await;
            let victim = match res {
                Ok(p) => p,
                Err(ApiError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            self.client
                .event(
                    &victim,
                    EventType::Normal,
                    "Preempted",
                    &format!("Preempted by pod {uid} on node {node}"),
                )
                .await;
            self.client
                .delete::<Pod>(Some(ns), name, &DeleteOptions::default())
                .await?;
            tracing::info!(victim = %v, preemptor = %key, %node, "preempted");
        }
        Ok(())
    }

    /// The FailedScheduling event and the PodScheduled=False condition (and the nomination,
    /// after a preemption), written once per distinct message.
    async fn record_unschedulable(
        &self,
        key: &ObjectRef,
        pod: &Pod,
        message: &str,
        nominated: Option<&str>,
    ) -> Result<(), ApiError> {
        let status = pod.status.as_ref();
        let already = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(message)
            })
        }) && nominated
            .is_none_or(|n| status.and_then(|s| s.nominated_node_name.as_deref()) == Some(n));
        if already {
            return Ok(());
        }
        tracing::info!(pod = %key, %message, "unschedulable");
        self.client
            .event(pod, EventType::Warning, "FailedScheduling", message)
            .await;
        let res = self
            .client
            .modify::<Pod>(key.ns(), &key.name, Part::Status, |p| {
                let status = p.status.get_or_insert_default();
                if let Some(n) = nominated {
                    status.nominated_node_name = Some(n.to_string());
                }
                let conds = status.conditions.get_or_insert_default();
                conds.retain(|c| c.type_ != "PodScheduled");
                conds.push(PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(message.to_string()),
                    last_transition_time: Some(Time(Timestamp::now())),
                    ..Default::default()
                });
                true
            })
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
