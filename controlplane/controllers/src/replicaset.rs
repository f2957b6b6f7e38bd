//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector.
//! It adopts orphans the selector selects and releases pods it owns that no longer match;
//! creates in slow-start batches (1, 2, 4, … as upstream, so a failing template costs one
//! pod, not hundreds); deletes the least valuable pods first on scale-down; and reports
//! replicas, fullyLabeled, ready and available counts and the ReplicaFailure condition.
//!
//! The same controller runs ReplicationControllers: as upstream's does, it sees each one as
//! the ReplicaSet it is equivalent to ([`Replicated`]), and writes the status back in its
//! own form.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerCondition,
    ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Part};

use crate::api::{Client, Object};
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::ownership::claim;
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action, Expectations};
use strake_scheduler::labels::selects;

pub const NAME: &str = "replicaset-controller";
/// The Lease and manager name of the same controller running ReplicationControllers.
pub const RC_NAME: &str = "replicationcontroller-controller";
/// At most this many pods are created or deleted in one pass (upstream's burstReplicas).
const BURST: usize = 500;

/// A kind this controller keeps replicas of: the ReplicaSet itself, or a kind it can be seen
/// as (a ReplicationController's map selector is a ReplicaSet's `matchLabels`).
pub trait Replicated: Object {
    /// The name the controller's Lease, writes and events carry for this kind.
    const CONTROLLER: &'static str;
    /// The object as the ReplicaSet it is equivalent to (spec, status and metadata).
    fn view(&self) -> Cow<'_, ReplicaSet>;
    /// Writes a status computed for the ReplicaSet view back into the object.
    fn set_status(&mut self, status: ReplicaSetStatus);
}

impl Replicated for ReplicaSet {
    const CONTROLLER: &'static str = NAME;
    fn view(&self) -> Cow<'_, ReplicaSet> {
        Cow::Borrowed(self)
    }
    fn set_status(&mut self, status: ReplicaSetStatus) {
        self.status = Some(status);
    }
}

impl Replicated for ReplicationController {
    const CONTROLLER: &'static str = RC_NAME;
    fn view(&self) -> Cow<'_, ReplicaSet> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.as_ref().map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| ReplicaSetCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
            terminating_replicas: None,
        });
        Cow::Owned(ReplicaSet {
            metadata: self.metadata.clone(),
            spec: Some(ReplicaSetSpec {
                min_ready_seconds: spec.min_ready_seconds,
                replicas: spec.replicas,
                // An empty selector selects nothing (the API defaults it from the template).
                selector: LabelSelector {
                    match_labels: spec.selector.filter(|s| !s.is_empty()),
                    match_expressions: None,
                },
                template: spec.template,
            }),
            status,
        })
    }
    fn set_status(&mut self, status: ReplicaSetStatus) {
        self.status = Some(ReplicationControllerStatus {
            replicas: status.replicas,
            fully_labeled_replicas: status.fully_labeled_replicas,
            ready_replicas: status.ready_replicas,
            available_replicas: status.available_replicas,
            observed_generation: status.observed_generation,
            conditions: status.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| ReplicationControllerCondition {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect()
            }),
        });
    }
}

/// The controller for ReplicaSets (`ReplicaSets<ReplicaSet>`) or ReplicationControllers.
pub struct ReplicaSets<K: Replicated = ReplicaSet> {
    client: Client,
    sets: Reader<K>,
    pods: Reader<Pod>,
    expectations: Expectations,
    queue: Arc<Queue<ObjectRef>>,
}

