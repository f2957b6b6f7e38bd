//! The scheduler's view of the cluster, kept up to date incrementally: one `NodeInfo` per
//! node with the pods placed on it and their summed requests and ports, the pods nominated to
//! nodes by preemption, namespace labels, and disruption budgets. Placing a pod reads this
//! snapshot instead of re-listing every pod, so a decision costs the nodes it examines.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use crate::labels::Selector;
use crate::podinfo::{HostPort, PodInfo};
use crate::resources::{Resources, allocatable};
use crate::volumes::Storage;

/// The taint upstream's node lifecycle puts on a node that is not ready; the scheduler reads a
/// node whose Ready condition is not True as carrying it, so tolerating pods still land.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The same for a node whose heartbeats stopped (Ready is Unknown).
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// One node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub node: Arc<Node>,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub max_pods: i64,
    /// Its taints, with the not-ready or unreachable NoSchedule taint its conditions imply.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub deleting: bool,
    /// Image name -> size in bytes, from `status.images`.
    pub images: HashMap<String, i64>,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resources,
    pub non_zero: (i64, i64),
    pub ports: Vec<HostPort>,
    /// Pods here with any affinity terms, and with required anti-affinity.
    pub with_affinity: usize,
    pub with_required_anti: usize,
    /// Pods here by the uid of their controlling owner (default spreading counts them).
    pub owners: HashMap<String, usize>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let (alloc, max_pods) = allocatable(&node);
        let spec = node.spec.as_ref();
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let implied = match ready {
            Some("True") => None,
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            _ => Some(TAINT_NOT_READY),
        };
        if let Some(key) = implied
            && !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        let mut images = HashMap::new();
        for img in node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
        {
            for n in img.names.iter().flatten() {
                images.insert(normalize_image(n), img.size_bytes.unwrap_or(0));
            }
        }
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: alloc,
            max_pods,
            taints,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            deleting: node.metadata.deletion_timestamp.is_some(),
            images,
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero: (0, 0),
            ports: Vec::new(),
            with_affinity: 0,
            with_required_anti: 0,
            owners: HashMap::new(),
            name,
            node,
        }
    }

    fn clone_images(&self) -> Vec<String> {
        self.images.keys().cloned().collect()
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.request);
        self.non_zero.0 += p.non_zero.0;
        self.non_zero.1 += p.non_zero.1;
        self.ports.extend(p.ports.iter().cloned());
        if p.has_affinity() {
            self.with_affinity += 1;
        }
        if !p.required_anti.is_empty() {
            self.with_required_anti += 1;
        }
        if let Some(o) = &p.controller {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
        self.pods.push(p);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.key == key)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.request);
        self.non_zero.0 -= p.non_zero.0;
        self.non_zero.1 -= p.non_zero.1;
        for hp in &p.ports {
            if let Some(j) = self.ports.iter().position(|x| x == hp) {
                self.ports.swap_remove(j);
            }
        }
        if p.has_affinity() {
            self.with_affinity -= 1;
        }
        if !p.required_anti.is_empty() {
            self.with_required_anti -= 1;
        }
        if let Some(o) = &p.controller
            && let Some(c) = self.owners.get_mut(o)
        {
            *c -= 1;
            if *c == 0 {
                self.owners.remove(o);
            }
        }
        Some(p)
    }
}

/// Image references as nodes report them: `nginx` is `docker.io/library/nginx:latest`.
pub fn normalize_image(name: &str) -> String {
    let (repo, tag) = match name.rfind(['@', ':']) {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i..]),
        _ => (name, ":latest"),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = if has_registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}{tag}")
}

/// A disruption budget as preemption reads it.
#[derive(Clone, Debug)]
pub struct Budget {
    pub namespace: String,
    pub selector: Selector,
    pub allowed: i32,
}

/// Every node, placed pod, nominated pod, namespace and budget the scheduler knows.
#[derive(Default)]
pub struct Cluster {
    /// Nodes in the order they arrived (a removal moves the last into its place): where a
    /// search starts rotates over it.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Placed pods with any affinity terms, cluster-wide (none: inter-pod affinity has
    /// nothing to count for pods without terms).
    with_affinity: usize,
    /// Placed pods, by key, with the node they hold resources on.
    placed: HashMap<String, Arc<PodInfo>>,
    /// Pods bound to nodes not (yet) known.
    stray: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Pods the scheduler bound that its source has not shown bound yet.
    assumed: HashSet<String>,
    /// Pending pods holding a nomination, by key.
    nominated: HashMap<String, Arc<PodInfo>>,
    /// How many nodes hold each image.
    image_nodes: HashMap<String, usize>,
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    budgets: HashMap<String, Budget>,
    /// Claims, volumes and classes.
    pub storage: Storage,
}

