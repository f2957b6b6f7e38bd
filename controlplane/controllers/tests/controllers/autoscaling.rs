//! The horizontal pod autoscaler on simulated metrics (nothing serves metrics.k8s.io yet),
//! against the real registry, the Deployment controller and the scripted kubelet: scaling up
//! on cpu utilization, the max/min range, the scale-down stabilization window, a behavior that
//! removes it, and the conditions and events when the target or the metrics are missing.

use crate::common;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use serde_json::json;
use strake_apimachinery::{Filter, Part};

use common::WAIT;

async fn replicas(c: &Cluster, name: &str) -> i32 {
    let d: Deployment = c.client.get(Some("default"), name).await.unwrap();
    d.spec.and_then(|s| s.replicas).unwrap_or(1)
}

async fn hpa(c: &Cluster, name: &str) -> HorizontalPodAutoscaler {
    c.client.get(Some("default"), name).await.unwrap()
}

/// The (status, reason) of a condition of the autoscaler.
async fn cond(c: &Cluster, name: &str, ty: &str) -> Option<(String, String)> {
    let h = hpa(c, name).await;
    h.status?
        .conditions?
        .into_iter()
        .find(|x| x.type_ == ty)
        .map(|x| (x.status, x.reason.unwrap_or_default()))
}

async fn wait_cond(c: &Cluster, name: &str, ty: &str, status: &str, reason: &str) {
    eventually(&format!("{name} {ty}={status} {reason}"), WAIT, || async {
        let got = cond(c, name, ty).await?;
        (got == (status.to_string(), reason.to_string())).then_some(())
    })
    .await;
}

async fn edit(c: &Cluster, name: &str, f: impl Fn(&mut HorizontalPodAutoscaler) + Send + Sync) {
    c.client
        .modify::<HorizontalPodAutoscaler>(Some("default"), name, Part::Main, |h| {
            f(h);
            true
        })
        .await
        .unwrap();
}

async fn events(c: &Cluster, reason: &str) -> Vec<String> {
    let (all, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    all.into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_a_deployment_on_cpu_within_its_range_and_windows() {
    let c = cluster().await;
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "web:1",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}
    }))
    .unwrap();
    c.client.create(Some("default"), &d).await.unwrap();
    // 90m of 100m requested: 90% against a 50% target.
    c.metrics.set("default", "*", "cpu", 90);
    let h: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &h).await.unwrap();
    // ceil(2 × 90/50) = 4, the maximum, where later syncs (four pods at 90% want 8) hold it:
    // what follows does not race the next sync however slow the machine is.
    eventually("scaled to four", WAIT, || async {
        (replicas(&c, "web").await == 4).then_some(())
    })
    .await;
    wait_cond(&c, "web", "ScalingActive", "True", "ValidMetricFound").await;
    // SucceededRescale on the sync that scaled, ReadyForNewScale on those after it.
    eventually("able to scale", WAIT, || async {
        let (status, reason) = cond(&c, "web", "AbleToScale").await?;
        (status == "True" && ["SucceededRescale", "ReadyForNewScale"].contains(&reason.as_str()))
            .then_some(())
    })
    .await;
    let h = hpa(&c, "web").await;
    let st = h.status.unwrap();
    assert_eq!(st.desired_replicas, 4);
    assert!(st.last_scale_time.is_some());
    let m = &st.current_metrics.unwrap()[0];
    let r = m.resource.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.current.average_utilization),
        ("cpu", Some(90))
    );
    assert_eq!(r.current.average_value.as_ref().unwrap().0, "90m");
    assert!(
        events(&c, "SuccessfulRescale").await.iter().any(|m| m
            == "New size: 4; reason: cpu resource utilization (percentage of request) above target"),
        "{:?}",
        events(&c, "SuccessfulRescale").await
    );

    // A lower maximum takes the target down to it at once.
    edit(&c, "web", |h| h.spec.as_mut().unwrap().max_replicas = 3).await;
    eventually("scaled down to the new maximum", WAIT, || async {
        (replicas(&c, "web").await == 3).then_some(())
    })
    .await;
    wait_cond(&c, "web", "ScalingLimited", "True", "TooManyReplicas").await;

    // Load drops: the 5-minute scale-down window holds the recent, higher recommendations.
    c.metrics.set("default", "*", "cpu", 10);
    edit(&c, "web", |h| h.spec.as_mut().unwrap().max_replicas = 6).await;
    wait_cond(&c, "web", "AbleToScale", "True", "ScaleDownStabilized").await;
    assert_eq!(replicas(&c, "web").await, 3);

    // Without a window (and the default 100% policy), it goes straight to what 10% needs.
    edit(&c, "web", |h| {
        h.spec.as_mut().unwrap().behavior =
            serde_json::from_value(json!({"scaleDown": {"stabilizationWindowSeconds": 0}}))
                .unwrap();
    })
    .await;
    // ceil(3 × 10/50) = 1, the minimum.
    eventually("scaled down", WAIT, || async {
        (replicas(&c, "web").await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_or_missing_metrics_are_reported() {
    let c = cluster().await;
    let h: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "ghost", "namespace": "default"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost"},
            "maxReplicas": 3}
    }))
    .unwrap();
    c.client.create(Some("default"), &h).await.unwrap();
    wait_cond(&c, "ghost", "AbleToScale", "False", "FailedGetScale").await;
    assert!(!events(&c, "FailedGetScale").await.is_empty());

    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "quiet", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "quiet"}},
            "template": {"metadata": {"labels": {"app": "quiet"}},
                "spec": {"containers": [{"name": "main", "image": "quiet:1",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}
    }))
    .unwrap();
    c.client.create(Some("default"), &d).await.unwrap();
    eventually("the pod", WAIT, || async {
        let d: Deployment = c.client.get(Some("default"), "quiet").await.ok()?;
        (d.status?.ready_replicas == Some(1)).then_some(())
    })
    .await;
    // The default metric (cpu at 80%), with no metrics for any pod.
    let h: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "quiet", "namespace": "default"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "quiet"},
            "maxReplicas": 3}
    }))
    .unwrap();
    c.client.create(Some("default"), &h).await.unwrap();
    wait_cond(
        &c,
        "quiet",
        "ScalingActive",
        "False",
        "FailedGetResourceMetric",
    )
    .await;
    assert!(
        events(&c, "FailedGetResourceMetric")
            .await
            .iter()
            .any(|m| m.contains("no metrics returned from resource metrics API"))
    );
    assert_eq!(replicas(&c, "quiet").await, 1);
}
