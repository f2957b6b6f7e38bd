//! Node lifecycle, as upstream's node-lifecycle, taint-eviction and pod-GC controllers do it:
//! - **Health**: a node is alive while its Lease in `kube-node-lease` is renewed or its Ready
//!   condition's heartbeat moves. Both are compared with what was seen before, on this
//!   instance's clock, so clock skew between machines does not matter. After
//!   `grace` (upstream's node-monitor-grace-period, 40 s) without either, every condition
//!   turns Unknown ("Kubelet stopped posting node status.") and the node's pods turn unready.
//! - **Taints**: Ready=Unknown gives `node.kubernetes.io/unreachable`, Ready=False
//!   `node.kubernetes.io/not-ready`, with NoSchedule and NoExecute effects; they go when the
//!   node is Ready again.
//! - **Eviction**: a pod on a node with NoExecute taints is deleted at once when it tolerates
//!   one of them not at all, else when the shortest `tolerationSeconds` since the taint was
//!   added has passed (DefaultTolerationSeconds admission gives every pod one).
//! - **Pod GC**: pods bound to a node that no longer exists, and unbound pods being deleted,
//!   are removed at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::admission::{TAINT_NOT_READY, TAINT_UNREACHABLE};
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Part};
use tokio::time::Instant;

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::manager::BY_NODE;
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "node-lifecycle-controller";
pub const EVICTION: &str = "taint-eviction-controller";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What proves a node alive, and when this instance last saw it change.
struct Seen {
    probe: (Option<String>, Option<String>),
    at: Instant,
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The taints a node's readiness calls for.
fn wanted_taints(ready: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        // A node that has not reported yet gets its grace period first.
        Some("True") | None => return Vec::new(),
        Some("False") => TAINT_NOT_READY,
        _ => TAINT_UNREACHABLE,
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

pub struct NodeLifecycle {
    client: Client,
    nodes: Reader<Node>,
    leases: Reader<Lease>,
    pods: Reader<Pod>,
    seen: Mutex<HashMap<String, Seen>>,
    grace: Duration,
    queue: Arc<Queue<ObjectRef>>,
}

impl NodeLifecycle {
    pub fn new(
        client: &Client,
        nodes: &mut Reflector<Node>,
        leases: &mut Reflector<Lease>,
        pods: &mut Reflector<Pod>,
        grace: Duration,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        nodes.on_change(runtime::enqueue_self(&queue));
        let q = queue.clone();
        leases.on_change(move |c| {
            let l = c.latest();
            if l.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE) {
                q.add(ObjectRef::new(
                    None,
                    l.metadata.name.as_deref().unwrap_or_default(),
                ));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            nodes: nodes.reader(),
            leases: leases.reader(),
            pods: pods.reader(),
            seen: Mutex::default(),
            grace,
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.nodes.ready().await;
        self.leases.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        // A new leader gives every node a full grace period from now.
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        runtime::enqueue_all(&self.queue, &self.nodes);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(node) = self.nodes.get(&key) else {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key.name);
            return Ok(Action::await_change());
        };
        let lease = self
            .leases
            .get(&ObjectRef::new(Some(LEASE_NAMESPACE), &key.name))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            });
        let heartbeat = ready_condition(&node)
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string());
        let probe = (lease, heartbeat);
        let silent_for = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let s = seen.entry(key.name.clone()).or_insert_with(|| Seen {
                probe: probe.clone(),
                at: Instant::now(),
            });
            if s.probe != probe {
                s.probe = probe;
                s.at = Instant::now();
            }
            s.at.elapsed()
        };
        let mut ready = ready_condition(&node).map(|c| c.status.clone());
        if silent_for > self.grace && ready.as_deref() != Some("Unknown") {
            self.mark_unknown(&node).await?;
            ready = Some("Unknown".into());
        }
        self.set_taints(&node, ready.as_deref()).await?;
        if ready.as_deref() == Some("Unknown") {
            return Ok(Action::await_change());
        }
        Ok(Action::requeue(
            self.grace.saturating_sub(silent_for) + Duration::from_millis(100),
        ))
    }

    async fn mark_unknown(&self, node: &Node) -> Result<(), ApiError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        tracing::warn!(node = %name, grace = ?self.grace, "node stopped posting status");
        let now = Some(Time(Timestamp::now()));
        self.client
            .modify::<Node>(None, &name, Part::Status, |n| {
                let conds = n
                    .status
                    .get_or_insert_default()
                    .conditions
                    .get_or_insert_default();
                if !conds.iter().any(|c| c.type_ == "Ready") {
                    conds.push(NodeCondition {
                        type_: "Ready".into(),
                        status: "Unknown".into(),
                        reason: Some("NodeStatusNeverUpdated".into()),
                        message: Some("Kubelet never posted node status.".into()),
                        last_transition_time: now.clone(),
                        ..Default::default()
                    });
                }
                for c in conds.iter_mut() {
                    if c.status != "Unknown" {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = now.clone();
                    }
                }
                true
            })
            .await?;
        self.client
            .event(
                node,
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        // Its pods can no longer be trusted to serve.
        for pod in self.pods.indexed(BY_NODE, &name) {
            let key = ObjectRef::of(pod.as_ref());
            let res = self
                .client
                .modify::<Pod>(key.ns(), &key.name, Part::Status, |p| {
                    let Some(conds) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) else {
                        return false;
                    };
                    let mut changed = false;
                    for c in conds
                        .iter_mut()
                        .filter(|c| c.type_ == "Ready" && c.status != "False")
                    {
                        c.status = "False".into();
                        c.last_transition_time = now.clone();
                        changed = true;
                    }
                    changed
                })
                .await;
            match res {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn set_taints(&self, node: &Node, ready: Option<&str>) -> Result<(), ApiError> {
        let want = wanted_taints(ready);
        let managed = |t: &Taint| t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE;
        let current: Vec<(String, String)> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| managed(t))
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        let mut wanted: Vec<(String, String)> = want
            .iter()
            .map(|(k, e)| (k.to_string(), e.to_string()))
            .collect();
        let mut sorted = current.clone();
        sorted.sort();
        wanted.sort();
        if sorted == wanted {
            return Ok(());
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        tracing::info!(node = %name, taints = ?wanted, "node readiness taints");
        let now = Some(Time(Timestamp::now()));
        let res = self
            .client
            .modify::<Node>(None, &name, Part::Main, |n| {
                let taints = n
                    .spec
                    .get_or_insert_default()
                    .taints
                    .get_or_insert_default();
                let before = taints.clone();
                taints.retain(|t| {
                    !managed(t) || want.iter().any(|(k, e)| t.key == *k && t.effect == *e)
                });
                for (k, e) in &want {
                    if !taints.iter().any(|t| t.key == *k && t.effect == *e) {
                        taints.push(Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            time_added: (*e == "NoExecute").then(|| now.clone()).flatten(),
                            value: None,
                        });
                    }
                }
                *taints != before
            })
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// When a pod on a node with these taints must go: None to stay, Some(0) at once.
pub fn eviction_delay(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut delay: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|t| strake_scheduler::toleration_matches(t, taint))
            .collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Tolerated forever by any toleration without seconds.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let elapsed = (now.as_second() - since.as_second()).max(0);
        let left = Duration::from_secs((secs - elapsed).max(0) as u64);
        delay = Some(delay.map_or(left, |d| d.min(left)));
    }
    delay
}

