//! Node loss on hollow nodes, against the real control plane in a child process: a node whose
//! heartbeats stop is marked unreachable after the grace period, tainted, its pods evicted
//! (tolerationSeconds 0) and replaced on the other nodes within the configured time.

use std::time::{Duration, Instant};

use cluster_bench::track::Tracker;
use cluster_bench::{ControlPlane, ServeOptions, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use serde_json::json;
use strake_hollow::Hollow;

const GRACE: Duration = Duration::from_secs(4);
/// How often a hollow node renews its Lease. The grace period runs from the last renewal the
/// controller saw, which can be up to one interval before the node went silent.
const LEASE_INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hollow_nodes_pods_are_replaced_within_the_eviction_time() {
    let mut cp = ControlPlane::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_cluster-bench")),
        &ServeOptions {
            node_monitor_grace: GRACE,
            default_toleration_seconds: 0,
        },
    )
    .await
    .expect("control plane");
    cp.start_controllers().unwrap();
    let client = cp.client.clone();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "loss"}})).unwrap();
    client.create(None, &ns).await.unwrap();
    let hollow = Hollow::new(
        client.clone(),
        strake_hollow::Config {
            count: 3,
            lease_interval: LEASE_INTERVAL,
            ..Default::default()
        },
    );
    tokio::spawn(hollow.clone().run());
    wait_for(
        "three Ready hollow nodes",
        Duration::from_secs(60),
        || async {
            let (nodes, _) = client.list::<Node>(None, None).await.ok()?;
            (nodes.len() == 3).then_some(())
        },
    )
    .await
    .unwrap();
    let tracker = Tracker::start(client.clone(), "loss");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/web:1"}]}}}
    }))
    .unwrap();
    client.create(Some("loss"), &d).await.unwrap();
    wait_for("six replicas Running", Duration::from_secs(60), || async {
        (tracker.running() >= 6).then_some(())
    })
    .await
    .unwrap();
    // Default spreading puts two on each node.
    let lost = hollow.name(0);
    let on_lost = tracker.with(|s| s.bound.values().filter(|(_, n)| *n == lost).count());
    assert!(on_lost >= 1, "no replica on {lost}");
    hollow.silence(&lost);
    let t0 = Instant::now();
    wait_for(
        "the lost node's replicas running elsewhere",
        GRACE + Duration::from_secs(40),
        || async { (tracker.running_off(&lost) >= 6).then_some(()) },
    )
    .await
    .unwrap();
    let took = t0.elapsed();
    // Never before the grace period has run from the node's last heartbeat.
    assert!(
        took >= GRACE - LEASE_INTERVAL,
        "replaced after {took:?}, before the grace period ({GRACE:?} from the last heartbeat, \
         renewed every {LEASE_INTERVAL:?})"
    );
    let node: Node = client.get(None, &lost).await.unwrap();
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    assert_eq!(ready.status, "Unknown", "{ready:?}");
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"),
        "{taints:?}"
    );
    println!("{on_lost} pods of {lost} replaced {took:?} after it went silent (grace {GRACE:?})");
    drop(cp);
}
