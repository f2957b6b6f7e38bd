//! The disruption controller: each PodDisruptionBudget's status, as upstream computes it, which
//! the eviction subresource (`strake_kinds::pods::evict`) reads and spends. Expected pods come
//! from the pods' controllers' replica counts when the budget is a percentage or a
//! maxUnavailable (from the pod count for an integer minAvailable); healthy pods are Ready,
//! not terminating, and not among the recent evictions in `disruptedPods`, which expire after
//! two minutes when the pod never went.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::{ApiError, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::deployment::scaled;
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};
use strake_scheduler::labels::Selector;

pub const NAME: &str = "disruption-controller";
/// How long an eviction counts against a budget while its pod has not gone.
const DELETION_TIMEOUT: i64 = 120;

pub struct Disruption {
    client: Client,
    budgets: Reader<PodDisruptionBudget>,
    pods: Reader<Pod>,
    queue: Arc<Queue<ObjectRef>>,
}

impl Disruption {
    pub fn new(
        client: &Client,
        budgets: &mut Reflector<PodDisruptionBudget>,
        pods: &mut Reflector<Pod>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        budgets.on_change(runtime::enqueue_self(&queue));
        let (q, reader) = (queue.clone(), budgets.reader());
        pods.on_change(move |c| {
            let ns = c.latest().metadata.namespace.clone().unwrap_or_default();
            for b in reader.in_namespace(&ns) {
                let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                    continue;
                };
                let Ok(sel) = Selector::new(sel) else {
                    continue;
                };
                let hit = |p: &Option<Arc<Pod>>| {
                    p.as_ref().is_some_and(|p| sel.matches(&p.metadata.labels))
                };
                if hit(&c.old) || hit(&c.new) {
                    q.add(ObjectRef::of(b.as_ref()));
                }
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            budgets: budgets.reader(),
            pods: pods.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.budgets.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.budgets);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    /// The replica count of a pod's controller, if it has a scalable one.
    async fn scale_of(&self, ns: &str, kind: &str, name: &str) -> Result<Option<i32>, ApiError> {
        let ns = Some(ns);
        let got = match kind {
            "ReplicaSet" => self
                .client
                .get::<ReplicaSet>(ns, name)
                .await
                .map(|r| r.spec.and_then(|s| s.replicas)),
            "StatefulSet" => self
                .client
                .get::<StatefulSet>(ns, name)
                .await
                .map(|s| s.spec.and_then(|s| s.replicas)),
            "ReplicationController" => self
                .client
                .get::<ReplicationController>(ns, name)
                .await
                .map(|r| r.spec.and_then(|s| s.replicas)),
            _ => return Ok(None),
        };
        match got {
            Ok(n) => Ok(Some(n.unwrap_or(1))),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(pdb) = self.budgets.get(&key) else {
            return Ok(Action::await_change());
        };
        let spec = pdb.spec.clone().unwrap_or_default();
        let ns = key.namespace.clone().unwrap_or_default();
        let selected: Vec<Arc<Pod>> = match spec.selector.as_ref().map(Selector::new) {
            Some(Ok(sel)) if !sel.is_empty() => self
                .pods
                .in_namespace(&ns)
                .into_iter()
                .filter(|p| sel.matches(&p.metadata.labels))
                .collect(),
            _ => Vec::new(),
        };
        // Expected pods: the pod count, or the controllers' replica counts.
        let by_count = matches!(spec.min_available, Some(IntOrString::Int(_)));
        let expected = if by_count {
            selected.len() as i32
        } else {
            let mut seen = HashSet::new();
            let mut total = 0;
            for p in &selected {
                match p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true))
                {
                    Some(r) => {
                        if seen.insert(r.uid.clone()) {
                            total += self.scale_of(&ns, &r.kind, &r.name).await?.unwrap_or(1);
                        }
                    }
                    None => total += 1,
                }
            }
            total
        };
        let desired = match (&spec.min_available, &spec.max_unavailable) {
            (Some(v), _) => scaled(Some(v), expected, true),
            (None, Some(v)) => (expected - scaled(Some(v), expected, true)).max(0),
            (None, None) => expected,
        };
        let now = Timestamp::now();
        let live: BTreeMap<String, &Arc<Pod>> = selected
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        // Recent evictions whose pod is still there and not yet terminating.
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut next_expiry: Option<i64> = None;
        for (pod, at) in pdb
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default()
        {
            let age = now.as_second() - at.0.as_second();
            let pending = live
                .get(&pod)
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
            if pending && age < DELETION_TIMEOUT {
                let left = DELETION_TIMEOUT - age;
                next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
                disrupted.insert(pod, at);
            }
        }
        let current = selected
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && pods::is_ready(p)
                    && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
            })
            .count() as i32;
        let allowed = if expected <= 0 {
            0
        } else {
            (current - desired).max(0)
        };
        let prev = pdb.status.clone().unwrap_or_default();
        let (cond_status, reason, message) = if allowed > 0 {
            ("True", "SufficientPods", String::new())
        } else {
            ("False", "InsufficientPods", String::new())
        };
        let transition = prev
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionAllowed" && c.status == cond_status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        let st = PodDisruptionBudgetStatus {
            observed_generation: pdb.metadata.generation,
            current_healthy: current,
            desired_healthy: desired,
            expected_pods: expected,
            disruptions_allowed: allowed,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            conditions: Some(vec![Condition {
                type_: "DisruptionAllowed".into(),
                status: cond_status.into(),
                reason: reason.into(),
                message,
                observed_generation: pdb.metadata.generation,
                last_transition_time: transition,
            }]),
        };
        if pdb.status.as_ref() != Some(&st) {
            let mut next = (*pdb).clone();
            next.status = Some(st);
            // Based on the read: an eviction that spent a disruption meanwhile wins, and this
            // pass is redone against it.
            self.client.replace(&next, Part::Status).await?;
        }
        Ok(match next_expiry {
            Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
            None => Action::await_change(),
        })
    }
}
