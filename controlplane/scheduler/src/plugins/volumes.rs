//! VolumeBinding and VolumeZone: a pod's claims must exist and not be going away; a bound
//! claim's volume must admit the node (node affinity and zone labels); an unbound claim of a
//! WaitForFirstConsumer class needs, on the node, a free volume that satisfies it or a class
//! that provisions there. An unbound claim of an Immediate class waits for its binder.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::cluster::{Cluster, NodeInfo};
use crate::framework::{Filtered, Rejection};
use crate::podinfo::PodInfo;
use crate::volumes;

pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const NO_ZONE: &str = "node(s) had no available volume zone";
pub const PV_MISSING: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
pub const RWOP_IN_USE: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

enum Need {
    Bound(Arc<PersistentVolume>),
    Delayed {
        claim: Arc<PersistentVolumeClaim>,
        class: Option<Arc<StorageClass>>,
    },
}

/// What PreFilter found of the pod's claims.
#[derive(Default)]
pub struct State {
    needs: Vec<Need>,
    /// A reason that rejects every node (a claim missing, going, or waiting for its binder).
    refused: Option<String>,
}

impl State {
    pub fn new(pod: &PodInfo, cluster: &Cluster) -> Self {
        let mut st = Self::default();
        let storage = &cluster.storage;
        for name in &pod.claims {
            let Some(claim) = storage.claim(&format!("{}/{name}", pod.namespace)) else {
                st.refused = Some(format!("persistentvolumeclaim \"{name}\" not found"));
                return st;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                st.refused = Some(format!("persistentvolumeclaim \"{name}\" is being deleted"));
                return st;
            }
            // VolumeRestrictions: a ReadWriteOncePod claim serves one pod at a time.
            let once_pod = claim
                .spec
                .as_ref()
                .and_then(|s| s.access_modes.as_ref())
                .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"));
            if once_pod
                && cluster.placed_pods().any(|p| {
                    p.key != pod.key && p.namespace == pod.namespace && p.claims.contains(name)
                })
            {
                st.refused = Some(RWOP_IN_USE.into());
                return st;
            }
            let bound = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            if let Some(volume) = bound {
                match storage.volume(volume) {
                    Some(v) => st.needs.push(Need::Bound(v.clone())),
                    None => {
                        st.refused = Some(PV_MISSING.into());
                        return st;
                    }
                }
                continue;
            }
            let class = storage.class(volumes::claim_class(claim)).cloned();
            if !volumes::delayed(class.as_deref()) {
                st.refused = Some(UNBOUND_IMMEDIATE.into());
                return st;
            }
            st.needs.push(Need::Delayed {
                claim: claim.clone(),
                class,
            });
        }
        st
    }

