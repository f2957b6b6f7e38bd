//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` (from
//! `spec.ordinals.start`), hostname and subdomain for the governing service, the pod-name and
//! pod-index labels, and one PersistentVolumeClaim per volumeClaimTemplate per ordinal
//! (`<claim>-<set>-<ordinal>`, kept or deleted as `persistentVolumeClaimRetentionPolicy`
//! says). OrderedReady creates in ordinal order, each after the one before is Running and
//! Ready, and removes from the highest ordinal down, one at a time; Parallel does both at
//! once. RollingUpdate replaces pods from the highest ordinal down to `partition`, one at a
//! time, each waiting for the last to be ready; OnDelete waits for the user. Template history
//! is kept in ControllerRevisions, with current and update revisions in the status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Filter, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::deployment::template_hash;
use crate::history::{REVISION_HASH, hash_of};
use crate::ownership::claim;
use crate::pods;
use crate::queue::Queue;
use crate::replicaset::pod_from_template;
use crate::runtime::{self, Action, controller_of};

pub const NAME: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSets {
    client: Client,
    sets: Reader<StatefulSet>,
    pods: Reader<Pod>,
    claims: Reader<PersistentVolumeClaim>,
    revisions: Reader<ControllerRevision>,
    queue: Arc<Queue<ObjectRef>>,
}

fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn healthy(p: &Pod, min_ready: i32) -> bool {
    pods::phase(p) == "Running"
        && p.metadata.deletion_timestamp.is_none()
        && pods::is_available(p, min_ready, Timestamp::now())
}

