//! The Node object: registration with real capacity, and Ready heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

use crate::{AgentError, Shared};

/// Heartbeat period; the node lifecycle controller (later) allows several missed beats.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Total memory in KiB from /proc/meminfo.
fn mem_total_kib() -> u64 {
    read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn capacity() -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut m = BTreeMap::new();
    m.insert("cpu".to_string(), Quantity(cpus.to_string()));
    m.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", mem_total_kib())),
    );
    m.insert("pods".to_string(), Quantity("110".into()));
    m
}

/// Allocatable = capacity minus what the node itself needs (a fixed reserve for system daemons).
fn allocatable() -> BTreeMap<String, Quantity> {
    let mut m = capacity();
    let reserve_kib = 64 * 1024;
    m.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", mem_total_kib().saturating_sub(reserve_kib))),
    );
    m
}

fn conditions(ready: bool) -> Vec<NodeCondition> {
    let t = now();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    };
    vec![
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "agent has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "agent has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "agent has sufficient PID available",
        ),
        if ready {
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "strake agent is posting ready status",
            )
        } else {
            cond(
                "Ready",
                "False",
                "KubeletNotReady",
                "strake agent is starting",
            )
        },
    ]
}

fn node_object(shared: &Shared) -> Node {
    let cfg = &shared.cfg;
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(cfg.labels.iter().cloned());
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(capacity()),
            allocatable: Some(allocatable()),
            conditions: Some(conditions(true)),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: cfg.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: cfg.node_name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(cfg.port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: format!("strake://{version}"),
                kernel_version: kernel,
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.32.0-strake.{version}"),
                machine_id: read_trimmed("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: format!("Strake {version}"),
                system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Creates the Node, or takes over an existing one with the same name and refreshes its status.
pub async fn register(shared: &Shared) -> Result<(), AgentError> {
    let node = node_object(shared);
    let name = shared.cfg.node_name.clone();
    match shared.client.create::<Node>(None, &node).await {
        Ok(_) => tracing::info!(node = %name, "node registered"),
        Err(e) if e.is_conflict() => {
            tracing::info!(node = %name, "node already registered, updating it")
        }
        Err(e) => return Err(e.into()),
    }
    // Status is a subresource: creating a Node does not store it, so write it explicitly.
    let status = serde_json::to_value(&node.status).unwrap_or_default();
    shared
        .client
        .patch_status::<Node>(None, &name, &json!({"status": status}))
        .await?;
    Ok(())
}

/// RSS in KiB of every Strake process on the node, by role (init, controlplane, agent, shim).
pub fn strake_rss() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let argv0 = args.next().unwrap_or_default();
        if !(argv0 == "/init" || argv0.ends_with("/strake")) {
            continue;
        }
        let role = if argv0 == "/init" {
            "init".to_string()
        } else {
            args.next().unwrap_or_else(|| "init".into())
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        *out.entry(role).or_default() += kib;
    }
    out
}

pub async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut beats: u64 = 0;
    loop {
        tick.tick().await;
        beats += 1;
        if beats % 6 == 3 {
            let rss = strake_rss();
            let total: u64 = rss.values().sum();
            let parts: Vec<String> = rss
                .iter()
                .map(|(k, v)| format!("{k}={:.1}MiB", *v as f64 / 1024.0))
                .collect();
            tracing::info!(
                "strake processes RSS {:.1}MiB ({})",
                total as f64 / 1024.0,
                parts.join(" ")
            );
        }
        let patch = json!({"status": {"conditions": conditions(true), "capacity": capacity(), "allocatable": allocatable()}});
        match shared
            .client
            .patch_status::<Node>(None, &shared.cfg.node_name, &patch)
            .await
        {
            Ok(node) => {
                if let Err(e) = renew_lease(&shared, &node).await {
                    tracing::warn!(error = %e, "renewing the node lease failed");
                }
            }
            Err(e) if e.is_not_found() => {
                tracing::warn!("node object was deleted, registering again");
                if let Err(e) = register(&shared).await {
                    tracing::warn!(error = %e, "re-registration failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Where node Leases live.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a node Lease says it is good for (upstream's kubelet: 40 s, renewed every 10).
const LEASE_SECONDS: i32 = 40;

/// Renews this node's Lease in `kube-node-lease`, the heartbeat the node lifecycle controller
/// watches; created on first use, owned by the Node so it goes with it.
async fn renew_lease(shared: &Shared, node: &Node) -> Result<(), AgentError> {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
    let name = shared.cfg.node_name.as_str();
    let now = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    let ns = Some(LEASE_NAMESPACE);
    match shared.client.get::<Lease>(ns, name).await {
        Ok(mut lease) => {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = now;
            spec.holder_identity = Some(name.to_string());
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            shared.client.replace(ns, name, &lease).await?;
        }
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: node.metadata.uid.clone().map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.to_string(),
                            uid,
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_string()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    renew_time: now,
                    ..Default::default()
                }),
            };
            shared.client.create(ns, &lease).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
