//! The DaemonSet controller: one pod on every eligible node (nodeSelector, required node
//! affinity, and the node's NoSchedule/NoExecute taints against the pod's tolerations plus
//! the ones upstream gives every daemon pod), none elsewhere, at most one per node. Pods are
//! bound to their node at creation, carry upstream's `controller-revision-hash` label, and
//! the template history is kept in ControllerRevisions (so `kubectl rollout
//! history|undo|status` work). RollingUpdate replaces old pods at most `maxUnavailable` at a
//! time, unavailable ones first; OnDelete waits for the user.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::deployment::{scaled, template_hash};
use crate::ownership::claim;
use crate::pods;
use crate::queue::Queue;
use crate::replicaset::pod_from_template;
use crate::runtime::{self, Action, Expectations};

pub const NAME: &str = "daemonset-controller";
pub use crate::history::REVISION_HASH;
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

pub struct DaemonSets {
    client: Client,
    sets: Reader<DaemonSet>,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    revisions: Reader<ControllerRevision>,
    expectations: Expectations,
    queue: Arc<Queue<ObjectRef>>,
}

/// What upstream adds to every daemon pod so node trouble does not keep it away.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut out = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out.into_iter()
        .map(|(k, e)| Toleration {
            key: Some(k.into()),
            operator: Some("Exists".into()),
            effect: Some(e.into()),
            ..Default::default()
        })
        .collect()
}

/// Where the daemon's pod belongs, as upstream decides it: (a pod may be created on `node`,
/// a pod already there may stay). NoSchedule taints keep new pods away but do not remove
/// running ones; NoExecute taints do both.
pub fn placement(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    if node.metadata.deletion_timestamp.is_some() {
        return (false, false);
    }
    let Some(ps) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return (false, false);
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &ps.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return (false, false);
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    if let Some(terms) = ps
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| &r.node_selector_terms)
        && !strake_scheduler::labels::terms_match(terms, &name, &labels)
    {
        return (false, false);
    }
    let mut tolerations = ps.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations(ps.host_network == Some(true)));
    let taints: Vec<_> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerated = |effect: &str| {
        taints.iter().filter(|t| t.effect == effect).all(|t| {
            tolerations
                .iter()
                .any(|tol| strake_scheduler::toleration_matches(tol, t))
        })
    };
    let keep = tolerated("NoExecute");
    (keep && tolerated("NoSchedule"), keep)
}

use crate::history::hash_of;

