//! High availability in QEMU (TCG): three control planes and a worker on a private L2 inside a network
//! namespace this test creates (`strake_qemu::Lab`), 1 vCPU and 768 MiB each. The first
//! starts the cluster; the other two join its store through its API (learner, caught up,
//! voter) and take the cluster's shared keys. The lab is booted once and the scenarios run in
//! it:
//!
//! - every control plane serves the same objects: a Secret written through one is read
//!   through another (one encryption key), and a service-account token issued by one is
//!   accepted by another (one signing key);
//! - a recorder writes a ConfigMap every 100 ms (and reads it back every fifth time); its
//!   history goes through the store's linearizability checker at the end, so no acknowledged
//!   write may be lost;
//! - the control planes share a virtual IP, held by the store's leader: the joins go through
//!   it, and so does the recorder;
//! - `kill -9` of the store leader's QEMU: a new leader is elected, the virtual IP moves to it
//!   and writes resume (the longest gap between acknowledged writes is printed);
//! - removing a live voter while the dead one is still a member is refused (quorum), the dead
//!   one is removed, and a fresh control plane joins in its place;
//! - a worker, whose API endpoint is the virtual IP, keeps renewing its lease after the
//!   leader it first talked to died; when its own QEMU is killed, its replica of a
//!   Deployment runs again on a control plane;
//! - a snapshot of the store is streamed while it serves.
//!
//! Needs root, the image built by `scripts/test.sh` (or `STRAKE_IMAGE_DIR`), qemu-system-x86_64,
//! iproute2 and kubectl 1.32. Any missing prerequisite fails the test. Nothing it does reaches
//! the host's own network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use strake_e2e::{kubectl_ok, kubectl_path, poll};
use strake_pki::{BootstrapToken, CertifiedKey, ClusterCa, Credentials};
use strake_qemu::{Accel, Lab, Nic, Vm, VmConfig};
use strake_store::linearizability::{self, Call, Outcome, Recorder};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 80, 1);
/// The control planes' shared virtual IP.
const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 80, 100);

fn cp_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 80, 10 + n)
}

/// One control plane of the lab, `cp<n>` at 192.168.80.1n.
struct ControlPlane {
    n: u8,
    vm: Vm,
    /// Killed by the test (not to be powered off).
    killed: bool,
}

impl ControlPlane {
    fn ip(&self) -> Ipv4Addr {
        cp_ip(self.n)
    }
    fn api(&self) -> String {
        format!("{}:6443", self.ip())
    }
}

/// The machine config of control plane `n`: the cluster's CA and token, and for every one but
/// the first, the endpoint whose cluster it joins.
fn machine_config(n: u8, ca: &ClusterCa, token: &BootstrapToken, join: Option<Ipv4Addr>) -> String {
    let json = |s: &str| serde_json::to_string(s).expect("a string");
    let mut yaml = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: cp{n}\n  network:\n    interfaces:\n      - interface: eth0\n        vip:\n          ip: {VIP}\ncluster:\n  name: ha\n  token: {token}\n  caPin: {pin}\n  ca:\n    crt: {crt}\n    key: {key}\n",
        pin = strake_pki::ca_pin(&ca.ca.cert_pem).expect("the CA's pin"),
        crt = json(&ca.ca.cert_pem),
        key = json(&ca.ca.key_pem),
    );
    if let Some(ip) = join {
        yaml.push_str(&format!("  endpoint: https://{ip}:6443\n"));
    }
    yaml
}

/// What every machine of the lab is booted with.
struct Boot<'a> {
    images: &'a Path,
    /// Where VMs keep their logs and configs.
    state: &'a Path,
    ca: &'a ClusterCa,
    token: &'a BootstrapToken,
    /// The registry on the lab's side (`ip:port`).
    registry: &'a str,
}

