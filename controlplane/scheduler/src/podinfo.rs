//! A pod as the scheduler reads it, computed once when the pod enters its cache: requests,
//! host ports, affinity terms with their selectors compiled, priority.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

use crate::labels::Selector;
use crate::resources::{Resources, non_zero_request, pod_request};

/// A host port a pod binds on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Two bindings collide on one protocol and port when either is on every address.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || any(&self.ip) || any(&o.ip))
    }
}

/// Which namespaces an affinity term looks in.
#[derive(Clone, Debug)]
pub enum Namespaces {
    /// The listed ones (by default the pod's own).
    Listed(Vec<String>),
    /// The listed ones and those whose labels a selector matches (`{}` matches all).
    Selected(Vec<String>, Selector),
}

/// One pod (anti-)affinity term, compiled.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    pub namespaces: Namespaces,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(owner: &Pod, ns: &str, t: &PodAffinityTerm) -> Self {
        let mut selector = Selector::optional(t.label_selector.as_ref());
        let labels = owner.metadata.labels.clone().unwrap_or_default();
        for (keys, equal) in [(&t.match_label_keys, true), (&t.mismatch_label_keys, false)] {
            for k in keys.iter().flatten() {
                if let Some(v) = labels.get(k) {
                    selector.require(k, v, equal);
                }
            }
        }
        let listed = t.namespaces.clone().unwrap_or_default();
        let namespaces = match &t.namespace_selector {
            Some(s) => Namespaces::Selected(listed, Selector::optional(Some(s))),
            None if listed.is_empty() => Namespaces::Listed(vec![ns.to_string()]),
            None => Namespaces::Listed(listed),
        };
        Self {
            namespaces,
            selector,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` is one this term selects.
    pub fn matches(
        &self,
        pod: &PodInfo,
        ns_labels: &HashMap<String, BTreeMap<String, String>>,
    ) -> bool {
        let ns_ok = match &self.namespaces {
            Namespaces::Listed(l) => l.contains(&pod.namespace),
            Namespaces::Selected(l, s) => {
                l.contains(&pod.namespace)
                    || s.is_empty()
                    || ns_labels
                        .get(&pod.namespace)
                        .is_some_and(|labels| s.matches_map(labels))
            }
        };
        ns_ok && self.selector.matches_map(&pod.labels)
    }
}

/// A pod, as scheduled or placed.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub pod: Arc<Pod>,
    pub labels: BTreeMap<String, String>,
    pub request: Resources,
    /// cpu and memory as scored (containers without requests count upstream's defaults).
    pub non_zero: (i64, i64),
    pub priority: i32,
    pub ports: Vec<HostPort>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti: Vec<(i32, AffinityTerm)>,
    /// The uid of the controlling owner, for default spreading.
    pub controller: Option<String>,
    pub node: Option<String>,
    pub terminating: bool,
    /// The claims its volumes use (by name, in its namespace).
    pub claims: Vec<String>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        for c in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .chain(
                spec.and_then(|s| s.init_containers.as_deref())
                    .unwrap_or_default()
                    .iter()
                    .filter(|c| crate::resources::is_sidecar(c)),
            )
        {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                    ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let term = |t: &PodAffinityTerm| AffinityTerm::new(&pod, &ns, t);
        let required_affinity = pa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(term)
            .collect();
        let required_anti = paa
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(term)
            .collect();
        let preferred_affinity = pa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| (w.weight, term(&w.pod_affinity_term)))
            .collect();
        let preferred_anti = paa
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| (w.weight, term(&w.pod_affinity_term)))
            .collect();
        let controller = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        Self {
            key: format!("{ns}/{name}"),
            namespace: ns,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            request: pod_request(&pod),
            non_zero: non_zero_request(&pod),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            ports,
            required_affinity,
            required_anti,
            preferred_affinity,
            preferred_anti,
            controller,
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            claims: crate::volumes::pod_claims(&pod),
            pod,
        }
    }

    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty())
    }

    /// The node this pending pod was nominated to by a preemption.
    pub fn nominated_node(&self) -> Option<&str> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// May this pod preempt others?
    pub fn may_preempt(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            != Some("Never")
    }
}
