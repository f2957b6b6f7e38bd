//! Node loss: a node whose heartbeats stop turns Unknown after the grace period, is tainted
//! unreachable, its pods are evicted when their toleration runs out and replaced on a healthy
//! node; heartbeats coming back clear the taints. Pods of a node that is gone are collected.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, cluster_with_grace, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use strake_apimachinery::{Filter, Part};

use common::WAIT;

async fn node(c: &Cluster, name: &str) {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    c.client.create(None, &n).await.unwrap();
}

/// What an agent does every beat: renew its Lease and post Ready.
async fn beat(c: &Cluster, name: &str) {
    let now = Timestamp::now();
    let lease_ns = Some("kube-node-lease");
    match c.client.get::<Lease>(lease_ns, name).await {
        Ok(mut l) => {
            l.spec.get_or_insert_default().renew_time = Some(MicroTime(now));
            let _ = c.client.replace(&l, Part::Main).await;
        }
        Err(_) => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(MicroTime(now)),
                    ..Default::default()
                }),
            };
            let _ = c.client.create(lease_ns, &l).await;
        }
    }
    let status: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(json!({
        "allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now)}]
    }))
    .unwrap();
    let _ = c
        .client
        .modify::<Node>(None, name, Part::Status, |n| {
            let keep = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.type_ == "Ready" && c.status == "True")
                        .and_then(|c| c.last_transition_time.clone())
                });
            let mut st = status.clone();
            if let Some(t) = keep {
                st.conditions.as_mut().unwrap()[0].last_transition_time = Some(t);
            }
            n.status = Some(st);
            true
        })
        .await;
}

fn heartbeats(c: &Cluster, name: &'static str, alive: Arc<AtomicBool>) {
    let c = Cluster {
        reg: c.reg.clone(),
        client: c.client.named("kubelet"),
        metrics: c.metrics.clone(),
    };
    tokio::spawn(async move {
        loop {
            if alive.load(Ordering::Relaxed) {
                beat(&c, name).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
}

fn taint_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default()
}

async fn pods_by_node(c: &Cluster) -> Vec<(String, Option<String>)> {
    let (pods, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.spec.and_then(|s| s.node_name),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_is_tainted_and_its_pods_replaced_elsewhere() {
    let c = cluster_with_grace(Duration::from_secs(2)).await;
    let a_alive = Arc::new(AtomicBool::new(true));
    node(&c, "a").await;
    heartbeats(&c, "a", a_alive.clone());
    // Pods land on the only node first.
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "main", "image": "app:1"}]}}}
    }))
    .unwrap();
    c.client.create(Some("default"), &d).await.unwrap();
    eventually("three pods on a", WAIT, || async {
        let p = pods_by_node(&c).await;
        (p.len() == 3 && p.iter().all(|(_, n)| n.as_deref() == Some("a"))).then_some(())
    })
    .await;
    let pod: Pod = c
        .client
        .get(Some("default"), &pods_by_node(&c).await[0].0)
        .await
        .unwrap();
    let tolerations = pod.spec.unwrap().tolerations.unwrap();
    assert!(
        tolerations.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds == Some(1)
        ),
        "DefaultTolerationSeconds: {tolerations:?}"
    );

    node(&c, "b").await;
    heartbeats(&c, "b", Arc::new(AtomicBool::new(true)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a: Node = c.client.get(None, "a").await.unwrap();
    assert!(
        taint_keys(&a).is_empty(),
        "a healthy node is not tainted: {:?}",
        taint_keys(&a)
    );

    // Node a goes silent.
    a_alive.store(false, Ordering::Relaxed);
    let a = eventually("node a unreachable", WAIT, || async {
        let n: Node = c.client.get(None, "a").await.ok()?;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .clone();
        (ready.status == "Unknown" && taint_keys(&n).len() == 2).then_some((n, ready))
    })
    .await;
    assert_eq!(
        a.1.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let mut keys = taint_keys(&a.0);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "node.kubernetes.io/unreachable:NoExecute",
            "node.kubernetes.io/unreachable:NoSchedule"
        ]
    );
    let placed = eventually("the pods replaced on b", WAIT, || async {
        let p = pods_by_node(&c).await;
        (p.len() == 3 && p.iter().all(|(_, n)| n.as_deref() == Some("b"))).then_some(p)
    })
    .await;
    assert_eq!(placed.len(), 3);
    let (events, _): (Vec<Event>, _) = c.client.list(None, &Filter::default()).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("TaintManagerEviction"))
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("NodeNotReady")
                && e.message.as_deref() == Some("Node a status is now: NodeNotReady"))
    );

    // It comes back: the taints go.
    a_alive.store(true, Ordering::Relaxed);
    eventually("node a untainted", WAIT, || async {
        let n: Node = c.client.get(None, "a").await.ok()?;
        taint_keys(&n).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_missing_node_are_collected() {
    let c = cluster_with_grace(Duration::from_secs(30)).await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "namespace": "default"},
        "spec": {"nodeName": "ghost", "containers": [{"name": "main", "image": "x:1"}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &p).await.unwrap();
    eventually("the stray pod collected", WAIT, || async {
        c.client
            .get::<Pod>(Some("default"), "stray")
            .await
            .is_err()
            .then_some(())
    })
    .await;
}
