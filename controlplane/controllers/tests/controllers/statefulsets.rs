//! The StatefulSet controller: stable names, hostnames and claims; OrderedReady scaling up in
//! order and down from the top; a partitioned rolling update from the highest ordinal down.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::json;
use strake_apimachinery::{Filter, Part};

use common::WAIT;

async fn members(c: &Cluster) -> Vec<(String, String)> {
    let (ps, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = ps
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("db-"))
        })
        .map(|p| {
            (
                p.metadata.name.unwrap(),
                p.spec.unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn set_spec(c: &Cluster, f: impl Fn(&mut k8s_openapi::api::apps::v1::StatefulSetSpec)) {
    c.client
        .modify::<StatefulSet>(Some("default"), "db", Part::Main, |s| {
            f(s.spec.as_mut().unwrap());
            true
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_scaling_stable_identity_and_partitioned_updates() {
    let c = cluster().await;
    // Members always form a prefix 0..k: none is created before its predecessors exist, and
    // none removed before the ones above it.
    let stop = Arc::new(AtomicBool::new(false));
    let gap = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (client, stop, gap) = (c.client.clone(), stop.clone(), gap.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (ps, _): (Vec<Pod>, _) = client
                    .list(Some("default"), &Filter::default())
                    .await
                    .unwrap();
                let ords: BTreeSet<i32> = ps
                    .iter()
                    .filter_map(|p| {
                        p.metadata
                            .name
                            .as_deref()?
                            .strip_prefix("db-")?
                            .parse()
                            .ok()
                    })
                    .collect();
                if ords.iter().enumerate().any(|(i, o)| i as i32 != *o) {
                    gap.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "main", "image": "db:v1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    }))
    .unwrap();
    c.client.create(Some("default"), &set).await.unwrap();
    eventually("db-0..2", WAIT, || async {
        (members(&c).await.len() == 3).then_some(())
    })
    .await;
    let pod: Pod = c.client.get(Some("default"), "db-1").await.unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("db-1"), Some("db"))
    );
    let vol = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(vol.persistent_volume_claim.unwrap().claim_name, "data-db-1");
    assert_eq!(
        pod.metadata.labels.unwrap()["apps.kubernetes.io/pod-index"],
        "1"
    );
    for o in 0..3 {
        c.client
            .get::<PersistentVolumeClaim>(Some("default"), &format!("data-db-{o}"))
            .await
            .unwrap();
    }

    set_spec(&c, |s| s.replicas = Some(1)).await;
    eventually("scaled down to db-0", WAIT, || async {
        (members(&c)
            .await
            .iter()
            .map(|m| m.0.clone())
            .collect::<Vec<_>>()
            == ["db-0"])
        .then_some(())
    })
    .await;
    assert!(
        c.client
            .get::<PersistentVolumeClaim>(Some("default"), "data-db-2")
            .await
            .is_ok(),
        "claims are retained by default"
    );
    set_spec(&c, |s| s.replicas = Some(3)).await;
    eventually("back to three", WAIT, || async {
        (members(&c).await.len() == 3).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert!(
        !gap.load(Ordering::Relaxed),
        "members were created or removed out of order"
    );

    // A partitioned rolling update touches ordinals >= 1 only, then all.
    set_spec(&c, |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("db:v2".into());
        s.update_strategy = Some(
            serde_json::from_value(
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
            )
            .unwrap(),
        );
    })
    .await;
    eventually("db-1 and db-2 updated", WAIT, || async {
        let m = members(&c).await;
        (m.len() == 3 && m[1].1 == "db:v2" && m[2].1 == "db:v2").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(members(&c).await[0].1, "db:v1", "the partition kept db-0");
    set_spec(&c, |s| {
        s.update_strategy = Some(
            serde_json::from_value(
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            )
            .unwrap(),
        );
    })
    .await;
    let st = eventually("all updated, revisions converged", WAIT, || async {
        let s: StatefulSet = c.client.get(Some("default"), "db").await.ok()?;
        let st = s.status?;
        (st.updated_replicas == Some(3)
            && st.current_revision == st.update_revision
            && st.ready_replicas == Some(3))
        .then_some(st)
    })
    .await;
    assert!(st.update_revision.unwrap().starts_with("db-"));
    assert!(members(&c).await.iter().all(|m| m.1 == "db:v2"));
}