/// Control plane `n`, joining the cluster at `join` unless it is the first.
fn start_control_plane(
    b: &Boot<'_>,
    n: u8,
    join: Option<Ipv4Addr>,
) -> anyhow::Result<ControlPlane> {
    let (images, state, ca, token, registry) = (b.images, b.state, b.ca, b.token, b.registry);
    let config = state.join(format!("cp{n}.yaml"));
    std::fs::write(&config, machine_config(n, ca, token, join))?;
    let cfg = VmConfig {
        name: format!("cp{n}"),
        kernel: images.join("vmlinuz"),
        initrd: images.join("initramfs.zst"),
        cmdline: format!(
            "strake.ip={}/24:{GATEWAY}:eth0 strake.registry.insecure={registry}",
            cp_ip(n)
        ),
        memory_mib: 768,
        cpus: 1,
        accel: Accel::from_env(),
        nics: vec![Nic::Tap {
            ifname: format!("tap-cp{n}"),
            mac: [0x52, 0x54, 0x00, 0x80, 0x00, 0x10 + n],
        }],
        disks: Vec::new(),
        fw_cfg: vec![("opt/strake/config".into(), config)],
        uefi: None,
        state_dir: state.to_path_buf(),
    };
    Ok(ControlPlane {
        n,
        vm: Vm::start_past_kernel(cfg, Duration::from_secs(120))?,
        killed: false,
    })
}

const WORKER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 80, 21);

/// The worker: its API endpoint is the virtual IP.
fn start_worker(b: &Boot<'_>) -> anyhow::Result<Vm> {
    let (images, state, token, registry) = (b.images, b.state, b.token, b.registry);
    let cfg = VmConfig {
        name: "w1".into(),
        kernel: images.join("vmlinuz"),
        initrd: images.join("initramfs.zst"),
        cmdline: format!(
            "strake.role=worker strake.api={VIP}:6443 strake.token={token} strake.hostname=w1 strake.ip={WORKER_IP}/24:{GATEWAY}:eth0 strake.registry.insecure={registry}"
        ),
        memory_mib: 768,
        cpus: 1,
        accel: Accel::from_env(),
        nics: vec![Nic::Tap {
            ifname: "tap-w1".into(),
            mac: [0x52, 0x54, 0x00, 0x80, 0x00, 0x21],
        }],
        disks: Vec::new(),
        fw_cfg: Vec::new(),
        uefi: None,
        state_dir: state.to_path_buf(),
    };
    Ok(Vm::start_past_kernel(cfg, Duration::from_secs(120))?)
}

#[test]
fn three_control_planes_survive_losing_the_leader() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the HA lab creates a network namespace and taps: run it as root"
    );
    let images = strake_e2e::image_dir(&["vmlinuz", "initramfs.zst"])?;
    kubectl_path()?;

    let lab = Lab::create(&format!("strake-ha-{}", std::process::id()))?;
    lab.add_segment("seg-ha", GATEWAY, 24)?;
    for n in 1..=4 {
        lab.add_tap(&format!("tap-cp{n}"), "seg-ha")?;
    }
    lab.add_tap("tap-w1", "seg-ha")?;
    lab.enter()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The registry listens on the lab's addresses only (the namespace has no others).
    let registry = strake_e2e::Registry::start_on(Ipv4Addr::UNSPECIFIED)?;
    rt.block_on(strake_e2e::push_busybox(registry.port, "e2e/busybox", "1"))?;
    let guest_registry = format!("{GATEWAY}:{}", registry.port);
    let ca = ClusterCa::generate("ha")?;
    let token = BootstrapToken::generate();
    let state = strake_e2e::TempDir::new("strake-ha")?;
    let mut cps: Vec<ControlPlane> = Vec::new();
    let boot = Boot {
        images: &images,
        state: state.path(),
        ca: &ca,
        token: &token,
        registry: &guest_registry,
    };
    let result = drive(&rt, &mut cps, &boot);
    if result.is_err() {
        for cp in &cps {
            eprintln!(
                "---- {} console ----\n{}\n-----------------------",
                cp.vm.config().name,
                strake_qemu::tail(&cp.vm.config().serial_log(), 60)
            );
        }
    }
    result?;
    for cp in &mut cps {
        if !cp.killed {
            ensure!(
                cp.vm.power_off(Duration::from_secs(60)),
                "{} did not power off within 60 s of the power button",
                cp.vm.config().name
            );
        }
    }
    drop(lab);
    Ok(())
}