/// Does this pod hold resources on a node?
fn holds(p: &Pod) -> bool {
    let bound = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    bound && !matches!(phase, Some("Succeeded" | "Failed"))
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cluster of these nodes and pods (pods not bound are taken as pending).
    pub fn from_objects<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut c = Self::new();
        for n in nodes {
            c.set_node(Arc::new(n.clone()));
        }
        for p in pods {
            c.set_pod(Arc::new(p.clone()));
        }
        c
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.index.get(name).map(|i| &mut self.nodes[*i])
    }

    /// Nodes in arrival order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// The node at position `i` of the arrival order.
    pub fn node_at(&self, i: usize) -> Option<&NodeInfo> {
        self.nodes.get(i)
    }

    /// Placed pods with affinity terms anywhere in the cluster.
    pub fn pods_with_affinity(&self) -> usize {
        self.with_affinity
    }

    /// Every placed pod.
    pub fn placed_pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.placed.values()
    }

    pub fn placed(&self, key: &str) -> Option<&Arc<PodInfo>> {
        self.placed.get(key)
    }

    pub fn image_spread(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        let mut info = NodeInfo::new(node);
        let name = info.name.clone();
        match self.index.get(&name).copied() {
            Some(i) => {
                let old = std::mem::replace(&mut self.nodes[i], info);
                self.count_images(&old, false);
                let now = &mut self.nodes[i];
                for p in old.pods {
                    now.add_pod(p);
                }
                let now = self.nodes[i].clone_images();
                self.count_image_names(now, true);
            }
            None => {
                for p in self.stray.remove(&name).into_iter().flatten() {
                    info.add_pod(p);
                }
                self.count_images(&info, true);
                self.index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    fn count_images(&mut self, n: &NodeInfo, add: bool) {
        let names: Vec<String> = n.images.keys().cloned().collect();
        self.count_image_names(names, add);
    }

    fn count_image_names(&mut self, names: Vec<String>, add: bool) {
        for img in names {
            let e = self.image_nodes.entry(img).or_default();
            if add {
                *e += 1;
            } else {
                *e = e.saturating_sub(1);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let old = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        self.count_images(&old, false);
        if !old.pods.is_empty() {
            self.stray.insert(name.into(), old.pods);
        }
    }

    fn unplace(&mut self, key: &str) {
        if let Some(old) = self.placed.remove(key) {
            if old.has_affinity() {
                self.with_affinity -= 1;
            }
            let node = old.node.clone().unwrap_or_default();
            match self.node_mut(&node) {
                Some(n) => {
                    n.remove_pod(key);
                }
                None => {
                    if let Some(v) = self.stray.get_mut(&node) {
                        v.retain(|p| p.key != key);
                        if v.is_empty() {
                            self.stray.remove(&node);
                        }
                    }
                }
            }
        }
    }

    fn place(&mut self, info: Arc<PodInfo>) {
        let node = info.node.clone().unwrap_or_default();
        if info.has_affinity() {
            self.with_affinity += 1;
        }
        self.placed.insert(info.key.clone(), info.clone());
        match self.node_mut(&node) {
            Some(n) => n.add_pod(info),
            None => self.stray.entry(node).or_default().push(info),
        }
    }

    /// A pod was added or changed at its source.
    pub fn set_pod(&mut self, pod: Arc<Pod>) {
        let info = Arc::new(PodInfo::new(pod.clone()));
        let key = info.key.clone();
        if info.node.is_none() && self.assumed.contains(&key) {
            // Bound here; the source has not caught up.
            return;
        }
        self.assumed.remove(&key);
        self.unplace(&key);
        let earlier = self.nominated.remove(&key);
        if holds(&pod) {
            self.place(info);
        } else if info.node.is_none() && !info.terminating {
            if info.nominated_node().is_some() {
                self.nominated.insert(key, info);
            } else if let Some(node) = earlier.as_ref().and_then(|e| e.nominated_node()) {
                // A change written before the nomination reached the pod (as upstream's
                // nominator, an update that does not name a node keeps the one it had).
                let node = node.to_string();
                self.nominate(&info, &node);
            }
        }
    }

    /// The node a pending pod is nominated to, as this scheduler knows it (its own nominations
    /// before they reach the pod's status included).
    pub fn nomination(&self, key: &str) -> Option<&str> {
        self.nominated.get(key).and_then(|p| p.nominated_node())
    }

    /// A pod is gone at its source.
    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.nominated.remove(key);
        self.unplace(key);
    }

    /// Takes `pod` as bound to `node` before its binding is visible.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        let mut info = pod.clone();
        info.node = Some(node.to_string());
        self.unplace(&info.key);
        self.nominated.remove(&info.key);
        self.assumed.insert(info.key.clone());
        self.place(Arc::new(info));
    }

    /// A binding failed: the assumed placement goes.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.unplace(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Nominates a pending pod to a node (after a preemption for it).
    pub fn nominate(&mut self, pod: &PodInfo, node: &str) {
        let mut info = pod.clone();
        let mut p = (*info.pod).clone();
        p.status.get_or_insert_default().nominated_node_name = Some(node.to_string());
        info.pod = Arc::new(p);
        self.nominated.insert(info.key.clone(), Arc::new(info));
    }

    /// Pods nominated to `node` that outrank (or equal) `priority`, other than `except`.
    pub fn nominated_to<'a>(
        &'a self,
        node: &'a str,
        priority: i32,
        except: &'a str,
    ) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.nominated.values().filter(move |p| {
            p.key != except && p.priority >= priority && p.nominated_node() == Some(node)
        })
    }

    pub fn set_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name.into(), labels);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn set_budget(&mut self, key: &str, b: Budget) {
        self.budgets.insert(key.into(), b);
    }

    pub fn remove_budget(&mut self, key: &str) {
        self.budgets.remove(key);
    }

    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize() {
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            normalize_image("nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(normalize_image("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(
            normalize_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_image("ghcr.io/x/y@sha256:ab"),
            "ghcr.io/x/y@sha256:ab"
        );
    }
}
