//! One scheduling cycle, as upstream's framework runs it: PreFilter (state computed once per
//! pod), Filter on nodes from a rotating start until enough feasible ones are found, Score
//! with each plugin normalized to 0..=100 and weighted, and PostFilter (preemption) when no
//! node fits. Every plugin is a pure function over the `Cluster` snapshot.

use std::collections::{BTreeMap, HashSet};

use crate::cluster::{Cluster, NodeInfo};
use crate::plugins::{fit, images, interpod, node, spread, volumes};
use crate::podinfo::PodInfo;
use crate::preemption;

/// Why a node does not fit, in upstream's words, and whether preempting pods could change
/// that (a taint or a selector cannot be preempted away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reasons: Vec<String>,
    pub unresolvable: bool,
}

impl Rejection {
    pub fn resolvable(reason: impl Into<String>) -> Self {
        Self {
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Self {
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

pub type Filtered = Result<(), Rejection>;

/// The outcome of scheduling one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// No node fits; the message follows upstream's "0/N nodes are available: ...".
    Unschedulable(String),
    /// No node fits, but evicting `victims` (pod keys) from `node` makes room: nominate the
    /// pod there and delete them.
    Preempt {
        node: String,
        victims: Vec<String>,
        message: String,
    },
}

/// Upstream's default score weights.
pub const WEIGHT_TAINTS: i64 = 3;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_SPREAD: i64 = 2;
pub const WEIGHT_INTERPOD: i64 = 2;
pub const WEIGHT_FIT: i64 = 1;
pub const WEIGHT_BALANCED: i64 = 1;
pub const WEIGHT_IMAGES: i64 = 1;
pub const MAX_SCORE: i64 = 100;

/// What PreFilter computed for one pod.
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    pub cluster: &'a Cluster,
    pub interpod: interpod::State,
    pub spread: spread::State,
    pub volumes: volumes::State,
}

impl<'a> Cycle<'a> {
    /// PreFilter, leaving out the pods in `exclude` (victims being weighed by preemption).
    pub fn new(pod: &'a PodInfo, cluster: &'a Cluster, exclude: &HashSet<String>) -> Self {
        Self {
            interpod: interpod::State::new(pod, cluster, exclude),
            spread: spread::State::new(pod, cluster, exclude),
            volumes: volumes::State::new(pod, cluster),
            pod,
            cluster,
        }
    }

    /// Every filter on one node, in upstream's order; the first that refuses decides.
    pub fn filter(&self, n: &NodeInfo) -> Filtered {
        node::unschedulable(self.pod, n)?;
        node::node_name(self.pod, n)?;
        node::taints(self.pod, n)?;
        node::affinity(self.pod, n)?;
        fit::ports(self.pod, n, self.cluster)?;
        fit::resources(self.pod, n, self.cluster)?;
        self.volumes.filter(n, self.cluster)?;
        self.interpod.filter(self.pod, n)?;
        self.spread.filter(n)?;
        Ok(())
    }

    /// Weighted, normalized scores of the feasible nodes, in their order.
    pub fn score(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; feasible.len()];
        let mut add = |weight: i64, scores: Vec<i64>| {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += weight * s;
            }
        };
        let each = |f: &dyn Fn(&NodeInfo) -> i64| feasible.iter().map(|n| f(n)).collect::<Vec<_>>();
        add(
            WEIGHT_TAINTS,
            normalize(
                each(&|n| node::intolerable_prefer_no_schedule(self.pod, n)),
                true,
            ),
        );
        add(
            WEIGHT_NODE_AFFINITY,
            normalize(each(&|n| node::preferred_affinity(self.pod, n)), false),
        );
        add(WEIGHT_FIT, each(&|n| fit::least_allocated(self.pod, n)));
        add(WEIGHT_BALANCED, each(&|n| fit::balanced(self.pod, n)));
        add(
            WEIGHT_IMAGES,
            each(&|n| images::locality(self.pod, n, self.cluster)),
        );
        if self.interpod.scores() {
            add(
                WEIGHT_INTERPOD,
                interpod::normalize(each(&|n| self.interpod.score(n))),
            );
        }
        if self.spread.scores() {
            add(WEIGHT_SPREAD, self.spread.normalize(feasible));
        }
        total
    }
}

/// Scales raw scores to 0..=100 by the highest (upstream's DefaultNormalizeScore); `reverse`
/// when fewer is better.
pub fn normalize(raw: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return raw
            .iter()
            .map(|_| if reverse { MAX_SCORE } else { 0 })
            .collect();
    }
    raw.into_iter()
        .map(|s| {
            let s = s * MAX_SCORE / max;
            if reverse { MAX_SCORE - s } else { s }
        })
        .collect()
}

/// How many feasible nodes are enough to choose among (upstream's adaptive
/// percentageOfNodesToScore: all of a small cluster, 10% of 5,000, never fewer than 100).
pub fn feasible_wanted(nodes: usize, percentage: Option<u32>) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p.min(100) as usize,
        _ => (50usize.saturating_sub(nodes / 125)).max(5),
    };
    (nodes * pct / 100).max(MIN).min(nodes)
}

/// Counts of reasons, rendered as upstream's FitError.
pub fn fit_error(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

/// The scheduler: where the next search starts, and how many nodes it scores.
#[derive(Default)]
pub struct Scheduler {
    next_start: usize,
    /// Fixed percentage of nodes to score; `None` is upstream's adaptive default.
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places one pending pod on the snapshot: a node, a preemption, or why not.
    pub fn schedule(&mut self, pod: &PodInfo, cluster: &Cluster) -> Decision {
        let total = cluster.node_count();
        if total == 0 {
            return Decision::Unschedulable("0/0 nodes are available.".into());
        }
        let cycle = Cycle::new(pod, cluster, &HashSet::new());
        let wanted = feasible_wanted(total, self.percentage_of_nodes_to_score);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(total));
        let mut rejected: Vec<(&NodeInfo, Rejection)> = Vec::new();
        let start = self.next_start % total;
        let mut examined = 0;
        for i in 0..total {
            let Some(n) = cluster.node_at((start + i) % total) else {
                continue;
            };
            examined += 1;
            match cycle.filter(n) {
                Ok(()) => {
                    feasible.push(n);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(r) => rejected.push((n, r)),
            }
        }
        self.next_start = (start + examined) % total;
        if feasible.len() == 1 {
            return Decision::Bind(feasible[0].name.clone());
        }
        if !feasible.is_empty() {
            let scores = cycle.score(&feasible);
            let mut best = 0;
            for (i, s) in scores.iter().enumerate() {
                if *s > scores[best] {
                    best = i;
                }
            }
            return Decision::Bind(feasible[best].name.clone());
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (_, r) in &rejected {
            for reason in &r.reasons {
                *reasons.entry(reason.clone()).or_default() += 1;
            }
        }
        let message = fit_error(total, &reasons);
        preemption::preempt(pod, cluster, &rejected, message)
    }
}
