//! A cluster for controller tests: the real registry (built-in kinds, admission) over the
//! in-memory store, the controllers started as the control plane starts them, and a scripted
//! kubelet that runs every pod it is told to (pods tolerate a lost node for 1 s): it marks pods Running with an IP and
//! Ready (unless their image says `never-ready`; an image tagged `exit-N` finishes with exit code N) and finishes deletions at once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::storage::MemoryStore;
use strake_apimachinery::{DeleteOptions, Filter, Part, Registry};
use strake_controllers::autoscaler::StaticMetrics;
use strake_controllers::cache::Reflector;
use strake_controllers::{Client, ObjectRef, manager, nodeipam};

/// What the controllers publish as the cluster CA in these tests.
pub const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n";

pub struct Cluster {
    pub reg: Registry,
    pub client: Client,
    /// What the autoscaler reads as pod usage: set by a test.
    pub metrics: Arc<StaticMetrics>,
}

pub async fn cluster() -> Cluster {
    cluster_with_grace(manager::NODE_MONITOR_GRACE).await
}

/// A cluster whose nodes are unreachable after `grace` without a heartbeat.
pub async fn cluster_with_grace(grace: Duration) -> Cluster {
    let reg = Registry::new(
        Arc::new(MemoryStore::new()),
        strake_kinds::builtin_table(),
        strake_apimachinery::admission::standard(1),
    );
    let client = Client::new(reg.clone(), "test");
    let metrics = Arc::new(StaticMetrics::default());
    for ns in ["default", "kube-system"] {
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        client.create(None, &ns).await.expect("namespace");
    }
    manager::start(
        reg.clone(),
        manager::Options {
            identity: "test-instance".into(),
            workers: 2,
            ca_pem: Some(TEST_CA.into()),
            node_monitor_grace: grace,
            metrics: Some(manager::Metrics(metrics.clone())),
            local_path: Some("/var/lib/strake/local-path".into()),
            pod_network: Some(
                nodeipam::PodNetwork::new("10.244.0.0/22".parse().unwrap(), 24, vec![]).unwrap(),
            ),
            signer: Some(signer()),
        },
    );
    tokio::spawn(kubelet(client.named("kubelet")));
    Cluster {
        reg,
        client,
        metrics,
    }
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

async fn kubelet(client: Client) {
    let mut pods = Reflector::<Pod>::new(client.registry().clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef>();
    pods.on_change(move |c| {
        if c.new.is_some() {
            let _ = tx.send(ObjectRef::of(c.latest().as_ref()));
        }
    });
    let reader = pods.reader();
    tokio::spawn(pods.run());
    let mut next_ip: u32 = 0;
    while let Some(key) = rx.recv().await {
        let Some(pod) = reader.get(&key) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = client
                .delete::<Pod>(
                    key.ns(),
                    &key.name,
                    &DeleteOptions {
                        grace_period: Some(0),
                        ..Default::default()
                    },
                )
                .await;
            continue;
        }
        if pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p != "Pending")
        {
            continue;
        }
        let image = image_of(&pod);
        // `…:exit-N` images run to completion with exit code N.
        let exit: Option<i32> = image
            .rsplit_once(":exit-")
            .and_then(|(_, n)| n.parse().ok());
        let ready = !image.contains("never-ready") && exit.is_none();
        next_ip += 1;
        let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
        let now = Some(Time(Timestamp::now()));
        let _ = client
            .modify::<Pod>(key.ns(), &key.name, Part::Status, |p| {
                // The cache that woke us may be behind: a pod the test (or anyone) has since
                // moved on from Pending keeps its phase, as a real kubelet never takes a pod
                // back out of a terminal phase.
                if p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph != "Pending")
                {
                    return false;
                }
                let terminated = exit.map(|code| ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                let phase = match exit {
                    None => "Running",
                    Some(0) => "Succeeded",
                    Some(_) => "Failed",
                };
                // As kubelet patches only what it owns: what the scheduler wrote
                // (nominatedNodeName, PodScheduled) stays.
                let old = p.status.take().unwrap_or_default();
                let mut conditions: Vec<PodCondition> = old
                    .conditions
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.type_ != "Ready")
                    .collect();
                conditions.push(PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: now.clone(),
                    ..Default::default()
                });
                p.status = Some(PodStatus {
                    phase: Some(phase.into()),
                    pod_ip: Some(ip.clone()),
                    conditions: Some(conditions),
                    container_statuses: Some(vec![ContainerStatus {
                        name: "main".into(),
                        image: image_of(p),
                        image_id: String::new(),
                        ready,
                        restart_count: 0,
                        state: terminated.clone(),
                        ..Default::default()
                    }]),
                    ..old
                });
                true
            })
            .await;
    }
}

/// A Ready node with `cpu` and 8Gi allocatable, labelled with its hostname.
pub async fn ready_node(c: &Cluster, name: &str, cpu: &str) {
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!(
        {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}
    ))
    .expect("node");
    c.client.create(None, &n).await.expect("creating a node");
    let status: k8s_openapi::api::core::v1::NodeStatus =
        serde_json::from_value(serde_json::json!({
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }))
        .expect("node status");
    c.client
        .modify::<k8s_openapi::api::core::v1::Node>(None, name, Part::Status, |n| {
            n.status = Some(status.clone());
            true
        })
        .await
        .expect("node status");
}

/// Polls `f` every 20 ms until it gives a value; panics naming `what` after `within`.
/// How long a test waits for the controllers to get somewhere: generous, since these tests run
/// beside many others on two shared cores, and waiting costs nothing unless something is wrong.
pub const WAIT: Duration = Duration::from_secs(90);

pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live (not terminating) pods of `default` labelled `app=<app>`.
pub async fn pods(c: &Cluster, app: &str) -> Vec<Pod> {
    let (all, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .expect("pods");
    all.into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some(app)
        })
        .collect()
}

/// A CA for the certificate signer (kept in memory; its files go with the directory).
pub fn signer() -> strake_pki::ClusterCa {
    let dir = tempfile::tempdir().expect("a temporary directory");
    strake_pki::ClusterCa::load_or_generate(dir.path(), "test").expect("a CA")
}
