//! The resource quota controller against the real registry with the scripted kubelet:
//! `status.hard` mirrors the spec and `status.used` follows pods (requests, limits, counts),
//! Services (node ports, load balancers), claims, ConfigMaps and kinds counted through the
//! registry (`secrets`, `count/deployments.apps`); finished pods stop counting, and scoped
//! quotas count only the pods their scopes select. Invalid quotas are refused.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, cluster};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Secret, Service};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Part};

use common::WAIT;

async fn used(c: &Cluster, name: &str) -> BTreeMap<String, String> {
    let q: ResourceQuota = c.client.get(Some("default"), name).await.expect("quota");
    q.status
        .and_then(|s| s.used)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

async fn wait_used(c: &Cluster, name: &str, want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut last = BTreeMap::new();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            last = used(c, name).await;
            if want.iter().all(|(k, v)| last.get(k) == Some(v)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(got.is_ok(), "{name}: wanted {want:?}, used is {last:?}");
}

fn pod(name: &str, resources: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main", "image": "x:1", "resources": resources}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_status_follows_what_the_namespace_uses() {
    let c = cluster().await;
    let q: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "compute", "namespace": "default"},
        "spec": {"hard": {
            "pods": "10", "requests.cpu": "4", "requests.memory": "4Gi", "limits.memory": "8Gi",
        }, "scopes": ["NotBestEffort"]}
    }))
    .unwrap();
    c.client.create(Some("default"), &q).await.unwrap();
    let objects: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "objects", "namespace": "default"},
        "spec": {"hard": {
            "services": "5", "services.nodeports": "2", "configmaps": "10", "secrets": "10",
            "count/deployments.apps": "3"
        }}
    }))
    .unwrap();
    c.client.create(Some("default"), &objects).await.unwrap();
    let best: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "best-effort", "namespace": "default"},
        "spec": {"hard": {"pods": "5"}, "scopes": ["BestEffort"]}
    }))
    .unwrap();
    c.client.create(Some("default"), &best).await.unwrap();
    // The service account controller's kube-root-ca.crt is the namespace's one ConfigMap.
    wait_used(&c, "compute", &[("pods", "0"), ("requests.cpu", "0")]).await;
    wait_used(&c, "objects", &[("configmaps", "1"), ("secrets", "0")]).await;
    let q: ResourceQuota = c.client.get(Some("default"), "compute").await.unwrap();
    assert_eq!(q.status.unwrap().hard, q.spec.unwrap().hard);

    c.client
        .create(
            Some("default"),
            &pod(
                "a",
                json!({"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}),
            ),
        )
        .await
        .unwrap();
    c.client
        .create(
            Some("default"),
            &pod(
                "b",
                json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}),
            ),
        )
        .await
        .unwrap();
    // A quota on memory limits refuses a pod whose container states none, as upstream.
    let err = c
        .client
        .create(
            Some("default"),
            &pod(
                "unbounded",
                json!({"requests": {"cpu": "1", "memory": "1Gi"}}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("failed quota: compute: must specify limits.memory for: main"),
        "{err}"
    );
    c.client
        .create(Some("default"), &pod("plain", json!({})))
        .await
        .unwrap();
    wait_used(
        &c,
        "compute",
        &[
            ("pods", "2"),
            ("requests.cpu", "1500m"),
            ("requests.memory", "1536Mi"),
            ("limits.memory", "2Gi"),
        ],
    )
    .await;
    // Only the pod without requests or limits is BestEffort.
    wait_used(&c, "best-effort", &[("pods", "1")]).await;

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}], "selector": {"app": "web"}}
    }))
    .unwrap();
    c.client.create(Some("default"), &svc).await.unwrap();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "settings", "namespace": "default"}, "data": {"k": "v"}}),
    )
    .unwrap();
    c.client.create(Some("default"), &cm).await.unwrap();
    wait_used(
        &c,
        "objects",
        &[
            ("services", "1"),
            ("services.nodeports", "2"),
            ("configmaps", "2"),
        ],
    )
    .await;

    // Secrets and Deployments are counted through the registry, within a resync.
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "token", "namespace": "default"}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    c.client.create(Some("default"), &secret).await.unwrap();
    c.client
        .modify::<ResourceQuota>(Some("default"), "objects", Part::Main, |q| {
            // A change to the quota recounts it at once.
            q.metadata
                .labels
                .get_or_insert_default()
                .insert("touched".into(), "yes".into());
            true
        })
        .await
        .unwrap();
    wait_used(
        &c,
        "objects",
        &[("secrets", "1"), ("count/deployments.apps", "0")],
    )
    .await;

    // A finished pod stops counting; a deleted one too.
    c.client
        .modify::<Pod>(Some("default"), "b", Part::Status, |p| {
            p.status.get_or_insert_default().phase = Some("Succeeded".into());
            true
        })
        .await
        .unwrap();
    c.client
        .delete::<Pod>(Some("default"), "plain", &DeleteOptions::default())
        .await
        .unwrap();
    wait_used(
        &c,
        "compute",
        &[
            ("pods", "1"),
            ("requests.cpu", "500m"),
            ("requests.memory", "512Mi"),
        ],
    )
    .await;
    wait_used(&c, "best-effort", &[("pods", "0")]).await;
}