/// Writes an admin kubeconfig for the API at `api` (`host:port`) to `path`.
fn write_kubeconfig(ca: &ClusterCa, api: &str, path: &Path) -> anyhow::Result<()> {
    let (_, creds) = admin(ca, api)?;
    std::fs::write(path, creds.kubeconfig("ha", &format!("https://{api}")))?;
    Ok(())
}

/// An admin client of the API at `api` (`host:port`), with the test's own admin certificate.
fn admin(ca: &ClusterCa, api: &str) -> anyhow::Result<(strake_kubeclient::Client, Credentials)> {
    let key: CertifiedKey = ca.issue_client("ha-admin", &["system:masters"], time_days(1))?;
    let creds = Credentials {
        server: api.to_string(),
        ca_pem: ca.ca.cert_pem.clone(),
        cert_pem: key.cert_pem,
        key_pem: key.key_pem,
        serving_cert_pem: None,
        serving_key_pem: None,
    };
    Ok((strake_kubeclient::Client::from_credentials(&creds)?, creds))
}

fn time_days(d: i64) -> time::Duration {
    time::Duration::days(d)
}

/// Store members by id: peer address, and whether it votes.
type Members = BTreeMap<u64, (String, bool)>;

/// The store's members as the API at `client` reports them: id → (peer address, voter), and
/// the leader.
fn members(
    rt: &tokio::runtime::Runtime,
    client: &strake_kubeclient::Client,
) -> anyhow::Result<(Members, Option<u64>)> {
    let v = rt.block_on(client.get_json("/strake/v1/store/members"))?;
    let mut out = BTreeMap::new();
    for m in v["members"].as_array().context("members")? {
        out.insert(
            m["id"].as_u64().context("id")?,
            (
                m["peerAddress"].as_str().unwrap_or_default().to_string(),
                m["voter"].as_bool().unwrap_or(false),
            ),
        );
    }
    Ok((out, v["leader"].as_u64()))
}

