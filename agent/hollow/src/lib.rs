//! Hollow nodes, as KWOK makes them: N simulated nodes registered against a real API server,
//! each with capacity, a Ready condition and a Lease renewed like a kubelet's. Pods the
//! scheduler binds to them are reported Running with an IP (nothing runs), and pods being
//! deleted are reported gone, so controllers, the scheduler and the node lifecycle behave as
//! with real nodes. One process holds thousands: one pod watch for all of them, one renewal
//! loop, and bounded concurrency for every write.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};
use strake_kubeclient::{Client, ClientError, WatchEvent};
use tokio::sync::Semaphore;

/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The label every hollow node carries.
pub const HOLLOW_LABEL: &str = "strake.dev/hollow";

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("registering hollow node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// What the simulated nodes look like.
#[derive(Clone, Debug)]
pub struct Config {
    /// Nodes are named `{prefix}-{index}`.
    pub prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// Nodes are spread over this many `topology.kubernetes.io/zone` values (0: no zones).
    pub zones: usize,
    /// How often each node renews its Lease (a kubelet's: 10 s).
    pub lease_interval: Duration,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Report bound pods Running and finish deletions (off: nodes only, as upstream's
    /// scheduler_perf has them).
    pub report_pods: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "hollow".into(),
            count: 1,
            cpu: "4".into(),
            memory: "16Gi".into(),
            max_pods: 110,
            zones: 3,
            lease_interval: Duration::from_secs(10),
            concurrency: 64,
            report_pods: true,
        }
    }
}

/// Counts of what the nodes reported, for benchmarks.
#[derive(Default, Debug)]
pub struct Stats {
    pub running: AtomicU64,
    pub deleted: AtomicU64,
    pub renewals: AtomicU64,
    pub errors: AtomicU64,
}

/// A set of hollow nodes.
pub struct Hollow {
    client: Client,
    cfg: Config,
    /// Nodes whose heartbeats are stopped (a simulated node loss).
    silenced: Mutex<HashSet<String>>,
    /// Pods reported Running, by uid.
    reported: Mutex<HashSet<String>>,
    /// Addresses handed out per node.
    next_ip: Mutex<HashMap<usize, u32>>,
    writes: Arc<Semaphore>,
    pub stats: Stats,
}

const LEASE_SECONDS: u64 = 40;

fn now() -> Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default()
}

impl Hollow {
    pub fn new(client: Client, cfg: Config) -> Arc<Self> {
        Arc::new(Self {
            writes: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            client,
            cfg,
            silenced: Mutex::default(),
            reported: Mutex::default(),
            next_ip: Mutex::default(),
            stats: Stats::default(),
        })
    }

    pub fn name(&self, i: usize) -> String {
        format!("{}-{i}", self.cfg.prefix)
    }

    /// The index of one of our nodes.
    fn index(&self, node: &str) -> Option<usize> {
        let i: usize = node
            .strip_prefix(&self.cfg.prefix)?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        (i < self.cfg.count).then_some(i)
    }

    /// The node's simulated address: 10.x.y.1 with x.y its index + 1, so pods get 10.x.y.N.
    fn node_ip(i: usize) -> Ipv4Addr {
        let n = (i as u32 + 1) << 8;
        Ipv4Addr::from(0x0a00_0000 | n | 1)
    }

    fn pod_ip(&self, i: usize) -> Ipv4Addr {
        let mut next = self.next_ip.lock().unwrap_or_else(|p| p.into_inner());
        let c = next.entry(i).or_insert(1);
        *c = *c % 253 + 1;
        let n = (i as u32 + 1) << 8;
        Ipv4Addr::from(0x0a00_0000 | n | (*c + 1))
    }