impl DaemonSets {
    pub fn new(
        client: &Client,
        sets: &mut Reflector<DaemonSet>,
        pods: &mut Reflector<Pod>,
        nodes: &mut Reflector<Node>,
        revisions: &mut Reflector<ControllerRevision>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        sets.on_change(runtime::enqueue_self(&queue));
        pods.on_change(runtime::enqueue_controller::<Pod, DaemonSet>(&queue));
        // A node joining, leaving or changing labels or taints concerns every daemon set.
        let (q, reader) = (queue.clone(), sets.reader());
        nodes.on_change(move |c| {
            let view = |n: &Option<Arc<Node>>| {
                n.as_ref().map(|n| {
                    (
                        n.metadata.labels.clone(),
                        n.spec.as_ref().and_then(|s| s.taints.clone()),
                        n.metadata.deletion_timestamp.is_some(),
                    )
                })
            };
            if view(&c.old) != view(&c.new) {
                runtime::enqueue_all(&q, &reader);
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            sets: sets.reader(),
            pods: pods.reader(),
            nodes: nodes.reader(),
            revisions: revisions.reader(),
            expectations: Expectations::default(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.sets.ready().await;
        self.pods.ready().await;
        self.nodes.ready().await;
        self.revisions.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.sets);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn create_on(
        &self,
        ds: &DaemonSet,
        key: &ObjectRef,
        node: &str,
        hash: &str,
    ) -> Result<(), ApiError> {
        let spec = ds.spec.clone().unwrap_or_default();
        let mut pod = pod_from_template(ds, &spec.template, None);
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.insert(REVISION_HASH.into(), hash.into());
        if let Some(g) = ds.metadata.generation {
            labels.insert(TEMPLATE_GENERATION.into(), g.to_string());
        }
        if let Some(ps) = pod.spec.as_mut() {
            ps.node_name = Some(node.into());
            let tolerations = ps.tolerations.get_or_insert_default();
            for t in daemon_tolerations(ps.host_network == Some(true)) {
                if !tolerations
                    .iter()
                    .any(|x| x.key == t.key && x.effect == t.effect)
                {
                    tolerations.push(t);
                }
            }
        }
        match self.client.create(key.ns(), &pod).await {
            Ok(p) => {
                let name = p.metadata.name.unwrap_or_default();
                self.expectations.expect_create(key, &name);
                self.client
                    .event(
                        ds,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                    )
                    .await;
                Ok(())
            }
            Err(ApiError::Forbidden(_)) => Ok(()),
            Err(e) => {
                self.client
                    .event(
                        ds,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
                Err(e)
            }
        }
    }

    async fn delete_pod(&self, ds: &DaemonSet, key: &ObjectRef, pod: &Pod) -> Result<(), ApiError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.expectations.expect_delete(key, &name);
        self.client
            .delete::<Pod>(key.ns(), &name, &DeleteOptions::default())
            .await?;
        self.client
            .event(
                ds,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
            )
            .await;
        Ok(())
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(ds) = self.sets.get(&key) else {
            self.expectations.forget(&key);
            return Ok(Action::await_change());
        };
        let spec = ds.spec.clone().unwrap_or_default();
        // Checked before the pods are read (see the ReplicaSet controller).
        let acting = self.expectations.satisfied(&key, &self.pods);
        let all = claim(&self.client, ds.as_ref(), &spec.selector, &self.pods).await?;
        let hash = template_hash(
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        );
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        crate::history::sync(
            &self.client,
            &self.revisions,
            &self.pods,
            ds.as_ref(),
            &spec.template,
            &hash,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
        let nodes = self.nodes.list();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in &all {
            if let Some(n) = pods::node_name(p) {
                by_node.entry(n.to_string()).or_default().push(p.clone());
            }
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        let mut changed = false;
        let mut st = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
            ..Default::default()
        };
        let mut available = 0;
        let mut updated = 0;
        // (pod, available) of old pods on nodes that keep the daemon.
        let mut outdated: Vec<(Arc<Pod>, bool)> = Vec::new();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut here: Vec<Arc<Pod>> = by_node.remove(&name).unwrap_or_default();
            here.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let live: Vec<&Arc<Pod>> = here
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let (schedule, keep) = placement(&ds, node);
            // A pod may stay where it may no longer be created (a new NoSchedule taint).
            let wanted = schedule || (keep && !live.is_empty());
            if wanted {
                st.desired_number_scheduled += 1;
                if !live.is_empty() {
                    st.current_number_scheduled += 1;
                }
            } else if !live.is_empty() {
                st.number_misscheduled += 1;
            }
            if !acting {
                continue;
            }
            // A failed daemon pod is replaced.
            for p in live.iter().filter(|p| pods::phase(p) == "Failed") {
                self.delete_pod(&ds, &key, p).await?;
                changed = true;
            }
            let running: Vec<&&Arc<Pod>> =
                live.iter().filter(|p| pods::phase(p) != "Failed").collect();
            if wanted {
                if running.is_empty()
                    && here.iter().all(|p| p.metadata.deletion_timestamp.is_none())
                {
                    self.create_on(&ds, &key, &name, &hash).await?;
                    changed = true;
                    continue;
                }
                for extra in running.iter().skip(1) {
                    self.delete_pod(&ds, &key, extra).await?;
                    changed = true;
                }
                if let Some(p) = running.first() {
                    let ok = pods::is_available(p, min_ready, now);
                    if pods::is_ready(p) {
                        st.number_ready += 1;
                    }
                    if ok {
                        available += 1;
                    }
                    if hash_of(p) == Some(hash.as_str()) {
                        updated += 1;
                    } else {
                        outdated.push(((**p).clone(), ok));
                    }
                }
            } else {
                for p in &running {
                    self.delete_pod(&ds, &key, p).await?;
                    changed = true;
                }
            }
        }
        // Pods on nodes that are gone.
        if acting {
            for p in by_node
                .values()
                .flatten()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                self.delete_pod(&ds, &key, p).await?;
                changed = true;
            }
        }
        // Rolling update: old pods go, unavailable ones first, within maxUnavailable.
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        if acting
            && !changed
            && strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate"
        {
            let one = IntOrString::Int(1);
            let max_unavailable = scaled(
                Some(
                    strategy
                        .rolling_update
                        .as_ref()
                        .and_then(|r| r.max_unavailable.as_ref())
                        .unwrap_or(&one),
                ),
                st.desired_number_scheduled,
                true,
            )
            .max(1);
            let unavailable = st.desired_number_scheduled - available;
            let mut budget = max_unavailable - unavailable;
            outdated.sort_by_key(|(_, ok)| *ok);
            for (p, ok) in &outdated {
                if *ok && budget <= 0 {
                    break;
                }
                self.delete_pod(&ds, &key, p).await?;
                if *ok {
                    budget -= 1;
                }
            }
        }
        st.number_available = Some(available);
        st.number_unavailable = Some((st.desired_number_scheduled - available).max(0));
        st.updated_number_scheduled = Some(updated);
        if ds.status.as_ref() != Some(&st) {
            let mut next = (*ds).clone();
            next.status = Some(st.clone());
            self.client.replace(&next, Part::Status).await?;
        }
        if min_ready > 0 && st.number_ready > available {
            return Ok(Action::requeue(std::time::Duration::from_secs(
                min_ready as u64,
            )));
        }
        Ok(Action::await_change())
    }
}
