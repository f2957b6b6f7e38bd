//! Builders for plugin tests: nodes, pods and snapshots from JSON.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::cluster::{Cluster, NodeInfo};
use crate::podinfo::PodInfo;

/// A ready node with this allocatable cpu and memory, room for 110 pods.
pub fn node(name: &str, cpu: &str, mem: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A pod in `default` with one container and this spec merged over it.
pub fn pod(name: &str, spec: Value) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "img"}]},
    });
    if let Value::Object(m) = spec {
        for (k, v) in m {
            p["spec"][k] = v;
        }
    }
    p
}

/// A pod requesting cpu and memory.
pub fn sized(name: &str, cpu: &str, mem: &str) -> Value {
    pod(
        name,
        json!({"containers": [{"name": "c", "image": "img", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}),
    )
}

pub fn on(mut pod: Value, node: &str) -> Value {
    pod["spec"]["nodeName"] = json!(node);
    pod["status"] = json!({"phase": "Running"});
    pod
}

pub fn labelled(mut v: Value, labels: Value) -> Value {
    v["metadata"]["labels"] = labels;
    v
}

pub fn as_node(v: &Value) -> Node {
    serde_json::from_value(v.clone()).expect("node")
}

pub fn as_pod(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).expect("pod")
}

pub fn info(v: &Value) -> NodeInfo {
    let c = cluster(std::slice::from_ref(v), &[]);
    c.nodes().next().expect("node").clone()
}

pub fn pod_info(v: &Value) -> PodInfo {
    PodInfo::new(Arc::new(as_pod(v)))
}

pub fn cluster(nodes: &[Value], pods: &[Value]) -> Cluster {
    let nodes: Vec<Node> = nodes.iter().map(as_node).collect();
    let pods: Vec<Pod> = pods.iter().map(as_pod).collect();
    Cluster::from_objects(&nodes, &pods)
}
