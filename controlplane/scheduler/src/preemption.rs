//! PostFilter: when no node fits a pod that may preempt, find on each node whose refusal
//! preemption could change the fewest, least important pods of lower priority whose removal
//! lets it fit (all lower pods removed, then as many as possible reprieved, most important
//! first and those a disruption budget protects before the others), and choose the node as
//! upstream does: fewest budget violations, then the lowest highest victim priority, the
//! lowest sum of priorities, the fewest victims.

use std::collections::HashSet;
use std::sync::Arc;

use crate::cluster::{Cluster, NodeInfo};
use crate::framework::{Cycle, Decision, Rejection};
use crate::podinfo::PodInfo;

struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    violations: usize,
}

impl Candidate {
    fn rank(&self) -> (usize, i32, i64, usize) {
        (
            self.violations,
            self.victims
                .iter()
                .map(|v| v.priority)
                .max()
                .unwrap_or(i32::MIN),
            self.victims.iter().map(|v| v.priority as i64).sum(),
            self.victims.len(),
        )
    }
}

/// Splits `pods` into those whose eviction a budget forbids and the rest, spending the
/// budgets' allowances in order.
fn by_budget(pods: Vec<Arc<PodInfo>>, cluster: &Cluster) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<(&crate::cluster::Budget, i32)> =
        cluster.budgets().map(|b| (b, b.allowed)).collect();
    let (mut violating, mut free) = (Vec::new(), Vec::new());
    for p in pods {
        let mut violates = false;
        for (b, left) in allowed.iter_mut() {
            if b.namespace == p.namespace && b.selector.matches_map(&p.labels) {
                *left -= 1;
                if *left < 0 {
                    violates = true;
                }
            }
        }
        if violates {
            violating.push(p);
        } else {
            free.push(p);
        }
    }
    (violating, free)
}

fn fits(pod: &PodInfo, cluster: &Cluster, trial: &NodeInfo, exclude: &HashSet<String>) -> bool {
    Cycle::new(pod, cluster, exclude).filter(trial).is_ok()
}

fn victims_on(pod: &PodInfo, cluster: &Cluster, n: &NodeInfo) -> Option<Candidate> {
    let mut lower: Vec<Arc<PodInfo>> = n
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority && !p.terminating)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = n.clone();
    let mut exclude: HashSet<String> = HashSet::new();
    for p in &lower {
        trial.remove_pod(&p.key);
        exclude.insert(p.key.clone());
    }
    if !fits(pod, cluster, &trial, &exclude) {
        return None;
    }
    // Most important first: they are the first reprieved.
    lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let (violating, free) = by_budget(lower, cluster);
    let mut victims = Vec::new();
    let mut violations = 0;
    for (group, protected) in [(violating, true), (free, false)] {
        for p in group {
            trial.add_pod(p.clone());
            exclude.remove(&p.key);
            if !fits(pod, cluster, &trial, &exclude) {
                trial.remove_pod(&p.key);
                exclude.insert(p.key.clone());
                if protected {
                    violations += 1;
                }
                victims.push(p);
            }
        }
    }
    Some(Candidate {
        node: n.name.clone(),
        victims,
        violations,
    })
}