impl<K: Replicated> ReplicaSets<K> {
    pub fn new(client: &Client, sets: &mut Reflector<K>, pods: &mut Reflector<Pod>) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        sets.on_change(runtime::enqueue_self(&queue));
        pods.on_change(runtime::enqueue_controller::<Pod, K>(&queue));
        // An orphan that appears or changes may be adopted by any set that selects it.
        let set_reader = sets.reader();
        let q = queue.clone();
        pods.on_change(move |c| {
            let Some(pod) = &c.new else { return };
            if pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true))
            {
                return;
            }
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            for set in set_reader.in_namespace(ns) {
                let rs = set.view();
                let selector = rs.spec.as_ref().map(|s| &s.selector);
                if selector.is_some_and(|s| selects(s, &pod.metadata.labels)) {
                    q.add(ObjectRef::of(set.as_ref()));
                }
            }
        });
        Arc::new(Self {
            client: client.named(K::CONTROLLER),
            sets: sets.reader(),
            pods: pods.reader(),
            expectations: Expectations::default(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.sets.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.sets);
        let me = self.clone();
        runtime::run(K::CONTROLLER, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(owner) = self.sets.get(&key) else {
            self.expectations.forget(&key);
            return Ok(Action::await_change());
        };
        let rs = owner.view();
        // Expectations are checked before the pods are read: a pod that reaches the cache
        // after the snapshot must not count as missing (and be created twice).
        let satisfied = self.expectations.satisfied(&key, &self.pods);
        let pods = claim(&self.client, owner.as_ref(), &rs_selector(&rs), &self.pods).await?;
        let active: Vec<Arc<Pod>> = pods.into_iter().filter(|p| pods::is_active(p)).collect();
        let mut failure = None;
        if rs.metadata.deletion_timestamp.is_none() && satisfied {
            let desired = rs
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(0) as usize;
            let template = rs.spec.as_ref().and_then(|s| s.template.clone());
            failure = manage(
                &self.client,
                &self.expectations,
                &key,
                owner.as_ref(),
                template.as_ref(),
                &active,
                desired,
            )
            .await;
        }
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let status = compute_status(&rs, &active, failure.as_ref(), Timestamp::now());
        if rs.status.as_ref() != Some(&status) {
            let generation = rs.metadata.generation;
            self.client
                .modify::<K>(key.ns(), &key.name, Part::Status, |cur| {
                    let mut st = status.clone();
                    st.observed_generation = generation;
                    let old = cur.view().status.clone();
                    keep_transition_times(old.as_ref(), &mut st);
                    if old.as_ref() == Some(&st) {
                        return false;
                    }
                    cur.set_status(st);
                    true
                })
                .await?;
        }
        if let Some((reason, message)) = failure {
            return Err(ApiError::Internal(format!("{reason}: {message}")));
        }
        // Pods ready but not yet available become available with time alone.
        if min_ready > 0 && status.ready_replicas != status.available_replicas {
            return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::await_change())
    }
}

fn rs_selector(rs: &ReplicaSet) -> LabelSelector {
    rs.spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default()
}

/// A pod made from a controller's template.
pub fn pod_from_template<O: Object>(
    owner: &O,
    template: &PodTemplateSpec,
    name: Option<String>,
) -> Pod {
    let m = owner.metadata();
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name: Some(format!("{}-", m.name.as_deref().unwrap_or_default())),
            namespace: m.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![pods::controller_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates or deletes pods to reach `desired`; returns the reason and message of a failure.
async fn manage<K: Object>(
    client: &Client,
    expectations: &Expectations,
    key: &ObjectRef,
    rs: &K,
    template: Option<&PodTemplateSpec>,
    active: &[Arc<Pod>],
    desired: usize,
) -> Option<(&'static str, String)> {
    if active.len() < desired {
        let template = template?;
        let mut want = (desired - active.len()).min(BURST);
        let mut batch = 1;
        while want > 0 {
            let n = batch.min(want);
            let results = futures::future::join_all((0..n).map(|_| {
                let pod = pod_from_template(rs, template, None);
                async move { client.create(key.ns(), &pod).await }
            }))
            .await;
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        expectations.expect_create(key, &name);
                        client
                            .event(
                                rs,
                                EventType::Normal,
                                "SuccessfulCreate",
                                &format!("Created pod: {name}"),
                            )
                            .await;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        client
                            .event(
                                rs,
                                EventType::Warning,
                                "FailedCreate",
                                &format!("Error creating: {msg}"),
                            )
                            .await;
                        failed = Some(("FailedCreate", msg));
                    }
                }
            }
            if failed.is_some() {
                return failed;
            }
            want -= n;
            batch *= 2;
        }
    } else if active.len() > desired {
        let mut victims: Vec<&Arc<Pod>> = active.iter().collect();
        victims.sort_by(|a, b| pods::deletion_order(a, b));
        victims.truncate((active.len() - desired).min(BURST));
        let results = futures::future::join_all(victims.iter().map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            async move {
                expectations.expect_delete(key, &name);
                let r = client
                    .delete::<Pod>(key.ns(), &name, &DeleteOptions::default())
                    .await;
                (name, r)
            }
        }))
        .await;
        let mut failed = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    client
                        .event(
                            rs,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await
                }
                Err(e) => {
                    let msg = e.to_string();
                    client
                        .event(
                            rs,
                            EventType::Warning,
                            "FailedDelete",
                            &format!("Error deleting: {msg}"),
                        )
                        .await;
                    failed = Some(("FailedDelete", msg));
                }
            }
        }
        return failed;
    }
    None
}

fn compute_status(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    failure: Option<&(&'static str, String)>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| pods::is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some((reason, message)) = failure {
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some((*reason).into()),
            message: Some(message.clone()),
            last_transition_time: Some(Time(now)),
        });
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

/// A condition that stays keeps the time it first turned to its status.
fn keep_transition_times(old: Option<&ReplicaSetStatus>, new: &mut ReplicaSetStatus) {
    let Some(old) = old.and_then(|o| o.conditions.as_ref()) else {
        return;
    };
    for c in new.conditions.iter_mut().flatten() {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}
