//! Pod placement as a pure function: (pod, nodes, pods already placed) -> a node or a reason.
//! Filters (readiness, cordon, taints, nodeSelector, cpu/memory/pod-count fit), then scores by
//! least requested resources. No I/O here: the control plane feeds it views and writes bindings.

mod quantity;

pub use quantity::{QuantityError, parse_bytes, parse_cpu_millis};

use std::borrow::Borrow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

/// The outcome of scheduling one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// No node fits; the message follows the upstream shape "0/N nodes are available: ...".
    Unschedulable(String),
}

/// What a pod asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub cpu_millis: i64,
    pub memory: i64,
}

/// Sum of container requests (init containers: the max of them, as upstream does).
pub fn pod_request(pod: &Pod) -> Request {
    let Some(spec) = &pod.spec else {
        return Request::default();
    };
    let get = |c: &k8s_openapi::api::core::v1::Container| {
        let req = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()));
        let cpu = req
            .and_then(|r| r.get("cpu"))
            .and_then(|q| parse_cpu_millis(&q.0).ok())
            .unwrap_or(0);
        let mem = req
            .and_then(|r| r.get("memory"))
            .and_then(|q| parse_bytes(&q.0).ok())
            .unwrap_or(0);
        (cpu, mem)
    };
    let (mut cpu, mut mem) = spec
        .containers
        .iter()
        .map(get)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for ic in spec.init_containers.iter().flatten() {
        let (c, m) = get(ic);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    Request {
        cpu_millis: cpu,
        memory: mem,
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| toleration_matches(t, taint))
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

struct Allocatable {
    cpu_millis: i64,
    memory: i64,
    pods: i64,
}

fn allocatable(node: &Node) -> Allocatable {
    let status = node.status.as_ref();
    let a = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    Allocatable {
        cpu_millis: a
            .and_then(|a| a.get("cpu"))
            .and_then(|q| parse_cpu_millis(&q.0).ok())
            .unwrap_or(0),
        memory: a
            .and_then(|a| a.get("memory"))
            .and_then(|q| parse_bytes(&q.0).ok())
            .unwrap_or(0),
        pods: a
            .and_then(|a| a.get("pods"))
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(110),
    }
}

/// Chooses a node for `pod`. `placed` are the pods already bound (to any node) and not finished.
pub fn schedule<N: Borrow<Node>, P: Borrow<Pod>>(pod: &Pod, nodes: &[N], placed: &[P]) -> Decision {
    let want = pod_request(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let selector: BTreeMap<String, String> = spec.node_selector.clone().unwrap_or_default();
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best: Option<(i64, String)> = None;
    for node in nodes {
        let node: &Node = node.borrow();
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut fail = |r: &'static str| *reasons.entry(r).or_default() += 1;
        if node.metadata.deletion_timestamp.is_some() || !is_ready(node) {
            fail("node(s) were not ready");
            continue;
        }
        if node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            fail("node(s) were unschedulable");
            continue;
        }
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints.iter().any(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&tolerations, t)
        }) {
            fail("node(s) had untolerated taint");
            continue;
        }
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            fail("node(s) didn't match Pod's node affinity/selector");
            continue;
        }
        let alloc = allocatable(node);
        let on_node: Vec<&Pod> = placed
            .iter()
            .map(Borrow::borrow)
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .collect();
        let used = on_node
            .iter()
            .map(|p| pod_request(p))
            .fold(Request::default(), |a, b| Request {
                cpu_millis: a.cpu_millis + b.cpu_millis,
                memory: a.memory + b.memory,
            });
        if on_node.len() as i64 + 1 > alloc.pods {
            fail("Too many pods");
            continue;
        }
        if used.cpu_millis + want.cpu_millis > alloc.cpu_millis {
            fail("Insufficient cpu");
            continue;
        }
        if used.memory + want.memory > alloc.memory {
            fail("Insufficient memory");
            continue;
        }
        // Least-requested score, 0..=200: more free cpu and memory after placement is better.
        let free = |used: i64, cap: i64| {
            if cap <= 0 {
                0
            } else {
                (cap - used) * 100 / cap
            }
        };
        let score = free(used.cpu_millis + want.cpu_millis, alloc.cpu_millis)
            + free(used.memory + want.memory, alloc.memory);
        if best
            .as_ref()
            .is_none_or(|(s, n)| score > *s || (score == *s && name < *n))
        {
            best = Some((score, name));
        }
    }
    match best {
        Some((_, name)) => Decision::Bind(name),
        None => {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let tail = if detail.is_empty() {
                String::new()
            } else {
                format!(" {}.", detail.join(", "))
            };
            Decision::Unschedulable(format!("0/{} nodes are available:{tail}", nodes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, mem: &str, ready: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"disk": "ssd"}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": mem, "pods": "3"},
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    fn pod(cpu: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn picks_least_loaded_ready_node() {
        let nodes = [
            node("a", "2", "1Gi", true),
            node("b", "2", "1Gi", true),
            node("c", "8", "8Gi", false),
        ];
        let placed = [pod("1500m", Some("a"))];
        assert_eq!(
            schedule(&pod("250m", None), &nodes, &placed),
            Decision::Bind("b".into())
        );
    }

    #[test]
    fn explains_why_nothing_fits() {
        let nodes = [node("a", "1", "1Gi", true), node("b", "1", "1Gi", false)];
        match schedule(&pod("2", None), &nodes, &[] as &[Pod]) {
            Decision::Unschedulable(m) => {
                assert_eq!(
                    m,
                    "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were not ready."
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn respects_pod_count_taints_and_selector() {
        let nodes = [node("a", "8", "8Gi", true)];
        let placed = [
            pod("0", Some("a")),
            pod("0", Some("a")),
            pod("0", Some("a")),
        ];
        assert!(
            matches!(schedule(&pod("0", None), &nodes, &placed), Decision::Unschedulable(m) if m.contains("Too many pods"))
        );
        let mut tainted = node("t", "8", "8Gi", true);
        tainted.spec = Some(
            serde_json::from_value(
                json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
            )
            .unwrap(),
        );
        assert!(matches!(
            schedule(
                &pod("0", None),
                std::slice::from_ref(&tainted),
                &[] as &[Pod]
            ),
            Decision::Unschedulable(_)
        ));
        let mut tolerant = pod("0", None);
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![
            serde_json::from_value(
                json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
            )
            .unwrap(),
        ]);
        assert_eq!(
            schedule(&tolerant, &[tainted], &[] as &[Pod]),
            Decision::Bind("t".into())
        );
        let mut picky = pod("0", None);
        picky.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "hdd".to_string())].into());
        assert!(
            matches!(schedule(&picky, &nodes, &[] as &[Pod]), Decision::Unschedulable(m) if m.contains("selector"))
        );
    }
}
