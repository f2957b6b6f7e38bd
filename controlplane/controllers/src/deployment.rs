//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash,
//! carried as the `pod-template-hash` label), rolled from old to new with maxSurge and
//! maxUnavailable or by Recreate, proportional scaling mid-rollout, revisions in
//! `deployment.kubernetes.io/revision` (a rollback moves an old set to the newest revision and
//! records the revisions it had), `revisionHistoryLimit`, pausing, and the Progressing and
//! Available conditions with `progressDeadlineSeconds`, as upstream's controller behaves, so
//! `kubectl rollout status|history|undo|restart|pause|resume` work unchanged.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::ownership::claim;
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action, controller_of};

pub const NAME: &str = "deployment-controller";

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment never copied onto its ReplicaSets.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub struct Deployments {
    client: Client,
    deployments: Reader<Deployment>,
    sets: Reader<ReplicaSet>,
    pods: Reader<Pod>,
    queue: Arc<Queue<ObjectRef>>,
}

impl Deployments {
    pub fn new(
        client: &Client,
        deployments: &mut Reflector<Deployment>,
        sets: &mut Reflector<ReplicaSet>,
        pods: &mut Reflector<Pod>,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        deployments.on_change(runtime::enqueue_self(&queue));
        sets.on_change(runtime::enqueue_controller::<ReplicaSet, Deployment>(
            &queue,
        ));
        // An orphaned set may be adopted by a deployment that selects it.
        let reader = deployments.reader();
        let q = queue.clone();
        sets.on_change(move |c| {
            let Some(rs) = &c.new else { return };
            if controller_of(rs.as_ref(), "Deployment").is_some()
                || rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true))
            {
                return;
            }
            let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
            for d in reader.in_namespace(ns) {
                let sel = d.spec.as_ref().map(|s| &s.selector);
                if sel.is_some_and(|s| strake_scheduler::labels::selects(s, &rs.metadata.labels)) {
                    q.add(ObjectRef::of(d.as_ref()));
                }
            }
        });
        // A Recreate rollout waits for the old pods to go.
        let set_reader = sets.reader();
        let q = queue.clone();
        pods.on_change(move |c| {
            if c.new.is_some() {
                return;
            }
            let pod = c.latest();
            let Some(r) = controller_of(pod.as_ref(), "ReplicaSet") else {
                return;
            };
            let ns = pod.metadata.namespace.as_deref();
            if let Some(rs) = set_reader.get(&ObjectRef::new(ns, &r.name))
                && let Some(d) = controller_of(rs.as_ref(), "Deployment")
            {
                q.add(ObjectRef::new(ns, &d.name));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            deployments: deployments.reader(),
            sets: sets.reader(),
            pods: pods.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.deployments.ready().await;
        self.sets.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.deployments);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(d) = self.deployments.get(&key) else {
            return Ok(Action::await_change());
        };
        let mut d = (*d).clone();
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let mut sets: Vec<ReplicaSet> = claim(&self.client, &d, &selector, &self.sets)
            .await?
            .into_iter()
            .map(|rs| (*rs).clone())
            .collect();
        sets.sort_by(by_creation);
        let mut run = Rollout {
            client: &self.client,
            pods: &self.pods,
            d: &mut d,
        };
        if run.d.metadata.deletion_timestamp.is_some() {
            let (new, old) = run.split(&mut sets, false).await?;
            return run.sync_status(new, &old, false).await;
        }
        run.paused_conditions().await?;
        let paused = run.spec().paused == Some(true);
        if paused || run.is_scaling_event(&mut sets).await? {
            return run.sync(&mut sets, paused).await;
        }
        let recreate = run
            .spec()
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        if recreate {
            run.recreate(&mut sets).await
        } else {
            run.rolling(&mut sets).await
        }
    }
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn annotation_i32(rs: &ReplicaSet, name: &str) -> Option<i32> {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(|v| v.parse().ok())
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// `value` (an int or a percentage of `total`), percentages rounded up or down.
pub fn scaled(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct * i64::from(total);
            let v = if round_up {
                (num + 99) / 100
            } else {
                num / 100
            };
            v as i32
        }
    }
}

