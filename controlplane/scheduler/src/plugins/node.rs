//! What a node alone decides: NodeUnschedulable, NodeName, TaintToleration (NoSchedule and
//! NoExecute refuse, PreferNoSchedule scores) and NodeAffinity (nodeSelector and required
//! terms refuse, preferred terms score).

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::cluster::NodeInfo;
use crate::framework::{Filtered, Rejection};
use crate::labels::terms_match;
use crate::podinfo::PodInfo;

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Whether one toleration tolerates `taint` (key, value by operator, effect), as upstream's
/// `ToleratesTaint`; an empty key with `Exists` tolerates every taint.
pub fn toleration_matches(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = t
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == taint.key);
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok
        && key_ok
        && value_ok
        && (t.key.as_deref().is_some_and(|k| !k.is_empty())
            || t.operator.as_deref() == Some("Exists"))
}

/// A cordoned node takes only pods that tolerate `node.kubernetes.io/unschedulable`.
pub fn unschedulable(pod: &PodInfo, n: &NodeInfo) -> Filtered {
    if n.deleting {
        return Err(Rejection::unresolvable("node(s) were being deleted"));
    }
    if !n.unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerations(pod)
        .iter()
        .any(|t| toleration_matches(t, &taint))
    {
        return Ok(());
    }
    Err(Rejection::unresolvable("node(s) were unschedulable"))
}

/// `spec.nodeName` set on a pending pod (the pod asks for that node).
pub fn node_name(pod: &PodInfo, n: &NodeInfo) -> Filtered {
    match pod.node.as_deref() {
        Some(want) if want != n.name => Err(Rejection::unresolvable(
            "node(s) didn't match the requested node name",
        )),
        _ => Ok(()),
    }
}

/// The first NoSchedule or NoExecute taint the pod does not tolerate refuses the node.
pub fn taints(pod: &PodInfo, n: &NodeInfo) -> Filtered {
    let tols = tolerations(pod);
    match n.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !tols.iter().any(|tol| toleration_matches(tol, t))
    }) {
        None => Ok(()),
        Some(t) => Err(Rejection::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        ))),
    }
}

/// PreferNoSchedule taints the pod does not tolerate (fewer is better).
pub fn intolerable_prefer_no_schedule(pod: &PodInfo, n: &NodeInfo) -> i64 {
    let tols: Vec<&Toleration> = tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    n.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tols.iter().any(|tol| toleration_matches(tol, t)))
        .count() as i64
}

/// nodeSelector and the required node affinity terms.
pub fn matches_node_selector(pod: &PodInfo, n: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| n.labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|r| terms_match(&r.node_selector_terms, &n.name, &n.labels))
}

pub fn affinity(pod: &PodInfo, n: &NodeInfo) -> Filtered {
    if matches_node_selector(pod, n) {
        Ok(())
    } else {
        Err(Rejection::unresolvable(
            "node(s) didn't match Pod's node affinity/selector",
        ))
    }
}

/// The summed weights of the preferred node affinity terms the node matches.
pub fn preferred_affinity(pod: &PodInfo, n: &NodeInfo) -> i64 {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| crate::labels::term_matches(&p.preference, &n.name, &n.labels))
        .map(|p| p.weight as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    #[test]
    fn cordoned_nodes_refuse_unless_tolerated() {
        let mut n = node("a", "4", "8Gi");
        n["spec"]["unschedulable"] = json!(true);
        let n = info(&n);
        let p = pod_info(&pod("p", json!({})));
        assert_eq!(
            unschedulable(&p, &n),
            Err(Rejection::unresolvable("node(s) were unschedulable"))
        );
        let tol = pod_info(&pod(
            "p",
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        ));
        assert_eq!(unschedulable(&tol, &n), Ok(()));
    }

    #[test]
    fn taints_refuse_and_prefer() {
        let mut n = node("a", "4", "8Gi");
        n["spec"]["taints"] = json!([
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"},
        ]);
        let n = info(&n);
        let plain = pod_info(&pod("p", json!({})));
        assert_eq!(
            taints(&plain, &n),
            Err(Rejection::unresolvable(
                "node(s) had untolerated taint {dedicated: db}"
            ))
        );
        let tolerant = pod_info(&pod(
            "p",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}),
        ));
        assert_eq!(taints(&tolerant, &n), Ok(()));
        assert_eq!(intolerable_prefer_no_schedule(&tolerant, &n), 1);
        let all = pod_info(&pod("p", json!({"tolerations": [{"operator": "Exists"}]})));
        assert_eq!(intolerable_prefer_no_schedule(&all, &n), 0);
        // A node that is not ready carries the implied not-ready taint.
        let mut down = node("b", "4", "8Gi");
        down["status"]["conditions"][0]["status"] = json!("False");
        assert_eq!(
            taints(&plain, &info(&down)),
            Err(Rejection::unresolvable(
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
            ))
        );
    }

    #[test]
    fn node_affinity_required_and_preferred() {
        let mut n = node("a", "4", "8Gi");
        n["metadata"]["labels"] = json!({"zone": "z1", "disk": "ssd"});
        let n = info(&n);
        let sel = pod_info(&pod("p", json!({"nodeSelector": {"disk": "hdd"}})));
        assert!(affinity(&sel, &n).unwrap_err().unresolvable);
        let req = pod_info(&pod(
            "p",
            json!({"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]},
                    {"matchExpressions": [{"key": "disk", "operator": "Exists"}]},
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}},
                    {"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z9"]}]}},
                ],
            }}}),
        ));
        assert_eq!(affinity(&req, &n), Ok(()));
        assert_eq!(preferred_affinity(&req, &n), 5);
    }

    #[test]
    fn node_name_is_honoured() {
        let n = info(&node("a", "4", "8Gi"));
        let mut p = pod("p", json!({}));
        p["spec"]["nodeName"] = json!("b");
        assert!(node_name(&pod_info(&p), &n).is_err());
    }
}