impl StatefulSets {
    pub fn new(
        client: &Client,
        sets: &mut Reflector<StatefulSet>,
        pods: &mut Reflector<Pod>,
        claims: &mut Reflector<PersistentVolumeClaim>,
        revisions: &mut Reflector<ControllerRevision>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        sets.on_change(runtime::enqueue_self(&queue));
        pods.on_change(runtime::enqueue_controller::<Pod, StatefulSet>(&queue));
        Arc::new(Self {
            client: client.named(NAME),
            sets: sets.reader(),
            pods: pods.reader(),
            claims: claims.reader(),
            revisions: revisions.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.sets.ready().await;
        self.pods.ready().await;
        self.claims.ready().await;
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

    /// The claims the pod of `ordinal` mounts, created when missing.
    async fn ensure_claims(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        pod_ref: Option<&OwnerReference>,
    ) -> Result<(), ApiError> {
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let ns = set.metadata.namespace.clone();
        let policy = spec
            .persistent_volume_claim_retention_policy
            .clone()
            .unwrap_or_default();
        for t in spec.volume_claim_templates.iter().flatten() {
            let base = t.metadata.name.clone().unwrap_or_default();
            let claim_name = format!("{base}-{name}-{ordinal}");
            if self
                .claims
                .get(&ObjectRef::new(ns.as_deref(), &claim_name))
                .is_some()
            {
                continue;
            }
            let mut pvc = t.clone();
            pvc.metadata.name = Some(claim_name.clone());
            pvc.metadata.namespace = ns.clone();
            let mut labels = spec.selector.match_labels.clone().unwrap_or_default();
            labels.extend(pvc.metadata.labels.take().unwrap_or_default());
            pvc.metadata.labels = Some(labels);
            pvc.status = None;
            // Owned by the set (deleted with it) or the pod (deleted on scale-down) when asked.
            let mut owners = Vec::new();
            if policy.when_deleted.as_deref() == Some("Delete") {
                let mut r = pods::controller_ref(set);
                r.controller = None;
                owners.push(r);
            }
            if policy.when_scaled.as_deref() == Some("Delete")
                && let Some(r) = pod_ref
            {
                owners.push(r.clone());
            }
            pvc.metadata.owner_references = (!owners.is_empty()).then_some(owners);
            match self.client.create(ns.as_deref(), &pvc).await {
                Ok(_) => {
                    self.client
                        .event(set, EventType::Normal, "SuccessfulCreate", &format!("create Claim {claim_name} Pod {name}-{ordinal} in StatefulSet {name} success"))
                        .await
                }
                Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        key: &ObjectRef,
        ordinal: i32,
        hash: &str,
    ) -> Result<(), ApiError> {
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        self.ensure_claims(set, ordinal, None).await?;
        let pod_name = format!("{name}-{ordinal}");
        let mut pod = pod_from_template(set, &spec.template, Some(pod_name.clone()));
        pod.metadata.generate_name = None;
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_HASH.into(), hash.into());
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname = Some(pod_name.clone());
            if !spec.service_name.clone().unwrap_or_default().is_empty() {
                ps.subdomain = spec.service_name.clone();
            }
            for t in spec.volume_claim_templates.iter().flatten() {
                let base = t.metadata.name.clone().unwrap_or_default();
                let volumes = ps.volumes.get_or_insert_default();
                volumes.retain(|v| v.name != base);
                volumes.push(Volume {
                    name: base.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: format!("{base}-{name}-{ordinal}"),
                        read_only: None,
                    }),
                    ..Default::default()
                });
            }
        }
        match self.client.create(key.ns(), &pod).await {
            Ok(created) => {
                self.client
                    .event(
                        set,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    )
                    .await;
                let policy = spec
                    .persistent_volume_claim_retention_policy
                    .unwrap_or_default();
                if policy.when_scaled.as_deref() == Some("Delete") {
                    let r = OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: pod_name,
                        uid: created.metadata.uid.unwrap_or_default(),
                        ..Default::default()
                    };
                    self.claim_owned_by_pod(set, ordinal, r).await?;
                }
                Ok(())
            }
            Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => Ok(()),
            Err(e) => {
                self.client
                    .event(
                        set,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// whenScaled=Delete: the claims of `ordinal` go with its pod.
    async fn claim_owned_by_pod(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        r: OwnerReference,
    ) -> Result<(), ApiError> {
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        for t in spec.volume_claim_templates.iter().flatten() {
            let claim_name = format!(
                "{}-{name}-{ordinal}",
                t.metadata.name.as_deref().unwrap_or_default()
            );
            let res = self
                .client
                .modify::<PersistentVolumeClaim>(
                    set.metadata.namespace.as_deref(),
                    &claim_name,
                    Part::Main,
                    |c| {
                        let refs = c.metadata.owner_references.get_or_insert_default();
                        refs.retain(|x| x.kind != "Pod");
                        refs.push(r.clone());
                        true
                    },
                )
                .await;
            match res {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_pod(
        &self,
        set: &StatefulSet,
        key: &ObjectRef,
        p: &Pod,
    ) -> Result<(), ApiError> {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        self.client
            .delete::<Pod>(key.ns(), &pod_name, &DeleteOptions::default())
            .await?;
        self.client
            .event(
                set,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
            )
            .await;
        Ok(())
    }

    /// Whether the member of `ordinal` is Running and Ready, asked of the API: OrderedReady
    /// creates the next member only after this one, and the cache may lag.
    async fn healthy_now(
        &self,
        key: &ObjectRef,
        set: &str,
        ordinal: i32,
        min_ready: i32,
    ) -> Result<bool, ApiError> {
        match self
            .client
            .get::<Pod>(key.ns(), &format!("{set}-{ordinal}"))
            .await
        {
            Ok(p) => Ok(healthy(&p, min_ready)),
            Err(ApiError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the set has a member out of `wanted` above `ordinal`, terminating or not, asked
    /// of the API: OrderedReady removes a member only once those above it are gone, and the
    /// cache may lag.
    async fn extra_above(
        &self,
        set: &StatefulSet,
        key: &ObjectRef,
        wanted: &std::ops::Range<i32>,
        ordinal: i32,
    ) -> Result<bool, ApiError> {
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let (all, _): (Vec<Pod>, _) = self.client.list(key.ns(), &Filter::default()).await?;
        Ok(all.iter().any(|p| {
            controller_of(p, "StatefulSet").is_some_and(|c| c.uid == uid)
                && ordinal_of(&key.name, p).is_some_and(|o| o > ordinal && !wanted.contains(&o))
        }))
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(set) = self.sets.get(&key) else {
            return Ok(Action::await_change());
        };
        let spec = set.spec.clone().unwrap_or_default();
        let name = key.name.clone();
        let all = claim(&self.client, set.as_ref(), &spec.selector, &self.pods).await?;
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let hash = template_hash(
            &spec.template,
            set.status.as_ref().and_then(|s| s.collision_count),
        );
        let (update_revision, _) = crate::history::sync(
            &self.client,
            &self.revisions,
            &self.pods,
            set.as_ref(),
            &spec.template,
            &hash,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let by_ordinal: HashMap<i32, Arc<Pod>> = all
            .iter()
            .filter_map(|p| ordinal_of(&name, p).map(|o| (o, p.clone())))
            .collect();
        let wanted = start..start + replicas;

        // Create or replace the pods in range, in order.
        let mut blocked = false;
        for o in wanted.clone() {
            match by_ordinal.get(&o) {
                None => {
                    if blocked && !parallel {
                        break;
                    }
                    // The cache may still show a predecessor Ready that a scale-down just
                    // before has removed by now: its state in the API decides.
                    if !parallel
                        && o > start
                        && !self.healthy_now(&key, &name, o - 1, min_ready).await?
                    {
                        blocked = true;
                        break;
                    }
                    self.create_pod(&set, &key, o, &hash).await?;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p)
                    if pods::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none() =>
                {
                    // A failed member is recreated under its name.
                    self.delete_pod(&set, &key, p).await?;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p) => {
                    if !parallel && !healthy(p, min_ready) {
                        blocked = true;
                        break;
                    }
                }
            }
        }
        // Remove pods beyond the range: the highest ordinal first, one at a time unless Parallel.
        if !blocked {
            let mut extra: Vec<(i32, &Arc<Pod>)> = by_ordinal
                .iter()
                .filter(|(o, _)| !wanted.contains(o))
                .map(|(o, p)| (*o, p))
                .collect();
            extra.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (o, p) in extra {
                if p.metadata.deletion_timestamp.is_some() {
                    if !parallel {
                        blocked = true;
                        break;
                    }
                    continue;
                }
                // The cache may not yet hold a member created moments ago above this one:
                // the members in the API decide.
                if !parallel && self.extra_above(&set, &key, &wanted, o).await? {
                    blocked = true;
                    break;
                }
                self.delete_pod(&set, &key, p).await?;
                if !parallel {
                    blocked = true;
                    break;
                }
            }
        }
        // Rolling update from the highest ordinal down to the partition.
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        if !blocked && rolling {
            let all_healthy = wanted
                .clone()
                .all(|o| by_ordinal.get(&o).is_some_and(|p| healthy(p, min_ready)));
            if all_healthy {
                for o in wanted.clone().rev() {
                    if o - start < partition {
                        break;
                    }
                    if let Some(p) = by_ordinal.get(&o)
                        && hash_of(p) != Some(hash.as_str())
                    {
                        self.delete_pod(&set, &key, p).await?;
                        break;
                    }
                }
            }
        }

        // Status.
        let in_range: Vec<&Arc<Pod>> = wanted.clone().filter_map(|o| by_ordinal.get(&o)).collect();
        let live: Vec<&&Arc<Pod>> = in_range
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let updated = live
            .iter()
            .filter(|p| hash_of(p) == Some(hash.as_str()))
            .count() as i32;
        let prev = set.status.clone().unwrap_or_default();
        let current_revision = match prev.current_revision.clone() {
            Some(cur) if updated < replicas || cur == update_revision => Some(cur),
            None if updated < replicas && !live.is_empty() => live
                .iter()
                .find_map(|p| hash_of(p).map(|h| format!("{name}-{h}"))),
            _ => Some(update_revision.clone()),
        };
        let current_hash = current_revision
            .as_deref()
            .and_then(|r| r.strip_prefix(&format!("{name}-")))
            .map(str::to_string);
        let st = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            replicas: live.len() as i32,
            ready_replicas: Some(live.iter().filter(|p| pods::is_ready(p)).count() as i32),
            available_replicas: Some(live.iter().filter(|p| healthy(p, min_ready)).count() as i32),
            current_replicas: Some(
                live.iter()
                    .filter(|p| hash_of(p).map(str::to_string) == current_hash)
                    .count() as i32,
            ),
            updated_replicas: Some(updated),
            current_revision,
            update_revision: Some(update_revision),
            collision_count: prev.collision_count,
            conditions: prev.conditions.clone(),
        };
        if set.status.as_ref() != Some(&st) {
            let mut next = (*set).clone();
            next.status = Some(st);
            self.client.replace(&next, Part::Status).await?;
        }
        if min_ready > 0 {
            return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::await_change())
    }
}
