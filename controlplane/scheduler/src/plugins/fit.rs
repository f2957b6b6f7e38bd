//! NodeResourcesFit (requests against allocatable, pods counted, extended resources too),
//! NodePorts, and the resource scores: LeastAllocated and BalancedAllocation. Pods nominated
//! to a node by a preemption hold their room there against pods of lower priority.

use crate::cluster::{Cluster, NodeInfo};
use crate::framework::{Filtered, MAX_SCORE, Rejection};
use crate::podinfo::PodInfo;
use crate::resources::Resources;

/// What is held on the node for `pod`: placed pods plus nominated ones that outrank it.
fn held(pod: &PodInfo, n: &NodeInfo, cluster: &Cluster) -> (Resources, i64) {
    let mut used = n.requested.clone();
    let mut count = n.pods.len() as i64;
    for p in cluster.nominated_to(&n.name, pod.priority, &pod.key) {
        used.add(&p.request);
        count += 1;
    }
    (used, count)
}

/// Every resource the node is short of, as upstream words it.
pub fn resources(pod: &PodInfo, n: &NodeInfo, cluster: &Cluster) -> Filtered {
    let (used, count) = held(pod, n, cluster);
    let mut reasons = Vec::new();
    if count + 1 > n.max_pods {
        reasons.push("Too many pods".to_string());
    }
    let want = &pod.request;
    let a = &n.allocatable;
    if want.cpu > 0 && used.cpu + want.cpu > a.cpu {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > a.memory {
        reasons.push("Insufficient memory".into());
    }
    if want.ephemeral > 0 && used.ephemeral + want.ephemeral > a.ephemeral {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, v) in &want.scalar {
        if *v > 0
            && used.scalar.get(name).copied().unwrap_or(0) + v
                > a.scalar.get(name).copied().unwrap_or(0)
        {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Rejection {
            reasons,
            unresolvable: false,
        })
    }
}

/// Host ports the pod binds must be free on the node.
pub fn ports(pod: &PodInfo, n: &NodeInfo, cluster: &Cluster) -> Filtered {
    if pod.ports.is_empty() {
        return Ok(());
    }
    let nominated = cluster
        .nominated_to(&n.name, pod.priority, &pod.key)
        .flat_map(|p| p.ports.iter());
    let mut taken = n.ports.iter().chain(nominated);
    if taken.any(|t| pod.ports.iter().any(|p| p.conflicts(t))) {
        return Err(Rejection::resolvable(
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    Ok(())
}

/// cpu and memory after placing the pod (counting upstream's defaults for pods without
/// requests), with what the node offers.
fn after(pod: &PodInfo, n: &NodeInfo) -> [(i64, i64); 2] {
    [
        (n.non_zero.0 + pod.non_zero.0, n.allocatable.cpu),
        (n.non_zero.1 + pod.non_zero.1, n.allocatable.memory),
    ]
}

/// LeastAllocated: the mean free share of cpu and memory after placement, 0..=100.
pub fn least_allocated(pod: &PodInfo, n: &NodeInfo) -> i64 {
    let free = |(used, cap): (i64, i64)| {
        if cap <= 0 || used > cap {
            0
        } else {
            (cap - used) * MAX_SCORE / cap
        }
    };
    let [cpu, mem] = after(pod, n);
    (free(cpu) + free(mem)) / 2
}

/// BalancedAllocation: nodes whose cpu and memory shares stay close score higher, 0..=100.
pub fn balanced(pod: &PodInfo, n: &NodeInfo) -> i64 {
    let share = |(used, cap): (i64, i64)| {
        if cap <= 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    let [cpu, mem] = after(pod, n);
    // The standard deviation of two shares is half their difference.
    let std = (share(cpu) - share(mem)).abs() / 2.0;
    ((1.0 - std) * MAX_SCORE as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    #[test]
    fn resources_name_every_shortfall() {
        let mut big = node("a", "1", "1Gi");
        big["status"]["allocatable"]["example.com/gpu"] = json!("1");
        let c = cluster(&[big], &[on(sized("x", "600m", "512Mi"), "a")]);
        let n = c.node("a").unwrap();
        let p = pod_info(&sized("p", "500m", "768Mi"));
        assert_eq!(
            resources(&p, n, &c),
            Err(Rejection {
                reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()],
                unresolvable: false
            })
        );
        let gpu = pod_info(&pod(
            "g",
            json!({"containers": [{"name": "c", "resources": {"limits": {"example.com/gpu": "2"}}}]}),
        ));
        assert_eq!(
            resources(&gpu, n, &c).unwrap_err().reasons,
            vec!["Insufficient example.com/gpu".to_string()]
        );
        assert_eq!(
            resources(&pod_info(&sized("s", "400m", "256Mi")), n, &c),
            Ok(())
        );
    }

    #[test]
    fn pod_count_is_a_resource() {
        let mut small = node("a", "4", "8Gi");
        small["status"]["allocatable"]["pods"] = json!("1");
        let c = cluster(&[small], &[on(pod("x", json!({})), "a")]);
        assert_eq!(
            resources(&pod_info(&pod("p", json!({}))), c.node("a").unwrap(), &c)
                .unwrap_err()
                .reasons,
            vec!["Too many pods".to_string()]
        );
    }

    #[test]
    fn nominated_pods_hold_room_against_lower_priority() {
        let mut nominated = sized("n", "800m", "1Mi");
        nominated["spec"]["priority"] = json!(100);
        nominated["status"] = json!({"nominatedNodeName": "a"});
        let c = cluster(&[node("a", "1", "1Gi")], &[nominated]);
        let n = c.node("a").unwrap();
        let low = pod_info(&sized("low", "500m", "1Mi"));
        assert!(resources(&low, n, &c).is_err());
        let mut high = sized("high", "500m", "1Mi");
        high["spec"]["priority"] = json!(1000);
        assert_eq!(resources(&pod_info(&high), n, &c), Ok(()));
    }

    #[test]
    fn host_ports_collide_on_protocol_port_and_address() {
        let web = |name: &str, ip: &str, proto: &str| {
            pod(
                name,
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip, "protocol": proto}]}]}),
            )
        };
        let c = cluster(
            &[node("a", "4", "8Gi")],
            &[on(web("x", "10.0.0.1", "TCP"), "a")],
        );
        let n = c.node("a").unwrap();
        assert!(ports(&pod_info(&web("p", "", "TCP")), n, &c).is_err());
        assert!(ports(&pod_info(&web("p", "10.0.0.1", "TCP")), n, &c).is_err());
        assert_eq!(
            ports(&pod_info(&web("p", "10.0.0.2", "TCP")), n, &c),
            Ok(())
        );
        assert_eq!(
            ports(&pod_info(&web("p", "10.0.0.1", "UDP")), n, &c),
            Ok(())
        );
    }

    #[test]
    fn scores_prefer_free_and_balanced_nodes() {
        let c = cluster(
            &[node("busy", "4", "8Gi"), node("idle", "4", "8Gi")],
            &[on(sized("x", "3", "1Gi"), "busy")],
        );
        let p = pod_info(&sized("p", "500m", "1Gi"));
        let (busy, idle) = (c.node("busy").unwrap(), c.node("idle").unwrap());
        assert!(least_allocated(&p, idle) > least_allocated(&p, busy));
        assert!(balanced(&p, idle) > balanced(&p, busy));
        assert_eq!(least_allocated(&p, idle), 87);
    }
}