    fn status(&self, i: usize) -> Value {
        let resources = json!({"cpu": self.cfg.cpu, "memory": self.cfg.memory,
            "pods": self.cfg.max_pods.to_string(), "ephemeral-storage": "100Gi"});
        let t = now();
        json!({"status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": Self::node_ip(i).to_string()},
                          {"type": "Hostname", "address": self.name(i)}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "hollow node is posting ready status", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": t, "lastTransitionTime": t},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": t, "lastTransitionTime": t},
            ],
            "nodeInfo": {"kubeletVersion": "v1.32.0-strake-hollow", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "hollow://0", "kernelVersion": "", "osImage": "hollow",
                         "machineID": format!("hollow-{i}"), "systemUUID": format!("hollow-{i}"), "bootID": format!("hollow-{i}")},
        }})
    }

    async fn register_one(&self, i: usize) -> Result<(), HollowError> {
        let name = self.name(i);
        let err = |source| HollowError::Register {
            node: name.clone(),
            source,
        };
        let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", HOLLOW_LABEL: "true"});
        if self.cfg.zones > 0 {
            labels["topology.kubernetes.io/zone"] = json!(format!("zone-{}", i % self.cfg.zones));
        }
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("a node");
        let node = match self.client.create(None, &node).await {
            Ok(n) => n,
            Err(e) if e.is_conflict() => self.client.get::<Node>(None, &name).await.map_err(err)?,
            Err(e) => return Err(err(e)),
        };
        self.client
            .patch_status::<Node>(None, &name, &self.status(i))
            .await
            .map_err(err)?;
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                     "uid": node.metadata.uid.unwrap_or_default()}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()},
        }))
        .expect("a lease");
        match self.client.create(Some(LEASE_NAMESPACE), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => self.renew(i).await.map_err(err),
            Err(e) => Err(err(e)),
        }
    }

    /// Registers every node (Node, status, Lease), a bounded number at a time.
    pub async fn register(self: &Arc<Self>) -> Result<(), HollowError> {
        let results: Vec<Result<(), HollowError>> = futures::stream::iter(0..self.cfg.count)
            .map(|i| {
                let me = self.clone();
                async move { me.register_one(i).await }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn renew(&self, i: usize) -> Result<(), ClientError> {
        let patch = json!({"spec": {"renewTime": micro_now(), "holderIdentity": self.name(i),
                                    "leaseDurationSeconds": LEASE_SECONDS}});
        self.client
            .patch::<Lease>(Some(LEASE_NAMESPACE), &self.name(i), &patch)
            .await?;
        self.stats.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stops a node's heartbeats, as if it lost power.
    pub fn silence(&self, node: &str) {
        self.silenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string());
    }

    fn is_silenced(&self, node: &str) -> bool {
        self.silenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// Renews every live node's Lease once per interval, spread evenly over it.
    pub async fn heartbeats(self: Arc<Self>) {
        let n = self.cfg.count.max(1);
        let gap = self.cfg.lease_interval / n as u32;
        let mut tick = tokio::time::interval(gap.max(Duration::from_micros(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0;
        loop {
            tick.tick().await;
            let name = self.name(i);
            if !self.is_silenced(&name) {
                let Ok(permit) = self.writes.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.renew(i).await {
                        me.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(node = %me.name(i), error = %e, "lease renewal failed");
                    }
                    drop(permit);
                });
            }
            i = (i + 1) % n;
        }
    }

    /// Follows every pod: those bound to our nodes are reported Running, those being deleted
    /// are finished. Runs until the process ends, watching again after any break.
    pub async fn pods(self: Arc<Self>) {
        let mut rv = String::new();
        loop {
            let stream = match self
                .client
                .watch::<Pod>(None, None, &rv, Duration::from_secs(300))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    if matches!(e, ClientError::Api { code: 410, .. }) {
                        rv.clear();
                    }
                    tracing::warn!(error = %e, "hollow nodes cannot watch pods");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = Box::pin(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                        if let Some(v) = &p.metadata.resource_version {
                            rv = v.clone();
                        }
                        self.clone().observe(p).await;
                    }
                    Ok(WatchEvent::Deleted(p)) => {
                        if let Some(v) = &p.metadata.resource_version {
                            rv = v.clone();
                        }
                        if let Some(uid) = &p.metadata.uid {
                            self.reported
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(uid);
                        }
                    }
                    Ok(WatchEvent::Bookmark(v)) => rv = v,
                    Err(e) => {
                        if matches!(e, ClientError::Api { code: 410, .. }) {
                            rv.clear();
                        }
                        tracing::debug!(error = %e, "hollow pod watch ended");
                        break;
                    }
                }
            }
        }
    }

    async fn observe(self: Arc<Self>, pod: Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let Some(i) = self.index(&node) else {
            return;
        };
        if self.is_silenced(&node) {
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if !deleting {
            if matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed")) {
                return;
            }
            if !self
                .reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone())
            {
                return;
            }
        }
        let Ok(permit) = self.writes.clone().acquire_owned().await else {
            return;
        };
        let ip = self.pod_ip(i);
        tokio::spawn(async move {
            let res = if deleting {
                self.client
                    .delete::<Pod>(Some(&ns), &name, Some(0), Some(&uid))
                    .await
                    .map(|_| {
                        self.stats.deleted.fetch_add(1, Ordering::Relaxed);
                    })
            } else {
                let t = now();
                let containers: Vec<Value> = pod
                    .spec
                    .as_ref()
                    .map(|s| s.containers.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|c| {
                        json!({"name": c.name, "image": c.image, "imageID": format!("hollow://{}", c.image.as_deref().unwrap_or_default()),
                               "containerID": format!("hollow://{uid}/{}", c.name),
                               "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}})
                    })
                    .collect();
                let cond =
                    |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
                let patch = json!({"status": {
                    "phase": "Running", "hostIP": Self::node_ip(i).to_string(),
                    "hostIPs": [{"ip": Self::node_ip(i).to_string()}],
                    "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}], "startTime": t,
                    "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
                    "containerStatuses": containers,
                }});
                self.client
                    .patch_status::<Pod>(Some(&ns), &name, &patch)
                    .await
                    .map(|_| {
                        self.stats.running.fetch_add(1, Ordering::Relaxed);
                    })
            };
            match res {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.reported
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&uid);
                    tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "hollow pod report failed");
                }
            }
            drop(permit);
        });
    }

    /// Registers the nodes, then keeps their heartbeats and pods going until the process
    /// ends.
    pub async fn run(self: Arc<Self>) -> Result<(), HollowError> {
        self.register().await?;
        tracing::info!(nodes = self.cfg.count, prefix = %self.cfg.prefix, "hollow nodes registered");
        let beats = tokio::spawn(self.clone().heartbeats());
        if self.cfg.report_pods {
            self.pods().await;
            beats.abort();
        } else {
            let _ = beats.await;
        }
        Ok(())
    }
}

fn micro_now() -> Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default()
}
