//! Storage as placement sees it: the cluster's claims, volumes and classes, and the pure rules
//! that match a claim to a volume. The volume binder controller uses the same rules, so the
//! node the scheduler picks for a pod is one where its claims can be bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::labels::{Selector, terms_match};
use crate::quantity::parse_bytes;

/// The annotation through which the scheduler tells the binder where a delayed claim's first
/// consumer goes.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner of classes whose volumes are only ever made by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The label naming the node that holds a local-path volume (what its agent watches).
pub const LOCAL_PATH_NODE_LABEL: &str = "strake.dev/local-path-node";
/// The finalizer a local-path volume's node lifts once it removed the volume's directory.
pub const LOCAL_PATH_CLEANUP: &str = "strake.dev/local-path-cleanup";

/// Claims (by `namespace/name`), volumes and classes (by name).
#[derive(Default)]
pub struct Storage {
    claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

impl Storage {
    pub fn set_claim(&mut self, c: Arc<PersistentVolumeClaim>) {
        let key = format!(
            "{}/{}",
            c.metadata.namespace.as_deref().unwrap_or_default(),
            name_of(&c.metadata)
        );
        self.claims.insert(key, c);
    }

    pub fn remove_claim(&mut self, key: &str) {
        self.claims.remove(key);
    }

    /// The claim `namespace/name`.
    pub fn claim(&self, key: &str) -> Option<&Arc<PersistentVolumeClaim>> {
        self.claims.get(key)
    }

    pub fn set_volume(&mut self, v: Arc<PersistentVolume>) {
        self.volumes.insert(name_of(&v.metadata), v);
    }

    pub fn remove_volume(&mut self, name: &str) {
        self.volumes.remove(name);
    }

    pub fn volume(&self, name: &str) -> Option<&Arc<PersistentVolume>> {
        self.volumes.get(name)
    }

    pub fn volumes(&self) -> impl Iterator<Item = &PersistentVolume> {
        self.volumes.values().map(|v| v.as_ref())
    }

    pub fn set_class(&mut self, c: Arc<StorageClass>) {
        self.classes.insert(name_of(&c.metadata), c);
    }

    pub fn remove_class(&mut self, name: &str) {
        self.classes.remove(name);
    }

    pub fn class(&self, name: &str) -> Option<&Arc<StorageClass>> {
        self.classes.get(name)
    }
}

/// The claim's class; "" asks for a volume without one.
pub fn claim_class(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

pub fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// Bytes of storage the claim requests (0 when unreadable: validation requires it).
pub fn requested(c: &PersistentVolumeClaim) -> i64 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_bytes(&q.0).ok())
        .unwrap_or(0)
}

/// Bytes of storage the volume holds.
pub fn capacity(v: &PersistentVolume) -> i64 {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_bytes(&q.0).ok())
        .unwrap_or(0)
}

/// Whether the volume's required node affinity admits the node.
pub fn node_allows(v: &PersistentVolume, node: &str, labels: &BTreeMap<String, String>) -> bool {
    v.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|r| terms_match(&r.node_selector_terms, node, labels))
}

/// The zone and region labels a volume may carry: a node must carry the same values (one of
/// several, written `a__b`).
const ZONE_LABELS: &[&str] = &[
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

pub fn zone_allows(v: &PersistentVolume, labels: &BTreeMap<String, String>) -> bool {
    let Some(vl) = v.metadata.labels.as_ref() else {
        return true;
    };
    ZONE_LABELS.iter().all(|k| match vl.get(*k) {
        None => true,
        Some(want) => labels
            .get(*k)
            .is_some_and(|have| want.split("__").any(|w| w == have)),
    })
}

/// Whether a class's allowedTopologies admit the node (no list admits every node).
pub fn class_allows(c: &StorageClass, labels: &BTreeMap<String, String>) -> bool {
    let terms = c.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|t| {
            t.match_label_expressions.iter().flatten().all(|e| {
                labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.iter().any(|x| x == v))
            })
        })
}

/// Whether binding waits for the claim's first consumer to be scheduled.
pub fn delayed(c: Option<&StorageClass>) -> bool {
    c.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// Whether the class makes volumes on demand.
pub fn provisions(c: &StorageClass) -> bool {
    !c.provisioner.is_empty() && c.provisioner != NO_PROVISIONER
}

fn claim_ref_names(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    v.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.namespace == c.metadata.namespace
                && r.name == c.metadata.name
                && (r.uid.is_none() || r.uid == c.metadata.uid)
        })
}

/// Whether the volume is free for this claim: not being deleted, and either unclaimed and
/// Available (or Pending) or reserved for this very claim.
pub fn free_for(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    if v.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let claimed = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
    if claimed {
        return claim_ref_names(v, c);
    }
    let phase = v.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, None | Some("Available" | "Pending"))
}

