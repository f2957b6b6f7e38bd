//! Pod placement as pure functions over a snapshot of the cluster, in upstream's framework
//! shape: a `Cluster` kept up to date incrementally (nodes with their placed pods, summed
//! requests and ports, nominated pods, budgets), filter and score plugins
//! (`plugins::{node, fit, interpod, spread, images, volumes}`), and preemption. No I/O here: the
//! control plane feeds the snapshot from its caches and writes bindings and evictions.

pub mod cluster;
pub mod framework;
pub mod labels;
pub mod plugins;
pub mod podinfo;
pub mod preemption;
mod quantity;
pub mod resources;
pub mod volumes;

pub use cluster::{Budget, Cluster, NodeInfo};
pub use framework::{Decision, Scheduler};
pub use plugins::node::toleration_matches;
pub use podinfo::PodInfo;
pub use quantity::{QuantityError, parse_bytes, parse_cpu_millis};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::plugins::testing::*;
    use crate::{Cluster, Decision, PodInfo, Scheduler};
    use serde_json::json;

    fn ready(name: &str, cpu: &str, mem: &str, ready: bool) -> serde_json::Value {
        let mut n = node(name, cpu, mem);
        if !ready {
            n["status"]["conditions"][0]["status"] = json!("False");
        }
        n
    }

    #[test]
    fn picks_the_least_loaded_ready_node() {
        let c = cluster(
            &[
                ready("a", "2", "1Gi", true),
                ready("b", "2", "1Gi", true),
                ready("c", "8", "8Gi", false),
            ],
            &[on(sized("x", "1500m", "64Mi"), "a")],
        );
        let p = pod_info(&sized("p", "250m", "64Mi"));
        assert_eq!(
            Scheduler::new().schedule(&p, &c),
            Decision::Bind("b".into())
        );
    }

    #[test]
    fn explains_why_nothing_fits() {
        let c = cluster(
            &[ready("a", "1", "1Gi", true), ready("b", "1", "1Gi", false)],
            &[],
        );
        let mut p = sized("p", "2", "64Mi");
        p["spec"]["preemptionPolicy"] = json!("Never");
        assert_eq!(
            Scheduler::new().schedule(&pod_info(&p), &c),
            Decision::Unschedulable(
                "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
                    .into()
            )
        );
    }

    #[test]
    fn large_clusters_score_a_share_of_the_nodes_from_a_rotating_start() {
        let nodes: Vec<_> = (0..1000)
            .map(|i| node(&format!("n{i:04}"), "4", "8Gi"))
            .collect();
        let mut c = cluster(&nodes, &[]);
        let mut s = Scheduler::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..400 {
            let p = PodInfo::new(Arc::new(as_pod(&sized(&format!("p{i}"), "100m", "100Mi"))));
            let Decision::Bind(n) = s.schedule(&p, &c) else {
                panic!("unschedulable")
            };
            c.assume(&p, &n);
            seen.insert(n);
        }
        // 1,000 nodes score 420 (42%) a pod; the least allocated wins, so pods spread.
        assert_eq!(crate::framework::feasible_wanted(1000, None), 420);
        assert_eq!(crate::framework::feasible_wanted(5000, None), 500);
        assert_eq!(crate::framework::feasible_wanted(50, None), 50);
        assert!(seen.len() >= 390, "{} distinct nodes", seen.len());
    }

    #[test]
    fn assumed_pods_hold_room_until_forgotten() {
        let mut c: Cluster = cluster(&[node("a", "1", "1Gi")], &[]);
        let p = pod_info(&sized("p", "1", "64Mi"));
        c.assume(&p, "a");
        assert!(c.is_assumed("default/p"));
        // The source still shows the pod unbound: the assumption stands.
        c.set_pod(Arc::new(as_pod(&sized("p", "1", "64Mi"))));
        assert_eq!(c.node("a").unwrap().requested.cpu, 1000);
        let q = pod_info(&sized("q", "1", "64Mi"));
        assert!(matches!(
            Scheduler::new().schedule(&q, &c),
            Decision::Unschedulable(_)
        ));
        c.forget("default/p");
        assert_eq!(c.node("a").unwrap().requested.cpu, 0);
        assert_eq!(
            Scheduler::new().schedule(&q, &c),
            Decision::Bind("a".into())
        );
    }
}
