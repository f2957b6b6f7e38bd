//! `strake machined`: the machine API (strake-machineapi) on port 50000. In maintenance mode it
//! waits for a config and hands it to init; on a configured node it serves the API over mutual
//! TLS with the machine CA of the config in force.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use strake_init::machine::{self as init_machine, HandoffResult};
use strake_init::mounts::host_path;
use strake_machineapi::{
    AddressView, DiskView, FieldProblem, Host, HostError, KubeconfigView, Power, RouteView,
    ServerMode, SocketView, StoreMembersView, StoreSnapshotView,
};
use strake_machineconfig::MachineConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, strake_machineapi::PORT)))]
    listen: SocketAddr,
}

/// Where a control plane keeps the cluster CA (`strake controlplane --data-dir`'s `pki`).
const PKI_DIR: &str = "/var/lib/strake/pki";

/// How long an install hand-off may take (partitioning and formatting STATE included).
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let boot = crate::boot_config().unwrap_or_default();
    let host = Arc::new(Node {
        root: PathBuf::from("/"),
    });
    let hostname = host.hostname();
    let addresses = node_addresses(&host.root);
    let (mode, serving, ca) = if boot.maintenance {
        let cert = strake_machineapi::self_signed(&hostname, &addresses)?;
        let fingerprint = strake_machineapi::fingerprint(&cert.cert_pem)?;
        let at = addresses
            .first()
            .map_or_else(|| "<node address>".to_owned(), IpAddr::to_string);
        tracing::warn!(
            "maintenance mode: the machine API listens on {}:{} with certificate fingerprint {fingerprint}",
            at,
            args.listen.port()
        );
        tracing::warn!(
            "apply a config with: strakectl apply-config --insecure --nodes {at} --fingerprint {fingerprint} --file <config.yaml>"
        );
        (ServerMode::Maintenance, cert, None)
    } else {
        let Some(config) = host
            .current()
            .and_then(|text| MachineConfig::parse(&text).ok())
        else {
            tracing::info!(
                "the machine API is off: this node was configured by its kernel command line, not a machine config"
            );
            return idle().await;
        };
        let Some(ca) = config.machine.ca else {
            tracing::info!(
                "the machine API is off: the machine config has no machine CA (machine.ca; `strakectl gen config` makes one)"
            );
            return idle().await;
        };
        let cert = strake_machineapi::serving_cert(&ca, &hostname, &addresses)
            .context("issuing the machine API's serving certificate with machine.ca")?;
        if let Some((slot, true)) = strake_init::slots::running(&host.root) {
            tokio::spawn(judge_trial(host.clone(), slot, config.machine.role));
        }
        (ServerMode::Configured, cert, Some(ca.crt))
    };
    let tls = strake_machineapi::tls_config(mode, &serving, ca.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        "machine API listening on {} ({})",
        args.listen,
        if mode == ServerMode::Maintenance {
            "maintenance mode"
        } else {
            "mutual TLS with the machine CA"
        }
    );
    strake_machineapi::serve(listener, tls, host, mode, env!("CARGO_PKG_VERSION")).await;
    Ok(())
}

/// How long a slot on trial has to come up healthy before machined reboots into the old one.
const TRIAL_DEADLINE: Duration = Duration::from_secs(300);

/// Where every node's agent keeps its credentials for the API.
const AGENT_CREDENTIALS: &str = "/var/lib/strake/agent/credentials.json";

