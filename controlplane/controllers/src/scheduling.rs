//! The scheduler's loop on the controller runtime: pending pods for `default-scheduler` come
//! from the pod cache into a queue, one worker places each with the pure
//! `strake_scheduler::schedule` over the caches' nodes and placed pods (plus the pods it has
//! bound that the cache has not shown bound yet), and binds through the `pods/binding`
//! machinery. A pod that fits nowhere waits among the unschedulable until a change that could
//! make room: a node added or changed in what placement reads, a placed pod gone or finished,
//! or the pod itself updated; and at least every minute, as upstream flushes them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, Part};
use strake_scheduler::{Decision, schedule};

use crate::api::Client;
use crate::cache::{Change, ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "default-scheduler";
/// Unschedulable pods are tried again at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(60);

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

pub struct Scheduler {
    client: Client,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    queue: Arc<Queue<ObjectRef>>,
    waiting: Arc<Mutex<Waiting>>,
    /// Pods bound here that the cache may still show unbound.
    assumed: Mutex<HashMap<ObjectRef, Pod>>,
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

impl Scheduler {
    pub fn new(
        client: &Client,
        pods: &mut Reflector<Pod>,
        nodes: &mut Reflector<Node>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        {
            let (queue, waiting) = (queue.clone(), waiting.clone());
            pods.on_change(move |c: &Change<Pod>| {
                let key = ObjectRef::of(c.latest().as_ref());
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
            let (queue, waiting) = (queue.clone(), waiting.clone());
            nodes.on_change(move |c: &Change<Node>| {
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
        Arc::new(Self {
            client: client.named(NAME),
            pods: pods.reader(),
            nodes: nodes.reader(),
            queue,
            waiting,
            assumed: Mutex::default(),
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
        // One worker: each decision sees every binding made before it.
        runtime::run(NAME, self.queue.clone(), 1, move |key| {
            let me = me.clone();
            async move { me.place(key).await }
        })
        .await;
        flusher.abort();
    }

    fn assumed(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Pod>> {
        self.assumed.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn place(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(pod) = self.pods.get(&key) else {
            self.assumed().remove(&key);
            return Ok(Action::await_change());
        };
        if !pending(&pod) || self.assumed().contains_key(&key) {
            return Ok(Action::await_change());
        }
        let cycle = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).moves;
        let nodes = self.nodes.list();
        let mut on_nodes: Vec<Pod> = Vec::new();
        {
            let mut assumed = self.assumed();
            // Drop assumptions the cache has caught up with.
            assumed.retain(|k, _| {
                self.pods
                    .get(k)
                    .is_some_and(|p| pods::node_name(&p).is_none())
            });
            on_nodes.extend(assumed.values().cloned());
        }
        on_nodes.extend(
            self.pods
                .list()
                .into_iter()
                .filter(|p| placed(p))
                .map(|p| (*p).clone()),
        );
        let ns = key.namespace.clone().unwrap_or_default();
        match schedule(&pod, &nodes, &on_nodes) {
            Decision::Bind(node) => {
                match strake_kinds::pods::bind(self.client.registry(), &ns, &key.name, &node, false)
                    .await
                {
                    Ok(()) => {
                        let mut bound = (*pod).clone();
                        bound.spec.get_or_insert_default().node_name = Some(node.clone());
                        self.assumed().insert(key.clone(), bound);
                        tracing::info!(pod = %key, %node, "scheduled");
                        let message = format!("Successfully assigned {key} to {node}");
                        self.client
                            .event(&*pod, EventType::Normal, "Scheduled", &message)
                            .await;
                    }
                    Err(ApiError::NotFound { .. }) => {}
                    Err(ApiError::Conflict { message, .. }) => {
                        tracing::debug!(pod = %key, %message, "binding conflicted");
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Unschedulable(message) => {
                {
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
                let already = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.message.as_deref() == Some(message.as_str())
                        })
                    });
                if already {
                    return Ok(Action::await_change());
                }
                tracing::info!(pod = %key, %message, "unschedulable");
                self.client
                    .event(&*pod, EventType::Warning, "FailedScheduling", &message)
                    .await;
                let res = self
                    .client
                    .modify::<Pod>(key.ns(), &key.name, Part::Status, |p| {
                        let conds = p
                            .status
                            .get_or_insert_default()
                            .conditions
                            .get_or_insert_default();
                        conds.retain(|c| c.type_ != "PodScheduled");
                        conds.push(PodCondition {
                            type_: "PodScheduled".into(),
                            status: "False".into(),
                            reason: Some("Unschedulable".into()),
                            message: Some(message.clone()),
                            last_transition_time: Some(Time(Timestamp::now())),
                            ..Default::default()
                        });
                        true
                    })
                    .await;
                match res {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Action::await_change())
    }
}