/// maxSurge and maxUnavailable as pod counts; both zero would stall, so unavailable becomes 1.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let strategy = spec.strategy.unwrap_or_default();
    if strategy.type_.as_deref() == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.rolling_update.unwrap_or_default();
    let pct25 = IntOrString::String("25%".into());
    let surge = scaled(Some(ru.max_surge.as_ref().unwrap_or(&pct25)), desired, true);
    let unavailable = scaled(
        Some(ru.max_unavailable.as_ref().unwrap_or(&pct25)),
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable.min(desired))
}

/// The template without its `pod-template-hash` label, as JSON where an empty object, list or
/// null is the same as an absent field: upstream compares templates semantically, and Go
/// clients write `resources: {}` where the server stored nothing (kubectl's rollout undo
/// does), which must still name the same revision.
fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    prune_empty(&mut v);
    v
}

/// Removes nulls and empty objects and lists, innermost first.
fn prune_empty(v: &mut serde_json::Value) {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                prune_empty(x);
            }
            m.retain(|_, x| !empty(x));
        }
        Value::Array(a) => a.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

/// The name suffix for a template: FNV-1a over its JSON (and the collision count), spelled
/// with the consonants and digits upstream's names use.
pub fn template_hash(t: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let json = without_hash(t).to_string();
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    json.bytes().for_each(&mut feed);
    if let Some(c) = collisions {
        c.to_le_bytes().iter().for_each(|b| feed(*b));
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d) % ALPHABET.len()] as char)
        .collect()
}

fn condition<'a>(s: &'a DeploymentStatus, ty: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == ty)
}

fn new_condition(ty: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Some(Time(Timestamp::now()));
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

/// Sets a condition: the same status and reason is left as it is; the same status keeps its
/// transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = s.conditions.get_or_insert_default();
    if let Some(old) = conds.iter().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    conds.retain(|o| o.type_ != c.type_);
    conds.push(c);
}

fn remove_condition(s: &mut DeploymentStatus, ty: &str) {
    if let Some(c) = &mut s.conditions {
        c.retain(|o| o.type_ != ty);
    }
}

/// One pass over one deployment.
struct Rollout<'a> {
    client: &'a Client,
    pods: &'a Reader<Pod>,
    d: &'a mut Deployment,
}

