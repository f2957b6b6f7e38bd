//! InterPodAffinity: required affinity and anti-affinity of the pod by topology key, the
//! required anti-affinity of pods already placed (symmetric), and the preferred terms of both
//! sides as a score. The counts per topology pair are computed once per pod (PreFilter), from
//! every placed pod when the pod has terms and otherwise only from nodes holding pods that do.

use std::collections::{HashMap, HashSet};

use crate::cluster::{Cluster, NodeInfo};
use crate::framework::{Filtered, MAX_SCORE, Rejection};
use crate::podinfo::PodInfo;

/// Weight of a placed pod's required affinity towards the pod, in scoring (upstream's
/// hardPodAffinityWeight).
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Pair = (String, String);

#[derive(Default)]
pub struct State {
    /// Placed pods matching all of the pod's required affinity terms, by topology pair.
    affinity: HashMap<Pair, i64>,
    /// Placed pods matching one of the pod's required anti-affinity terms.
    anti: HashMap<Pair, i64>,
    /// Placed pods whose required anti-affinity matches the pod.
    existing_anti: HashMap<Pair, i64>,
    /// Preferred terms, both ways, summed by topology pair.
    preferred: HashMap<Pair, i64>,
    /// Whether the pod matches its own required affinity terms (the first of a group may land
    /// anywhere).
    self_match: bool,
}

impl State {
    pub fn new(pod: &PodInfo, cluster: &Cluster, exclude: &HashSet<String>) -> Self {
        let mut s = State::default();
        let ns = &cluster.namespaces;
        let own_terms = pod.has_affinity();
        s.self_match = pod.required_affinity.iter().all(|t| t.matches(pod, ns));
        if !own_terms && cluster.pods_with_affinity() == 0 {
            return s;
        }
        for n in cluster.nodes() {
            if !own_terms && n.with_affinity == 0 {
                continue;
            }
            let pair = |key: &str| n.labels.get(key).map(|v| (key.to_string(), v.clone()));
            for e in &n.pods {
                if exclude.contains(&e.key) || e.key == pod.key {
                    continue;
                }
                for t in &e.required_anti {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(pod, ns)
                    {
                        *s.existing_anti.entry(p).or_default() += 1;
                    }
                }
                for t in &e.required_affinity {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(pod, ns)
                    {
                        *s.preferred.entry(p).or_default() += HARD_POD_AFFINITY_WEIGHT;
                    }
                }
                for (w, t) in &e.preferred_affinity {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(pod, ns)
                    {
                        *s.preferred.entry(p).or_default() += *w as i64;
                    }
                }
                for (w, t) in &e.preferred_anti {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(pod, ns)
                    {
                        *s.preferred.entry(p).or_default() -= *w as i64;
                    }
                }
                if !own_terms {
                    continue;
                }
                if !pod.required_affinity.is_empty()
                    && pod.required_affinity.iter().all(|t| t.matches(e, ns))
                {
                    for t in &pod.required_affinity {
                        if let Some(p) = pair(&t.topology_key) {
                            *s.affinity.entry(p).or_default() += 1;
                        }
                    }
                }
                for t in &pod.required_anti {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(e, ns)
                    {
                        *s.anti.entry(p).or_default() += 1;
                    }
                }
                for (w, t) in &pod.preferred_affinity {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(e, ns)
                    {
                        *s.preferred.entry(p).or_default() += *w as i64;
                    }
                }
                for (w, t) in &pod.preferred_anti {
                    if let Some(p) = pair(&t.topology_key)
                        && t.matches(e, ns)
                    {
                        *s.preferred.entry(p).or_default() -= *w as i64;
                    }
                }
            }
        }
        s
    }

    fn count(map: &HashMap<Pair, i64>, n: &NodeInfo, key: &str) -> Option<i64> {
        let v = n.labels.get(key)?;
        // Looking up by a borrowed pair would need an owned key; the maps are small.
        Some(
            map.iter()
                .filter(|((k, val), _)| k == key && val == v)
                .map(|(_, c)| *c)
                .sum(),
        )
    }