/// Whether this node is healthy on this boot: a control plane's API server is ready, and the
/// node's own Node is Ready with a heartbeat sent since this boot began (a Ready from before the
/// reboot does not count). The reason when it is not.
async fn healthy(
    root: &Path,
    hostname: &str,
    role: strake_machineconfig::Role,
) -> Result<(), String> {
    if role == strake_machineconfig::Role::Controlplane
        && !strake_kubeclient::answers_version("https://127.0.0.1:6443", Duration::from_secs(2))
            .await
    {
        return Err("the API server does not answer on 127.0.0.1:6443".into());
    }
    let path = host_path(root, AGENT_CREDENTIALS);
    let text = std::fs::read(&path)
        .map_err(|e| format!("the agent has no credentials yet ({AGENT_CREDENTIALS}: {e})"))?;
    let creds: strake_pki::Credentials =
        serde_json::from_slice(&text).map_err(|e| format!("{AGENT_CREDENTIALS}: {e}"))?;
    let client = strake_kubeclient::Client::from_credentials(&creds).map_err(|e| e.to_string())?;
    let node: k8s_openapi::api::core::v1::Node = client
        .get(None, hostname)
        .await
        .map_err(|e| format!("reading Node {hostname}: {e}"))?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
        .ok_or_else(|| format!("Node {hostname} has no Ready condition"))?;
    if ready.status != "True" {
        return Err(format!("Node {hostname} is not Ready ({})", ready.status));
    }
    let uptime = std::fs::read_to_string(host_path(root, "/proc/uptime"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let booted = jiff::Timestamp::now() - jiff::SignedDuration::from_secs_f64(uptime);
    match ready.last_heartbeat_time {
        Some(t) if t.0 >= booted => Ok(()),
        _ => Err(format!(
            "Node {hostname}'s Ready heartbeat is from before this boot"
        )),
    }
}

/// A slot on trial is blessed once the node is [`healthy`], and abandoned (a reboot into the
/// default slot) if it is not by [`TRIAL_DEADLINE`].
async fn judge_trial(
    host: Arc<Node>,
    slot: strake_init::slots::Slot,
    role: strake_machineconfig::Role,
) {
    tracing::info!(
        "slot {} is on trial: waiting for the node to be healthy",
        slot.letter()
    );
    let deadline = Instant::now() + TRIAL_DEADLINE;
    let hostname = host.hostname();
    let mut said = String::new();
    while Instant::now() < deadline {
        match healthy(&host.root, &hostname, role).await {
            Ok(()) => {
                let root = host.root.clone();
                match tokio::task::spawn_blocking(move || strake_init::slots::bless(&root)).await {
                    Ok(Ok(Some(s))) => tracing::info!(
                        "the node is healthy on slot {}: blessed it and made it the default",
                        s.letter()
                    ),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::error!("blessing slot {}: {e}", slot.letter()),
                    Err(e) => tracing::error!("blessing slot {}: {e}", slot.letter()),
                }
                return;
            }
            Err(reason) if reason != said => {
                tracing::info!("slot {} not blessed yet: {reason}", slot.letter());
                said = reason;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::error!(
        "slot {} did not come up healthy within {TRIAL_DEADLINE:?} (last: {said}): rebooting into the default slot",
        slot.letter()
    );
    if let Err(e) = host.power(Power::Reboot) {
        tracing::error!("{}", e.message);
    }
}

/// Stays up without serving, so init does not restart machined in a loop.
async fn idle() -> anyhow::Result<()> {
    std::future::pending::<()>().await;
    Ok(())
}

/// The address init configured, from its network state file.
fn node_addresses(root: &Path) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(host_path(root, strake_init::network::NETWORK_STATE_PATH))
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("address")?.as_str()?.parse().ok())
        .into_iter()
        .collect()
}

/// This machine, through init's files and signals.
struct Node {
    root: PathBuf,
}

impl Node {
    fn read(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(host_path(&self.root, abs)).ok()
    }

    /// The STATE partition, when this boot mounted one.
    fn state_device(&self) -> Option<String> {
        let status: strake_init::state::Status =
            serde_json::from_str(&self.read(strake_init::state::STATUS_PATH)?).ok()?;
        status.device
    }

    fn write(&self, abs: &str, text: &str) -> Result<(), HostError> {
        init_machine::store_at(&self.root, abs, text)
            .map_err(|e| HostError::new(format!("writing {abs}: {e}")))
    }

    fn signal_init(&self, signal: Signal) -> Result<(), HostError> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), signal)
            .map_err(|e| HostError::new(format!("signalling init ({signal}): {e}")))
    }
}

