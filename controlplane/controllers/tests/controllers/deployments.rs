//! The Deployment and ReplicaSet controllers against the real registry with a scripted
//! kubelet: rollouts within maxSurge/maxUnavailable, Recreate, rollback to an old revision,
//! pause and resume, scaling mid-rollout, the progress deadline, revision history, and
//! adoption, release and scale-down order of pods.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use common::{Cluster, cluster, eventually, pods};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use strake_apimachinery::{Filter, Part};
use strake_controllers::deployment::{REVISION, REVISION_HISTORY};

use common::WAIT;

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]}
            }
        }
    }))
    .expect("deployment")
}

async fn get(c: &Cluster, name: &str) -> Deployment {
    c.client
        .get(Some("default"), name)
        .await
        .expect("deployment")
}

/// The sets a deployment controls, oldest first.
async fn sets(c: &Cluster, name: &str) -> Vec<ReplicaSet> {
    let d = get(c, name).await;
    let (mut all, _): (Vec<ReplicaSet>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .expect("list");
    all.retain(|rs| {
        rs.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == d.metadata.uid.as_ref())
    });
    all.sort_by_key(strake_controllers::deployment::revision);
    all
}

fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn progressing_reason(d: &Deployment) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?
        .reason
        .clone()
}

/// Rolled out: what `kubectl rollout status` waits for.
async fn wait_complete(c: &Cluster, name: &str, replicas: i32) -> Deployment {
    eventually(&format!("deployment {name} rolled out"), WAIT, || async {
        let d = get(c, name).await;
        let st = d.status.clone()?;
        (st.observed_generation >= d.metadata.generation
            && st.updated_replicas == Some(replicas)
            && st.replicas == Some(replicas)
            && st.available_replicas == Some(replicas)
            && progressing_reason(&d).as_deref() == Some("NewReplicaSetAvailable"))
        .then_some(d)
    })
    .await
}

