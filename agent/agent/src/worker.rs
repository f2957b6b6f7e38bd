//! One task per pod: runs its containers (pull, rootfs, start, wait, restart with back-off),
//! writes its status, and on deletion stops the containers within the grace period, removes
//! their cgroups and rootfs, and finally deletes the pod object.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;
use strake_oci::{ImageRef, PulledImage};
use strake_runtime::{ContainerSpec, NetworkMode};
use tokio::sync::{Notify, watch};

use crate::Shared;
use crate::lifecycle::{self, Hook};
use crate::sandbox::{self, PodSandbox};
use crate::status::{ContainerRecord, Role, State, Terminated, pod_status};
use crate::volumes::{self, Prepared};
use crate::{env, events, probe};

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest a postStart hook may run.
const POST_START_LIMIT: Duration = Duration::from_secs(600);

type Records = Arc<Mutex<Vec<ContainerRecord>>>;
/// The pod's address once its sandbox has one.
type PodIp = Arc<Mutex<Option<String>>>;

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    updates: watch::Receiver<Option<Pod>>,
}

/// Where a pod's files live.
pub fn pod_dir(shared: &Shared, uid: &str) -> PathBuf {
    shared.cfg.data_dir.join("pods").join(uid)
}

pub fn log_dir(shared: &Shared, ns: &str, name: &str, uid: &str) -> PathBuf {
    shared.cfg.log_dir.join(format!("{ns}_{name}_{uid}"))
}

/// The pod-level cgroup; each container gets a child of it.
pub fn pod_cgroup(uid: &str) -> String {
    format!("/strake/pod-{uid}")
}

pub fn container_id(uid: &str, container: &str, attempt: i32) -> String {
    format!("{uid}_{container}_{attempt}")
}

/// Stops and removes containers and rootfs left by a previous agent run (their pods are
/// re-created from the API by the watch that follows).
pub async fn sweep_leftovers(shared: &Shared) {
    for id in shared.runtime.list().unwrap_or_default() {
        tracing::info!(container = %id, "removing container left by a previous agent");
        let _ = shared.runtime.stop(&id, Duration::from_secs(1)).await;
        if let Err(e) = shared.runtime.remove(&id).await {
            tracing::warn!(container = %id, error = %e, "could not remove leftover container");
        }
    }
    let pods = shared.cfg.data_dir.join("pods");
    for rootfs in glob3(&pods) {
        let _ = strake_runtime::unmount(&rootfs);
    }
    for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        volumes::release(&pod.path());
    }
    let _ = std::fs::remove_dir_all(&pods);
    crate::sandbox::sweep(&shared.cfg.run_dir);
}

/// `<pods>/<uid>/<container>/<attempt>/rootfs` paths that exist.
fn glob3(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = |p: &Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    for a in dirs(root) {
        for b in dirs(&a) {
            for c in dirs(&b) {
                out.push(c.join("rootfs"));
            }
        }
    }
    out
}

impl PodWorker {
    pub fn new(shared: Arc<Shared>, pod: Pod, updates: watch::Receiver<Option<Pod>>) -> Self {
        Self {
            shared,
            pod,
            updates,
        }
    }

