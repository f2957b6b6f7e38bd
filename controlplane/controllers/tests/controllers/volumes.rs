//! Persistent volumes against the real registry with the scripted kubelet: the default
//! `local-path` class waits for a claim's first consumer, the scheduler names the node, the
//! provisioner makes a hostPath volume pinned there and the binder binds both ways; a claim in
//! use outlives its deletion until its pod goes, and its volume is then released and deleted
//! (the node's cleanup finalizer last). Static volumes bind by class, size, modes and
//! selector; Retain keeps a released volume; a bound claim pins its pod to the volume's node;
//! a classless claim gets the default class, even one marked later.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually, ready_node};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter, Part};
use strake_controllers::volumes::{CLEANUP_FINALIZER, LOCAL_PATH, NODE_LABEL};

use common::WAIT;
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

fn claim(name: &str, size: &str, class: Option<&str>) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": size}}},
    }))
    .unwrap()
}

fn pod_with(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main", "image": "x:1"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    }))
    .unwrap()
}

fn volume(
    name: &str,
    size: &str,
    class: &str,
    policy: &str,
    labels: serde_json::Value,
) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": class, "persistentVolumeReclaimPolicy": policy,
                 "hostPath": {"path": format!("/srv/{name}")}},
    }))
    .unwrap()
}

async fn get_claim(c: &Cluster, name: &str) -> Option<PersistentVolumeClaim> {
    c.client.get(Some("default"), name).await.ok()
}

async fn get_volume(c: &Cluster, name: &str) -> Option<PersistentVolume> {
    c.client.get(None, name).await.ok()
}

fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn volume_phase(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

async fn wait_claim_bound(c: &Cluster, name: &str) -> PersistentVolumeClaim {
    eventually(&format!("claim {name} bound"), WAIT, || async {
        get_claim(c, name)
            .await
            .filter(|c| claim_phase(c) == "Bound")
    })
    .await
}

async fn event_reasons(c: &Cluster, name: &str) -> Vec<(String, String)> {
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    events
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn wait_event(c: &Cluster, name: &str, reason: &str) -> String {
    eventually(&format!("{reason} event for {name}"), WAIT, || async {
        event_reasons(c, name)
            .await
            .into_iter()
            .find(|(r, _)| r == reason)
            .map(|(_, m)| m)
    })
    .await
}

async fn default_class(c: &Cluster) -> StorageClass {
    eventually("the local-path class", WAIT, || async {
        c.client.get::<StorageClass>(None, "local-path").await.ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_volumes_follow_their_first_consumer_and_go_with_their_claim() {
    let c = cluster().await;
    ready_node(&c, "n1", "4").await;
    ready_node(&c, "n2", "4").await;
    let class = default_class(&c).await;
    assert_eq!(class.provisioner, LOCAL_PATH);
    assert_eq!(
        class.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(
        class
            .metadata
            .annotations
            .unwrap_or_default()
            .get(DEFAULT_CLASS)
            .map(String::as_str),
        Some("true")
    );

    let made = c
        .client
        .create(Some("default"), &claim("data", "2Gi", None))
        .await
        .unwrap();
    assert_eq!(
        made.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path"),
        "a claim without a class gets the default"
    );
    assert!(
        made.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection"),
        "claims are protected while in use"
    );
    wait_event(&c, "data", "WaitForFirstConsumer").await;
    assert_eq!(
        claim_phase(&get_claim(&c, "data").await.unwrap()),
        "Pending"
    );

    c.client
        .create(Some("default"), &pod_with("user", "data"))
        .await
        .unwrap();
    let bound = wait_claim_bound(&c, "data").await;
    let node = eventually("the pod placed", WAIT, || async {
        let p: Pod = c.client.get(Some("default"), "user").await.ok()?;
        p.spec?.node_name
    })
    .await;
    let annotations = bound.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("volume.kubernetes.io/selected-node"),
        Some(&node)
    );
    assert_eq!(
        annotations
            .get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes")
    );
    let uid = bound.metadata.uid.clone().unwrap();
    let pv_name = bound
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap();
    assert_eq!(pv_name, format!("pvc-{uid}"));
    let status = bound.status.clone().unwrap();
    assert_eq!(status.capacity.unwrap()["storage"].0, "2Gi");
    assert_eq!(status.access_modes.unwrap(), vec!["ReadWriteOnce"]);

    let pv = eventually("the volume bound", WAIT, || async {
        get_volume(&c, &pv_name)
            .await
            .filter(|v| volume_phase(v) == "Bound")
    })
    .await;
    let spec = pv.spec.clone().unwrap();
    assert_eq!(
        spec.host_path.as_ref().map(|h| h.path.as_str()),
        Some(format!("/var/lib/strake/local-path/{pv_name}_default_data").as_str())
    );
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(
        spec.claim_ref.as_ref().and_then(|r| r.uid.clone()),
        Some(uid)
    );
    let affinity = serde_json::to_value(&spec.node_affinity).unwrap();
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!([node])
    );
    let labels = pv.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(NODE_LABEL), Some(&node));
    let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
    assert!(finalizers.iter().any(|f| f == CLEANUP_FINALIZER));
    assert!(
        finalizers
            .iter()
            .any(|f| f == "kubernetes.io/pv-protection")
    );
    let reasons: Vec<String> = event_reasons(&c, "data")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ProvisioningSucceeded"),
        "{reasons:?}"
    );

    // Deleting the claim while its pod runs leaves it terminating.
    c.client
        .delete::<PersistentVolumeClaim>(Some("default"), "data", &DeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = get_claim(&c, "data").await.expect("a claim in use stays");
    assert!(held.metadata.deletion_timestamp.is_some());

    c.client
        .delete::<Pod>(Some("default"), "user", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the claim gone", WAIT, || async {
        get_claim(&c, "data").await.is_none().then_some(())
    })
    .await;
    // Released, then deleted: it waits for its node to remove the directory.
    let deleting = eventually("the volume deleted", WAIT, || async {
        get_volume(&c, &pv_name)
            .await
            .filter(|v| v.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert_eq!(volume_phase(&deleting), "Released");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = get_volume(&c, &pv_name).await.unwrap();
    assert_eq!(
        held.metadata.finalizers.clone().unwrap_or_default(),
        vec![CLEANUP_FINALIZER.to_string()],
        "the protection finalizer goes once unbound; the node's cleanup stays"
    );
    // The node's agent lifts its finalizer.
    c.client
        .modify::<PersistentVolume>(None, &pv_name, Part::Main, |v| {
            v.metadata.finalizers = None;
            true
        })
        .await
        .unwrap();
    eventually("the volume gone", WAIT, || async {
        get_volume(&c, &pv_name).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_volumes_bind_by_what_the_claim_asks_and_are_reclaimed_by_policy() {
    let c = cluster().await;
    ready_node(&c, "n1", "4").await;
    for v in [
        volume("small", "1Gi", "manual", "Retain", json!({"tier": "db"})),
        volume("big", "10Gi", "manual", "Retain", json!({"tier": "db"})),
        volume("fast", "1Gi", "fast", "Retain", json!({})),
        volume("plain", "1Gi", "manual", "Retain", json!({})),
        volume("doomed", "3Gi", "manual", "Delete", json!({})),
    ] {
        let made = c.client.create(None, &v).await.unwrap();
        assert!(
            made.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == "kubernetes.io/pv-protection")
        );
    }
    for name in ["small", "big", "fast", "plain", "doomed"] {
        eventually(&format!("{name} available"), WAIT, || async {
            get_volume(&c, name)
                .await
                .filter(|v| volume_phase(v) == "Available")
        })
        .await;
    }
    let mut picky = claim("picky", "500Mi", Some("manual"));
    picky.spec.as_mut().unwrap().selector =
        Some(serde_json::from_value(json!({"matchLabels": {"tier": "db"}})).unwrap());
    c.client.create(Some("default"), &picky).await.unwrap();
    let bound = wait_claim_bound(&c, "picky").await;
    assert_eq!(
        bound.spec.and_then(|s| s.volume_name).as_deref(),
        Some("small"),
        "the smallest volume the selector allows"
    );
    c.client
        .create(Some("default"), &claim("large", "2Gi", Some("manual")))
        .await
        .unwrap();
    let bound = wait_claim_bound(&c, "large").await;
    assert_eq!(
        bound.spec.and_then(|s| s.volume_name).as_deref(),
        Some("doomed")
    );

    // Nothing big enough, no provisioner: the claim waits and says why.
    c.client
        .create(Some("default"), &claim("huge", "100Gi", Some("")))
        .await
        .unwrap();
    let why = wait_event(&c, "huge", "FailedBinding").await;
    assert!(why.contains("no storage class is set"), "{why}");
    c.client
        .create(Some("default"), &claim("typo", "1Gi", Some("nosuch")))
        .await
        .unwrap();
    let why = wait_event(&c, "typo", "ProvisioningFailed").await;
    assert_eq!(why, "storageclass.storage.k8s.io \"nosuch\" not found");

    // Retain: released and kept. Delete without a provisioner: Failed, and why.
    for name in ["picky", "large"] {
        c.client
            .delete::<PersistentVolumeClaim>(Some("default"), name, &DeleteOptions::default())
            .await
            .unwrap();
    }
    eventually("small released", WAIT, || async {
        get_volume(&c, "small")
            .await
            .filter(|v| volume_phase(v) == "Released")
    })
    .await;
    let failed = eventually("doomed failed", WAIT, || async {
        get_volume(&c, "doomed")
            .await
            .filter(|v| volume_phase(v) == "Failed")
    })
    .await;
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("no deletable volume plugin matched"),
        "{message}"
    );
    // A released volume is not bound again: a new claim gets another.
    c.client
        .create(Some("default"), &claim("again", "500Mi", Some("manual")))
        .await
        .unwrap();
    let bound = wait_claim_bound(&c, "again").await;
    assert_eq!(
        bound.spec.and_then(|s| s.volume_name).as_deref(),
        Some("plain")
    );

    // An unbound volume deletes at once; a bound one waits for its claim.
    c.client
        .delete::<PersistentVolume>(None, "fast", &DeleteOptions::default())
        .await
        .unwrap();
    c.client
        .delete::<PersistentVolume>(None, "plain", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("fast gone", WAIT, || async {
        get_volume(&c, "fast").await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        get_volume(&c, "plain").await.is_some(),
        "a bound volume is protected"
    );
    c.client
        .delete::<PersistentVolumeClaim>(Some("default"), "again", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("plain gone", WAIT, || async {
        get_volume(&c, "plain").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_claim_pins_its_pod_and_a_late_default_class_is_given_retroactively() {
    let c = cluster().await;
    ready_node(&c, "n1", "4").await;
    ready_node(&c, "n2", "4").await;
    ready_node(&c, "n3", "4").await;
    default_class(&c).await;
    let mut pinned = volume("on-n3", "1Gi", "", "Retain", json!({}));
    pinned.spec.as_mut().unwrap().node_affinity = Some(
        serde_json::from_value(
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n3"]}]}]}}),
        )
        .unwrap(),
    );
    c.client.create(None, &pinned).await.unwrap();
    c.client
        .create(Some("default"), &claim("pinned", "1Gi", Some("")))
        .await
        .unwrap();
    wait_claim_bound(&c, "pinned").await;
    for i in 0..3 {
        let name = format!("p{i}");
        c.client
            .create(Some("default"), &pod_with(&name, "pinned"))
            .await
            .unwrap();
        let node = eventually("the pod placed", WAIT, || async {
            let p: Pod = c.client.get(Some("default"), &name).await.ok()?;
            p.spec?.node_name
        })
        .await;
        assert_eq!(node, "n3");
    }

    // No default class: a classless claim stays classless until one is marked.
    c.client
        .modify::<StorageClass>(None, "local-path", Part::Main, |s| {
            s.metadata.annotations = None;
            true
        })
        .await
        .unwrap();
    let made = c
        .client
        .create(Some("default"), &claim("later", "1Gi", None))
        .await
        .unwrap();
    assert_eq!(made.spec.and_then(|s| s.storage_class_name), None);
    c.client
        .modify::<StorageClass>(None, "local-path", Part::Main, |s| {
            s.metadata.annotations = Some([(DEFAULT_CLASS.to_string(), "true".to_string())].into());
            true
        })
        .await
        .unwrap();
    eventually("the default class given", WAIT, || async {
        get_claim(&c, "later")
            .await
            .and_then(|c| c.spec?.storage_class_name)
            .filter(|n| n == "local-path")
    })
    .await;
}
