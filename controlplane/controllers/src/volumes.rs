//! Persistent volumes: upstream's binder (claims bound to the smallest free volume that
//! satisfies them, both sides written as upstream writes them, released volumes reclaimed by
//! their policy), the protection controller (a claim in use by a pod, or a volume bound to a
//! claim, keeps its protection finalizer while deleted), and Strake's built-in local-path
//! provisioner.
//!
//! The provisioner serves the `local-path` StorageClass, the cluster's default, which waits
//! for the first consumer: the scheduler writes the node it picked into the claim
//! (`volume.kubernetes.io/selected-node`), and the provisioner makes a hostPath volume under
//! the node's state directory, pinned to that node by node affinity. Its volumes carry the
//! node in a label and a cleanup finalizer: the node's agent creates the directory when a pod
//! mounts it, and removes it (for the Delete policy) and the finalizer once the volume is
//! deleted. Retain keeps the volume Released, data and all.
//!
//! One queue holds both kinds: a key with a namespace is a claim, without one a volume.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strake_apimachinery::admission::{DEFAULT_CLASS, PV_PROTECTION, PVC_PROTECTION};
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, DeleteOptions, Part};
use strake_scheduler::volumes::{self, SELECTED_NODE};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "persistentvolume-binder-controller";
/// The provisioner name of Strake's local-path volumes.
pub const LOCAL_PATH: &str = "strake.dev/local-path";
/// The default StorageClass the provisioner serves.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Where local-path volumes live on a node unless configured otherwise.
pub const LOCAL_PATH_ROOT: &str = "/var/lib/strake/local-path";
pub use strake_scheduler::volumes::{
    LOCAL_PATH_CLEANUP as CLEANUP_FINALIZER, LOCAL_PATH_NODE_LABEL as NODE_LABEL,
};

/// How often a claim that found no volume looks again.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(15);
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

pub struct Volumes {
    client: Client,
    claims: Reader<PersistentVolumeClaim>,
    volumes: Reader<PersistentVolume>,
    classes: Reader<StorageClass>,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    /// Where local-path volumes go on their nodes; None: no provisioner.
    local_root: Option<String>,
    queue: Arc<Queue<ObjectRef>>,
}

fn volume_key(name: &str) -> ObjectRef {
    ObjectRef::new(None, name)
}

fn claim_key_of(r: &ObjectReference) -> Option<ObjectRef> {
    Some(ObjectRef::new(
        Some(r.namespace.as_deref()?),
        r.name.as_deref()?,
    ))
}

fn claim_ref(v: &PersistentVolume) -> Option<&ObjectReference> {
    v.spec.as_ref()?.claim_ref.as_ref()
}