fn drive(
    rt: &tokio::runtime::Runtime,
    cps: &mut Vec<ControlPlane>,
    boot: &Boot<'_>,
) -> anyhow::Result<()> {
    let (dir, ca, registry) = (boot.state, boot.ca, boot.registry);
    let booted = Instant::now();
    cps.push(start_control_plane(boot, 1, None)?);
    let (c1, _) = admin(ca, &cps[0].api())?;
    cps[0]
        .vm
        .wait_until("cp1's API to answer", Duration::from_secs(240), || {
            rt.block_on(c1.get_json("/version")).is_ok()
        })?;
    eprintln!(
        "ha: cp1 serves {:.1} s after QEMU started",
        booted.elapsed().as_secs_f64()
    );
    let joins = Instant::now();
    // The virtual IP is cp1's as the lone voter; the others join through it.
    let (via_vip, _) = admin(ca, &format!("{VIP}:6443"))?;
    cps[0]
        .vm
        .wait_until("the virtual IP to answer", Duration::from_secs(60), || {
            rt.block_on(via_vip.get_json("/version")).is_ok()
        })?;
    for n in [2, 3] {
        cps.push(start_control_plane(boot, n, Some(VIP))?);
    }
    let mut worker = start_worker(boot)?;
    let mut last = String::new();
    poll(
        "three voters in the store",
        Duration::from_secs(300),
        || {
            for cp in cps.iter_mut() {
                if let Err(e) = cp.vm.check_alive() {
                    return Some(Err(anyhow::Error::from(e)));
                }
            }
            match members(rt, &c1) {
                Ok((m, leader)) => {
                    last = format!("{m:?} leader {leader:?}");
                    (m.len() == 3 && m.values().all(|(_, voter)| *voter)).then_some(Ok(()))
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        },
    )
    .with_context(|| format!("last seen: {last}"))??;
    eprintln!(
        "ha: cp2 and cp3 joined as voters {:.1} s after they started: {last}",
        joins.elapsed().as_secs_f64()
    );

    // Every control plane's API serves, and they share their keys.
    let clients: Vec<_> = cps
        .iter()
        .map(|cp| admin(ca, &cp.api()).map(|(c, _)| c))
        .collect::<anyhow::Result<_>>()?;
    for (cp, client) in cps.iter_mut().zip(&clients) {
        cp.vm.wait_until(
            &format!("cp{}'s API to answer", cp.n),
            Duration::from_secs(180),
            || {
                rt.block_on(client.get_json("/api/v1/namespaces/default"))
                    .is_ok()
            },
        )?;
    }
    shared_keys(rt, dir, ca, cps)?;
    let kubeconfig = dir.join("kubeconfig-cp2");
    write_kubeconfig(ca, &cps[1].api(), &kubeconfig)?;
    let ready = poll(
        "three control planes and the worker Ready",
        Duration::from_secs(240),
        || {
            let out = kubectl_ok(
            &kubeconfig,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
        )
        .ok()?;
            (out.matches("=True").count() == 4).then_some(out)
        },
    )?;
    eprintln!("ha: nodes {ready}");

    // The recorder writes through the control planes' APIs from here on.
    // ...through the virtual IP, which the store's leader holds.
    let (m, leader) = members(rt, &via_vip)?;
    let answered: Value = rt.block_on(via_vip.get_json("/strake/v1/store/members"))?;
    ensure!(
        answered["answeredBy"].as_u64() == leader,
        "the virtual IP is answered by store node {} but {leader:?} leads ({m:?})",
        answered["answeredBy"]
    );
    let recorder = RecorderTask::start(ca, vec![format!("{VIP}:6443")])?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        recorder.acked() > 5,
        "the recorder's writes are not acknowledged: {:?}",
        recorder.errors()
    );

    // Fault: kill -9 the store leader's QEMU.
    let (leader, victim) = kill_leader(rt, ca, cps, &via_vip, &recorder)?;

    // Quorum-safe removal: with the dead member still a voter, removing a live one would
    // leave one answering voter of two.
    let live: Vec<usize> = (0..cps.len()).filter(|i| *i != victim).collect();
    let (m, _) = members(rt, &clients[live[0]])?;
    let other_live = m
        .iter()
        .find(|(id, (addr, _))| {
            **id != leader && addr.starts_with(&format!("{}:", cps[live[1]].ip()))
        })
        .map(|(id, _)| *id)
        .context("the other survivor's id")?;
    // The leader's view of who answers is at most 5 s old.
    std::thread::sleep(Duration::from_secs(6));
    match rt
        .block_on(clients[live[0]].delete_path(&format!("/strake/v1/store/members/{other_live}")))
    {
        Err(e) if e.to_string().contains("quorum") => {
            eprintln!("ha: removing a live voter was refused: {e}")
        }
        other => bail!("removing a live voter while another is dead: {other:?}"),
    }
    rt.block_on(clients[live[0]].delete_path(&format!("/strake/v1/store/members/{leader}")))
        .context("removing the dead member")?;
    let (m, _) = members(rt, &clients[live[1]])?;
    ensure!(
        m.len() == 2 && !m.contains_key(&leader),
        "after removal: {m:?}"
    );

    // A fresh control plane joins in the dead one's place, through a survivor.
    let replaced = Instant::now();
    cps.push(start_control_plane(boot, 4, Some(VIP))?);
    poll(
        "the replacement to be a voter",
        Duration::from_secs(300),
        || {
            let (m, _) = members(rt, &clients[live[1]]).ok()?;
            (m.len() == 3 && m.values().all(|(_, v)| *v)).then_some(())
        },
    )?;
    eprintln!(
        "ha: cp4 joined in cp{}'s place {:.1} s after it started",
        cps[victim].n,
        replaced.elapsed().as_secs_f64()
    );

    // A snapshot while serving.
    let snapshot = rt.block_on(clients[live[1]].get_raw("/strake/v1/store/snapshot"))?;
    ensure!(
        snapshot.starts_with(b"STRAKEBK"),
        "the snapshot is not a store backup ({} bytes)",
        snapshot.len()
    );
    eprintln!("ha: streamed a {} byte snapshot", snapshot.len());

    // The worker reached the API through the virtual IP all along: its lease is renewed after
    // the leader it first talked to died.
    let renewed = |k: &Path| -> Option<String> {
        kubectl_ok(
            k,
            &[
                "-n",
                "kube-node-lease",
                "get",
                "lease",
                "w1",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        )
        .ok()
    };
    let kubeconfig = dir.join("kubeconfig-vip");
    write_kubeconfig(ca, &format!("{VIP}:6443"), &kubeconfig)?;
    let before = renewed(&kubeconfig).context("the worker's lease")?;
    poll(
        "the worker to renew its lease",
        Duration::from_secs(60),
        || renewed(&kubeconfig).filter(|r| *r != before),
    )?;
    worker_loss(&kubeconfig, &mut worker, registry)?;

    // And once more, with the replacement among the voters.
    kill_leader(rt, ca, cps, &via_vip, &recorder)?;

    let history = recorder.stop();
    let summary = linearizability::check(&history)
        .map_err(|e| anyhow::anyhow!("the recorder's history: {e}"))?;
    let acked = history
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Done))
        .count();
    eprintln!(
        "ha: recorder history of {} operations ({acked} acknowledged writes) is linearizable: {summary:?}",
        history.len()
    );
    Ok(())
}