/// Preemption for a pod no node fits; `rejected` are the nodes and why each refused.
pub fn preempt(
    pod: &PodInfo,
    cluster: &Cluster,
    rejected: &[(&NodeInfo, Rejection)],
    message: String,
) -> Decision {
    if !pod.may_preempt() || rejected.is_empty() {
        return Decision::Unschedulable(message);
    }
    // Victims of an earlier preemption are still going: wait for them.
    if let Some(nn) = pod
        .nominated_node()
        .or_else(|| cluster.nomination(&pod.key))
        && cluster.node(nn).is_some_and(|n| {
            n.pods
                .iter()
                .any(|p| p.terminating && p.priority < pod.priority)
        })
    {
        return Decision::Unschedulable(message);
    }
    let (mut not_helpful, mut no_victims) = (0, 0);
    let mut best: Option<Candidate> = None;
    for (n, r) in rejected {
        if r.unresolvable {
            not_helpful += 1;
            continue;
        }
        match victims_on(pod, cluster, n) {
            None => no_victims += 1,
            Some(c) => {
                if best.as_ref().is_none_or(|b| c.rank() < b.rank()) {
                    best = Some(c);
                }
            }
        }
    }
    match best {
        Some(c) => Decision::Preempt {
            node: c.node,
            victims: c.victims.iter().map(|v| v.key.clone()).collect(),
            message,
        },
        None => {
            let mut parts = Vec::new();
            if no_victims > 0 {
                parts.push(format!(
                    "{no_victims} No preemption victims found for incoming pod"
                ));
            }
            if not_helpful > 0 {
                parts.push(format!(
                    "{not_helpful} Preemption is not helpful for scheduling"
                ));
            }
            parts.sort();
            Decision::Unschedulable(format!(
                "{message} preemption: 0/{} nodes are available: {}.",
                cluster.node_count(),
                parts.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::Budget;
    use crate::framework::{Decision, Scheduler};
    use crate::labels::Selector;
    use crate::plugins::testing::*;
    use serde_json::{Value, json};

    fn prio(mut p: Value, priority: i32) -> Value {
        p["spec"]["priority"] = json!(priority);
        p
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let c = cluster(
            &[node("a", "2", "4Gi"), node("b", "2", "4Gi")],
            &[
                on(prio(sized("a-low", "1", "1Gi"), 10), "a"),
                on(prio(sized("a-mid", "1", "1Gi"), 50), "a"),
                on(prio(sized("b-high", "1", "1Gi"), 500), "b"),
                on(prio(sized("b-low", "1", "1Gi"), 5), "b"),
            ],
        );
        let p = pod_info(&prio(sized("urgent", "1", "1Gi"), 100));
        match Scheduler::new().schedule(&p, &c) {
            // On b only b-low can go; on a one pod suffices and a-low is least important,
            // but b's victim has the lower priority.
            Decision::Preempt {
                node,
                victims,
                message,
            } => {
                assert_eq!(node, "b");
                assert_eq!(victims, vec!["default/b-low".to_string()]);
                assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn budgets_are_respected_where_possible() {
        let mut c = cluster(
            &[node("a", "1", "4Gi"), node("b", "1", "4Gi")],
            &[
                on(
                    labelled(prio(sized("guarded", "1", "1Gi"), 1), json!({"app": "db"})),
                    "a",
                ),
                on(prio(sized("plain", "1", "1Gi"), 2), "b"),
            ],
        );
        c.set_budget(
            "default/db",
            Budget {
                namespace: "default".into(),
                selector: Selector::new(
                    &serde_json::from_value(json!({"matchLabels": {"app": "db"}})).unwrap(),
                )
                .unwrap(),
                allowed: 0,
            },
        );
        let p = pod_info(&prio(sized("urgent", "1", "1Gi"), 100));
        match Scheduler::new().schedule(&p, &c) {
            Decision::Preempt { node, victims, .. } => {
                assert_eq!(
                    (node.as_str(), victims),
                    ("b", vec!["default/plain".to_string()])
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn waits_for_its_victims_rather_than_preempting_again() {
        let mut going = prio(sized("going", "1", "1Gi"), 10);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let mut c = cluster(
            &[node("a", "2", "4Gi")],
            &[
                on(going, "a"),
                on(prio(sized("stays", "1", "1Gi"), 10), "a"),
            ],
        );
        let p = pod_info(&prio(sized("urgent", "1", "1Gi"), 100));
        // The nomination is known to the scheduler before it reaches the pod's status.
        c.nominate(&p, "a");
        assert!(p.nominated_node().is_none());
        match Scheduler::new().schedule(&p, &c) {
            Decision::Unschedulable(_) => {}
            d => panic!("preempted again while the first victim was going: {d:?}"),
        }
    }

    #[test]
    fn says_why_preemption_cannot_help() {
        let mut tainted = node("t", "8", "8Gi");
        tainted["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
        let c = cluster(
            &[node("a", "1", "4Gi"), tainted],
            &[on(prio(sized("peer", "1", "1Gi"), 100), "a")],
        );
        let p = pod_info(&prio(sized("p", "1", "1Gi"), 100));
        assert_eq!(
            Scheduler::new().schedule(&p, &c),
            Decision::Unschedulable(
                "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {k: }. \
                 preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, \
                 1 Preemption is not helpful for scheduling."
                    .into()
            )
        );
        let mut never = prio(sized("p", "1", "1Gi"), 1000);
        never["spec"]["preemptionPolicy"] = json!("Never");
        assert!(matches!(
            Scheduler::new().schedule(&pod_info(&never), &c),
            Decision::Unschedulable(m) if !m.contains("preemption")
        ));
    }
}
