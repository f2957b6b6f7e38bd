//! PodDisruptionBudgets: the status counts what may be disrupted, and an eviction through the
//! API's machinery spends it; one that would break the budget is a 429 naming the budget.

use crate::common;

use common::{cluster, eventually};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;
use strake_apimachinery::{ApiError, DeleteOptions};

use common::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_spend_the_budget_and_stop_at_its_minimum() {
    let c = cluster().await;
    for i in 0..3 {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "web:1"}]}
        }))
        .unwrap();
        c.client.create(Some("default"), &p).await.unwrap();
    }
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    c.client.create(Some("default"), &pdb).await.unwrap();
    let st = eventually("the budget's status", WAIT, || async {
        let b: PodDisruptionBudget = c.client.get(Some("default"), "web").await.ok()?;
        let st = b.status?;
        (st.current_healthy == 3).then_some(st)
    })
    .await;
    assert_eq!(
        (st.expected_pods, st.desired_healthy, st.disruptions_allowed),
        (3, 2, 1)
    );

    strake_kinds::pods::evict(
        c.client.registry(),
        "default",
        "web-0",
        &DeleteOptions::default(),
    )
    .await
    .expect("the first eviction fits the budget");
    match strake_kinds::pods::evict(
        c.client.registry(),
        "default",
        "web-1",
        &DeleteOptions::default(),
    )
    .await
    {
        Err(e @ ApiError::TooManyRequests { .. }) => {
            assert_eq!(e.code().as_u16(), 429);
            let status = e.status();
            assert_eq!(status["reason"], "TooManyRequests");
            assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
            let msg = status["details"]["causes"][0]["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                msg.contains("The disruption budget web needs 2 healthy pods"),
                "{msg}"
            );
        }
        other => panic!("an eviction past the budget was not refused: {other:?}"),
    }
    assert!(
        c.client.get::<Pod>(Some("default"), "web-1").await.is_ok(),
        "a refused eviction deleted the pod"
    );
    let st = eventually(
        "the budget recomputed without the evicted pod",
        WAIT,
        || async {
            let b: PodDisruptionBudget = c.client.get(Some("default"), "web").await.ok()?;
            let st = b.status?;
            (st.current_healthy == 2 && st.disrupted_pods.is_none()).then_some(st)
        },
    )
    .await;
    assert_eq!(st.disruptions_allowed, 0);
    assert_eq!(st.conditions.unwrap()[0].reason, "InsufficientPods");
}
