//! ReplicationControllers run on the ReplicaSet controller, seen as the ReplicaSet they are
//! equivalent to: a selector defaulted from the template, orphans adopted under a v1
//! ReplicationController reference, status in their own form, scaling, and the cascade when
//! they are deleted.

use crate::common;

use common::{cluster, eventually, pods};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Part};

use common::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_keep_replicas_adopt_scale_and_cascade() {
    let c = cluster().await;
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "namespace": "default", "labels": {"app": "legacy"}},
        "spec": {"containers": [{"name": "main", "image": "legacy:v1"}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &orphan).await.unwrap();
    // No selector: the API defaults it from the template's labels.
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [{"name": "main", "image": "legacy:v1"}]}
            }
        }
    }))
    .unwrap();
    let rc = c.client.create(Some("default"), &rc).await.unwrap();
    let uid = rc.metadata.uid.clone().unwrap();
    let ps = eventually("three pods, the orphan adopted", WAIT, || async {
        let ps = pods(&c, "legacy").await;
        (ps.len() == 3).then_some(ps)
    })
    .await;
    for p in &ps {
        let r = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .unwrap_or_else(|| panic!("{:?} has no controller", p.metadata.name));
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("v1", "ReplicationController", uid.as_str())
        );
    }
    assert!(
        ps.iter()
            .any(|p| p.metadata.name.as_deref() == Some("orphan"))
    );
    let st = eventually("status counts", WAIT, || async {
        let rc: ReplicationController = c.client.get(Some("default"), "legacy").await.ok()?;
        let st = rc.status?;
        (st.ready_replicas == Some(3) && st.available_replicas == Some(3)).then_some(st)
    })
    .await;
    assert_eq!(st.replicas, 3);
    assert_eq!(st.fully_labeled_replicas, Some(3));
    assert_eq!(st.observed_generation, rc.metadata.generation);

    c.client
        .modify::<ReplicationController>(Some("default"), "legacy", Part::Main, |rc| {
            rc.spec.as_mut().unwrap().replicas = Some(1);
            true
        })
        .await
        .unwrap();
    eventually("scaled down to one", WAIT, || async {
        let rc: ReplicationController = c.client.get(Some("default"), "legacy").await.ok()?;
        (pods(&c, "legacy").await.len() == 1 && rc.status?.replicas == 1).then_some(())
    })
    .await;

    // Deleting it (background propagation) takes its pod with it.
    c.client
        .delete::<ReplicationController>(Some("default"), "legacy", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the pods collected", WAIT, || async {
        pods(&c, "legacy").await.is_empty().then_some(())
    })
    .await;
}