    pub fn filter(&self, pod: &PodInfo, n: &NodeInfo) -> Filtered {
        if self
            .existing_anti
            .iter()
            .any(|((k, v), c)| *c > 0 && n.labels.get(k) == Some(v))
        {
            return Err(Rejection::resolvable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        for t in &pod.required_anti {
            if Self::count(&self.anti, n, &t.topology_key).unwrap_or(0) > 0 {
                return Err(Rejection::resolvable(
                    "node(s) didn't match pod anti-affinity rules",
                ));
            }
        }
        if !pod.required_affinity.is_empty() {
            let all = pod
                .required_affinity
                .iter()
                .all(|t| Self::count(&self.affinity, n, &t.topology_key).is_some_and(|c| c > 0));
            let first_of_group = self.affinity.is_empty()
                && self.self_match
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| n.labels.contains_key(&t.topology_key));
            if !all && !first_of_group {
                return Err(Rejection::unresolvable(
                    "node(s) didn't match pod affinity rules",
                ));
            }
        }
        Ok(())
    }

    /// Whether any preferred term applies (otherwise the plugin does not score).
    pub fn scores(&self) -> bool {
        !self.preferred.is_empty()
    }

    pub fn score(&self, n: &NodeInfo) -> i64 {
        self.preferred
            .iter()
            .filter(|((k, v), _)| n.labels.get(k) == Some(v))
            .map(|(_, w)| *w)
            .sum()
    }
}

/// Min-max scaling to 0..=100 (scores may be negative).
pub fn normalize(raw: Vec<i64>) -> Vec<i64> {
    let (Some(min), Some(max)) = (raw.iter().min().copied(), raw.iter().max().copied()) else {
        return raw;
    };
    if max == min {
        return raw.iter().map(|_| 0).collect();
    }
    raw.into_iter()
        .map(|s| MAX_SCORE * (s - min) / (max - min))
        .collect()
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

    fn with_affinity(name: &str, kind: &str, app: &str, key: &str) -> Value {
        labelled(
            pod(
                name,
                json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}
                ]}}}),
            ),
            json!({"app": name}),
        )
    }

    fn run(c: &Cluster, p: &PodInfo, node: &str) -> Filtered {
        State::new(p, c, &HashSet::new()).filter(p, c.node(node).unwrap())
    }

    #[test]
    fn required_affinity_follows_the_topology() {
        let db = labelled(pod("db", json!({})), json!({"app": "db"}));
        let c = cluster(
            &[zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")],
            &[on(db, "a")],
        );
        let web = pod_info(&with_affinity("web", "podAffinity", "db", "zone"));
        assert_eq!(run(&c, &web, "a"), Ok(()));
        assert_eq!(run(&c, &web, "b"), Ok(()));
        let err = run(&c, &web, "c").unwrap_err();
        assert!(err.unresolvable);
        assert_eq!(err.reasons, vec!["node(s) didn't match pod affinity rules"]);
        // With no matching pod anywhere, a pod matching its own terms starts the group.
        let empty = cluster(&[zoned("a", "z1")], &[]);
        let selfish = pod_info(&with_affinity("db", "podAffinity", "db", "zone"));
        assert_eq!(run(&empty, &selfish, "a"), Ok(()));
        assert!(run(&empty, &web, "a").is_err());
    }

    #[test]
    fn anti_affinity_both_ways() {
        let lone = with_affinity("lone", "podAntiAffinity", "web", "kubernetes.io/hostname");
        let c = cluster(&[zoned("a", "z1"), zoned("b", "z1")], &[on(lone, "a")]);
        let web = pod_info(&labelled(pod("w", json!({})), json!({"app": "web"})));
        // The placed pod refuses company.
        assert_eq!(
            run(&c, &web, "a").unwrap_err().reasons,
            vec!["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
        assert_eq!(run(&c, &web, "b"), Ok(()));
        // The incoming pod refuses a zone holding the app.
        let spread = pod_info(&with_affinity("s", "podAntiAffinity", "lone", "zone"));
        assert_eq!(
            run(&c, &spread, "b").unwrap_err().reasons,
            vec!["node(s) didn't match pod anti-affinity rules"]
        );
    }

    #[test]
    fn preferred_terms_score() {
        let cache = labelled(pod("cache", json!({})), json!({"app": "cache"}));
        let c = cluster(&[zoned("a", "z1"), zoned("b", "z2")], &[on(cache, "b")]);
        let p = pod_info(&pod(
            "p",
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}}
            ]}}}),
        ));
        let s = State::new(&p, &c, &HashSet::new());
        assert!(s.scores());
        let raw = vec![s.score(c.node("a").unwrap()), s.score(c.node("b").unwrap())];
        assert_eq!(normalize(raw), vec![0, 100]);
    }
}