async fn set_image(c: &Cluster, name: &str, image: &str) {
    c.client
        .modify::<Deployment>(Some("default"), name, Part::Main, |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .image = Some(image.into());
            true
        })
        .await
        .expect("set image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_surge_and_availability_then_rolls_back() {
    let c = cluster().await;
    let d = deployment(
        "web",
        4,
        "web:v1",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    );
    c.client.create(Some("default"), &d).await.unwrap();
    let d = wait_complete(&c, "web", 4).await;
    assert_eq!(d.metadata.annotations.unwrap()[REVISION], "1");
    let first = sets(&c, "web").await;
    assert_eq!(first.len(), 1);
    let hash = first[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        first[0].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    let ps = pods(&c, "web").await;
    assert_eq!(ps.len(), 4);
    assert!(
        ps.iter()
            .all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash)
    );

    // Watch the invariants while the rollout runs: sets never sized beyond replicas +
    // maxSurge, and never fewer than replicas - maxUnavailable pods ready.
    let stop = Arc::new(AtomicBool::new(false));
    let worst_surge = Arc::new(AtomicI32::new(0));
    let worst_ready = Arc::new(AtomicI32::new(i32::MAX));
    let monitor = {
        let (client, stop, worst_surge, worst_ready) = (
            c.client.clone(),
            stop.clone(),
            worst_surge.clone(),
            worst_ready.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (all, _): (Vec<ReplicaSet>, _) = client
                    .list(Some("default"), &Filter::default())
                    .await
                    .unwrap();
                let total: i32 = all.iter().map(replicas).sum();
                worst_surge.fetch_max(total, Ordering::Relaxed);
                let (ps, _): (Vec<Pod>, _) = client
                    .list(Some("default"), &Filter::default())
                    .await
                    .unwrap();
                let ready = ps
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && strake_controllers::pods::is_ready(p)
                    })
                    .count() as i32;
                worst_ready.fetch_min(ready, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    set_image(&c, "web", "web:v2").await;
    let d = wait_complete(&c, "web", 4).await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert!(
        worst_surge.load(Ordering::Relaxed) <= 5,
        "sets sized to {} > 4 + 1",
        worst_surge.load(Ordering::Relaxed)
    );
    assert!(
        worst_ready.load(Ordering::Relaxed) >= 4,
        "only {} pods ready mid-rollout",
        worst_ready.load(Ordering::Relaxed)
    );
    assert_eq!(d.metadata.annotations.unwrap()[REVISION], "2");
    let both = sets(&c, "web").await;
    assert_eq!(both.len(), 2);
    assert_eq!(replicas(&both[0]), 0, "the old set is scaled to zero");
    assert_eq!(replicas(&both[1]), 4);
    assert!(pods(&c, "web").await.iter().all(|p| image(p) == "web:v2"));

    // `kubectl rollout undo` puts the old template back: the old set becomes revision 3 and
    // remembers it was revision 1; no third set appears.
    set_image(&c, "web", "web:v1").await;
    let d = wait_complete(&c, "web", 4).await;
    assert_eq!(d.metadata.annotations.unwrap()[REVISION], "3");
    let after = sets(&c, "web").await;
    assert_eq!(after.len(), 2, "a rollback reuses the old set");
    let back = after.last().unwrap();
    assert_eq!(back.metadata.name, first[0].metadata.name);
    let anns = back.metadata.annotations.as_ref().unwrap();
    assert_eq!(anns[REVISION], "3");
    assert_eq!(anns[REVISION_HISTORY], "1");
    assert!(pods(&c, "web").await.iter().all(|p| image(p) == "web:v1"));

    // Events as upstream words them.
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    let messages: Vec<String> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m == &format!("Scaled up replica set web-{hash} from 0 to 4")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Scaled down replica set web-")),
        "{messages:?}"
    );
    assert!(events.iter().any(|e| {
        e.reason.as_deref() == Some("SuccessfulCreate")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Created pod: web-"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_old_pods_before_starting_new_ones() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &deployment("db", 3, "db:v1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    wait_complete(&c, "db", 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mixed = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (client, stop, mixed) = (c.client.clone(), stop.clone(), mixed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (ps, _): (Vec<Pod>, _) = client
                    .list(Some("default"), &Filter::default())
                    .await
                    .unwrap();
                let images: std::collections::HashSet<String> = ps.iter().map(image).collect();
                if images.len() > 1 {
                    mixed.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    set_image(&c, "db", "db:v2").await;
    wait_complete(&c, "db", 3).await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert!(
        !mixed.load(Ordering::Relaxed),
        "old and new pods ran together under Recreate"
    );
    assert!(pods(&c, "db").await.iter().all(|p| image(p) == "db:v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_deployments_scale_but_do_not_roll_out() {
    let c = cluster().await;
    c.client
        .create(Some("default"), &deployment("api", 2, "api:v1", json!({})))
        .await
        .unwrap();
    wait_complete(&c, "api", 2).await;
    c.client
        .modify::<Deployment>(Some("default"), "api", Part::Main, |d| {
            d.spec.as_mut().unwrap().paused = Some(true);
            true
        })
        .await
        .unwrap();
    eventually("the paused condition", WAIT, || async {
        (progressing_reason(&get(&c, "api").await).as_deref() == Some("DeploymentPaused"))
            .then_some(())
    })
    .await;
    set_image(&c, "api", "api:v2").await;
    c.client
        .modify::<Deployment>(Some("default"), "api", Part::Main, |d| {
            d.spec.as_mut().unwrap().replicas = Some(5);
            true
        })
        .await
        .unwrap();
    eventually("a paused deployment to scale", WAIT, || async {
        (pods(&c, "api").await.len() == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sets(&c, "api").await.len(), 1, "no rollout while paused");
    assert!(pods(&c, "api").await.iter().all(|p| image(p) == "api:v1"));

    c.client
        .modify::<Deployment>(Some("default"), "api", Part::Main, |d| {
            d.spec.as_mut().unwrap().paused = None;
            true
        })
        .await
        .unwrap();
    wait_complete(&c, "api", 5).await;
    assert!(pods(&c, "api").await.iter().all(|p| image(p) == "api:v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_mid_rollout_is_proportional_and_deadline_is_reported() {
    let c = cluster().await;
    let mut d = deployment(
        "slow",
        10,
        "slow:v1",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}),
    );
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(2);
    c.client.create(Some("default"), &d).await.unwrap();
    wait_complete(&c, "slow", 10).await;
    // The new pods never turn ready: the rollout stalls with old and new sets both active.
    set_image(&c, "slow", "slow:never-ready").await;
    let stalled = eventually("the rollout to stall", WAIT, || async {
        let s = sets(&c, "slow").await;
        (s.len() == 2 && replicas(&s[0]) == 8 && replicas(&s[1]) == 5).then_some(s)
    })
    .await;
    assert_eq!(stalled.len(), 2);
    let d = eventually("ProgressDeadlineExceeded", WAIT, || async {
        let d = get(&c, "slow").await;
        (progressing_reason(&d).as_deref() == Some("ProgressDeadlineExceeded")).then_some(d)
    })
    .await;
    let cond = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(cond.status, "False");
    assert!(
        cond.message
            .unwrap()
            .ends_with("has timed out progressing.")
    );

    // Scaling from 10 to 20 mid-rollout adds to both sets in proportion (8:5 of 13 → 23).
    c.client
        .modify::<Deployment>(Some("default"), "slow", Part::Main, |d| {
            d.spec.as_mut().unwrap().replicas = Some(20);
            true
        })
        .await
        .unwrap();
    let s = eventually("proportional scaling", WAIT, || async {
        let s = sets(&c, "slow").await;
        (s.iter().map(replicas).sum::<i32>() == 23).then_some(s)
    })
    .await;
    assert_eq!(
        (replicas(&s[0]), replicas(&s[1])),
        (14, 9),
        "each set grew by its share"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_revisions_beyond_the_history_limit_are_deleted() {
    let c = cluster().await;
    let mut d = deployment("hist", 1, "hist:v1", json!({}));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    c.client.create(Some("default"), &d).await.unwrap();
    wait_complete(&c, "hist", 1).await;
    for v in 2..=4 {
        set_image(&c, "hist", &format!("hist:v{v}")).await;
        wait_complete(&c, "hist", 1).await;
    }
    let s = eventually("old sets pruned", WAIT, || async {
        let s = sets(&c, "hist").await;
        (s.len() == 2).then_some(s)
    })
    .await;
    let revisions: Vec<i64> = s
        .iter()
        .map(strake_controllers::deployment::revision)
        .collect();
    assert_eq!(revisions, vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_adopt_release_and_delete_unready_pods_first() {
    let c = cluster().await;
    // An orphan that the set's selector selects is adopted, not duplicated.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "namespace": "default", "labels": {"app": "cache"}},
        "spec": {"containers": [{"name": "main", "image": "cache:v1"}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &orphan).await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "cache", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {
                "metadata": {"labels": {"app": "cache"}},
                "spec": {"containers": [{"name": "main", "image": "cache:v1"}]}
            }
        }
    }))
    .unwrap();
    let rs = c.client.create(Some("default"), &rs).await.unwrap();
    let uid = rs.metadata.uid.clone().unwrap();
    eventually("three pods, the orphan adopted", WAIT, || async {
        let ps = pods(&c, "cache").await;
        let adopted = ps.iter().any(|p| {
            p.metadata.name.as_deref() == Some("orphan")
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid)
        });
        (ps.len() == 3 && adopted).then_some(())
    })
    .await;
    let st = eventually("status counts", WAIT, || async {
        let rs: ReplicaSet = c.client.get(Some("default"), "cache").await.ok()?;
        let st = rs.status?;
        (st.ready_replicas == Some(3) && st.available_replicas == Some(3)).then_some(st)
    })
    .await;
    assert_eq!(st.replicas, 3);

    // A pod relabelled out of the selector is released and replaced.
    c.client
        .modify::<Pod>(Some("default"), "orphan", Part::Main, |p| {
            p.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("app".into(), "debug".into());
            true
        })
        .await
        .unwrap();
    // Ready, the replacement: a Pending one would rightly go before the unready pod below.
    eventually("the relabelled pod released and replaced", WAIT, || async {
        let p: Pod = c.client.get(Some("default"), "orphan").await.ok()?;
        let released = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|r| r.uid != uid);
        let ps = pods(&c, "cache").await;
        (released && ps.len() == 3 && ps.iter().all(strake_controllers::pods::is_ready))
            .then_some(())
    })
    .await;

    // An unready pod goes first on scale-down.
    let unready: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unready", "namespace": "default", "labels": {"app": "cache"}},
        "spec": {"containers": [{"name": "main", "image": "cache:never-ready"}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &unready).await.unwrap();
    // Adopted as a fourth pod, so the set deletes one: the unready one.
    eventually("the unready pod deleted", WAIT, || async {
        let gone = c
            .client
            .get::<Pod>(Some("default"), "unready")
            .await
            .is_err();
        (gone && pods(&c, "cache").await.len() == 3).then_some(())
    })
    .await;
    c.client
        .modify::<ReplicaSet>(Some("default"), "cache", Part::Main, |rs| {
            rs.spec.as_mut().unwrap().replicas = Some(1);
            true
        })
        .await
        .unwrap();
    eventually("scaled down to one", WAIT, || async {
        (pods(&c, "cache").await.len() == 1).then_some(())
    })
    .await;
}

/// `kubectl rollout undo` as kubectl does it: the old set's template, its hash label removed,
/// replaces the deployment's template through a JSON patch of the served objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_with_the_served_template_reuses_the_old_set() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &deployment("undo", 2, "undo:v1", json!({})),
        )
        .await
        .unwrap();
    wait_complete(&c, "undo", 2).await;
    c.client
        .modify::<Deployment>(Some("default"), "undo", Part::Main, |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .env = Some(vec![
                serde_json::from_value(json!({"name": "MODE", "value": "two"})).unwrap(),
            ]);
            true
        })
        .await
        .unwrap();
    wait_complete(&c, "undo", 2).await;
    let first = sets(&c, "undo").await.remove(0);
    let rs_def = c.client.def::<ReplicaSet>().unwrap();
    let served = c
        .reg
        .get(
            &rs_def,
            Some("default"),
            first.metadata.name.as_deref().unwrap(),
        )
        .await
        .unwrap();
    let mut template = served["spec"]["template"].clone();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    // Go clients write the empty structs the server never stored.
    template["metadata"]["creationTimestamp"] = serde_json::Value::Null;
    template["spec"]["containers"][0]["resources"] = json!({});
    let d_def = c.client.def::<Deployment>().unwrap();
    c.reg
        .update_with(
            &d_def,
            Some("default"),
            "undo",
            Part::Main,
            &Default::default(),
            |mut d| {
                d["spec"]["template"] = template.clone();
                Ok(d)
            },
        )
        .await
        .unwrap();
    let d = wait_complete(&c, "undo", 2).await;
    assert_eq!(d.metadata.annotations.unwrap()[REVISION], "3");
    let after = sets(&c, "undo").await;
    let names: Vec<_> = after.iter().map(|s| s.metadata.name.clone()).collect();
    assert_eq!(
        after.len(),
        2,
        "a new set instead of the old one: {names:?}\n{:#?}",
        after
            .iter()
            .map(|s| &s.spec.as_ref().unwrap().template)
            .collect::<Vec<_>>()
    );
}