fn volume_name(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec
        .as_ref()?
        .volume_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn uses_claim(p: &Pod, claim: &str) -> bool {
    volumes::pod_claims(p).iter().any(|c| c == claim)
}

fn annotate(meta: &mut ObjectMeta, key: &str, value: &str) -> bool {
    let a = meta.annotations.get_or_insert_default();
    if a.get(key).map(String::as_str) == Some(value) {
        return false;
    }
    a.insert(key.into(), value.into());
    true
}

impl Volumes {
    pub fn new(
        client: &Client,
        claims: &mut Reflector<PersistentVolumeClaim>,
        volumes: &mut Reflector<PersistentVolume>,
        classes: &mut Reflector<StorageClass>,
        pods: &mut Reflector<Pod>,
        nodes: &Reader<Node>,
        local_root: Option<String>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        let q = queue.clone();
        claims.on_change(move |c| {
            q.add(ObjectRef::of(c.latest().as_ref()));
            // A claim's volume hears of it going (to be released) or binding.
            for claim in c.old.iter().chain(c.new.iter()) {
                if let Some(v) = volume_name(claim) {
                    q.add(volume_key(v));
                }
            }
        });
        let (q, claim_reader) = (queue.clone(), claims.reader());
        volumes.on_change(move |c| {
            for v in c.old.iter().chain(c.new.iter()) {
                q.add(volume_key(v.metadata.name.as_deref().unwrap_or_default()));
                if let Some(k) = claim_ref(v).and_then(claim_key_of) {
                    q.add(k);
                }
            }
            // A free volume may be what a waiting claim needs.
            if c.new.as_deref().is_some_and(|v| claim_ref(v).is_none()) {
                for claim in claim_reader.list() {
                    if volume_name(&claim).is_none() && claim.metadata.deletion_timestamp.is_none()
                    {
                        q.add(ObjectRef::of(claim.as_ref()));
                    }
                }
            }
        });
        // A default class appearing gives classless claims their class; a class appearing
        // lets its claims bind.
        let (q, claim_reader) = (queue.clone(), claims.reader());
        classes.on_change(move |_| {
            for c in claim_reader.list() {
                if volume_name(&c).is_none() {
                    q.add(ObjectRef::of(c.as_ref()));
                }
            }
        });
        // A claim being deleted waits for the pods that use it to go.
        let (q, claim_reader) = (queue.clone(), claims.reader());
        pods.on_change(move |c| {
            let gone = c.new.as_deref().is_none_or(|p| !pods::is_active(p));
            if !gone {
                return;
            }
            let p = c.latest();
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            for name in volumes::pod_claims(p) {
                let key = ObjectRef::new(Some(ns), &name);
                if claim_reader
                    .get(&key)
                    .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
                {
                    q.add(key);
                }
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            claims: claims.reader(),
            volumes: volumes.reader(),
            classes: classes.reader(),
            pods: pods.reader(),
            nodes: nodes.clone(),
            local_root,
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.claims.ready().await;
        self.volumes.ready().await;
        self.classes.ready().await;
        self.pods.ready().await;
        self.nodes.ready().await;
        if self.local_root.is_some()
            && let Err(e) = self.ensure_class().await
        {
            tracing::warn!(error = %e, "creating the local-path StorageClass failed");
        }
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.claims);
        for v in self.volumes.list() {
            self.queue
                .add(volume_key(v.metadata.name.as_deref().unwrap_or_default()));
        }
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move {
                if key.namespace.is_some() {
                    me.sync_claim(key).await
                } else {
                    me.sync_volume(key).await
                }
            }
        })
        .await
    }

    /// Creates the `local-path` class, the default unless another class already is, as k3s
    /// does at each start; a class of that name the user made or changed is left alone.
    async fn ensure_class(&self) -> Result<(), ApiError> {
        if self
            .classes
            .get(&ObjectRef::new(None, LOCAL_PATH_CLASS))
            .is_some()
        {
            return Ok(());
        }
        let another_default = self
            .classes
            .list()
            .iter()
            .any(|c| annotation(&c.metadata, DEFAULT_CLASS) == Some("true"));
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some(LOCAL_PATH_CLASS.into()),
                annotations: (!another_default)
                    .then(|| [(DEFAULT_CLASS.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            provisioner: LOCAL_PATH.into(),
            reclaim_policy: Some("Delete".into()),
            volume_binding_mode: Some("WaitForFirstConsumer".into()),
            ..Default::default()
        };
        match self.client.create(None, &class).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn default_class(&self) -> Option<String> {
        self.classes
            .list()
            .into_iter()
            .filter(|c| annotation(&c.metadata, DEFAULT_CLASS) == Some("true"))
            .max_by(|a, b| {
                a.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    .then_with(|| b.metadata.name.cmp(&a.metadata.name))
            })
            .and_then(|c| c.metadata.name.clone())
    }

    async fn sync_claim(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(claim) = self.claims.get(&key) else {
            return Ok(Action::await_change());
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return self.release_claim(&key, &claim).await;
        }
        if let Some(vol) = volume_name(&claim) {
            return self.sync_bound_claim(&key, &claim, vol).await;
        }
        // Retroactive default: a classless claim gets the default class when one exists.
        if claim
            .spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_none())
            && let Some(class) = self.default_class()
        {
            self.client
                .modify::<PersistentVolumeClaim>(key.ns(), &key.name, Part::Main, |c| {
                    let spec = c.spec.get_or_insert_default();
                    if spec.storage_class_name.is_some() {
                        return false;
                    }
                    spec.storage_class_name = Some(class.clone());
                    true
                })
                .await?;
            return Ok(Action::await_change());
        }
        let class_name = volumes::claim_class(&claim);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(None, class_name)))
            .flatten();
        let selected = annotation(&claim.metadata, SELECTED_NODE).map(str::to_string);
        if volumes::delayed(class.as_deref()) && selected.is_none() {
            if phase_of_claim(&claim) == "Pending"
                && annotation(&claim.metadata, STORAGE_PROVISIONER).is_none()
            {
                self.client
                    .event(
                        &*claim,
                        EventType::Normal,
                        "WaitForFirstConsumer",
                        "waiting for first consumer to be created before binding",
                    )
                    .await;
            }
            return Ok(Action::await_change());
        }
        let node = selected.as_deref().map(|n| {
            let labels = self
                .nodes
                .get(&ObjectRef::new(None, n))
                .map(|node| node.metadata.labels.clone().unwrap_or_default())
                .unwrap_or_else(|| [("kubernetes.io/hostname".to_string(), n.to_string())].into());
            (n.to_string(), labels)
        });
        let all = self.volumes.list();
        let found = volumes::best_match(
            &claim,
            all.iter().map(|v| v.as_ref()),
            node.as_ref().map(|(n, l)| (n.as_str(), l)),
        )
        .cloned();
        if let Some(v) = found {
            self.bind(&claim, &v).await?;
            return Ok(Action::await_change());
        }
        match class {
            Some(c) if volumes::provisions(&c) => {
                self.provision(&key, &claim, &c, node.map(|(n, _)| n)).await
            }
            _ => {
                let (reason, message) = if class_name.is_empty() {
                    ("FailedBinding", "no persistent volumes available for this claim and no storage class is set".to_string())
                } else if class.is_none() {
                    (
                        "ProvisioningFailed",
                        format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                    )
                } else {
                    (
                        "FailedBinding",
                        format!(
                            "no persistent volumes available for this claim, and storage class \"{class_name}\" does not provision"
                        ),
                    )
                };
                self.client
                    .event(&*claim, EventType::Normal, reason, &message)
                    .await;
                // As upstream's binder resyncs: a volume may come by a way no event shows.
                Ok(Action::requeue(RESYNC))
            }
        }
    }

    /// A claim that names its volume: finish the binding, or report it lost or taken.
    async fn sync_bound_claim(
        &self,
        key: &ObjectRef,
        claim: &PersistentVolumeClaim,
        vol: &str,
    ) -> Result<Action, ApiError> {
        let Some(v) = self.volumes.get(&volume_key(vol)) else {
            if annotation(&claim.metadata, BIND_COMPLETED).is_some()
                && phase_of_claim(claim) != "Lost"
            {
                self.set_claim_phase(key, "Lost").await?;
                self.client
                    .event(
                        claim,
                        EventType::Warning,
                        "ClaimLost",
                        "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
                    )
                    .await;
            }
            return Ok(Action::await_change());
        };
        match claim_ref(&v) {
            Some(r)
                if r.namespace == claim.metadata.namespace
                    && r.name == claim.metadata.name
                    && (r.uid.is_none() || r.uid == claim.metadata.uid) =>
            {
                self.bind(claim, &v).await?;
            }
            None => self.bind(claim, &v).await?,
            Some(_) => {
                self.client
                    .event(
                        claim,
                        EventType::Warning,
                        "FailedBinding",
                        &format!("volume \"{vol}\" already bound to a different claim."),
                    )
                    .await;
            }
        }
        Ok(Action::await_change())
    }

    /// Binds both ways, in upstream's order: the volume's claimRef, its phase, the claim's
    /// volumeName, its phase with the volume's capacity and access modes. Each step is skipped
    /// when already done, so a retry resumes where a failure stopped.
    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        v: &PersistentVolume,
    ) -> Result<(), ApiError> {
        let vname = v.metadata.name.clone().unwrap_or_default();
        let (ns, cname) = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        let uid = claim.metadata.uid.clone();
        let v = self
            .client
            .modify::<PersistentVolume>(None, &vname, Part::Main, |v| {
                let spec = v.spec.get_or_insert_default();
                let current = spec.claim_ref.as_ref();
                if current.is_some_and(|r| r.uid == uid && r.uid.is_some()) {
                    return false;
                }
                let by_controller = current.is_none();
                spec.claim_ref = Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.clone()),
                    name: Some(cname.clone()),
                    uid: uid.clone(),
                    resource_version: claim.metadata.resource_version.clone(),
                    ..Default::default()
                });
                if by_controller {
                    annotate(&mut v.metadata, BOUND_BY_CONTROLLER, "yes");
                }
                true
            })
            .await?;
        if phase_of_volume(&v) != "Bound" {
            self.client
                .modify::<PersistentVolume>(None, &vname, Part::Status, |v| {
                    let st = v.status.get_or_insert_default();
                    if st.phase.as_deref() == Some("Bound") {
                        return false;
                    }
                    st.phase = Some("Bound".into());
                    st.reason = None;
                    st.message = None;
                    true
                })
                .await?;
        }
        let vspec = v.spec.clone().unwrap_or_default();
        let c = self
            .client
            .modify::<PersistentVolumeClaim>(Some(&ns), &cname, Part::Main, |c| {
                let mut changed = annotate(&mut c.metadata, BIND_COMPLETED, "yes");
                let spec = c.spec.get_or_insert_default();
                if spec.volume_name.as_deref() != Some(vname.as_str()) {
                    spec.volume_name = Some(vname.clone());
                    annotate(&mut c.metadata, BOUND_BY_CONTROLLER, "yes");
                    changed = true;
                }
                changed
            })
            .await?;
        let capacity = vspec.capacity.clone();
        let modes = vspec.access_modes.clone();
        let status_done = c.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Bound") && s.capacity == capacity && s.access_modes == modes
        });
        if !status_done {
            self.client
                .modify::<PersistentVolumeClaim>(Some(&ns), &cname, Part::Status, |c| {
                    let st = c.status.get_or_insert_default();
                    st.phase = Some("Bound".into());
                    st.capacity = capacity.clone();
                    st.access_modes = modes.clone();
                    true
                })
                .await?;
            tracing::info!(claim = %format!("{ns}/{cname}"), volume = %vname, "bound");
        }
        Ok(())
    }

    async fn set_claim_phase(&self, key: &ObjectRef, phase: &str) -> Result<(), ApiError> {
        self.client
            .modify::<PersistentVolumeClaim>(key.ns(), &key.name, Part::Status, |c| {
                let st = c.status.get_or_insert_default();
                if st.phase.as_deref() == Some(phase) {
                    return false;
                }
                st.phase = Some(phase.into());
                true
            })
            .await?;
        Ok(())
    }

    /// A claim being deleted keeps its protection finalizer while any running pod uses it.
    async fn release_claim(
        &self,
        key: &ObjectRef,
        claim: &PersistentVolumeClaim,
    ) -> Result<Action, ApiError> {
        if !has_finalizer(&claim.metadata, PVC_PROTECTION) {
            return Ok(Action::await_change());
        }
        let ns = key.namespace.as_deref().unwrap_or_default();
        let in_use =
            self.pods.in_namespace(ns).iter().any(|p| {
                !matches!(pods::phase(p), "Succeeded" | "Failed") && uses_claim(p, &key.name)
            });
        if in_use {
            return Ok(Action::await_change());
        }
        // The cache may not have seen a pod that was just created: ask the API.
        let (live, _) = self
            .client
            .list::<Pod>(Some(ns), &Default::default())
            .await?;
        if live
            .iter()
            .any(|p| !matches!(pods::phase(p), "Succeeded" | "Failed") && uses_claim(p, &key.name))
        {
            return Ok(Action::await_change());
        }
        self.remove_finalizer::<PersistentVolumeClaim>(key.ns(), &key.name, PVC_PROTECTION)
            .await
    }

    async fn remove_finalizer<K: crate::api::Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        finalizer: &str,
    ) -> Result<Action, ApiError> {
        let res = self
            .client
            .modify::<K>(ns, name, Part::Main, |o| {
                let meta = o.metadata_mut();
                let Some(list) = meta.finalizers.as_mut() else {
                    return false;
                };
                let before = list.len();
                list.retain(|f| f != finalizer);
                list.len() != before
            })
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }

    async fn sync_volume(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(v) = self.volumes.get(&key) else {
            return Ok(Action::await_change());
        };
        let bound_claim = claim_ref(&v)
            .and_then(claim_key_of)
            .and_then(|k| self.claims.get(&k))
            .filter(|c| {
                volume_name(c) == v.metadata.name.as_deref()
                    && claim_ref(&v).is_some_and(|r| r.uid.is_none() || r.uid == c.metadata.uid)
            });
        if v.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&v.metadata, PV_PROTECTION) && bound_claim.is_none() {
                return self
                    .remove_finalizer::<PersistentVolume>(None, &key.name, PV_PROTECTION)
                    .await;
            }
            return Ok(Action::await_change());
        }
        let Some(r) = claim_ref(&v).cloned() else {
            self.set_volume_phase(&key.name, "Available", None).await?;
            return Ok(Action::await_change());
        };
        let Some(ckey) = claim_key_of(&r) else {
            return Ok(Action::await_change());
        };
        let claim = match self.claims.get(&ckey) {
            Some(c) => Some(c),
            // The cache may lag a claim just created: only the API can say it is gone.
            None => match self
                .client
                .get::<PersistentVolumeClaim>(ckey.ns(), &ckey.name)
                .await
            {
                Ok(c) => Some(Arc::new(c)),
                Err(ApiError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
        };
        let claim = claim.filter(|c| r.uid.is_none() || r.uid == c.metadata.uid);
        match claim {
            None => self.reclaim(&v).await,
            Some(c) if volume_name(&c) == v.metadata.name.as_deref() => {
                self.set_volume_phase(&key.name, "Bound", None).await?;
                Ok(Action::await_change())
            }
            Some(c)
                if volume_name(&c).is_some()
                    && annotation(&v.metadata, BOUND_BY_CONTROLLER).is_some() =>
            {
                // The claim went to another volume: give this one back.
                self.client
                    .modify::<PersistentVolume>(None, &key.name, Part::Main, |v| {
                        let spec = v.spec.get_or_insert_default();
                        spec.claim_ref.take().is_some()
                    })
                    .await?;
                Ok(Action::await_change())
            }
            // The claim's own sync binds it.
            Some(_) => Ok(Action::await_change()),
        }
    }

    async fn set_volume_phase(
        &self,
        name: &str,
        phase: &str,
        message: Option<String>,
    ) -> Result<(), ApiError> {
        self.client
            .modify::<PersistentVolume>(None, name, Part::Status, |v| {
                let st = v.status.get_or_insert_default();
                if st.phase.as_deref() == Some(phase) && st.message == message {
                    return false;
                }
                st.phase = Some(phase.into());
                st.message = message.clone();
                true
            })
            .await?;
        Ok(())
    }

    /// The claim of a bound volume is gone: Released, then its reclaim policy.
    async fn reclaim(&self, v: &PersistentVolume) -> Result<Action, ApiError> {
        let name = v.metadata.name.clone().unwrap_or_default();
        let policy = v
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        if phase_of_volume(v) == "Failed" {
            return Ok(Action::await_change());
        }
        if phase_of_volume(v) != "Released" {
            self.set_volume_phase(&name, "Released", None).await?;
        }
        match policy {
            "Delete" => match annotation(&v.metadata, PROVISIONED_BY) {
                Some(LOCAL_PATH) => {
                    self.client
                        .delete::<PersistentVolume>(None, &name, &DeleteOptions::default())
                        .await?;
                    tracing::info!(volume = %name, "released volume deleted");
                }
                // Another provisioner deletes its own volumes.
                Some(_) => {}
                None => {
                    let message = format!(
                        "error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"
                    );
                    self.set_volume_phase(&name, "Failed", Some(message.clone()))
                        .await?;
                    self.client
                        .event(v, EventType::Warning, "VolumeFailedDelete", &message)
                        .await;
                }
            },
            "Recycle" => {
                let message = "Recycle is not supported: use a provisioner and the Delete policy";
                self.set_volume_phase(&name, "Failed", Some(message.into()))
                    .await?;
                self.client
                    .event(v, EventType::Warning, "VolumeFailedRecycle", message)
                    .await;
            }
            _ => {}
        }
        Ok(Action::await_change())
    }

    /// Makes a volume for the claim: a local-path directory on the selected node, or, for
    /// another provisioner, marks the claim for it and waits.
    async fn provision(
        &self,
        key: &ObjectRef,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        node: Option<String>,
    ) -> Result<Action, ApiError> {
        let ours = class.provisioner == LOCAL_PATH && self.local_root.is_some();
        if annotation(&claim.metadata, STORAGE_PROVISIONER) != Some(class.provisioner.as_str()) {
            let p = class.provisioner.clone();
            self.client
                .modify::<PersistentVolumeClaim>(key.ns(), &key.name, Part::Main, |c| {
                    annotate(&mut c.metadata, STORAGE_PROVISIONER, &p)
                        | annotate(&mut c.metadata, BETA_STORAGE_PROVISIONER, &p)
                })
                .await?;
            if !ours {
                self.client
                    .event(claim, EventType::Normal, "ExternalProvisioning", &format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."))
                    .await;
            }
            return Ok(Action::await_change());
        }
        if !ours {
            return Ok(Action::await_change());
        }
        let fail = |message: String| async move {
            self.client
                .event(claim, EventType::Warning, "ProvisioningFailed", &message)
                .await;
            Ok::<Action, ApiError>(Action::await_change())
        };
        let Some(node) = node else {
            return fail(format!("failed to provision volume with StorageClass \"{}\": configuration error, no node was specified: local-path volumes need volumeBindingMode WaitForFirstConsumer", class.metadata.name.as_deref().unwrap_or_default())).await;
        };
        let spec = claim.spec.clone().unwrap_or_default();
        let modes = spec.access_modes.clone().unwrap_or_default();
        if let Some(m) = modes
            .iter()
            .find(|m| !matches!(m.as_str(), "ReadWriteOnce" | "ReadWriteOncePod"))
        {
            return fail(format!("failed to provision volume with StorageClass \"{}\": local-path volumes support only ReadWriteOnce and ReadWriteOncePod access modes, not {m}", class.metadata.name.as_deref().unwrap_or_default())).await;
        }
        if spec.volume_mode.as_deref() == Some("Block") {
            return fail(
                "failed to provision volume: local-path volumes support only volumeMode Filesystem"
                    .into(),
            )
            .await;
        }
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        let root = self.local_root.clone().unwrap_or_default();
        let path = format!(
            "{}/{name}_{}_{}",
            root.trim_end_matches('/'),
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        );
        let hostname = self
            .nodes
            .get(&ObjectRef::new(None, &node))
            .and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()?
                    .get("kubernetes.io/hostname")
                    .cloned()
            })
            .unwrap_or_else(|| node.clone());
        let storage = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned()
            .unwrap_or_else(|| Quantity("0".into()));
        self.client
            .event(
                claim,
                EventType::Normal,
                "Provisioning",
                &format!(
                    "External provisioner is provisioning volume for claim \"{}/{}\"",
                    key.namespace.as_deref().unwrap_or_default(),
                    key.name
                ),
            )
            .await;
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(NODE_LABEL.to_string(), node.clone())].into()),
                annotations: Some(BTreeMap::from([(
                    PROVISIONED_BY.to_string(),
                    LOCAL_PATH.to_string(),
                )])),
                finalizers: Some(vec![CLEANUP_FINALIZER.into()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), storage)].into()),
                access_modes: Some(modes),
                persistent_volume_reclaim_policy: Some(
                    class
                        .reclaim_policy
                        .clone()
                        .unwrap_or_else(|| "Delete".into()),
                ),
                storage_class_name: class.metadata.name.clone(),
                volume_mode: Some("Filesystem".into()),
                mount_options: class.mount_options.clone(),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: key.namespace.clone(),
                    name: Some(key.name.clone()),
                    uid: Some(uid),
                    ..Default::default()
                }),
                host_path: Some(HostPathVolumeSource {
                    path,
                    type_: Some("DirectoryOrCreate".into()),
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![hostname]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.client.create(None, &pv).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return fail(format!("failed to provision volume: {e}")).await,
        }
        self.client
            .event(
                claim,
                EventType::Normal,
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {name}"),
            )
            .await;
        tracing::info!(claim = %key, volume = %name, %node, "provisioned");
        Ok(Action::await_change())
    }
}

/// Runs the volume controller alone (no provisioner), for an API server without the
/// controller manager, as tests start one: deleted claims and volumes still lose their
/// protection finalizers.
pub fn start_standalone(reg: strake_apimachinery::Registry) {
    let client = Client::new(reg.clone(), NAME);
    let mut claims = Reflector::<PersistentVolumeClaim>::new(reg.clone());
    let mut volumes = Reflector::<PersistentVolume>::new(reg.clone());
    let mut classes = Reflector::<StorageClass>::new(reg.clone());
    let mut pods = Reflector::<Pod>::new(reg.clone());
    let nodes = Reflector::<Node>::new(reg);
    let vc = Volumes::new(
        &client,
        &mut claims,
        &mut volumes,
        &mut classes,
        &mut pods,
        &nodes.reader(),
        None,
    );
    tokio::spawn(claims.run());
    tokio::spawn(volumes.run());
    tokio::spawn(classes.run());
    tokio::spawn(pods.run());
    tokio::spawn(nodes.run());
    tokio::spawn(vc.run(2));
}
