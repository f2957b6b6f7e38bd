//! PodTopologySpread: `DoNotSchedule` constraints refuse a node whose domain would exceed
//! maxSkew over the least-loaded domain (minDomains counted), `ScheduleAnyway` ones score.
//! A pod without constraints but with a controller spreads by upstream's system defaults
//! (3 per hostname, 5 per zone, soft) over the pods of the same controller.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use crate::cluster::{Cluster, NodeInfo};
use crate::framework::{Filtered, MAX_SCORE, Rejection};
use crate::labels::Selector;
use crate::plugins::node;
use crate::podinfo::PodInfo;

pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";

enum Selects {
    Labels(Selector),
    /// Pods of one controller (the system default constraints).
    Owner(String),
}

struct Constraint {
    max_skew: i64,
    key: String,
    selects: Selects,
    min_domains: Option<i64>,
    honor_affinity: bool,
    honor_taints: bool,
    /// Pods matching, per domain of the key, over eligible nodes.
    counts: HashMap<String, i64>,
    self_match: bool,
}

impl Constraint {
    fn new(pod: &PodInfo, c: &TopologySpreadConstraint) -> Self {
        let mut selector = Selector::optional(c.label_selector.as_ref());
        for k in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels.get(k) {
                selector.require(k, v, true);
            }
        }
        Self {
            max_skew: c.max_skew.max(1) as i64,
            key: c.topology_key.clone(),
            self_match: selector.matches_map(&pod.labels),
            selects: Selects::Labels(selector),
            min_domains: c.min_domains.map(i64::from),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            counts: HashMap::new(),
        }
    }

    fn system(owner: &str, key: &str, max_skew: i64) -> Self {
        Self {
            max_skew,
            key: key.into(),
            selects: Selects::Owner(owner.into()),
            min_domains: None,
            honor_affinity: true,
            honor_taints: false,
            counts: HashMap::new(),
            self_match: true,
        }
    }

    fn eligible(&self, pod: &PodInfo, n: &NodeInfo) -> bool {
        (!self.honor_affinity || node::matches_node_selector(pod, n))
            && (!self.honor_taints || node::taints(pod, n).is_ok())
    }

    fn matching_on(&self, pod: &PodInfo, n: &NodeInfo, exclude: &HashSet<String>) -> i64 {
        match &self.selects {
            Selects::Owner(uid) => {
                let here = n.owners.get(uid).copied().unwrap_or(0) as i64;
                let gone = n
                    .pods
                    .iter()
                    .filter(|p| exclude.contains(&p.key) && p.controller.as_deref() == Some(uid))
                    .count() as i64;
                here - gone
            }
            Selects::Labels(s) => n
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == pod.namespace
                        && !p.terminating
                        && !exclude.contains(&p.key)
                        && p.key != pod.key
                        && s.matches_map(&p.labels)
                })
                .count() as i64,
        }
    }

    fn count(
        &mut self,
        pod: &PodInfo,
        cluster: &Cluster,
        exclude: &HashSet<String>,
        all_keys: &[&str],
    ) {
        for n in cluster.nodes() {
            if !all_keys.iter().all(|k| n.labels.contains_key(*k)) || !self.eligible(pod, n) {
                continue;
            }
            let Some(domain) = n.labels.get(&self.key) else {
                continue;
            };
            let m = self.matching_on(pod, n, exclude);
            *self.counts.entry(domain.clone()).or_default() += m;
        }
    }

    fn min_count(&self) -> i64 {
        if self
            .min_domains
            .is_some_and(|m| (self.counts.len() as i64) < m)
        {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

#[derive(Default)]
pub struct State {
    hard: Vec<Constraint>,
    soft: Vec<Constraint>,
}

impl State {
    pub fn new(pod: &PodInfo, cluster: &Cluster, exclude: &HashSet<String>) -> Self {
        let declared = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or_default();
        let mut s = State::default();
        for c in declared {
            let built = Constraint::new(pod, c);
            if c.when_unsatisfiable == "DoNotSchedule" {
                s.hard.push(built);
            } else {
                s.soft.push(built);
            }
        }
        if declared.is_empty()
            && cluster.node_count() > 1
            && let Some(owner) = &pod.controller
        {
            s.soft.push(Constraint::system(owner, HOSTNAME, 3));
            s.soft.push(Constraint::system(owner, ZONE, 5));
        }
        let hard_keys: Vec<String> = s.hard.iter().map(|c| c.key.clone()).collect();
        let hard_keys: Vec<&str> = hard_keys.iter().map(String::as_str).collect();
        for c in &mut s.hard {
            c.count(pod, cluster, exclude, &hard_keys);
        }
        for c in &mut s.soft {
            let key = c.key.clone();
            c.count(pod, cluster, exclude, &[key.as_str()]);
        }
        // A default zone constraint in a cluster without zones spreads nothing.
        s.soft
            .retain(|c| !matches!(c.selects, Selects::Owner(_)) || !c.counts.is_empty());
        s
    }

    pub fn filter(&self, n: &NodeInfo) -> Filtered {
        for c in &self.hard {
            let Some(domain) = n.labels.get(&c.key) else {
                return Err(Rejection::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let matching = c.counts.get(domain).copied().unwrap_or(0) + i64::from(c.self_match);
            if matching - c.min_count() > c.max_skew {
                return Err(Rejection::resolvable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    pub fn scores(&self) -> bool {
        !self.soft.is_empty()
    }

    /// Upstream's scoring: matching pods in the node's domain weighted by ln(domains + 2),
    /// fewer is better; nodes lacking a key score 0.
    pub fn normalize(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        let raw: Vec<Option<f64>> = feasible
            .iter()
            .map(|n| {
                let mut total = 0.0;
                for c in &self.soft {
                    let domain = n.labels.get(&c.key)?;
                    let weight = ((c.counts.len() + 2) as f64).ln();
                    let cnt = c.counts.get(domain).copied().unwrap_or(0) as f64;
                    total += cnt * weight + (c.max_skew - 1) as f64;
                }
                Some(total)
            })
            .collect();
        let scored: Vec<f64> = raw.iter().flatten().copied().collect();
        let max = scored.iter().copied().fold(f64::MIN, f64::max);
        let min = scored.iter().copied().fold(f64::MAX, f64::min);
        raw.iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max <= 0.0 => MAX_SCORE,
                Some(s) => (MAX_SCORE as f64 * (max + min - s) / max) as i64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::{Value, json};

    fn zoned(name: &str, zone: &str) -> Value {
        let mut n = node(name, "4", "8Gi");
        n["metadata"]["labels"]["zone"] = json!(zone);
        n
    }

    fn app(name: &str) -> Value {
        labelled(pod(name, json!({})), json!({"app": "web"}))
    }

    fn spread(when: &str, min_domains: Option<i64>) -> PodInfo {
        let mut c = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
                           "labelSelector": {"matchLabels": {"app": "web"}}});
        if let Some(m) = min_domains {
            c["minDomains"] = json!(m);
        }
        pod_info(&labelled(
            pod("new", json!({"topologySpreadConstraints": [c]})),
            json!({"app": "web"}),
        ))
    }

    #[test]
    fn max_skew_refuses_the_crowded_zone() {
        let c = cluster(
            &[zoned("a", "z1"), zoned("b", "z2"), node("bare", "4", "8Gi")],
            &[on(app("1"), "a"), on(app("2"), "a"), on(app("3"), "b")],
        );
        let p = spread("DoNotSchedule", None);
        let s = State::new(&p, &c, &HashSet::new());
        assert_eq!(
            s.filter(c.node("a").unwrap()).unwrap_err().reasons,
            vec!["node(s) didn't match pod topology spread constraints"]
        );
        assert_eq!(s.filter(c.node("b").unwrap()), Ok(()));
        assert!(s.filter(c.node("bare").unwrap()).unwrap_err().unresolvable);
        // minDomains above the domains there are makes the minimum 0: z2 (1 pod) refuses too.
        let s = State::new(&spread("DoNotSchedule", Some(3)), &c, &HashSet::new());
        assert!(s.filter(c.node("b").unwrap()).is_err());
    }

    #[test]
    fn schedule_anyway_scores_the_emptier_zone() {
        let c = cluster(
            &[zoned("a", "z1"), zoned("b", "z2")],
            &[on(app("1"), "a"), on(app("2"), "a")],
        );
        let p = spread("ScheduleAnyway", None);
        let s = State::new(&p, &c, &HashSet::new());
        assert_eq!(s.filter(c.node("a").unwrap()), Ok(()));
        let scores = s.normalize(&[c.node("a").unwrap(), c.node("b").unwrap()]);
        assert!(scores[1] > scores[0], "{scores:?}");
    }

    #[test]
    fn replicas_of_a_controller_spread_by_default() {
        let owned = |name: &str| {
            let mut p = pod(name, json!({}));
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]);
            p
        };
        let c = cluster(
            &[node("a", "4", "8Gi"), node("b", "4", "8Gi")],
            &[on(owned("1"), "a"), on(owned("2"), "a")],
        );
        let p = pod_info(&owned("3"));
        let s = State::new(&p, &c, &HashSet::new());
        assert!(s.scores());
        let scores = s.normalize(&[c.node("a").unwrap(), c.node("b").unwrap()]);
        assert!(scores[1] > scores[0], "{scores:?}");
    }
}