    pub fn filter(&self, n: &NodeInfo, cluster: &Cluster) -> Filtered {
        if let Some(r) = &self.refused {
            return Err(Rejection::unresolvable(r.clone()));
        }
        for need in &self.needs {
            match need {
                Need::Bound(v) => {
                    if !volumes::node_allows(v, &n.name, &n.labels) {
                        return Err(Rejection::unresolvable(NODE_CONFLICT));
                    }
                    if !volumes::zone_allows(v, &n.labels) {
                        return Err(Rejection::unresolvable(NO_ZONE));
                    }
                }
                Need::Delayed { claim, class } => {
                    let on_node = Some((n.name.as_str(), &n.labels));
                    let static_fit =
                        volumes::best_match(claim, cluster.storage.volumes(), on_node).is_some();
                    let dynamic = class.as_deref().is_some_and(|c| {
                        volumes::provisions(c) && volumes::class_allows(c, &n.labels)
                    });
                    if !static_fit && !dynamic {
                        return Err(Rejection::unresolvable(BIND_CONFLICT));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use crate::volumes::NO_PROVISIONER;
    use crate::{Decision, Scheduler};
    use serde_json::json;

    const NOT_HELPFUL: &str =
        " preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";

    fn with_claim(name: &str, claim: &str) -> serde_json::Value {
        pod(
            name,
            json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}),
        )
    }

    fn storage(c: &mut Cluster, objects: serde_json::Value) {
        for o in objects["claims"].as_array().into_iter().flatten() {
            c.storage
                .set_claim(Arc::new(serde_json::from_value(o.clone()).unwrap()));
        }
        for o in objects["volumes"].as_array().into_iter().flatten() {
            c.storage
                .set_volume(Arc::new(serde_json::from_value(o.clone()).unwrap()));
        }
        for o in objects["classes"].as_array().into_iter().flatten() {
            c.storage
                .set_class(Arc::new(serde_json::from_value(o.clone()).unwrap()));
        }
    }

    fn claim(name: &str, class: &str, volume: Option<&str>) -> serde_json::Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("c-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}}, "volumeName": volume},
        })
    }

    fn local_volume(name: &str, node: &str, class: &str) -> serde_json::Value {
        json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": class,
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"},
        })
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> serde_json::Value {
        json!({"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode})
    }

    fn decide(c: &Cluster, p: &serde_json::Value) -> Decision {
        Scheduler::new().schedule(&pod_info(p), c)
    }

    #[test]
    fn a_read_write_once_pod_claim_serves_one_pod() {
        let mut c = cluster(
            &[node("a", "2", "2Gi"), node("b", "2", "2Gi")],
            &[on(with_claim("first", "solo"), "a")],
        );
        let mut solo = claim("solo", "manual", Some("pv"));
        solo["spec"]["accessModes"] = json!(["ReadWriteOncePod"]);
        storage(
            &mut c,
            json!({"claims": [solo], "volumes": [local_volume("pv", "a", "manual")]}),
        );
        let Decision::Unschedulable(m) = decide(&c, &with_claim("second", "solo")) else {
            panic!("a second pod on a ReadWriteOncePod claim must wait");
        };
        assert!(m.contains(RWOP_IN_USE), "{m}");
        let mut shared = claim("shared", "manual", Some("pv2"));
        shared["spec"]["accessModes"] = json!(["ReadWriteOnce"]);
        storage(
            &mut c,
            json!({"claims": [shared], "volumes": [local_volume("pv2", "a", "manual")]}),
        );
        let mut c2 = cluster(
            &[node("a", "2", "2Gi")],
            &[on(with_claim("first", "shared"), "a")],
        );
        c2.storage = std::mem::take(&mut c.storage);
        assert_eq!(
            decide(&c2, &with_claim("second", "shared")),
            Decision::Bind("a".into())
        );
    }

    #[test]
    fn a_bound_claim_pins_the_pod_to_its_volume_node() {
        let mut c = cluster(
            &[
                node("a", "2", "2Gi"),
                node("b", "2", "2Gi"),
                node("c", "2", "2Gi"),
            ],
            &[],
        );
        storage(
            &mut c,
            json!({"claims": [claim("data", "manual", Some("pv-b"))],
                   "volumes": [local_volume("pv-b", "b", "manual")]}),
        );
        assert_eq!(
            decide(&c, &with_claim("p", "data")),
            Decision::Bind("b".into())
        );
    }

    #[test]
    fn missing_going_and_immediate_unbound_claims_refuse_every_node() {
        let mut c = cluster(&[node("a", "2", "2Gi"), node("b", "2", "2Gi")], &[]);
        let Decision::Unschedulable(m) = decide(&c, &with_claim("p", "nope")) else {
            panic!("a missing claim must not schedule");
        };
        assert_eq!(
            m,
            format!(
                "0/2 nodes are available: 2 persistentvolumeclaim \"nope\" not found.{NOT_HELPFUL}"
            )
        );
        storage(
            &mut c,
            json!({"claims": [claim("now", "fast", None)],
                   "classes": [class("fast", "example.com/disk", "Immediate")]}),
        );
        let Decision::Unschedulable(m) = decide(&c, &with_claim("p", "now")) else {
            panic!("an unbound immediate claim must wait");
        };
        assert!(m.contains(UNBOUND_IMMEDIATE), "{m}");
        let mut going: serde_json::Value = claim("going", "fast", Some("x"));
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        storage(&mut c, json!({"claims": [going]}));
        let Decision::Unschedulable(m) = decide(&c, &with_claim("p", "going")) else {
            panic!("a claim being deleted must not schedule");
        };
        assert!(m.contains("is being deleted"), "{m}");
        storage(
            &mut c,
            json!({"claims": [claim("lost", "fast", Some("gone"))]}),
        );
        let Decision::Unschedulable(m) = decide(&c, &with_claim("p", "lost")) else {
            panic!("a claim bound to a missing volume must not schedule");
        };
        assert!(m.contains(PV_MISSING), "{m}");
    }

    #[test]
    fn a_delayed_claim_goes_where_a_free_volume_is_or_anywhere_its_class_provisions() {
        let mut c = cluster(&[node("a", "2", "2Gi"), node("b", "2", "2Gi")], &[]);
        storage(
            &mut c,
            json!({"claims": [claim("static", "local", None), claim("dyn", "lp", None)],
                   "volumes": [local_volume("pv-a", "a", "local")],
                   "classes": [class("local", NO_PROVISIONER, "WaitForFirstConsumer"),
                               class("lp", "strake.dev/local-path", "WaitForFirstConsumer")]}),
        );
        for _ in 0..4 {
            assert_eq!(
                decide(&c, &with_claim("p", "static")),
                Decision::Bind("a".into())
            );
        }
        let dynamic = pod_info(&with_claim("p", "dyn"));
        let st = State::new(&dynamic, &c);
        for n in c.nodes() {
            assert_eq!(
                st.filter(n, &c),
                Ok(()),
                "a provisioning class admits {}",
                n.name
            );
        }
        c.storage.remove_volume("pv-a");
        let Decision::Unschedulable(m) = decide(&c, &with_claim("p", "static")) else {
            panic!("no volume and no provisioner must not schedule");
        };
        assert_eq!(
            m,
            format!("0/2 nodes are available: 2 {BIND_CONFLICT}.{NOT_HELPFUL}")
        );
    }
}
