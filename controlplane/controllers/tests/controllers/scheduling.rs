//! The scheduler on the controller runtime: binds within node capacity (counting pods it bound
//! that the cache has not caught up with), explains what does not fit as upstream does, tries
//! an unschedulable pod again when room appears (a pod going, a node joining) rather than by
//! polling, and leaves pods for other schedulers alone.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter};

use common::WAIT;
/// Upstream's words for a pod of priority 0 that fits nowhere among pods of its priority.
const UNSCHEDULABLE: &str = "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.";

async fn node(c: &Cluster, name: &str, cpu: &str) {
    common::ready_node(c, name, cpu).await;
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
    assert_eq!(cond.message.as_deref(), Some(UNSCHEDULABLE));
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedScheduling")
                && e.message.as_deref() == Some(UNSCHEDULABLE)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_and_is_placed_on_its_nominated_node() {
    let c = cluster().await;
    node(&c, "n1", "2").await;
    let class: k8s_openapi::api::scheduling::v1::PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "urgent"}, "value": 1000})).unwrap();
    c.client.create(None, &class).await.unwrap();
    pod(&c, "low-a", "1", None).await;
    pod(&c, "low-b", "1", None).await;
    for name in ["low-a", "low-b"] {
        eventually("the low pods bound", WAIT, || async {
            bound_to(&c, name).await
        })
        .await;
    }
    // A class that does not exist refuses the pod, naming it.
    let mut bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"priorityClassName": "nope", "containers": [{"name": "main", "image": "x:1"}]}
    }))
    .unwrap();
    let err = c.client.create(Some("default"), &bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no PriorityClass with name nope was found"),
        "{err}"
    );
    bad.metadata.name = Some("urgent".into());
    let spec = bad.spec.as_mut().unwrap();
    spec.priority_class_name = Some("urgent".into());
    spec.containers[0].resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "1", "memory": "1Mi"}})).unwrap());
    let created = c.client.create(Some("default"), &bad).await.unwrap();
    assert_eq!(created.spec.as_ref().unwrap().priority, Some(1000));
    let n = eventually("the urgent pod bound", WAIT, || async {
        bound_to(&c, "urgent").await
    })
    .await;
    assert_eq!(n, "n1");
    let p: Pod = c.client.get(Some("default"), "urgent").await.unwrap();
    assert_eq!(
        p.status.and_then(|s| s.nominated_node_name).as_deref(),
        Some("n1")
    );
    // Exactly one low pod made room.
    let left = [
        bound_to(&c, "low-a").await.is_some(),
        bound_to(&c, "low-b").await.is_some(),
    ];
    assert_eq!(left.iter().filter(|b| **b).count(), 1, "{left:?}");
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Preempted")
                && e.message.as_deref().is_some_and(
                    |m| m.starts_with("Preempted by pod ") && m.ends_with(" on node n1")
                )),
        "no Preempted event"
    );
}