/// Every record the kernel still holds, as `[seconds] message`. Each read of /dev/kmsg is one
/// record (`priority,sequence,microseconds,flags;message`); the end is EAGAIN.
fn read_kmsg(path: &Path) -> std::io::Result<Vec<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(line) = kmsg_line(&record) {
                    out.push(line);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record was overwritten while we read: carry on with the next.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn kmsg_line(record: &str) -> Option<String> {
    let (head, rest) = record.split_once(';')?;
    let micros: u64 = head.split(',').nth(2)?.parse().ok()?;
    // Continuation lines (` KEY=value`) carry device metadata: not part of the message.
    let message = rest.lines().next().unwrap_or_default();
    Some(format!(
        "[{:5}.{:06}] {message}",
        micros / 1_000_000,
        micros % 1_000_000
    ))
}

fn problem(path: &str, message: String) -> FieldProblem {
    FieldProblem {
        path: path.into(),
        message,
    }
}

/// `VmRSS` of a `/proc/<pid>/status`, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// Runs a future to completion from the machine API's blocking threads.
fn run_async<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

impl Node {
    /// The cluster CA on this node's STATE: only control planes hold it.
    fn cluster_ca(&self) -> Result<strake_pki::ClusterCa, HostError> {
        let dir = host_path(&self.root, PKI_DIR);
        strake_pki::ClusterCa::load(&dir)
            .map_err(|e| HostError::new(format!("loading the cluster CA from {PKI_DIR}: {e}")))?
            .ok_or_else(|| {
                HostError::new(
                    "this node holds no cluster CA (it is not a control plane): ask a control plane",
                )
            })
    }

    /// The resident memory of process `pid`, from its `VmRSS`.
    fn rss(&self, pid: i32) -> Option<u64> {
        let status = self.read(&format!("/proc/{pid}/status"))?;
        vm_rss(&status)
    }

    /// This control plane's own API server, as an admin with short-lived credentials.
    fn local_api(&self) -> Result<strake_kubeclient::Client, HostError> {
        let ca = self.cluster_ca()?;
        let cert = ca
            .issue_client(
                "strake-machined",
                &["system:masters"],
                time::Duration::minutes(10),
            )
            .map_err(|e| HostError::new(format!("issuing credentials: {e}")))?;
        strake_kubeclient::Client::new("https://127.0.0.1:6443", &ca.ca.cert_pem, Some(&cert))
            .map_err(|e| HostError::new(format!("a client of the local API: {e}")))
    }
}

impl Host for Node {
    fn hostname(&self) -> String {
        self.read("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    }

    fn current(&self) -> Option<String> {
        self.read(init_machine::IN_FORCE)
    }

    fn check_install(&self, config: &MachineConfig) -> Vec<FieldProblem> {
        let install = config.machine.install.as_ref();
        if let Some(disk) = install.and_then(|i| i.disk.as_deref()) {
            let name = disk.strip_prefix("/dev/").unwrap_or(disk);
            let disks = strake_init::state::scan(&self.root);
            if !disks.iter().any(|d| d.name == name) {
                let known: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
                return vec![problem(
                    "machine.install.disk",
                    format!(
                        "{disk} is not a disk on this machine (it has: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                )];
            }
            return Vec::new();
        }
        if let Some(selector) = install.and_then(|i| i.disk_selector.as_ref()) {
            return match strake_init::state::select_disk(&self.root, selector) {
                Ok(_) => Vec::new(),
                Err(e) => vec![problem("machine.install.diskSelector", e.to_string())],
            };
        }
        if self.state_device().is_none() {
            return vec![problem(
                "machine.install",
                "this machine has no STATE partition: name the disk to install on (machine.install.disk or diskSelector), or the config is lost at the next boot".into(),
            )];
        }
        Vec::new()
    }

    fn install(&self, yaml: &str) -> Result<String, HostError> {
        let result = host_path(&self.root, init_machine::HANDOFF_RESULT);
        match std::fs::remove_file(&result) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(HostError::new(format!(
                    "clearing {}: {e}",
                    result.display()
                )));
            }
        }
        self.write(init_machine::HANDOFF, yaml)?;
        self.signal_init(Signal::SIGUSR1)?;
        let deadline = Instant::now() + HANDOFF_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(text) = self.read(init_machine::HANDOFF_RESULT) {
                let answer: HandoffResult = serde_json::from_str(&text)
                    .map_err(|e| HostError::new(format!("init's answer is not readable: {e}")))?;
                return if answer.ok {
                    Ok(answer.message)
                } else {
                    Err(HostError::new(format!(
                        "the node did not install the config: {}",
                        answer.message
                    )))
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HostError::new(format!(
            "init did not answer within {HANDOFF_TIMEOUT:?}; see the console"
        )))
    }

    fn keep(&self, yaml: &str, staged: bool) -> Result<(), HostError> {
        if self.state_device().is_none() {
            return Err(HostError::new(
                "this node runs without STATE, so a config could not outlive the next boot; boot it with a STATE disk (machine.install)",
            ));
        }
        if staged {
            return self.write(init_machine::STAGED, yaml);
        }
        self.write(init_machine::APPLIED, yaml)?;
        // A config staged earlier must not override this one at the next boot.
        let staged_path = host_path(&self.root, init_machine::STAGED);
        if staged_path.exists() {
            std::fs::remove_file(&staged_path)
                .map_err(|e| HostError::new(format!("removing {}: {e}", init_machine::STAGED)))?;
        }
        self.write(init_machine::IN_FORCE, yaml)
    }

    fn apply_live(&self, config: &MachineConfig) -> Result<(), HostError> {
        let failed = init_machine::apply_sysctls(&self.root, config);
        let files = init_machine::write_files(&self.root, config);
        let mut problems: Vec<FieldProblem> = failed
            .into_iter()
            .map(|f| problem("machine.sysctls", f))
            .collect();
        if let Err(e) = files {
            problems.push(problem("machine.files", e));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HostError {
                message: "the config is kept, but part of it did not apply live".into(),
                problems,
            })
        }
    }

    fn slot(&self) -> Option<(char, bool)> {
        strake_init::slots::running(&self.root).map(|(s, trial)| (s.letter(), trial))
    }

    fn stage_upgrade(&self, uki: &[u8]) -> Result<String, HostError> {
        let slot = strake_init::slots::stage(&self.root, uki).map_err(HostError::new)?;
        Ok(format!(
            "wrote the image ({} MB) to slot {} for one trial boot; rebooting into it. It is kept if the node comes up healthy, and the old slot boots again otherwise",
            uki.len() / 1_000_000,
            slot.letter()
        ))
    }

    fn services(&self) -> Result<Vec<strake_machineapi::ServiceView>, HostError> {
        let path = strake_init::supervisor::SERVICES_PATH;
        let text = self
            .read(path)
            .ok_or_else(|| HostError::new(format!("init has not published {path} yet")))?;
        let list: Vec<strake_init::supervisor::ServiceStatus> = serde_json::from_str(&text)
            .map_err(|e| HostError::new(format!("{path} is not readable: {e}")))?;
        Ok(list
            .into_iter()
            .map(|s| strake_machineapi::ServiceView {
                name: s.name,
                state: s.state,
                rss_bytes: s.pid.and_then(|pid| self.rss(pid)),
                pid: s.pid,
                restarts: s.restarts,
                since: s.since,
            })
            .collect())
    }

    fn restart_service(&self, name: &str) -> Result<String, HostError> {
        let list = self.services()?;
        let Some(service) = list.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
            return Err(HostError::new(format!(
                "no service {name} (there are: {})",
                known.join(", ")
            )));
        };
        let Some(pid) = service.pid else {
            return Err(HostError::new(format!(
                "{name} is not running ({}); init starts it when it is due",
                service.state
            )));
        };
        // Its whole process group, as init stops services; init restarts it.
        let group = nix::unistd::Pid::from_raw(-pid);
        let stop = move || {
            if nix::sys::signal::kill(group, Signal::SIGTERM).is_err() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
            }
        };
        if name == "machined" {
            // Answer first: the stop takes this very process.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                stop();
            });
        } else {
            stop();
        }
        Ok(format!("stopped {name} (pid {pid}); init starts it again"))
    }

    fn reset(&self) -> Result<String, HostError> {
        let Some(device) = self.state_device() else {
            return Err(HostError::new(
                "this node has no STATE to wipe: it runs on tmpfs, and a reboot already forgets everything",
            ));
        };
        let marker = host_path(&self.root, strake_init::state::RESET_MARKER);
        std::fs::write(&marker, b"strakectl reset\n")
            .and_then(|()| std::fs::File::open(&marker)?.sync_all())
            .map_err(|e| HostError::new(format!("writing {}: {e}", marker.display())))?;
        Ok(format!(
            "STATE ({device}) is wiped at the next boot, which is now: the node comes back in maintenance mode unless its boot sources give it a config"
        ))
    }

    fn console_log(&self) -> Result<Vec<String>, HostError> {
        let current = host_path(&self.root, strake_init::console::LOG_PATH);
        let older = current.with_extension("log.1");
        let mut lines = Vec::new();
        for path in [older, current] {
            match std::fs::read(&path) {
                Ok(bytes) => lines.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::new(format!("reading {}: {e}", path.display()))),
            }
        }
        Ok(lines)
    }

    fn kernel_log(&self) -> Result<Vec<String>, HostError> {
        read_kmsg(&host_path(&self.root, "/dev/kmsg"))
            .map_err(|e| HostError::new(format!("reading the kernel log (/dev/kmsg): {e}")))
    }

    fn disks(&self) -> Result<Vec<DiskView>, HostError> {
        Ok(crate::inventory::disks(&self.root))
    }

    fn addresses(&self) -> Result<Vec<AddressView>, HostError> {
        crate::inventory::addresses()
            .map_err(|e| HostError::new(format!("listing the interfaces' addresses: {e}")))
    }

    fn routes(&self) -> Result<Vec<RouteView>, HostError> {
        let v4 = self.read("/proc/net/route").unwrap_or_default();
        let v6 = self.read("/proc/net/ipv6_route").unwrap_or_default();
        let mut routes = crate::inventory::routes_v4(&v4);
        routes.extend(crate::inventory::routes_v6(&v6));
        Ok(routes)
    }

    fn netstat(&self) -> Result<Vec<SocketView>, HostError> {
        let owners = crate::inventory::socket_owners(&self.root);
        let mut out = Vec::new();
        for protocol in ["tcp", "tcp6", "udp", "udp6"] {
            let text = self
                .read(&format!("/proc/net/{protocol}"))
                .unwrap_or_default();
            for (inode, mut socket) in crate::inventory::sockets(protocol, &text) {
                socket.process = owners.get(&inode).cloned();
                out.push(socket);
            }
        }
        Ok(out)
    }

    fn kubeconfig(&self) -> Result<KubeconfigView, HostError> {
        let ca = self.cluster_ca()?;
        let cluster = self
            .current()
            .and_then(|yaml| MachineConfig::parse(&yaml).ok())
            .map(|c| c.cluster.name)
            .unwrap_or_else(|| "strake".into());
        let cert = ca
            .issue_client(
                "strake-admin",
                &["system:masters"],
                time::Duration::days(365),
            )
            .map_err(|e| HostError::new(format!("issuing admin credentials: {e}")))?;
        tracing::info!(
            "issued admin credentials for the cluster {cluster} through the machine API"
        );
        Ok(KubeconfigView {
            cluster,
            server: crate::inventory::api_url(&node_addresses(&self.root)),
            ca_pem: ca.ca.cert_pem.clone(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        })
    }

    fn leave_store(&self) -> Result<String, HostError> {
        if self.cluster_ca().is_err() {
            return Ok("not a control plane: no store to leave".into());
        }
        let path = host_path(&self.root, "/var/lib/strake/store-id");
        let id: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| {
                HostError::new(format!(
                    "cannot tell this node's store id from {}",
                    path.display()
                ))
            })?;
        self.store_remove(id).map_err(|e| {
            HostError::new(format!(
                "leaving the store (nothing was wiped): {}",
                e.message
            ))
        })?;
        Ok(format!("left the cluster store (it was node {id})"))
    }

    fn store_members(&self) -> Result<StoreMembersView, HostError> {
        let client = self.local_api()?;
        let v = run_async(client.get_json("/strake/v1/store/members"))
            .map_err(|e| HostError::new(format!("asking this control plane's API: {e}")))?;
        serde_json::from_value(v).map_err(|e| HostError::new(format!("the members list: {e}")))
    }

    fn store_remove(&self, id: u64) -> Result<StoreMembersView, HostError> {
        let client = self.local_api()?;
        let v = run_async(client.delete_path(&format!("/strake/v1/store/members/{id}")))
            .map_err(|e| HostError::new(format!("removing store node {id}: {e}")))?;
        tracing::info!(id, "removed a store member through the machine API");
        serde_json::from_value(v).map_err(|e| HostError::new(format!("the members list: {e}")))
    }

    fn store_snapshot(&self) -> Result<StoreSnapshotView, HostError> {
        let client = self.local_api()?;
        let (headers, body) =
            run_async(client.get_raw_with_headers("/strake/v1/store/snapshot"))
                .map_err(|e| HostError::new(format!("taking a snapshot of the store: {e}")))?;
        let revision = headers
            .get(strake_apiserver::storeadmin::SNAPSHOT_REVISION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        use base64::Engine as _;
        Ok(StoreSnapshotView {
            revision,
            data: base64::engine::general_purpose::STANDARD.encode(&body),
        })
    }

    fn store_restore(&self, backup: &[u8]) -> Result<String, HostError> {
        let contents = crate::restore::check(backup)
            .map_err(|e| HostError::new(format!("refused before changing anything: {e}")))?;
        let held = self.cluster_ca()?;
        let backup_ca = crate::restore::ca_cert(&contents);
        let config = self
            .current()
            .and_then(|yaml| MachineConfig::parse(&yaml).ok());
        if let Some(pinned) = config.and_then(|c| c.cluster.ca)
            && pinned.crt.trim() != backup_ca.trim()
        {
            return Err(HostError::new(
                "refused before changing anything: the backup's cluster CA is not the one this node's machine config names (cluster.ca); restore on a control plane whose config names the backup's CA",
            ));
        }
        // A member of a serving cluster is not a fresh control plane: a new cluster from the
        // backup would split it in two.
        if let Ok(view) = self.store_members()
            && view.members.len() > 1
        {
            return Err(HostError::new(format!(
                "refused before changing anything: this control plane is one of {} members of a serving store, and a restore starts a new cluster; restore on a fresh control plane (`strakectl reset` wipes one) and join the others to it",
                view.members.len()
            )));
        }
        let data_dir = host_path(&self.root, "/var/lib/strake");
        crate::restore::stage(&data_dir, backup)
            .map_err(|e| HostError::new(format!("staging the backup: {e:#}")))?;
        let ca_changes = held.ca.cert_pem.trim() != backup_ca.trim();
        if ca_changes {
            // The agent's credentials chain to the CA being replaced: it fetches new ones.
            let creds = host_path(&self.root, AGENT_CREDENTIALS);
            let aside = creds.with_extension("json.before-restore");
            if let Err(e) = std::fs::rename(&creds, &aside) {
                tracing::warn!(error = %e, "moving the agent's credentials aside");
            }
        }
        tracing::info!(
            revision = contents.revision,
            keys = contents.keys,
            ca_changes,
            "a backup is staged for restore"
        );
        let restarted = match self.restart_service("controlplane") {
            Ok(m) => m,
            Err(e) => format!("{}; the restore happens when it starts", e.message),
        };
        if ca_changes && let Err(e) = self.restart_service("agent") {
            tracing::warn!(error = %e.message, "restarting the agent after a restore");
        }
        Ok(format!(
            "staged the backup (revision {}, {} keys) and {restarted}: it starts a new one-member cluster from the backup, keeping what it held under /var/lib/strake/before-restore-*; join the other control planes to it",
            contents.revision, contents.keys
        ))
    }

    fn power(&self, action: Power) -> Result<(), HostError> {
        self.signal_init(match action {
            Power::Reboot => Signal::SIGINT,
            Power::Shutdown => Signal::SIGTERM,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_from_the_status_file() {
        let status = "Name:\tstrake\nVmPeak:\t  90000 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(super::vm_rss(status), Some(51234 << 10));
        assert_eq!(super::vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn kernel_records_become_timestamped_lines() {
        assert_eq!(
            super::kmsg_line("6,339,5140900,-;virtio_net virtio1 eth0: renamed\n SUBSYSTEM=net\n")
                .as_deref(),
            Some("[    5.140900] virtio_net virtio1 eth0: renamed")
        );
        assert_eq!(super::kmsg_line("garbage"), None);
    }
}