    pub async fn run(mut self) {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let start_time = jiff::Timestamp::now();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let records: Records = Arc::new(Mutex::new(records_for(&spec)));
        let dirty = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
        let pod_cell = Arc::new(Mutex::new(self.pod.clone()));
        let pod_ip: PodIp = Arc::default();

        let status_task = tokio::spawn(write_status(
            self.shared.clone(),
            pod_cell.clone(),
            records.clone(),
            dirty.clone(),
            start_time,
            pod_ip.clone(),
        ));
        dirty.notify_one();

        let tasks = vec![tokio::spawn(start_containers(
            self.shared.clone(),
            self.pod.clone(),
            records.clone(),
            dirty.clone(),
            stop_rx.clone(),
            self.updates.clone(),
            pod_ip,
        ))];
        tracing::info!(pod = %format!("{ns}/{name}"), %uid, "pod worker started");

        // Follow updates until the pod is being deleted (or is gone).
        let grace = loop {
            if self.updates.changed().await.is_err() {
                break Duration::from_secs(2);
            }
            let next = self.updates.borrow_and_update().clone();
            match next {
                None => break Duration::from_secs(0),
                Some(p) => {
                    *pod_cell.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
                    if p.metadata.deletion_timestamp.is_some() {
                        break Duration::from_secs(
                            p.metadata
                                .deletion_grace_period_seconds
                                .unwrap_or(30)
                                .max(0) as u64,
                        );
                    }
                }
            }
        };
        tracing::info!(pod = %format!("{ns}/{name}"), ?grace, "stopping pod");
        let _ = stop_tx.send(Some(grace));
        for t in tasks {
            let _ = t.await;
        }
        dirty.notify_one();
        // Give the status writer a moment to publish the final state, then stop it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status_task.abort();
        sandbox::remove(&self.shared, &uid).await;
        volumes::release(&pod_dir(&self.shared, &uid));
        if let Err(e) = strake_runtime::remove_cgroup(&pod_cgroup(&uid)) {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "removing the pod cgroup failed");
        }
        let _ = tokio::fs::remove_dir_all(pod_dir(&self.shared, &uid)).await;
        let _ = tokio::fs::remove_dir_all(log_dir(&self.shared, &ns, &name, &uid)).await;
        match self
            .shared
            .client
            .delete::<Pod>(Some(&ns), &name, Some(0), Some(&uid))
            .await
        {
            Ok(()) => tracing::info!(pod = %format!("{ns}/{name}"), "pod removed"),
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "final delete failed")
            }
        }
    }
}

/// One record per container: init containers and sidecars first, in spec order.
fn records_for(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<ContainerRecord> {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let has_init = !inits.is_empty();
    let record = |c: &Container, role| {
        ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or(""), role, has_init)
    };
    inits
        .iter()
        .map(|c| record(c, role_of_init(c)))
        .chain(spec.containers.iter().map(|c| record(c, Role::Main)))
        .collect()
}

fn role_of_init(c: &Container) -> Role {
    if c.restart_policy.as_deref() == Some("Always") {
        Role::Sidecar
    } else {
        Role::Init
    }
}

