//! What pods request and nodes offer: cpu (millicores), memory, ephemeral storage, and
//! extended resources (`example.com/gpu`, `hugepages-2Mi`) as integers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{parse_bytes, parse_cpu_millis};

/// Requests scored for a container that asks for no cpu (upstream's DefaultMilliCPURequest).
pub const DEFAULT_CPU_MILLIS: i64 = 100;
/// Requests scored for a container that asks for no memory (DefaultMemoryRequest, 200 MB).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;
/// Pods a node takes when it does not say.
pub const DEFAULT_MAX_PODS: i64 = 110;

/// An amount of every resource the scheduler accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    /// Extended resources and huge pages, by name.
    pub scalar: BTreeMap<String, i64>,
}

/// Extended resources are fully qualified names outside `kubernetes.io/`; huge pages are
/// `hugepages-<size>`. Anything else (`pods`, unknown plain names) is not a scalar.
pub fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

impl Resources {
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            match name.as_str() {
                "cpu" => r.cpu = parse_cpu_millis(&q.0).unwrap_or(0),
                "memory" => r.memory = parse_bytes(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral = parse_bytes(&q.0).unwrap_or(0),
                n if is_scalar(n) => {
                    r.scalar
                        .insert(n.to_string(), parse_bytes(&q.0).unwrap_or(0));
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral -= o.ephemeral;
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e -= v;
            if *e == 0 {
                self.scalar.remove(k);
            }
        }
    }

    /// Each resource raised to at least `o`'s.
    pub fn max_with(&mut self, o: &Resources) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral = self.ephemeral.max(o.ephemeral);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.cpu == 0 && self.memory == 0 && self.ephemeral == 0 && self.scalar.is_empty()
    }
}

/// A container's requests; a resource with only a limit requests its limit (as defaulting
/// does upstream).
pub fn container_request(c: &Container) -> Resources {
    let Some(res) = &c.resources else {
        return Resources::default();
    };
    let mut merged: BTreeMap<String, Quantity> = res.limits.clone().unwrap_or_default();
    merged.extend(res.requests.clone().unwrap_or_default());
    Resources::from_list(&merged)
}

/// Whether an init container is a native sidecar (runs for the pod's life).
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What a pod holds on its node, as upstream computes it: the sum of its containers and
/// sidecars, or an init container (with the sidecars started before it) if that is more,
/// plus the pod overhead.
pub fn pod_request(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&container_request(c));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for ic in spec.init_containers.iter().flatten() {
        let r = container_request(ic);
        if is_sidecar(ic) {
            sidecars.add(&r);
            init_peak.max_with(&sidecars);
        } else {
            let mut with = sidecars.clone();
            with.add(&r);
            init_peak.max_with(&with);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_peak);
    if let Some(o) = &spec.overhead {
        total.add(&Resources::from_list(o));
    }
    total
}

/// cpu and memory as scored: a container asking for none counts as asking for the defaults,
/// so empty pods do not all land on one node.
pub fn non_zero_request(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else {
        return (0, 0);
    };
    let nz = |c: &Container| {
        let r = container_request(c);
        (
            if r.cpu == 0 {
                DEFAULT_CPU_MILLIS
            } else {
                r.cpu
            },
            if r.memory == 0 {
                DEFAULT_MEMORY
            } else {
                r.memory
            },
        )
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c)),
    ) {
        let (c, m) = nz(c);
        cpu += c;
        mem += m;
    }
    for ic in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_sidecar(c))
    {
        let (c, m) = nz(ic);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    (cpu, mem)
}

/// What a node offers pods (allocatable, or capacity when it reports no allocatable), and
/// how many pods it takes.
pub fn allocatable(node: &Node) -> (Resources, i64) {
    let status = node.status.as_ref();
    let Some(list) = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())) else {
        return (Resources::default(), DEFAULT_MAX_PODS);
    };
    let pods = list
        .get("pods")
        .and_then(|q| parse_bytes(&q.0).ok())
        .unwrap_or(DEFAULT_MAX_PODS);
    (Resources::from_list(list), pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_follow_upstream() {
        let pod: Pod = serde_json::from_value(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "300m", "example.com/gpu": "1"}}},
            ],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "big", "resources": {"requests": {"cpu": "1", "memory": "50Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }}))
        .unwrap();
        let r = pod_request(&pod);
        // max(200+300+100, 100+1000) + 10
        assert_eq!(r.cpu, 1110);
        assert_eq!(r.memory, 100 << 20);
        assert_eq!(r.scalar.get("example.com/gpu"), Some(&1));
        let (cpu, mem) = non_zero_request(&pod);
        assert_eq!(cpu, 1000);
        assert_eq!(mem, (100 << 20) + DEFAULT_MEMORY + DEFAULT_MEMORY);
        let empty: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "a"}]}})).unwrap();
        assert!(pod_request(&empty).is_zero());
        assert_eq!(
            non_zero_request(&empty),
            (DEFAULT_CPU_MILLIS, DEFAULT_MEMORY)
        );
    }
}
