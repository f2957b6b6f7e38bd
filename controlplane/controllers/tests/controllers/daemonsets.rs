//! The DaemonSet controller: a pod on every eligible node (selector and taints respected,
//! upstream's daemon tolerations added), following nodes that join, change or leave; a
//! rolling update one node at a time with ControllerRevisions; OnDelete waits.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter, Part};

use common::WAIT;

async fn node(c: &Cluster, name: &str, labels: serde_json::Value, taints: serde_json::Value) {
    let n: Node = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
    )
    .unwrap();
    c.client.create(None, &n).await.unwrap();
}

/// (pod, node, image) of the daemon's live pods, by node.
async fn placed(c: &Cluster, app: &str) -> Vec<(String, String, String)> {
    let (ps, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let mut out: Vec<(String, String, String)> = ps
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str)
                == Some(app)
        })
        .map(|p| {
            let spec = p.spec.unwrap();
            (
                p.metadata.name.unwrap(),
                spec.node_name.unwrap_or_default(),
                spec.containers[0].image.clone().unwrap_or_default(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn daemon(name: &str, strategy: serde_json::Value) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": {"role": "worker"},
                    "containers": [{"name": "main", "image": "agent:v1"}]}}
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_eligible_node_following_the_nodes() {
    let c = cluster().await;
    node(&c, "w1", json!({"role": "worker"}), json!([])).await;
    node(
        &c,
        "w2",
        json!({"role": "worker"}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    node(&c, "m1", json!({"role": "control-plane"}), json!([])).await;
    // A cordoned worker still runs daemons (upstream tolerates unschedulable).
    node(
        &c,
        "w3",
        json!({"role": "worker"}),
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    )
    .await;
    c.client
        .create(Some("default"), &daemon("agent", json!({})))
        .await
        .unwrap();
    let p = eventually("pods on w1 and w3 only", WAIT, || async {
        let p = placed(&c, "agent").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    assert_eq!(
        p.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["w1", "w3"],
        "the tainted and unselected nodes are skipped"
    );
    let pod: Pod = c.client.get(Some("default"), &p[0].0).await.unwrap();
    let tolerations = pod.spec.unwrap().tolerations.unwrap();
    assert!(tolerations.iter().any(
        |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
            && t.toleration_seconds.is_none()
    ));
    let ds = eventually("status counts", WAIT, || async {
        let d: DaemonSet = c.client.get(Some("default"), "agent").await.ok()?;
        let st = d.status.clone()?;
        (st.desired_number_scheduled == 2
            && st.number_available == Some(2)
            && st.updated_number_scheduled == Some(2))
        .then_some(d)
    })
    .await;
    assert_eq!(ds.status.unwrap().number_misscheduled, 0);

    // A node joins; a node's label goes; a node is deleted.
    node(&c, "w4", json!({"role": "worker"}), json!([])).await;
    c.client
        .modify::<Node>(None, "w1", Part::Main, |n| {
            n.metadata.labels = Some([("role".to_string(), "spare".to_string())].into());
            true
        })
        .await
        .unwrap();
    c.client
        .delete::<Node>(None, "w3", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("only w4 keeps a daemon", WAIT, || async {
        let p = placed(&c, "agent").await;
        (p.len() == 1 && p[0].1 == "w4").then_some(())
    })
    .await;

    // A NoSchedule taint leaves a running daemon alone; NoExecute removes it.
    let taint = |effect: &'static str| {
        move |n: &mut Node| {
            n.spec.get_or_insert_default().taints = Some(vec![
                serde_json::from_value(json!({"key": "maint", "effect": effect})).unwrap(),
            ]);
            true
        }
    };
    c.client
        .modify::<Node>(None, "w4", Part::Main, taint("NoSchedule"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        placed(&c, "agent").await.len(),
        1,
        "NoSchedule evicted a daemon"
    );
    c.client
        .modify::<Node>(None, "w4", Part::Main, taint("NoExecute"))
        .await
        .unwrap();
    eventually("NoExecute removes the daemon", WAIT, || async {
        placed(&c, "agent").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_keep_history_and_on_delete_waits() {
    let c = cluster().await;
    for n in ["w1", "w2", "w3"] {
        node(&c, n, json!({"role": "worker"}), json!([])).await;
    }
    c.client
        .create(
            Some("default"),
            &daemon("agent", json!({"type": "RollingUpdate"})),
        )
        .await
        .unwrap();
    eventually("three v1 pods", WAIT, || async {
        let p = placed(&c, "agent").await;
        (p.len() == 3 && p.iter().all(|x| x.2 == "agent:v1")).then_some(())
    })
    .await;
    c.client
        .modify::<DaemonSet>(Some("default"), "agent", Part::Main, |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .image = Some("agent:v2".into());
            true
        })
        .await
        .unwrap();
    eventually("three v2 pods", WAIT, || async {
        let p = placed(&c, "agent").await;
        (p.len() == 3 && p.iter().all(|x| x.2 == "agent:v2")).then_some(())
    })
    .await;
    let (revs, _): (Vec<ControllerRevision>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let mut numbers: Vec<i64> = revs.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2], "one revision per template");

    c.client
        .create(
            Some("default"),
            &daemon("manual", json!({"type": "OnDelete"})),
        )
        .await
        .unwrap();
    eventually("three manual pods", WAIT, || async {
        (placed(&c, "manual").await.len() == 3).then_some(())
    })
    .await;
    c.client
        .modify::<DaemonSet>(Some("default"), "manual", Part::Main, |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .image = Some("agent:v2".into());
            true
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = placed(&c, "manual").await;
    assert!(
        p.iter().all(|x| x.2 == "agent:v1"),
        "OnDelete replaced pods by itself"
    );
    c.client
        .delete::<Pod>(Some("default"), &p[0].0, &DeleteOptions::default())
        .await
        .unwrap();
    eventually(
        "the deleted pod replaced with the new template",
        WAIT,
        || async {
            let p = placed(&c, "manual").await;
            (p.len() == 3 && p.iter().filter(|x| x.2 == "agent:v2").count() == 1).then_some(())
        },
    )
    .await;
}