/// Deletes pods from NoExecute-tainted nodes when their tolerations run out, and collects pods
/// whose node is gone.
pub struct TaintEviction {
    client: Client,
    nodes: Reader<Node>,
    pods: Reader<Pod>,
    queue: Arc<Queue<ObjectRef>>,
}

impl TaintEviction {
    pub fn new(
        client: &Client,
        nodes: &mut Reflector<Node>,
        pods: &mut Reflector<Pod>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        let q = queue.clone();
        pods.on_change(move |c| {
            if let Some(p) = &c.new {
                q.add(ObjectRef::of(p.as_ref()));
            }
        });
        // A node's taints changing or the node going touches every pod on it.
        let (q, pod_reader) = (queue.clone(), pods.reader());
        nodes.on_change(move |c| {
            let taints = |n: &Option<Arc<Node>>| {
                n.as_ref().map(|n| {
                    n.spec
                        .as_ref()
                        .and_then(|s| s.taints.clone())
                        .unwrap_or_default()
                })
            };
            if c.old.is_some() && c.new.is_some() && taints(&c.old) == taints(&c.new) {
                return;
            }
            let name = c.latest().metadata.name.clone().unwrap_or_default();
            for p in pod_reader.indexed(BY_NODE, &name) {
                q.add(ObjectRef::of(p.as_ref()));
            }
        });
        Arc::new(Self {
            client: client.named(EVICTION),
            nodes: nodes.reader(),
            pods: pods.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.nodes.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.pods);
        let me = self.clone();
        runtime::run(EVICTION, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn force_delete(&self, key: &ObjectRef) -> Result<(), ApiError> {
        let opts = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        self.client
            .delete::<Pod>(key.ns(), &key.name, &opts)
            .await
            .map(|_| ())
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(pod) = self.pods.get(&key) else {
            return Ok(Action::await_change());
        };
        let Some(node_name) = pods::node_name(&pod).map(str::to_string) else {
            // Unbound and being deleted: no agent will ever finish it.
            if pod.metadata.deletion_timestamp.is_some() {
                tracing::info!(pod = %key, "collecting an unscheduled terminating pod");
                self.force_delete(&key).await?;
            }
            return Ok(Action::await_change());
        };
        let Some(node) = self.nodes.get(&ObjectRef::new(None, &node_name)) else {
            // The cache may lag behind a node just created: ask the API before collecting.
            match self.client.get::<Node>(None, &node_name).await {
                Err(ApiError::NotFound { .. }) => {
                    tracing::info!(pod = %key, node = %node_name, "collecting a pod of a deleted node");
                    self.force_delete(&key).await?;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e),
                Ok(_) => return Ok(Action::requeue(Duration::from_secs(1))),
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        match eviction_delay(&pod, &taints, Timestamp::now()) {
            None => Ok(Action::await_change()),
            Some(d) if d.is_zero() => {
                tracing::info!(pod = %key, node = %node_name, "evicting a pod from a tainted node");
                self.client
                    .event(
                        &*pod,
                        EventType::Normal,
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {key}"),
                    )
                    .await;
                match self
                    .client
                    .delete::<Pod>(key.ns(), &key.name, &DeleteOptions::default())
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::await_change()),
                    Err(e) => Err(e),
                }
            }
            Some(d) => Ok(Action::requeue(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": tolerations}
        }))
        .unwrap()
    }

    fn taint(key: &str, effect: &str, added: Option<Timestamp>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: added.map(Time),
            value: None,
        }
    }

    #[test]
    fn eviction_follows_tolerations() {
        let now = Timestamp::now();
        let ago = |s: i64| {
            now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        let unreachable = [taint(TAINT_UNREACHABLE, "NoExecute", Some(ago(15)))];
        assert_eq!(
            eviction_delay(&pod(json!([])), &unreachable, now),
            Some(Duration::ZERO)
        );
        let twenty = pod(
            json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 20}]),
        );
        assert_eq!(
            eviction_delay(&twenty, &unreachable, now),
            Some(Duration::from_secs(5))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_delay(&forever, &unreachable, now), None);
        // NoSchedule taints never evict.
        assert_eq!(
            eviction_delay(&pod(json!([])), &[taint("k", "NoSchedule", None)], now),
            None
        );
        // The shortest of two tolerated taints wins; one untolerated taint evicts at once.
        let both = [
            taint(TAINT_UNREACHABLE, "NoExecute", Some(ago(15))),
            taint("dedicated", "NoExecute", Some(ago(1))),
        ];
        let two = pod(json!([
            {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 20},
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}
        ]));
        assert_eq!(
            eviction_delay(&two, &both, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(eviction_delay(&twenty, &both, now), Some(Duration::ZERO));
    }

    #[test]
    fn readiness_decides_the_taints() {
        assert!(wanted_taints(Some("True")).is_empty());
        assert!(wanted_taints(None).is_empty());
        assert_eq!(
            wanted_taints(Some("False"))[1],
            (TAINT_NOT_READY, "NoExecute")
        );
        assert_eq!(
            wanted_taints(Some("Unknown"))[0],
            (TAINT_UNREACHABLE, "NoSchedule")
        );
    }
}