/// Whether the volume satisfies what the claim asks: class, volume mode, access modes,
/// size and label selector.
pub fn satisfies(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (v.spec.as_ref(), c.spec.as_ref()) else {
        return false;
    };
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    let modes = vs.access_modes.as_deref().unwrap_or_default();
    volume_class(v) == claim_class(c)
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && cs.access_modes.iter().flatten().all(|m| modes.contains(m))
        && capacity(v) >= requested(c)
        && cs
            .selector
            .as_ref()
            .is_none_or(|s| Selector::new(s).is_ok_and(|s| s.matches(&v.metadata.labels)))
}

/// The volume to bind the claim to, among `volumes`, on `node` when given: one reserved for
/// the claim first, else the smallest that satisfies it (upstream's findMatchingVolume).
pub fn best_match<'a>(
    c: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<(&str, &BTreeMap<String, String>)>,
) -> Option<&'a PersistentVolume> {
    let mut best: Option<&PersistentVolume> = None;
    for v in volumes {
        if !free_for(v, c) || !satisfies(v, c) {
            continue;
        }
        if let Some((name, labels)) = node
            && !(node_allows(v, name, labels) && zone_allows(v, labels))
        {
            continue;
        }
        if claim_ref_names(v, c) {
            return Some(v);
        }
        if best.is_none_or(|b| capacity(v) < capacity(b)) {
            best = Some(v);
        }
    }
    best
}

/// The claims a pod's volumes name: its persistentVolumeClaim volumes, and the claims of its
/// generic ephemeral volumes (`<pod>-<volume>`).
pub fn pod_claims(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral.as_ref().map(|_| format!("{name}-{}", v.name))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).expect("pv")
    }

    fn pvc(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).expect("pvc")
    }

    fn volume(name: &str, size: &str, class: &str) -> PersistentVolume {
        pv(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": class},
            "status": {"phase": "Available"},
        }))
    }

    fn claim(size: &str, class: &str) -> PersistentVolumeClaim {
        pvc(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}},
        }))
    }

    #[test]
    fn picks_the_smallest_volume_that_is_big_enough() {
        let vols = [
            volume("big", "10Gi", "manual"),
            volume("small", "1Gi", "manual"),
            volume("tiny", "100Mi", "manual"),
            volume("other", "2Gi", "fast"),
        ];
        let got = best_match(&claim("500Mi", "manual"), vols.iter(), None);
        assert_eq!(got.and_then(|v| v.metadata.name.as_deref()), Some("small"));
        assert!(best_match(&claim("20Gi", "manual"), vols.iter(), None).is_none());
    }

    #[test]
    fn a_volume_reserved_for_the_claim_wins_and_others_are_taken() {
        let mut mine = volume("mine", "5Gi", "manual");
        mine.spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "default", "name": "data"})).unwrap());
        let mut theirs = volume("theirs", "1Gi", "manual");
        theirs.spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "default", "name": "other"})).unwrap());
        let mut released = volume("released", "1Gi", "manual");
        released.status.as_mut().unwrap().phase = Some("Released".into());
        let vols = [volume("free", "2Gi", "manual"), mine, theirs, released];
        let got = best_match(&claim("1Gi", "manual"), vols.iter(), None);
        assert_eq!(got.and_then(|v| v.metadata.name.as_deref()), Some("mine"));
    }

    #[test]
    fn access_modes_selector_and_node_affinity_must_hold() {
        let mut rox = volume("rox", "1Gi", "");
        rox.spec.as_mut().unwrap().access_modes = Some(vec!["ReadOnlyMany".into()]);
        assert!(!satisfies(&rox, &claim("1Gi", "")));

        let mut c = claim("1Gi", "");
        c.spec.as_mut().unwrap().selector =
            Some(serde_json::from_value(json!({"matchLabels": {"tier": "db"}})).unwrap());
        let mut labelled = volume("l", "1Gi", "");
        assert!(!satisfies(&labelled, &c));
        labelled.metadata.labels = Some([("tier".to_string(), "db".to_string())].into());
        assert!(satisfies(&labelled, &c));

        let local = pv(json!({
            "metadata": {"name": "local", "labels": {"topology.kubernetes.io/zone": "a__b"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}},
        }));
        let n1: BTreeMap<String, String> = [
            ("kubernetes.io/hostname".to_string(), "n1".to_string()),
            ("topology.kubernetes.io/zone".into(), "b".into()),
        ]
        .into();
        let n2: BTreeMap<String, String> =
            [("kubernetes.io/hostname".to_string(), "n2".to_string())].into();
        assert!(node_allows(&local, "n1", &n1) && zone_allows(&local, &n1));
        assert!(!node_allows(&local, "n2", &n2));
        let plain = claim("1Gi", "");
        assert!(best_match(&plain, [&local], Some(("n1", &n1))).is_some());
        assert!(best_match(&plain, [&local], Some(("n2", &n2))).is_none());
    }

    #[test]
    fn pod_claims_include_generic_ephemeral_volumes() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "e", "emptyDir": {}},
            ]},
        }))
        .unwrap();
        assert_eq!(pod_claims(&pod), vec!["data", "web-scratch"]);
    }
}
