//! The node authorizer: a node's credentials (`system:node:<name>` in `system:nodes`) reach
//! the Secrets, ConfigMaps, claims and service-account tokens of the pods bound to that node
//! and nothing else of those kinds, write only their own Node and Lease and the pods bound to
//! them, and read what the agent's proxy, DNS and policy roles need. The relationships come
//! from a graph of pods by node, fed by the API server's watch of pods.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::rules::{self, Attributes};

/// The kinds of object a pod makes its node need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefKind {
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

type Ref = (RefKind, String, String);

/// Pods by node, and what each pod references.
#[derive(Default)]
pub struct NodeGraph {
    pods: HashMap<(String, String), (String, Vec<Ref>)>,
    refs: HashMap<String, HashMap<Ref, usize>>,
}

/// What a pod references, by kind and name (in the pod's namespace).
pub fn pod_refs(pod: &Pod) -> Vec<(RefKind, String)> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else {
        return out;
    };
    out.push((
        RefKind::ServiceAccount,
        spec.service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
    ));
    for s in spec.image_pull_secrets.iter().flatten() {
        out.push((RefKind::Secret, s.name.clone()));
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (&c.env, &c.env_from))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (&c.env, &c.env_from)),
        );
    for (env, env_from) in containers {
        for e in env_from.iter().flatten() {
            if let Some(c) = &e.config_map_ref {
                out.push((RefKind::ConfigMap, c.name.clone()));
            }
            if let Some(s) = &e.secret_ref {
                out.push((RefKind::Secret, s.name.clone()));
            }
        }
        for v in env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(c) = &v.config_map_key_ref {
                out.push((RefKind::ConfigMap, c.name.clone()));
            }
            if let Some(s) = &v.secret_key_ref {
                out.push((RefKind::Secret, s.name.clone()));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.push((RefKind::Secret, s));
        }
        if let Some(c) = &v.config_map {
            out.push((RefKind::ConfigMap, c.name.clone()));
        }
        if let Some(c) = &v.persistent_volume_claim {
            out.push((RefKind::Claim, c.claim_name.clone()));
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &p.config_map {
                out.push((RefKind::ConfigMap, c.name.clone()));
            }
            if let Some(s) = &p.secret {
                out.push((RefKind::Secret, s.name.clone()));
            }
        }
        // Secrets a volume plugin reads to mount (CSI, iSCSI, CephFS, ...).
        let plugin_secret = v
            .csi
            .as_ref()
            .and_then(|c| c.node_publish_secret_ref.as_ref())
            .map(|r| r.name.clone())
            .or_else(|| {
                v.iscsi
                    .as_ref()
                    .and_then(|i| i.secret_ref.as_ref())
                    .map(|r| r.name.clone())
            })
            .or_else(|| {
                v.cephfs
                    .as_ref()
                    .and_then(|i| i.secret_ref.as_ref())
                    .map(|r| r.name.clone())
            })
            .or_else(|| {
                v.rbd
                    .as_ref()
                    .and_then(|i| i.secret_ref.as_ref())
                    .map(|r| r.name.clone())
            });
        if let Some(s) = plugin_secret {
            out.push((RefKind::Secret, s));
        }
    }
    out.retain(|(_, n)| !n.is_empty());
    out
}

impl NodeGraph {
    pub fn set_pod(&mut self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.remove_pod(&ns, &name);
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        let refs: Vec<Ref> = pod_refs(pod)
            .into_iter()
            .map(|(k, n)| (k, ns.clone(), n))
            .collect();
        let counts = self.refs.entry(node.clone()).or_default();
        for r in &refs {
            *counts.entry(r.clone()).or_default() += 1;
        }
        self.pods.insert((ns, name), (node, refs));
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let Some((node, refs)) = self.pods.remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        if let Some(counts) = self.refs.get_mut(&node) {
            for r in refs {
                if let Some(c) = counts.get_mut(&r) {
                    *c -= 1;
                    if *c == 0 {
                        counts.remove(&r);
                    }
                }
            }
            if counts.is_empty() {
                self.refs.remove(&node);
            }
        }
    }

    /// Whether pod `namespace/name` is bound to `node`.
    pub fn bound_to(&self, node: &str, namespace: &str, name: &str) -> bool {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|(n, _)| n == node)
    }

    /// Whether a pod bound to `node` references the object.
    pub fn references(&self, node: &str, kind: RefKind, namespace: &str, name: &str) -> bool {
        self.refs
            .get(node)
            .is_some_and(|c| c.contains_key(&(kind, namespace.to_string(), name.to_string())))
    }
}

/// A node authorizer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with upstream's reason.
    Deny(String),
    /// Not a node, or a request the node rules do not decide: RBAC decides.
    NoOpinion,
}

const READ: &[&str] = rules::READ;

/// Decides a node's request.
pub fn authorize(graph: &NodeGraph, a: &Attributes<'_>) -> Decision {
    let Some(node) = a.user.node_name() else {
        return Decision::NoOpinion;
    };
    let Some(r) = a.resource else {
        return Decision::NoOpinion;
    };
    let read = READ.contains(&a.verb);
    let related = |kind: RefKind| {
        if a.verb == "get" && graph.references(node, kind, r.namespace, r.name) {
            Decision::Allow
        } else if a.verb != "get" {
            Decision::Deny(format!(
                "node '{node}' can only get individual {}",
                r.resource
            ))
        } else {
            Decision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    };
    match (r.group, r.resource, r.subresource) {
        ("", "secrets", "") => related(RefKind::Secret),
        ("", "configmaps", "") => related(RefKind::ConfigMap),
        ("", "persistentvolumeclaims", "") => related(RefKind::Claim),
        ("", "serviceaccounts", "token") => {
            if a.verb == "create"
                && graph.references(node, RefKind::ServiceAccount, r.namespace, r.name)
            {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        }
        ("", "pods", "") if read => Decision::Allow,
        ("", "pods", sub) => {
            let bound = graph.bound_to(node, r.namespace, r.name);
            let ok = match (sub, a.verb) {
                ("", "delete")
                | ("status", "update" | "patch" | "get")
                | ("eviction", "create") => bound,
                _ => false,
            };
            if ok {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "node '{node}' can only {} {} of pods bound to it",
                    a.verb,
                    if sub.is_empty() { "itself" } else { sub }
                ))
            }
        }
        ("", "nodes", "" | "status") => {
            if read && r.subresource.is_empty()
                || r.name == node
                || (a.verb == "create" && r.name.is_empty())
            {
                Decision::Allow
            } else {
                Decision::Deny(format!("node '{node}' cannot modify node '{}'", r.name))
            }
        }
        // The node's half of the local-path provisioner lifts its volumes' cleanup
        // finalizer; NodeRestriction keeps it to its own volumes and to that.
        ("", "persistentvolumes", "") if matches!(a.verb, "patch" | "update") => Decision::Allow,
        ("coordination.k8s.io", "leases", "") if r.namespace == "kube-node-lease" => {
            if r.name == node || (a.verb == "create" && r.name.is_empty()) {
                Decision::Allow
            } else {
                Decision::Deny(format!("node '{node}' can only access its own lease"))
            }
        }
        _ if crate::node_rules()
            .iter()
            .any(|rule| rules::allows(rule, a)) =>
        {
            Decision::Allow
        }
        _ => Decision::NoOpinion,
    }
}
