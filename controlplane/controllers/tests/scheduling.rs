//! The scheduler on the controller runtime: binds within node capacity (counting pods it bound
//! that the cache has not caught up with), explains what does not fit as upstream does, tries
//! an unschedulable pod again when room appears (a pod going, a node joining) rather than by
//! polling, and leaves pods for other schedulers alone.

mod common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter, Part};

const WAIT: Duration = Duration::from_secs(20);

async fn node(c: &Cluster, name: &str, cpu: &str) {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    c.client.create(None, &n).await.unwrap();
    let status: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(json!({
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]
    }))
    .unwrap();
    c.client
        .modify::<Node>(None, name, Part::Status, |n| {
            n.status = Some(status.clone());
            true
        })
        .await
        .unwrap();
}

async fn pod(c: &Cluster, name: &str, cpu: &str, scheduler: Option<&str>) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedulerName": scheduler,
            "containers": [{"name": "main", "image": "x:1",
                "resources": {"requests": {"cpu": cpu, "memory": "1Mi"}}}]
        }
    }))
    .unwrap();
    c.client.create(Some("default"), &p).await.unwrap();
}

async fn bound_to(c: &Cluster, name: &str) -> Option<String> {
    let p: Pod = c.client.get(Some("default"), name).await.ok()?;
    p.spec?.node_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_within_capacity_and_retries_when_room_appears() {
    let c = cluster().await;
    node(&c, "n1", "2").await;
    node(&c, "n2", "2").await;
    for i in 0..5 {
        pod(&c, &format!("p{i}"), "1", None).await;
    }
    // Four fit (two per node, no node overcommitted); the fifth does not.
    let placed = eventually("four pods bound", WAIT, || async {
        let mut by_node = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..5 {
            if let Some(n) = bound_to(&c, &format!("p{i}")).await {
                *by_node.entry(n).or_default() += 1;
            }
        }
        (by_node.values().sum::<usize>() == 4).then_some(by_node)
    })
    .await;
    assert_eq!(
        placed.values().copied().collect::<Vec<_>>(),
        vec![2, 2],
        "{placed:?}"
    );
    let mut unbound = None;
    for i in 0..5 {
        if bound_to(&c, &format!("p{i}")).await.is_none() {
            unbound = Some(format!("p{i}"));
        }
    }
    let unbound = unbound.unwrap();
    let cond = eventually("the PodScheduled=False condition", WAIT, || async {
        let p: Pod = c.client.get(Some("default"), &unbound).await.ok()?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some("0/2 nodes are available: 2 Insufficient cpu.")
    );
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedScheduling")
                && e.message.as_deref() == Some("0/2 nodes are available: 2 Insufficient cpu.")
                && e.involved_object.name.as_deref() == Some(unbound.as_str()))
    );
    assert!(events.iter().any(|e| {
        e.reason.as_deref() == Some("Scheduled")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Successfully assigned default/p"))
    }));

    // A bound pod goes: the waiting one is placed at once, not at the next periodic retry.
    let victim = (0..5)
        .map(|i| format!("p{i}"))
        .find(|n| *n != unbound)
        .unwrap();
    c.client
        .delete::<Pod>(
            Some("default"),
            &victim,
            &DeleteOptions {
                grace_period: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(
        "the waiting pod placed after a pod went",
        Duration::from_secs(10),
        || async { bound_to(&c, &unbound).await },
    )
    .await;

    // A pod that fits nowhere is placed when a node joins.
    pod(&c, "big", "3", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bound_to(&c, "big").await, None);
    node(&c, "n3", "4").await;
    let n = eventually(
        "the big pod on the new node",
        Duration::from_secs(10),
        || async { bound_to(&c, "big").await },
    )
    .await;
    assert_eq!(n, "n3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_for_another_scheduler_stay_pending() {
    let c = cluster().await;
    node(&c, "n1", "4").await;
    pod(&c, "mine", "100m", None).await;
    pod(&c, "theirs", "100m", Some("other-scheduler")).await;
    eventually("the default scheduler's pod bound", WAIT, || async {
        bound_to(&c, "mine").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bound_to(&c, "theirs").await, None);
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some("theirs"))
    );
}
