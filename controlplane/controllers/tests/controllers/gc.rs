//! The garbage collector across kinds: Background deletes a Deployment's ReplicaSets and pods,
//! Orphan leaves them without the reference, Foreground deletes them before the owner; a
//! dependent of a custom resource goes with it; a dependent with one live owner left only
//! loses the reference to the gone one.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;
use strake_apimachinery::registry::Propagation;
use strake_apimachinery::resource::Part;
use strake_apimachinery::{DeleteOptions, Filter, ListOptions, WriteOptions};

use common::WAIT;

async fn app(c: &Cluster, name: &str) -> Deployment {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "x:1"}]}
            }
        }
    }))
    .unwrap();
    let d = c.client.create(Some("default"), &d).await.unwrap();
    eventually("two pods", WAIT, || async {
        (counts(c, name).await.1 == 2).then_some(())
    })
    .await;
    d
}

/// (replica sets, live pods) of app `name`.
async fn counts(c: &Cluster, name: &str) -> (usize, usize) {
    let (sets, _): (Vec<ReplicaSet>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let (pods, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let mine = |l: &Option<std::collections::BTreeMap<String, String>>| {
        l.as_ref().and_then(|l| l.get("app")).map(String::as_str) == Some(name)
    };
    (
        sets.iter().filter(|s| mine(&s.metadata.labels)).count(),
        pods.iter()
            .filter(|p| mine(&p.metadata.labels) && p.metadata.deletion_timestamp.is_none())
            .count(),
    )
}

fn delete_opts(p: Propagation) -> DeleteOptions {
    DeleteOptions {
        propagation: Some(p),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_orphan_and_foreground_cascades() {
    let c = cluster().await;

    app(&c, "bg").await;
    c.client
        .delete::<Deployment>(Some("default"), "bg", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("background: sets and pods gone", WAIT, || async {
        (counts(&c, "bg").await == (0, 0)).then_some(())
    })
    .await;

    app(&c, "orph").await;
    c.client
        .delete::<Deployment>(Some("default"), "orph", &delete_opts(Propagation::Orphan))
        .await
        .unwrap();
    eventually("orphan: the owner gone", WAIT, || async {
        c.client
            .get::<Deployment>(Some("default"), "orph")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (sets, _): (Vec<ReplicaSet>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let set = sets
        .iter()
        .find(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l["app"] == "orph")
        })
        .expect("the orphaned set stays");
    assert!(
        set.metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty),
        "{:?}",
        set.metadata.owner_references
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counts(&c, "orph").await,
        (1, 2),
        "orphaned set and pods stay"
    );

    let d = app(&c, "fg").await;
    // A finalizer on one pod holds the cascade, so the owner is seen held however fast the
    // rest goes.
    let (pods, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let held_pod = pods
        .iter()
        .find(|p| p.metadata.labels.as_ref().is_some_and(|l| l["app"] == "fg"))
        .and_then(|p| p.metadata.name.clone())
        .unwrap();
    c.client
        .modify::<Pod>(Some("default"), &held_pod, Part::Main, |p| {
            p.metadata.finalizers = Some(vec!["example.com/hold".into()]);
            true
        })
        .await
        .unwrap();
    c.client
        .delete::<Deployment>(Some("default"), "fg", &delete_opts(Propagation::Foreground))
        .await
        .unwrap();
    let held: Deployment = c
        .client
        .get(Some("default"), "fg")
        .await
        .expect("held by its finalizer");
    assert!(
        held.metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still: Deployment = c
        .client
        .get(Some("default"), "fg")
        .await
        .expect("held while a dependent remains");
    assert_eq!(still.metadata.uid, d.metadata.uid);
    c.client
        .modify::<Pod>(Some("default"), &held_pod, Part::Main, |p| {
            p.metadata.finalizers = None;
            true
        })
        .await
        .unwrap();
    // Until the owner goes, it is still there whenever a set or pod of it is.
    loop {
        let owner = c.client.get::<Deployment>(Some("default"), "fg").await;
        let (sets, pods) = counts(&c, "fg").await;
        if owner.is_err() {
            assert_eq!((sets, pods), (0, 0), "the owner went before its dependents");
            break;
        }
        assert_eq!(owner.unwrap().metadata.uid, d.metadata.uid);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_custom_resources_and_shared_dependents() {
    let c = cluster().await;
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .unwrap();
    for def in strake_kinds::crd::crd_defs(&crd) {
        c.reg.table().register(def);
    }
    let def = c
        .reg
        .table()
        .snapshot()
        .lookup("example.com", "v1", "widgets")
        .cloned()
        .unwrap();
    let widget = c
        .reg
        .create(
            &def,
            Some("default"),
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let keep = c
        .client
        .create(
            Some("default"),
            &ConfigMap {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("keep".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let widget_ref = OwnerReference {
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        name: "w".into(),
        uid: widget["metadata"]["uid"].as_str().unwrap().into(),
        ..Default::default()
    };
    let keep_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "keep".into(),
        uid: keep.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let owned = |name: &str, refs: Vec<OwnerReference>| ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(refs),
            ..Default::default()
        },
        ..Default::default()
    };
    c.client
        .create(
            Some("default"),
            &owned("only-widget", vec![widget_ref.clone()]),
        )
        .await
        .unwrap();
    c.client
        .create(
            Some("default"),
            &owned("both", vec![widget_ref.clone(), keep_ref.clone()]),
        )
        .await
        .unwrap();
    // A dependent whose owner never existed is collected too.
    let ghost = OwnerReference {
        uid: "00000000-0000-0000-0000-000000000000".into(),
        name: "ghost".into(),
        ..keep_ref.clone()
    };
    c.client
        .create(Some("default"), &owned("dangling", vec![ghost]))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.client
            .get::<ConfigMap>(Some("default"), "only-widget")
            .await
            .is_ok(),
        "a dependent of a live owner stays"
    );

    c.reg
        .delete(&def, Some("default"), "w", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the widget's dependent gone", WAIT, || async {
        c.client
            .get::<ConfigMap>(Some("default"), "only-widget")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let both = eventually(
        "the shared dependent loses the widget's reference",
        WAIT,
        || async {
            let cm: ConfigMap = c.client.get(Some("default"), "both").await.ok()?;
            (cm.metadata.owner_references.as_ref()?.len() == 1).then_some(cm)
        },
    )
    .await;
    assert_eq!(both.metadata.owner_references.unwrap()[0].uid, keep_ref.uid);
    eventually("the dangling dependent gone", WAIT, || async {
        c.client
            .get::<ConfigMap>(Some("default"), "dangling")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let left = c
        .reg
        .list(&def, Some("default"), &ListOptions::default())
        .await
        .unwrap();
    assert!(left.items.is_empty());
}