/// Four replicas spread over the nodes, tolerating an unreachable node for 2 s; the worker's
/// QEMU is killed and its replica must come back on a control plane.
fn worker_loss(kubeconfig: &Path, worker: &mut Vm, registry: &str) -> anyhow::Result<()> {
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: spread\n  namespace: default\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: spread}}\n  template:\n    metadata:\n      labels: {{app: spread}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        whenUnsatisfiable: ScheduleAnyway\n        labelSelector:\n          matchLabels: {{app: spread}}\n      tolerations:\n      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n      containers:\n      - name: c\n        image: {registry}/e2e/busybox:1\n        command: [sleep, '3600']\n"
    );
    let out =
        strake_e2e::kubectl_with_input(kubeconfig, &["apply", "-f", "-"], manifest.as_bytes())?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed = |k: &Path| -> Option<Vec<(String, String)>> {
        let out = kubectl_ok(
            k,
            &[
                "get",
                "pods",
                "-l",
                "app=spread",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}={.status.phase}={.metadata.deletionTimestamp} {end}",
            ],
        )
        .ok()?;
        Some(
            out.split_whitespace()
                .filter_map(|p| {
                    let mut f = p.split('=');
                    let (node, phase, deleting) = (f.next()?, f.next()?, f.next().unwrap_or(""));
                    (deleting.is_empty()).then(|| (node.to_string(), phase.to_string()))
                })
                .collect(),
        )
    };
    let mut last = Vec::new();
    poll(
        "four replicas Running, one on the worker",
        Duration::from_secs(180),
        || {
            let p = placed(kubeconfig)?;
            last = p.clone();
            (p.iter().filter(|(_, phase)| phase == "Running").count() == 4
                && p.iter().any(|(node, _)| node == "w1"))
            .then_some(())
        },
    )
    .with_context(|| format!("last seen: {last:?}"))?;
    let killed = Instant::now();
    worker.kill();
    poll(
        "the worker's replica replaced on a control plane",
        Duration::from_secs(180),
        || {
            let p = placed(kubeconfig)?;
            last = p.clone();
            (p.iter()
                .filter(|(node, phase)| node != "w1" && phase == "Running")
                .count()
                == 4)
                .then_some(())
        },
    )
    .with_context(|| format!("last seen: {last:?}"))?;
    eprintln!(
        "ha: the worker's QEMU killed; its replica ran again on a control plane {:.1} s later (node monitor grace 40 s, tolerations 2 s)",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Kills the store leader's QEMU and waits until a new leader holds the virtual IP and
/// writes through it are acknowledged again; prints how long each took. Returns the dead
/// leader's store id and its index in `cps`.
fn kill_leader(
    rt: &tokio::runtime::Runtime,
    ca: &ClusterCa,
    cps: &mut [ControlPlane],
    via_vip: &strake_kubeclient::Client,
    recorder: &RecorderTask,
) -> anyhow::Result<(u64, usize)> {
    let (m, leader) = members(rt, via_vip)?;
    let leader = leader.context("no store leader")?;
    let leader_ip = m[&leader]
        .0
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let victim = cps
        .iter()
        .position(|cp| !cp.killed && cp.ip().to_string() == leader_ip)
        .with_context(|| format!("no control plane at the leader's address {leader_ip}"))?;
    let survivor = cps
        .iter()
        .position(|cp| !cp.killed && cp.ip().to_string() != leader_ip)
        .context("no other live control plane")?;
    let (asked, _) = admin(ca, &cps[survivor].api())?;
    eprintln!("ha: killing cp{} (store leader {leader})", cps[victim].n);
    let acked_before = recorder.acked();
    let killed = Instant::now();
    cps[victim].vm.kill();
    cps[victim].killed = true;
    let mut new_leader = None;
    poll("a new store leader", Duration::from_secs(60), || {
        let (_, l) = members(rt, &asked).ok()?;
        new_leader = l.filter(|l| *l != leader);
        new_leader
    })?;
    let elected = killed.elapsed();
    poll(
        "the virtual IP to move to the new leader",
        Duration::from_secs(30),
        || {
            let v = rt
                .block_on(via_vip.get_json("/strake/v1/store/members"))
                .ok()?;
            (v["answeredBy"].as_u64() == new_leader).then_some(())
        },
    )?;
    let moved = killed.elapsed();
    poll(
        "writes acknowledged after the kill",
        Duration::from_secs(60),
        || (recorder.acked() > acked_before + 3).then_some(()),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let gap = recorder.longest_gap_since(killed);
    eprintln!(
        "ha: leader {leader} killed; survivors elected {new_leader:?} within {:.2} s and the virtual IP answered from it within {:.2} s (as polled); writes through the virtual IP resumed, longest gap between acknowledged writes {:.2} s",
        elected.as_secs_f64(),
        moved.as_secs_f64(),
        gap.as_secs_f64()
    );
    Ok((leader, victim))
}

/// A Secret written through cp1 reads back through the others, and a token cp1 issued is
/// accepted by them.
fn shared_keys(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    ca: &ClusterCa,
    cps: &[ControlPlane],
) -> anyhow::Result<()> {
    let kube = |i: usize| -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("kubeconfig-shared-{i}"));
        write_kubeconfig(ca, &cps[i].api(), &path)?;
        Ok(path)
    };
    let k1 = kube(0)?;
    kubectl_ok(
        &k1,
        &[
            "create",
            "secret",
            "generic",
            "shared",
            "--from-literal=k=sealed-once",
        ],
    )?;
    let mut last = String::new();
    let sa = poll(
        "a token of the default service account",
        Duration::from_secs(60),
        || {
            kubectl_ok(&k1, &["create", "token", "default"])
                .map_err(|e| last = format!("{e:#}"))
                .ok()
        },
    )
    .with_context(|| format!("last: {last}"))?;
    for (i, cp) in cps.iter().enumerate().skip(1) {
        let ki = kube(i)?;
        let got = kubectl_ok(
            &ki,
            &["get", "secret", "shared", "-o", "jsonpath={.data.k}"],
        )?;
        ensure!(
            got.trim() == "c2VhbGVkLW9uY2U=",
            "cp{} reads the Secret cp1 wrote as {got:?}",
            cp.n
        );
        let http = reqwest_client(ca)?;
        let who: Value = rt.block_on(async {
            http.post(format!(
                "https://{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                cp.api()
            ))
            .bearer_auth(sa.trim())
            .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
        })?;
        ensure!(
            who["status"]["userInfo"]["username"] == "system:serviceaccount:default:default",
            "cp{} took cp1's token as {who}",
            cp.n
        );
    }
    Ok(())
}