/// Sets the pod's volumes up (retrying, with the reason in each container's waiting state,
/// until they are ready or the pod stops), then runs the init sequence: each init container
/// to completion in order, each sidecar until it has started. Then the containers run until
/// they end or the pod stops; sidecars are stopped last, in reverse order, with what is left
/// of the grace period.
async fn start_containers(
    shared: Arc<Shared>,
    pod: Pod,
    records: Records,
    dirty: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
    updates: watch::Receiver<Option<Pod>>,
    pod_ip: PodIp,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = pod_dir(&shared, &uid);
    let mut delay = Duration::from_millis(500);
    let prepared = loop {
        match volumes::prepare(&shared, &pod, &dir).await {
            Ok(v) => break v,
            Err(e) => {
                tracing::info!(pod = %uid, error = %e, "volumes not ready");
                // As the kubelet: a FailedMount Event per attempt (repeats raise its count).
                events::record(
                    &shared,
                    &pod,
                    None,
                    events::Type::Warning,
                    "FailedMount",
                    &e.to_string(),
                );
                volumes::release(&dir);
                say_waiting(&records, &dirty, &e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_stop(&mut stop) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let prepared = Arc::new(prepared);
    let mut delay = Duration::from_millis(500);
    let pod_sandbox = loop {
        let network = if sandbox::host_network(&pod) {
            None
        } else {
            let mut ready = shared.network.subscribe();
            if ready.borrow().is_none() {
                say_waiting(
                    &records,
                    &dirty,
                    "network is not ready: waiting for this node's podCIDR",
                );
                tokio::select! {
                    r = ready.wait_for(Option::is_some) => if r.is_err() { return },
                    _ = wait_stop(&mut stop) => return,
                }
            }
            ready.borrow().clone()
        };
        match sandbox::create(&shared, &pod, &dir, network).await {
            Ok((s, warnings)) => {
                for w in warnings {
                    events::record(
                        &shared,
                        &pod,
                        None,
                        events::Type::Warning,
                        "MissingClusterDNS",
                        &w,
                    );
                }
                break s;
            }
            Err(e) => {
                tracing::warn!(pod = %uid, error = %e, "creating the pod sandbox failed");
                let message = format!("Failed to create pod sandbox: {e}");
                events::record(
                    &shared,
                    &pod,
                    None,
                    events::Type::Warning,
                    "FailedCreatePodSandBox",
                    &message,
                );
                sandbox::remove(&shared, &uid).await;
                say_waiting(&records, &dirty, &message);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_stop(&mut stop) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    *pod_ip.lock().unwrap_or_else(|e| e.into_inner()) = pod_sandbox.ip.map(|ip| ip.to_string());
    dirty.notify_one();
    let pod_sandbox = Arc::new(pod_sandbox);
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let pod_grace =
        Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    let ctx =
        |c: &Container, index: usize, role: Role, stop: &watch::Receiver<Option<Duration>>| {
            let restart_policy = match role {
                Role::Sidecar => "Always".to_string(),
                // An init container is retried until it succeeds unless the pod never restarts.
                Role::Init if pod_policy == "Never" => "Never".to_string(),
                Role::Init => "OnFailure".to_string(),
                Role::Main => pod_policy.clone(),
            };
            ContainerCtx {
                shared: shared.clone(),
                pod: pod.clone(),
                container: c.clone(),
                index,
                role,
                restart_policy,
                records: records.clone(),
                dirty: dirty.clone(),
                stop: stop.clone(),
                volumes: prepared.clone(),
                sandbox: pod_sandbox.clone(),
                started: None,
                updates: updates.clone(),
                redefined: false,
            }
        };
    // Sidecars have a stop signal of their own: they outlive the containers.
    let (sidecar_stop, sidecar_stop_rx) = watch::channel::<Option<Duration>>(None);
    let mut sidecars = Vec::new();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let mut initialized = true;
    for (i, c) in inits.iter().enumerate() {
        if stop.borrow().is_some() {
            initialized = false;
            break;
        }
        let role = role_of_init(c);
        if role == Role::Sidecar {
            let (started_tx, mut started_rx) = watch::channel(false);
            let mut sidecar = ctx(c, i, role, &sidecar_stop_rx);
            sidecar.started = Some(started_tx);
            sidecars.push(tokio::spawn(sidecar.run()));
            tokio::select! {
                r = started_rx.wait_for(|s| *s) => if r.is_err() { initialized = false; break },
                _ = wait_stop(&mut stop) => { initialized = false; break }
            }
        } else if !ctx(c, i, role, &stop).run().await {
            initialized = false;
            break;
        }
    }
    // When the pod was told to stop: the sidecars get what is left of the grace period.
    let mut stop_seen = std::time::Instant::now();
    if initialized {
        let tasks: Vec<_> = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(ctx(c, inits.len() + i, Role::Main, &stop).run()))
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        tokio::select! {
            _ = &mut all => {}
            _ = wait_stop(&mut stop) => {
                stop_seen = std::time::Instant::now();
                all.await;
            }
        }
    }
    if sidecars.is_empty() {
        return;
    }
    // The containers ended (the pod completed) or were stopped: now the sidecars, with the
    // grace period's remainder when the pod is being deleted.
    let grace = match *stop.borrow() {
        Some(g) if g.is_zero() => g,
        Some(g) => g
            .saturating_sub(stop_seen.elapsed())
            .max(Duration::from_secs(1)),
        None => pod_grace,
    };
    let _ = sidecar_stop.send(Some(grace));
    for t in sidecars.into_iter().rev() {
        let _ = t.await;
    }
}

/// Keeps each waiting container's reason (ContainerCreating, PodInitializing) and says why
/// it waits.
fn say_waiting(records: &Records, dirty: &Notify, why: &str) {
    {
        let mut r = records.lock().unwrap_or_else(|e| e.into_inner());
        for rec in r.iter_mut() {
            if let State::Waiting { message, .. } = &mut rec.state {
                *message = Some(why.to_string());
            }
        }
    }
    dirty.notify_one();
}

async fn write_status(
    shared: Arc<Shared>,
    pod: Arc<Mutex<Pod>>,
    records: Records,
    dirty: Arc<Notify>,
    start: jiff::Timestamp,
    pod_ip: PodIp,
) {
    let mut last = None;
    loop {
        dirty.notified().await;
        let (p, recs) = {
            let p = pod.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let r = records.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (p, r)
        };
        let host_ip = shared.cfg.node_ip.to_string();
        let ip = if sandbox::host_network(&p) {
            Some(host_ip.clone())
        } else {
            pod_ip.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let status = pod_status(&p, &recs, &host_ip, ip.as_deref(), start);
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        // Conditions carry transition times; compare without them to avoid needless writes.
        let mut key = value.clone();
        if let Some(c) = key.get_mut("conditions") {
            *c = json!(c.as_array().map(|a| {
                a.iter()
                    .map(|c| (c["type"].clone(), c["status"].clone()))
                    .collect::<Vec<_>>()
            }));
        }
        if last.as_ref() == Some(&key) {
            continue;
        }
        if let Some(obj) = value.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        match shared
            .client
            .patch_status::<Pod>(Some(&ns), &name, &json!({"status": value}))
            .await
        {
            Ok(_) => last = Some(key),
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "status update failed, will retry");
                tokio::time::sleep(Duration::from_millis(500)).await;
                dirty.notify_one();
            }
        }
    }
}

struct ContainerCtx {
    shared: Arc<Shared>,
    pod: Pod,
    container: Container,
    index: usize,
    role: Role,
    /// Always, OnFailure or Never, as it applies to this container.
    restart_policy: String,
    records: Records,
    dirty: Arc<Notify>,
    stop: watch::Receiver<Option<Duration>>,
    volumes: Arc<Prepared>,
    /// The pod's shared namespaces, address and managed files.
    sandbox: Arc<PodSandbox>,
    /// Told once the container has started (its startup probe passed): the init sequence
    /// waits on it for a sidecar.
    started: Option<watch::Sender<bool>>,
    /// The pod as updated: a new image for this container restarts it.
    updates: watch::Receiver<Option<Pod>>,
    /// The last stop was for a new image: restart at once, whatever the policy.
    redefined: bool,
}

/// Waits until the pod's updates give container `name` an image other than `current`.
async fn new_image(
    updates: &mut watch::Receiver<Option<Pod>>,
    name: &str,
    current: &str,
) -> String {
    loop {
        if updates.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let image = updates.borrow_and_update().as_ref().and_then(|p| {
            let spec = p.spec.as_ref()?;
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == name)?
                .image
                .clone()
        });
        if let Some(image) = image.filter(|i| i != current) {
            return image;
        }
    }
}

enum Outcome {
    Exited(strake_runtime::ExitStatus),
    Stopped,
}

impl ContainerCtx {
    fn update(&self, f: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(rec) = r.get_mut(self.index) {
                f(rec);
            }
        }
        self.dirty.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Sleeps for `d` unless the pod is stopped first; returns false if stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.changed() => false,
        }
    }

    /// Records an event about this container.
    fn event(&self, ty: events::Type, reason: &str, message: &str) {
        let list = match self.role {
            Role::Main => "containers",
            Role::Init | Role::Sidecar => "initContainers",
        };
        let path = format!("spec.{list}{{{}}}", self.container.name);
        events::record(&self.shared, &self.pod, Some(&path), ty, reason, message);
    }

    /// The container's probes, aimed at the pod's address; exec probes run through the
    /// runtime in container `id`.
    fn prober(&self, id: &str) -> probe::Prober {
        let runtime = self.shared.runtime.clone();
        let id = id.to_string();
        let exec: probe::ExecFn = Arc::new(move |args: Vec<String>, timeout: Duration| {
            let (runtime, id) = (runtime.clone(), id.clone());
            Box::pin(async move {
                runtime
                    .exec(&id, &args, timeout)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        probe::Prober {
            startup: self.container.startup_probe.clone(),
            liveness: self.container.liveness_probe.clone(),
            readiness: self.container.readiness_probe.clone(),
            target: probe::Target {
                ip: self.pod_ip(),
                ports: self.container.ports.clone().unwrap_or_default(),
                exec: Some(exec),
            },
        }
    }

    /// Runs the preStop hook within `grace`; returns what is left of it for the stop (at
    /// least 2 s after a hook, as the kubelet gives).
    async fn pre_stop(&self, id: &str, grace: Duration) -> Duration {
        let Some(hook) = self
            .container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.clone())
        else {
            return grace;
        };
        if grace.is_zero() {
            return grace;
        }
        let began = std::time::Instant::now();
        let target = self.prober(id).target;
        let ran = tokio::time::timeout(grace, lifecycle::run(&hook, &target, grace)).await;
        let failure = match ran {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "did not finish within the grace period of {}s",
                grace.as_secs()
            )),
        };
        if let Some(e) = failure {
            self.event(
                events::Type::Warning,
                Hook::PreStop.failure_reason(),
                &format!("PreStopHook failed: {e}"),
            );
        }
        grace
            .saturating_sub(began.elapsed())
            .max(Duration::from_secs(2))
    }

    /// The pod's address: its own, or the node's on the host network.
    fn pod_ip(&self) -> String {
        self.sandbox
            .ip
            .map_or_else(|| self.shared.cfg.node_ip.to_string(), |ip| ip.to_string())
    }

    fn waiting(&self, reason: &str, message: Option<String>) {
        let reason = reason.to_string();
        self.update(|r| r.state = State::Waiting { reason, message });
    }

    /// Runs the container, restarting it as its policy says, until it is done (returns
    /// whether it ended with exit code 0) or the pod stops (returns false).
    async fn run(mut self) -> bool {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let restart_policy = self.restart_policy.clone();
        let mut succeeded = false;
        let mut backoff = BACKOFF_START;
        let mut attempt: i32 = 0;
        loop {
            if self.stopping() {
                break;
            }
            let image_name = self.container.image.clone().unwrap_or_default();
            let image = match ImageRef::parse(&image_name) {
                Ok(i) => i,
                Err(e) => {
                    self.waiting(
                        "InvalidImageName",
                        Some(format!(
                            "Failed to apply default image tag {image_name:?}: {e}"
                        )),
                    );
                    let _ = self.stop.changed().await;
                    break;
                }
            };
            let pulled = match self.pull(&image).await {
                Ok(p) => p,
                Err((reason, msg)) => {
                    tracing::info!(pod = %format!("{ns}/{pod_name}"), image = %image_name, error = %msg, "image pull failed");
                    self.waiting(reason, Some(msg.clone()));
                    if !self.pause(Duration::from_secs(2).min(backoff)).await {
                        break;
                    }
                    self.waiting(
                        "ImagePullBackOff",
                        Some(format!("Back-off pulling image {image_name:?}: {msg}")),
                    );
                    if !self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let id = container_id(&uid, &self.container.name, attempt);
            let digest = pulled.manifest_digest.to_string();
            self.update(|r| {
                r.image_id = format!("{}/{}@{digest}", image.registry, image.repository);
                r.container_id = format!("strake://{id}");
            });
            let started = jiff::Timestamp::now();
            let outcome = self.run_once(&pulled, &id, attempt).await;
            let term = match outcome {
                Ok(Outcome::Stopped) => break,
                Ok(Outcome::Exited(status)) => Terminated {
                    exit_code: status.exit_code,
                    signal: status.signal,
                    reason: if status.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    },
                    message: None,
                    started_at: Some(started),
                    finished_at: jiff::Timestamp::from_second(status.finished_at.timestamp())
                        .unwrap_or_else(|_| jiff::Timestamp::now()),
                },
                // As containerd reports a process that could not be started: exit code 128.
                Err(("StartError", msg)) => Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(msg),
                    started_at: None,
                    finished_at: jiff::Timestamp::now(),
                },
                Err((reason, msg)) => {
                    tracing::warn!(pod = %format!("{ns}/{pod_name}"), container = %self.container.name, error = %msg, "container failed to start");
                    self.waiting(reason, Some(msg));
                    if !self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                    continue;
                }
            };
            let status_code = term.exit_code;
            let restart = match restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => status_code != 0,
                _ => true,
            };
            let stopping = self.stopping();
            if std::mem::take(&mut self.redefined) && !stopping {
                // A new image: restarted at once, whatever the policy says.
                self.update(|r| {
                    r.last_terminated = Some(term.clone());
                    r.restart_count += 1;
                    r.image = self.container.image.clone().unwrap_or_default();
                    r.state = State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: None,
                    };
                });
                backoff = BACKOFF_START;
                attempt += 1;
                continue;
            }
            self.update(|r| {
                r.state = State::Terminated(term.clone());
                r.done = !restart || stopping;
            });
            if !restart || stopping {
                succeeded = !stopping && status_code == 0;
                break;
            }
            // Ran long enough: forget earlier crashes.
            if jiff::Timestamp::now().duration_since(started).as_secs() > 600 {
                backoff = BACKOFF_START;
            }
            self.update(|r| {
                r.last_terminated = Some(term.clone());
                r.restart_count += 1;
                r.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={}",
                        backoff.as_secs(),
                        r.name
                    )),
                };
            });
            self.event(
                events::Type::Warning,
                "BackOff",
                &format!(
                    "Back-off restarting failed container {} in pod {pod_name}_{ns}({uid})",
                    self.container.name
                ),
            );
            if !self.pause(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
        // Terminating: record what the container ended as, if it was still waiting.
        self.update(|r| {
            r.done = true;
            if !matches!(r.state, State::Terminated(_)) {
                r.state = State::Terminated(Terminated {
                    exit_code: 0,
                    signal: None,
                    reason: "Completed".into(),
                    message: Some("pod is being deleted".into()),
                    started_at: None,
                    finished_at: jiff::Timestamp::now(),
                });
            }
        });
        succeeded
    }

    async fn pull(&self, image: &ImageRef) -> Result<PulledImage, (&'static str, String)> {
        let policy = self
            .container
            .image_pull_policy
            .as_deref()
            .unwrap_or("IfNotPresent");
        if policy != "Always" {
            match self.shared.images.lookup(image) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) if policy == "Never" => {
                    return Err((
                        "ErrImageNeverPull",
                        format!("Container image {image} is not present with pull policy of Never"),
                    ));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "image lookup failed, pulling"),
            }
        }
        self.event(
            events::Type::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        let began = std::time::Instant::now();
        match self.shared.images.pull(image).await {
            Ok(p) => {
                self.event(
                    events::Type::Normal,
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        began.elapsed().as_secs_f64()
                    ),
                );
                Ok(p)
            }
            Err(e) => {
                let msg = e.to_string();
                self.event(
                    events::Type::Warning,
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {msg}"),
                );
                Err(("ErrImagePull", msg))
            }
        }
    }

    /// Prepares the rootfs, starts the container and waits for it (or for the pod to stop).
    async fn run_once(
        &mut self,
        image: &PulledImage,
        id: &str,
        attempt: i32,
    ) -> Result<Outcome, (&'static str, String)> {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let dir = pod_dir(&self.shared, &uid)
            .join(&self.container.name)
            .join(attempt.to_string());
        let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).map_err(|e| {
                (
                    "CreateContainerError",
                    format!("creating {}: {e}", d.display()),
                )
            })?;
        }
        strake_runtime::mount_overlay(&image.layers, &upper, &work, &rootfs)
            .map_err(|e| ("CreateContainerError", e.to_string()))?;
        let logs = log_dir(&self.shared, &ns, &pod_name, &uid).join(&self.container.name);
        std::fs::create_dir_all(&logs).map_err(|e| {
            (
                "CreateContainerError",
                format!("creating {}: {e}", logs.display()),
            )
        })?;
        let sources = env::Sources::fetch(&self.shared, &ns, &[&self.container]).await;
        let ips = env::Ips {
            host: vec![self.shared.cfg.node_ip.to_string()],
            pod: vec![self.pod_ip()],
        };
        let spec = match sources
            .and_then(|sources| {
                container_spec(
                    &self.pod,
                    &self.container,
                    image,
                    id,
                    &rootfs,
                    logs.join(format!("{attempt}.log")),
                    &sources,
                    &ips,
                    &self.sandbox,
                )
            })
            .and_then(|(mut s, skipped)| {
                let list = self.container.volume_mounts.as_deref().unwrap_or_default();
                // The sandbox's files, unless a volume is mounted at the same path.
                s.mounts = self
                    .sandbox
                    .files
                    .iter()
                    .filter(|f| {
                        !list
                            .iter()
                            .any(|m| m.mount_path.trim_end_matches('/') == f.destination)
                    })
                    .cloned()
                    .collect();
                s.mounts.extend(volumes::mounts(&self.volumes, list)?);
                Ok((s, skipped))
            }) {
            Ok((s, skipped)) => {
                for warning in skipped {
                    self.event(
                        events::Type::Warning,
                        "InvalidEnvironmentVariableNames",
                        &warning,
                    );
                }
                s
            }
            Err(msg) => {
                let _ = strake_runtime::unmount(&rootfs);
                self.event(events::Type::Warning, "Failed", &format!("Error: {msg}"));
                return Err(("CreateContainerConfigError", msg));
            }
        };
        let handle = match self.shared.runtime.start(&spec).await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.shared.runtime.remove(id).await;
                let _ = strake_runtime::unmount(&rootfs);
                let msg = e.to_string();
                self.event(events::Type::Warning, "Failed", &format!("Error: {msg}"));
                return Err(("StartError", msg));
            }
        };
        let name = self.container.name.clone();
        self.event(
            events::Type::Normal,
            "Created",
            &format!("Created container: {name}"),
        );
        self.event(
            events::Type::Normal,
            "Started",
            &format!("Started container {name}"),
        );
        let started_at = jiff::Timestamp::from_second(handle.started_at.timestamp())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        self.update(|r| {
            r.state = State::Running { started_at };
            r.ever_started = true;
            r.ready = false;
            r.started = false;
        });
        let (report_tx, mut reports) = tokio::sync::mpsc::channel(8);
        let prober = tokio::spawn(self.prober(id).run(report_tx));
        let runtime = self.shared.runtime.clone();
        let wait = runtime.wait(id);
        tokio::pin!(wait);
        let pod_grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        // postStart: the container counts as started once it returns; a failure kills it.
        let mut hook_failed = false;
        if let Some(hook) = self
            .container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.clone())
        {
            let target = self.prober(id).target;
            let hook_run = lifecycle::run(&hook, &target, POST_START_LIMIT);
            tokio::select! {
                r = hook_run => if let Err(e) = r {
                    hook_failed = true;
                    self.event(
                        events::Type::Warning,
                        Hook::PostStart.failure_reason(),
                        &format!("PostStartHook failed: {e}"),
                    );
                },
                _ = wait_stop(&mut self.stop) => {}
            }
        }
        let outcome = if hook_failed {
            self.event(
                events::Type::Normal,
                "Killing",
                &format!("FailedPostStartHook: container {name} will be restarted"),
            );
            self.shared
                .runtime
                .stop(id, Duration::from_secs(pod_grace))
                .await
                .map(Outcome::Exited)
        } else {
            loop {
                tokio::select! {
                    s = &mut wait => break s.map(Outcome::Exited),
                    _ = wait_stop(&mut self.stop) => {
                        let grace = self.stop.borrow().unwrap_or_default();
                        self.event(events::Type::Normal, "Killing", &format!("Stopping container {name}"));
                        let grace = self.pre_stop(id, grace).await;
                        break self.shared.runtime.stop(id, grace).await.map(|s| {
                            let term = Terminated {
                                exit_code: s.exit_code,
                                signal: s.signal,
                                reason: if s.exit_code == 0 { "Completed".into() } else { "Error".into() },
                                message: None,
                                started_at: Some(started_at),
                                finished_at: jiff::Timestamp::now(),
                            };
                            self.update(|r| { r.state = State::Terminated(term); r.done = true; });
                            Outcome::Stopped
                        });
                    }
                    image = new_image(&mut self.updates, &self.container.name, self.container.image.as_deref().unwrap_or_default()) => {
                    self.event(
                        events::Type::Normal,
                        "Killing",
                        &format!("Container {name} definition changed, will be restarted"),
                    );
                    let left = self.pre_stop(id, Duration::from_secs(pod_grace)).await;
                    self.container.image = Some(image);
                    self.redefined = true;
                    break self.shared.runtime.stop(id, left).await.map(Outcome::Exited);
                }
                Some(report) = reports.recv() => match report {
                        probe::Report::Started => {
                            self.update(|r| r.started = true);
                            if let Some(tx) = &self.started {
                                let _ = tx.send(true);
                            }
                        }
                        probe::Report::Ready(ready) => self.update(|r| r.ready = ready),
                        probe::Report::Unhealthy { kind, message } => self.event(
                            events::Type::Warning,
                            "Unhealthy",
                            &format!("{} probe failed: {message}", kind.name()),
                        ),
                        probe::Report::Restart { kind, .. } => {
                            let probe = match kind {
                                probe::Kind::Startup => self.container.startup_probe.as_ref(),
                                _ => self.container.liveness_probe.as_ref(),
                            };
                            let grace = probe
                                .and_then(|p| p.termination_grace_period_seconds)
                                .map_or(pod_grace, |g| g.max(0) as u64);
                            self.event(
                                events::Type::Normal,
                                "Killing",
                                &format!(
                                    "Container {name} failed {} probe, will be restarted",
                                    kind.name().to_ascii_lowercase()
                                ),
                            );
                            let left = self.pre_stop(id, Duration::from_secs(grace)).await;
                            break self
                                .shared
                                .runtime
                                .stop(id, left)
                                .await
                                .map(Outcome::Exited);
                        }
                    },
                }
            }
        };
        prober.abort();
        self.update(|r| {
            r.ready = false;
            r.started = false;
        });
        if let Err(e) = self.shared.runtime.remove(id).await {
            tracing::warn!(container = %id, error = %e, "removing container failed");
        }
        let _ = strake_runtime::unmount(&rootfs);
        let _ = std::fs::remove_dir_all(&dir);
        outcome.map_err(|e| ("Error", e.to_string()))
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Option<Duration>>) {
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Looks a user or group name up in the image's /etc/passwd or /etc/group.
fn lookup_id(rootfs: &Path, file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The pod's hostname: `spec.hostname`, else its name (cut to 63 characters).
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// Builds the runtime spec from the pod, the container and the image config (the env and
/// argv through [`env::build`]); also returns the envFrom keys skipped, as warnings.
#[allow(clippy::too_many_arguments)]
pub fn container_spec(
    pod: &Pod,
    c: &Container,
    image: &PulledImage,
    id: &str,
    rootfs: &Path,
    log: PathBuf,
    sources: &env::Sources,
    ips: &env::Ips,
    sandbox: &PodSandbox,
) -> Result<(ContainerSpec, Vec<String>), String> {
    let cfg = &image.config;
    let meta = &pod.metadata;
    let hostname = sandbox.hostname.clone();
    // As containerd: HOSTNAME first, so the image's or the pod's own value wins.
    let image_env: Vec<String> = std::iter::once(format!("HOSTNAME={hostname}"))
        .chain(cfg.env.iter().cloned())
        .collect();
    let built = env::build(
        pod,
        c,
        &image_env,
        (&cfg.entrypoint, &cfg.cmd),
        sources,
        ips,
    )?;
    let (args, env) = (built.args, built.env);
    if args.is_empty() {
        return Err(
            "no command specified: the image has no entrypoint or cmd and the container sets none"
                .into(),
        );
    }
    let sc = c.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(user) = cfg.user.as_deref() {
        let (u, g) = user
            .split_once(':')
            .map_or((user, None), |(u, g)| (u, Some(g)));
        uid = u
            .parse()
            .ok()
            .or_else(|| lookup_id(rootfs, "passwd", u))
            .ok_or(format!(
                "image user {u:?} not found in the image's /etc/passwd"
            ))?;
        if let Some(g) = g {
            gid = g
                .parse()
                .ok()
                .or_else(|| lookup_id(rootfs, "group", g))
                .ok_or(format!(
                    "image group {g:?} not found in the image's /etc/group"
                ))?;
        }
    }
    if let Some(u) = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        uid = u32::try_from(u).map_err(|_| format!("runAsUser {u} is out of range"))?;
    }
    if let Some(g) = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        gid = u32::try_from(g).map_err(|_| format!("runAsGroup {g} is out of range"))?;
    }
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let memory_limit = limits
        .get("memory")
        .map(|q| strake_scheduler::parse_bytes(&q.0))
        .transpose()
        .map_err(|e| format!("limits.memory: {e}"))?;
    let cpu_quota = limits
        .get("cpu")
        .map(|q| strake_scheduler::parse_cpu_millis(&q.0))
        .transpose()
        .map_err(|e| format!("limits.cpu: {e}"))?
        .map(|m| ((m * 100).max(1000), 100_000u64));
    let cwd = c
        .working_dir
        .clone()
        .or(cfg.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    let spec = ContainerSpec {
        id: id.to_string(),
        rootfs: rootfs.to_path_buf(),
        args,
        env,
        cwd,
        hostname,
        uid,
        gid,
        cgroup_path: format!(
            "{}/{}",
            pod_cgroup(meta.uid.as_deref().unwrap_or_default()),
            c.name
        ),
        memory_limit,
        cpu_quota,
        log_path: log,
        network: sandbox
            .namespaces
            .as_ref()
            .map_or(NetworkMode::Host, |n| NetworkMode::Path(n.net.clone())),
        ipc: sandbox.namespaces.as_ref().map(|n| n.ipc.clone()),
        uts: sandbox.namespaces.as_ref().map(|n| n.uts.clone()),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        mounts: Vec::new(),
    };
    Ok((spec, built.skipped))
}