/// Admission charges a quota in the same transaction as the object: twenty concurrent creates
/// against five free pods make exactly five pods, the rest refused in upstream's words, while
/// the controller recounts underneath; a deleted pod frees its place again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_pass_the_quota() {
    let c = cluster().await;
    let q: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "five", "namespace": "default"},
        "spec": {"hard": {"pods": "5", "count/configmaps": "6"}}
    }))
    .unwrap();
    c.client.create(Some("default"), &q).await.unwrap();
    // kube-root-ca.crt is the first ConfigMap.
    wait_used(&c, "five", &[("pods", "0"), ("count/configmaps", "1")]).await;
    let creates = (0..20).map(|i| {
        let client = c.client.clone();
        tokio::spawn(async move {
            let p = client
                .create(Some("default"), &pod(&format!("p{i}"), json!({})))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("c{i}"), "namespace": "default"}}),
            )
            .unwrap();
            let m = client
                .create(Some("default"), &cm)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (p, m)
        })
    });
    let results = futures::future::join_all(creates).await;
    let (mut pods, mut maps) = (0, 0);
    for r in results {
        let (p, m) = r.unwrap();
        match p {
            Ok(()) => pods += 1,
            Err(e) => assert!(
                e.contains(
                    "exceeded quota: five, requested: pods=1, used: pods=5, limited: pods=5"
                ),
                "{e}"
            ),
        }
        match m {
            Ok(()) => maps += 1,
            Err(e) => assert!(e.contains("exceeded quota: five"), "{e}"),
        }
    }
    assert_eq!((pods, maps), (5, 5), "every free place taken, none more");
    let (all, _) = c
        .client
        .list::<Pod>(Some("default"), &Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    wait_used(&c, "five", &[("pods", "5"), ("count/configmaps", "6")]).await;
    // The controller's recounts never lowered it below what exists: still full.
    let err = c
        .client
        .create(Some("default"), &pod("late", json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeded quota"), "{err}");
    let gone = all[0].metadata.name.clone().unwrap();
    c.client
        .delete::<Pod>(
            Some("default"),
            &gone,
            &DeleteOptions {
                grace_period: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_used(&c, "five", &[("pods", "4")]).await;
    c.client
        .create(Some("default"), &pod("late", json!({})))
        .await
        .expect("a freed place is taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_quotas_are_refused_naming_the_field() {
    let c = cluster().await;
    let bad = |spec: serde_json::Value| -> ResourceQuota {
        serde_json::from_value(
            json!({"metadata": {"name": "bad", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    };
    let cases = [
        (json!({"hard": {"pods": "lots"}}), "spec.hard[pods]"),
        (
            json!({"hard": {"pods": "-1"}}),
            "must be greater than or equal to 0",
        ),
        (
            json!({"hard": {"services": "1"}, "scopes": ["NotTerminating"]}),
            "unsupported scope applied to resource",
        ),
        (
            json!({"hard": {"pods": "1"}, "scopes": ["Sometimes"]}),
            "spec.scopes[0]",
        ),
        (
            json!({"hard": {"pods": "1"}, "scopes": ["BestEffort", "NotBestEffort"]}),
            "conflicting scopes",
        ),
        (
            json!({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In"}]}}),
            "spec.scopeSelector.matchExpressions[0].values",
        ),
    ];
    for (spec, want) in cases {
        let err = c
            .client
            .create(Some("default"), &bad(spec.clone()))
            .await
            .expect_err(&format!("{spec} was accepted"));
        let text = format!("{err:?}");
        assert!(text.contains(want), "{spec}: {text}");
    }
}