impl Rollout<'_> {
    fn spec(&self) -> k8s_openapi::api::apps::v1::DeploymentSpec {
        self.d.spec.clone().unwrap_or_default()
    }

    fn desired(&self) -> i32 {
        self.spec().replicas.unwrap_or(1)
    }

    fn ns(&self) -> Option<String> {
        self.d.metadata.namespace.clone()
    }

    fn name(&self) -> String {
        self.d.metadata.name.clone().unwrap_or_default()
    }

    fn progress_deadline(&self) -> Option<i32> {
        self.spec()
            .progress_deadline_seconds
            .filter(|s| *s != i32::MAX)
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    async fn write_status(&mut self, st: DeploymentStatus) -> Result<(), ApiError> {
        if self.d.status.as_ref() == Some(&st) {
            return Ok(());
        }
        // Based on the deployment as read: a stale read is a 409 and the pass is redone, so
        // the collision count and conditions are never overwritten with older ones.
        let mut next = self.d.clone();
        next.status = Some(st);
        *self.d = self.client.replace(&next, Part::Status).await?;
        Ok(())
    }

    async fn event(&self, ty: EventType, reason: &str, message: &str) {
        self.client.event(&*self.d, ty, reason, message).await;
    }

    /// Marks a deployment paused or resumed in its Progressing condition.
    async fn paused_conditions(&mut self) -> Result<(), ApiError> {
        if self.progress_deadline().is_none() {
            return Ok(());
        }
        let paused = self.spec().paused == Some(true);
        let mut st = self.status();
        let reason = condition(&st, "Progressing").and_then(|c| c.reason.clone());
        let c = match (paused, reason.as_deref()) {
            (true, r) if r != Some("DeploymentPaused") => new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            ),
            (false, Some("DeploymentPaused")) => new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            ),
            _ => return Ok(()),
        };
        set_condition(&mut st, c);
        self.write_status(st).await
    }

    /// Splits the claimed sets into the one matching the template (created when `create`) and
    /// the others, and brings revision annotations up to date.
    async fn split(
        &mut self,
        sets: &mut [ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), ApiError> {
        let template = without_hash(&self.spec().template);
        let new_idx = sets.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == template)
        });
        let old: Vec<ReplicaSet> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .map(|(_, rs)| rs.clone())
            .collect();
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = max_old + 1;
        let new = match new_idx {
            Some(i) => Some(self.sync_existing(&sets[i], new_revision).await?),
            None if create => self.create_new(&old, new_revision).await?,
            None => None,
        };
        Ok((new, old))
    }

    /// Annotations a deployment passes to its new set; whether they changed.
    fn stamp(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let anns = rs.metadata.annotations.get_or_insert_default();
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if NOT_COPIED.contains(&k.as_str()) {
                continue;
            }
            if anns.get(k) != Some(v) {
                anns.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        let old = anns.get(REVISION).cloned();
        let old_n: i64 = old.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
        if old_n < new_revision {
            anns.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            // A set moved to a newer revision is a rollback to it: keep its old revisions.
            if let Some(old) = old {
                let history = match anns.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                anns.insert(REVISION_HISTORY.into(), history);
            }
        }
        if !exists {
            changed |= self.replica_annotations(rs);
        }
        changed
    }

    fn replica_annotations(&self, rs: &mut ReplicaSet) -> bool {
        let (surge, _) = surge_and_unavailable(self.d);
        let desired = self.desired();
        let anns = rs.metadata.annotations.get_or_insert_default();
        let want = [
            (DESIRED_REPLICAS, desired.to_string()),
            (MAX_REPLICAS, (desired + surge).to_string()),
        ];
        let mut changed = false;
        for (k, v) in want {
            if anns.get(k) != Some(&v) {
                anns.insert(k.into(), v);
                changed = true;
            }
        }
        changed
    }

    /// Records the new set's revision on the deployment.
    async fn set_deployment_revision(&mut self, revision: &str) -> Result<(), ApiError> {
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if current.map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let ns = self.ns();
        let name = self.name();
        let out = self
            .client
            .modify::<Deployment>(ns.as_deref(), &name, Part::Main, |cur| {
                let anns = cur.metadata.annotations.get_or_insert_default();
                if anns.get(REVISION).map(String::as_str) == Some(revision) {
                    return false;
                }
                anns.insert(REVISION.into(), revision.into());
                true
            })
            .await?;
        // Keep the status we may have changed locally.
        let status = self.d.status.take();
        *self.d = out;
        self.d.status = status.or(self.d.status.take());
        Ok(())
    }

    async fn sync_existing(
        &mut self,
        rs: &ReplicaSet,
        new_revision: i64,
    ) -> Result<ReplicaSet, ApiError> {
        let mut copy = rs.clone();
        let min_ready = self.spec().min_ready_seconds;
        let changed = self.stamp(&mut copy, new_revision, true);
        let spec = copy.spec.get_or_insert_default();
        let min_ready_changed = spec.min_ready_seconds != min_ready;
        spec.min_ready_seconds = min_ready;
        let rs = if changed || min_ready_changed {
            self.client.replace(&copy, Part::Main).await?
        } else {
            copy
        };
        let rev = revision(&rs).to_string();
        self.set_deployment_revision(&rev).await?;
        let mut st = self.status();
        if self.progress_deadline().is_some() && condition(&st, "Progressing").is_none() {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!(
                        "Found new replica set {:?}",
                        rs.metadata.name.clone().unwrap_or_default()
                    ),
                ),
            );
            self.write_status(st).await?;
        }
        Ok(rs)
    }

    async fn create_new(
        &mut self,
        old: &[ReplicaSet],
        new_revision: i64,
    ) -> Result<Option<ReplicaSet>, ApiError> {
        let spec = self.spec();
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_default()
            .insert(HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.name());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.ns(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![pods::controller_ref(&*self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.push(&rs);
        let count = self.new_set_target(&all, &rs);
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(count);
        }
        self.stamp(&mut rs, new_revision, false);
        let ns = self.ns();
        let created = match self.client.create(ns.as_deref(), &rs).await {
            Ok(rs) => rs,
            Err(ApiError::AlreadyExists { .. }) => {
                let existing: ReplicaSet = self.client.get(ns.as_deref(), &name).await?;
                let ours = controller_of(&existing, "Deployment")
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == without_hash(&spec.template));
                if ours && same {
                    return Ok(Some(existing));
                }
                // Another template hashed to the same name: try the next hash.
                let mut st = self.status();
                st.collision_count = Some(collisions.unwrap_or(0) + 1);
                self.write_status(st).await?;
                return Err(ApiError::Conflict {
                    resource: strake_apimachinery::GroupResource {
                        group: "apps".into(),
                        resource: "replicasets".into(),
                    },
                    name,
                    message: "hash collision; retrying with the next collision count".into(),
                });
            }
            Err(e) => {
                let msg = format!("Failed to create new replica set {name:?}: {e}");
                if self.progress_deadline().is_some() {
                    let mut st = self.status();
                    set_condition(
                        &mut st,
                        new_condition("Progressing", "False", "ReplicaSetCreateError", msg.clone()),
                    );
                    self.write_status(st).await?;
                }
                self.event(EventType::Warning, "FailedCreate", &msg).await;
                return Err(e);
            }
        };
        if count > 0 {
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} from 0 to {count}"),
            )
            .await;
        }
        self.set_deployment_revision(&new_revision.to_string())
            .await?;
        if self.progress_deadline().is_some() {
            let mut st = self.status();
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set {name:?}"),
                ),
            );
            self.write_status(st).await?;
        }
        Ok(Some(created))
    }

    /// How many replicas the new set may have now: up to the desired count, within the surge.
    fn new_set_target(&self, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
        let desired = self.desired();
        if self
            .spec()
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate")
        {
            return desired;
        }
        let (surge, _) = surge_and_unavailable(self.d);
        let current: i32 = all.iter().map(|rs| replicas(rs)).sum();
        let max_total = desired + surge;
        if current >= max_total {
            return replicas(new);
        }
        replicas(new) + (max_total - current).min(desired - replicas(new)).max(0)
    }

    /// Sets a set's size (and its replica annotations); records the event when the size moves.
    async fn scale(
        &mut self,
        rs: &mut ReplicaSet,
        to: i32,
        op: Option<&str>,
    ) -> Result<bool, ApiError> {
        let from = replicas(rs);
        let mut copy = rs.clone();
        let anns_changed = self.replica_annotations(&mut copy);
        if from == to && !anns_changed {
            return Ok(false);
        }
        copy.spec.get_or_insert_default().replicas = Some(to);
        *rs = self.client.replace(&copy, Part::Main).await?;
        if from != to {
            let op = op.unwrap_or(if to > from { "up" } else { "down" });
            let name = rs.metadata.name.clone().unwrap_or_default();
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                &format!("Scaled {op} replica set {name} from {from} to {to}"),
            )
            .await;
        }
        Ok(from != to)
    }

    /// A scale event: some active set was sized for another replica count.
    async fn is_scaling_event(&mut self, sets: &mut [ReplicaSet]) -> Result<bool, ApiError> {
        let (new, old) = self.split(sets, false).await?;
        let desired = self.desired();
        Ok(old
            .iter()
            .chain(new.iter())
            .filter(|rs| replicas(rs) > 0)
            .any(|rs| annotation_i32(rs, DESIRED_REPLICAS).is_some_and(|n| n != desired)))
    }

    /// Scaling without a rollout (paused, or a changed replica count): proportionally across
    /// the active sets during a rollout.
    async fn sync(&mut self, sets: &mut [ReplicaSet], paused: bool) -> Result<Action, ApiError> {
        let (mut new, mut old) = self.split(sets, false).await?;
        self.proportional(&mut new, &mut old).await?;
        if paused {
            self.cleanup(&old).await?;
        }
        self.sync_status(new, &old, false).await
    }

    async fn proportional(
        &mut self,
        new: &mut Option<ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<(), ApiError> {
        let desired = self.desired();
        let active_count = old
            .iter()
            .chain(new.iter())
            .filter(|rs| replicas(rs) > 0)
            .count();
        // One active set (or none): it simply takes the desired count.
        if active_count <= 1 {
            let target = if let Some(i) = old.iter().position(|rs| replicas(rs) > 0) {
                Some(&mut old[i])
            } else if new.is_some() {
                new.as_mut()
            } else {
                old.iter_mut().max_by(|a, b| by_creation(a, b))
            };
            if let Some(rs) = target
                && replicas(rs) != desired
            {
                let mut copy = rs.clone();
                self.scale(&mut copy, desired, None).await?;
                *rs = copy;
            }
            return Ok(());
        }
        // The new set is saturated: the old ones go.
        if let Some(n) = new.as_ref()
            && annotation_i32(n, DESIRED_REPLICAS) == Some(desired)
            && available(n) == desired
        {
            for rs in old.iter_mut().filter(|rs| replicas(rs) > 0) {
                let mut copy = rs.clone();
                self.scale(&mut copy, 0, None).await?;
                *rs = copy;
            }
            return Ok(());
        }
        let (surge, _) = surge_and_unavailable(self.d);
        let allowed = if desired > 0 { desired + surge } else { 0 };
        let mut active: Vec<&mut ReplicaSet> = old
            .iter_mut()
            .chain(new.iter_mut())
            .filter(|rs| replicas(rs) > 0)
            .collect();
        let total: i32 = active.iter().map(|rs| replicas(rs)).sum();
        let to_add = allowed - total;
        if to_add == 0 {
            return Ok(());
        }
        // Larger sets first; on a tie newer first when growing, older first when shrinking.
        active.sort_by(|a, b| {
            replicas(b).cmp(&replicas(a)).then_with(|| {
                if to_add > 0 {
                    by_creation(b, a)
                } else {
                    by_creation(a, b)
                }
            })
        });
        let status_replicas_total = self.status().replicas.unwrap_or(0);
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for rs in &active {
            let cur = replicas(rs);
            let mut share = 0;
            if to_add != added {
                let annotated = annotation_i32(rs, MAX_REPLICAS).unwrap_or(status_replicas_total);
                let fraction = if desired == 0 {
                    -cur
                } else if annotated == 0 {
                    0
                } else {
                    ((f64::from(cur) * f64::from(desired + surge)) / f64::from(annotated)).round()
                        as i32
                        - cur
                };
                let left = to_add - added;
                share = if to_add > 0 {
                    fraction.min(left)
                } else {
                    fraction.max(left)
                };
            }
            added += share;
            sizes.push(cur + share);
        }
        if added != to_add
            && let Some(first) = sizes.first_mut()
        {
            *first = (*first + to_add - added).max(0);
        }
        for (rs, size) in active.iter_mut().zip(sizes) {
            let mut copy = (**rs).clone();
            self.scale(&mut copy, size, None).await?;
            **rs = copy;
        }
        Ok(())
    }

    async fn rolling(&mut self, sets: &mut [ReplicaSet]) -> Result<Action, ApiError> {
        let (new, mut old) = self.split(sets, true).await?;
        let Some(mut new) = new else {
            return self.sync_status(None, &old, true).await;
        };
        // Scale the new set up within the surge.
        let desired = self.desired();
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        let target = if replicas(&new) > desired {
            desired
        } else {
            self.new_set_target(&all, &new)
        };
        if target != replicas(&new) {
            let up = target > replicas(&new);
            self.scale(&mut new, target, Some(if up { "up" } else { "down" }))
                .await?;
            return self.sync_status(Some(new), &old, true).await;
        }
        // Scale the old sets down while enough pods stay available.
        if self.scale_down_old(&new, &mut old).await? {
            return self.sync_status(Some(new), &old, true).await;
        }
        if complete(self.d, &self.status()) {
            self.cleanup(&old).await?;
        }
        self.sync_status(Some(new), &old, true).await
    }

    async fn scale_down_old(
        &mut self,
        new: &ReplicaSet,
        old: &mut [ReplicaSet],
    ) -> Result<bool, ApiError> {
        let old_count: i32 = old.iter().map(replicas).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let (_, max_unavailable) = surge_and_unavailable(self.d);
        let min_available = self.desired() - max_unavailable;
        let all_count = old_count + replicas(new);
        let new_unavailable = replicas(new) - available(new);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy old pods go first: they count for nothing.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let unhealthy = replicas(rs) - available(rs);
            if replicas(rs) == 0 || unhealthy <= 0 {
                continue;
            }
            let n = (max_scaled_down - cleaned).min(unhealthy);
            let to = replicas(rs) - n;
            let mut copy = rs.clone();
            self.scale(&mut copy, to, Some("down")).await?;
            *rs = copy;
            cleaned += n;
        }
        // Then available ones, as long as the minimum stays available.
        let available_all: i32 = old.iter().map(available).sum::<i32>() + available(new);
        let mut scaled_down = 0;
        if available_all > min_available {
            let budget = available_all - min_available;
            for rs in old.iter_mut() {
                if scaled_down >= budget {
                    break;
                }
                if replicas(rs) == 0 {
                    continue;
                }
                let n = replicas(rs).min(budget - scaled_down);
                let to = replicas(rs) - n;
                let mut copy = rs.clone();
                self.scale(&mut copy, to, Some("down")).await?;
                *rs = copy;
                scaled_down += n;
            }
        }
        Ok(cleaned + scaled_down > 0)
    }

    async fn recreate(&mut self, sets: &mut [ReplicaSet]) -> Result<Action, ApiError> {
        let (new, mut old) = self.split(sets, false).await?;
        let mut scaled = false;
        for rs in old.iter_mut().filter(|rs| replicas(rs) > 0) {
            let mut copy = rs.clone();
            scaled |= self.scale(&mut copy, 0, Some("down")).await?;
            *rs = copy;
        }
        if scaled {
            return self.sync_status(new, &old, true).await;
        }
        // Wait until no old pod runs.
        let old_running = old.iter().any(|rs| status_replicas(rs) > 0)
            || old.iter().any(|rs| {
                let uid = rs.metadata.uid.clone().unwrap_or_default();
                self.pods
                    .owned_by(&uid)
                    .iter()
                    .any(|p| !matches!(pods::phase(p), "Succeeded" | "Failed"))
            });
        if old_running {
            return self.sync_status(new, &old, true).await;
        }
        let (new, old) = match new {
            Some(n) => (n, old),
            None => match self.split(sets, true).await? {
                (Some(n), old) => (n, old),
                (None, old) => return self.sync_status(None, &old, true).await,
            },
        };
        let mut new = new;
        let desired = self.desired();
        self.scale(&mut new, desired, Some("up")).await?;
        if complete(self.d, &self.status()) {
            self.cleanup(&old).await?;
        }
        self.sync_status(Some(new), &old, true).await
    }

    /// Deletes the oldest empty sets beyond `revisionHistoryLimit`.
    async fn cleanup(&mut self, old: &[ReplicaSet]) -> Result<(), ApiError> {
        let Some(limit) = self.spec().revision_history_limit else {
            return Ok(());
        };
        let mut alive: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = alive.len() as i64 - i64::from(limit.max(0));
        if excess <= 0 {
            return Ok(());
        }
        alive.sort_by_key(|rs| revision(rs));
        for rs in alive.into_iter().take(excess as usize) {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_replicas(rs) != 0
                || replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let name = rs.metadata.name.clone().unwrap_or_default();
            tracing::info!(deployment = %self.name(), replicaset = %name, "deleting an old revision");
            self.client
                .delete::<ReplicaSet>(
                    rs.metadata.namespace.as_deref(),
                    &name,
                    &DeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Writes the status (counts, Available, and with `rollout` the Progressing condition)
    /// and says when to look again for the progress deadline.
    async fn sync_status(
        &mut self,
        new: Option<ReplicaSet>,
        old: &[ReplicaSet],
        rollout: bool,
    ) -> Result<Action, ApiError> {
        let all: Vec<&ReplicaSet> = old.iter().chain(new.iter()).collect();
        let desired = self.desired();
        let (_, max_unavailable) = surge_and_unavailable(self.d);
        let prev = self.status();
        let available_n: i32 = all.iter().map(|rs| available(rs)).sum();
        let spec_total: i32 = all.iter().map(|rs| replicas(rs)).sum();
        let mut st = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|rs| status_replicas(rs)).sum()),
            updated_replicas: Some(new.as_ref().map_or(0, status_replicas)),
            ready_replicas: Some(all.iter().map(|rs| ready(rs)).sum()),
            available_replicas: Some(available_n),
            unavailable_replicas: Some((spec_total - available_n).max(0)),
            collision_count: prev.collision_count,
            conditions: prev.conditions.clone(),
            terminating_replicas: None,
        };
        if available_n >= desired - max_unavailable {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                ),
            );
        } else {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                ),
            );
        }
        let new_name = new
            .as_ref()
            .and_then(|n| n.metadata.name.clone())
            .unwrap_or_default();
        let deadline = self.progress_deadline();
        if rollout {
            if deadline.is_none() {
                remove_condition(&mut st, "Progressing");
            }
            let current = condition(&st, "Progressing").cloned();
            let done_before = st.replicas == st.updated_replicas
                && current.as_ref().and_then(|c| c.reason.as_deref())
                    == Some("NewReplicaSetAvailable");
            if deadline.is_some() && !done_before {
                if complete(self.d, &st) {
                    let msg = if new.is_some() {
                        format!("ReplicaSet {new_name:?} has successfully progressed.")
                    } else {
                        format!("Deployment {:?} has successfully progressed.", self.name())
                    };
                    set_condition(
                        &mut st,
                        new_condition("Progressing", "True", "NewReplicaSetAvailable", msg),
                    );
                } else if progressing(&prev, &st) {
                    let mut c = new_condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        format!("ReplicaSet {new_name:?} is progressing."),
                    );
                    // Progress refreshes lastUpdateTime even when the reason stays.
                    if let Some(cur) = &current
                        && cur.status == "True"
                    {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut st, "Progressing");
                    st.conditions.get_or_insert_default().push(c);
                } else if timed_out(&st, deadline) {
                    set_condition(
                        &mut st,
                        new_condition(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet {new_name:?} has timed out progressing."),
                        ),
                    );
                }
            }
        }
        let failure = all.iter().find_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .cloned()
        });
        match failure {
            Some(f) => set_condition(
                &mut st,
                DeploymentCondition {
                    type_: "ReplicaFailure".into(),
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_condition(&mut st, "ReplicaFailure"),
        }
        if st.conditions.as_ref().is_some_and(Vec::is_empty) {
            st.conditions = None;
        }
        self.write_status(st.clone()).await?;
        // A rollout still in progress is looked at again when its deadline passes.
        let (Some(secs), Some(c)) = (deadline, condition(&st, "Progressing")) else {
            return Ok(Action::await_change());
        };
        if !rollout
            || matches!(
                c.reason.as_deref(),
                Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded")
            )
            || complete(self.d, &st)
        {
            return Ok(Action::await_change());
        }
        let Some(updated) = c.last_update_time.as_ref() else {
            return Ok(Action::await_change());
        };
        let due = updated.0.as_second() + i64::from(secs);
        let left = (due - Timestamp::now().as_second()).max(1) as u64;
        Ok(Action::requeue(Duration::from_secs(left)))
    }
}

/// Every replica updated and available, and the current generation observed.
fn complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    st.updated_replicas.unwrap_or(0) == desired
        && st.replicas.unwrap_or(0) == desired
        && st.available_replicas.unwrap_or(0) == desired
        && st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// More pods updated, ready or available than before, or fewer old ones.
fn progressing(prev: &DeploymentStatus, now: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_before = g(prev.replicas) - g(prev.updated_replicas);
    let old_now = g(now.replicas) - g(now.updated_replicas);
    g(now.updated_replicas) > g(prev.updated_replicas)
        || old_now < old_before
        || g(now.ready_replicas) > g(prev.ready_replicas)
        || g(now.available_replicas) > g(prev.available_replicas)
}

fn timed_out(st: &DeploymentStatus, deadline: Option<i32>) -> bool {
    let Some(secs) = deadline else { return false };
    let Some(c) = condition(st, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + i64::from(secs) < Timestamp::now().as_second()),
    }
}