fn reqwest_client(ca: &ClusterCa) -> anyhow::Result<reqwest::Client> {
    let tls = strake_pki::client_config(&ca.ca.cert_pem, None)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()?)
}

/// Writes the `recorder` ConfigMap's `v` every 100 ms and reads it every fifth time, through
/// one API at a time, moving to the next after a failure; records every operation.
struct RecorderTask {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    acks: Arc<std::sync::Mutex<Vec<Instant>>>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    history: Recorder<&'static str, u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecorderTask {
    fn start(ca: &ClusterCa, endpoints: Vec<String>) -> anyhow::Result<RecorderTask> {
        let key = ca.issue_client("ha-recorder", &["system:masters"], time_days(1))?;
        let tls = strake_pki::client_config(&ca.ca.cert_pem, Some(&key))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()?;
        let task = RecorderTask {
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicUsize::new(0)),
            acks: Arc::default(),
            errors: Arc::default(),
            history: Recorder::new(),
            thread: None,
        };
        let (stop, acked, acks, errors, history) = (
            task.stop.clone(),
            task.acked.clone(),
            task.acks.clone(),
            task.errors.clone(),
            task.history.clone(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let path = "/api/v1/namespaces/default/configmaps/recorder";
            // The register starts absent; its creation is the first write.
            let op = history.begin(0, "recorder", Call::Write(0));
            let created: anyhow::Result<()> = rt.block_on(async {
                http.post(format!("https://{}/api/v1/namespaces/default/configmaps", endpoints[0]))
                    .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "recorder"}, "data": {"v": "0"}}))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            });
            match created {
                Ok(()) => op.finish(Outcome::Done),
                Err(e) => {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("creating: {e:#}"));
                    return;
                }
            }
            let mut at = 0usize;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = format!("https://{}{path}", endpoints[at % endpoints.len()]);
                let ok = if i.is_multiple_of(5) {
                    let op = history.begin(0, "recorder", Call::Read);
                    let got: anyhow::Result<Value> = rt.block_on(async {
                        Ok(http
                            .get(&url)
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await?)
                    });
                    match got.and_then(|v| {
                        v["data"]["v"]
                            .as_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .context("no data.v")
                    }) {
                        Ok(v) => {
                            op.finish(Outcome::Read(Some(v)));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    let op = history.begin(0, "recorder", Call::Write(i));
                    let done: anyhow::Result<()> = rt.block_on(async {
                        http.patch(&url)
                            .header("Content-Type", "application/merge-patch+json")
                            .body(json!({"data": {"v": i.to_string()}}).to_string())
                            .send()
                            .await?
                            .error_for_status()?;
                        Ok(())
                    });
                    if done.is_ok() {
                        op.finish(Outcome::Done);
                        acked.fetch_add(1, Ordering::Relaxed);
                        acks.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Instant::now());
                    }
                    done
                };
                if let Err(e) = ok {
                    // Unknown outcome (dropped); try the next API.
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{url}: {e:#}"));
                    at += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(RecorderTask {
            thread: Some(thread),
            ..task
        })
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    fn errors(&self) -> Vec<String> {
        let e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().rev().take(5).cloned().collect()
    }

    /// The longest time between two acknowledged writes, from the last one before `since` on.
    fn longest_gap_since(&self, since: Instant) -> Duration {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let start = acks.iter().rposition(|t| *t < since).unwrap_or(0);
        acks[start..]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    fn stop(mut self) -> Vec<linearizability::Operation<&'static str, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.history.history()
    }
}
