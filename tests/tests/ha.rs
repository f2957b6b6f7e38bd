//! High availability in QEMU (TCG): three control planes and two workers on a private L2 inside a network
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
//! - two workers, whose API endpoint is the virtual IP, run four web servers behind a
//!   Service, and a client pod on w2 requests it every 100 ms: its failures are counted for
//!   every fault. w1 keeps renewing its lease after the leader it first talked to died; when
//!   its own QEMU is killed, its web servers run again on w2;
//! - one control plane cut off the segment and healed, a follower (whose return must not
//!   disturb the leader: pre-vote) and then the leader (replaced, the virtual IP moves);
//! - a rolling restart of all five machines, one at a time, each from its own STATE disk
//!   (the store's leader among the control planes last), keeping quorum;
//! - a snapshot of the store is streamed while it serves;
//! - disaster recovery: a snapshot taken with `strakectl store snapshot`, every control plane
//!   killed (their STATE is a tmpfs, so wiped), `strakectl store restore` on a fresh one and
//!   two more joining it; the snapshot's objects are back (a Secret readable, an old
//!   service-account token accepted) and later writes are not.
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
use strake_e2e::{kubectl_ok, kubectl_path, poll, strakectl, strakectl_ok};
use strake_machineconfig::MachineCa;
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

/// The machine config of control plane `n`: the machine CA (for strakectl), the cluster's CA
/// and token, and for every one but the first, the endpoint whose cluster it joins.
fn machine_config(b: &Boot<'_>, n: u8, join: Option<Ipv4Addr>) -> String {
    let (ca, token, machine_ca) = (b.ca, b.token, b.machine_ca);
    let json = |s: &str| serde_json::to_string(s).expect("a string");
    let mut yaml = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: cp{n}\n  install:\n    disk: /dev/vda\n  ca:\n    crt: {mcrt}\n    key: {mkey}\n  network:\n    interfaces:\n      - interface: eth0\n        vip:\n          ip: {VIP}\ncluster:\n  name: ha\n  token: {token}\n  caPin: {pin}\n  ca:\n    crt: {crt}\n    key: {key}\n",
        pin = strake_pki::ca_pin(&ca.ca.cert_pem).expect("the CA's pin"),
        crt = json(&ca.ca.cert_pem),
        key = json(&ca.ca.key_pem),
        mcrt = json(&machine_ca.crt),
        mkey = json(&machine_ca.key),
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
    /// The machine API's CA, and a strakectl config with an admin certificate from it.
    machine_ca: &'a MachineCa,
    strakeconfig: &'a Path,
    /// The registry on the lab's side (`ip:port`).
    registry: &'a str,
}

/// A blank 2 GiB (sparse) disk for the machine `name`, which init makes its STATE: what it
/// keeps there survives a restart of its QEMU.
fn blank_disk(state: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let disk = state.join(format!("{name}.img"));
    std::fs::File::create(&disk)?.set_len(2 << 30)?;
    Ok(disk)
}

/// Control plane `n` (the QEMU named `name`), joining the cluster at `join` unless it is the
/// first.
fn start_control_plane(
    b: &Boot<'_>,
    n: u8,
    name: &str,
    join: Option<Ipv4Addr>,
) -> anyhow::Result<ControlPlane> {
    let (images, state, registry) = (b.images, b.state, b.registry);
    let config = state.join(format!("{name}.yaml"));
    std::fs::write(&config, machine_config(b, n, join))?;
    let disk = blank_disk(state, name)?;
    let cfg = VmConfig {
        name: name.to_string(),
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
        disks: vec![disk],
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

/// Worker `n`, `w<n>` at 192.168.80.2n: its API endpoint is the virtual IP.
fn start_worker(b: &Boot<'_>, n: u8) -> anyhow::Result<Vm> {
    let (images, state, token, registry) = (b.images, b.state, b.token, b.registry);
    let ip = Ipv4Addr::new(192, 168, 80, 20 + n);
    let disk = blank_disk(state, &format!("w{n}"))?;
    let cfg = VmConfig {
        name: format!("w{n}"),
        kernel: images.join("vmlinuz"),
        initrd: images.join("initramfs.zst"),
        cmdline: format!(
            "strake.role=worker strake.api={VIP}:6443 strake.token={token} strake.hostname=w{n} strake.ip={ip}/24:{GATEWAY}:eth0 strake.registry.insecure={registry} strake.disk=/dev/vda"
        ),
        memory_mib: 768,
        cpus: 1,
        accel: Accel::from_env(),
        nics: vec![Nic::Tap {
            ifname: format!("tap-w{n}"),
            mac: [0x52, 0x54, 0x00, 0x80, 0x00, 0x20 + n],
        }],
        disks: vec![disk],
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
    lab.add_tap("tap-w2", "seg-ha")?;
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
    let machine_ca = strake_machineapi::generate_ca("ha")?;
    let strakeconfig = state.path().join("strakeconfig");
    let client = strake_machineapi::issue_client(
        &machine_ca,
        "ha-admin",
        strake_machineapi::Role::Admin,
        1,
    )?;
    let mut sc = strake_machineapi::StrakeConfig::default();
    sc.merge(
        "ha",
        strake_machineapi::Context {
            endpoints: (1..=4).map(|n| cp_ip(n).to_string()).collect(),
            ca: machine_ca.crt.clone(),
            crt: client.cert_pem,
            key: client.key_pem,
        },
    );
    sc.save(&strakeconfig)?;
    let mut cps: Vec<ControlPlane> = Vec::new();
    let boot = Boot {
        images: &images,
        state: state.path(),
        ca: &ca,
        token: &token,
        machine_ca: &machine_ca,
        strakeconfig: &strakeconfig,
        registry: &guest_registry,
    };
    let result = drive(&rt, &lab, &mut cps, &boot);
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
    write_report()
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

/// What the lab measured, in order: written as JSON lines to `$STRAKE_HA_REPORT` when it is
/// set (`scripts/ha-bench.sh` runs the lab repeatedly and tabulates them).
static MEASURED: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

fn measured(metric: &str, value: f64) {
    MEASURED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((metric.to_string(), value));
}

/// Appends the measurements to `$STRAKE_HA_REPORT`, if set.
fn write_report() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("STRAKE_HA_REPORT") else {
        return Ok(());
    };
    let mut text = String::new();
    for (metric, value) in MEASURED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        text.push_str(&json!({"metric": metric, "value": value}).to_string());
        text.push('\n');
    }
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", Path::new(&path).display()))
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
    lab: &Lab,
    cps: &mut Vec<ControlPlane>,
    boot: &Boot<'_>,
) -> anyhow::Result<()> {
    let (dir, ca, registry) = (boot.state, boot.ca, boot.registry);
    let booted = Instant::now();
    cps.push(start_control_plane(boot, 1, "cp1", None)?);
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
    // Write throughput of a lone voter, before anything else runs beside it.
    let one_voter = write_throughput(rt, &via_vip, "one-voter")?;
    for n in [2, 3] {
        cps.push(start_control_plane(boot, n, &format!("cp{n}"), Some(VIP))?);
    }
    let mut w1 = start_worker(boot, 1)?;
    let mut w2 = start_worker(boot, 2)?;
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
    measured(
        "two control planes joined (s)",
        joins.elapsed().as_secs_f64(),
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
    let three_voters = write_throughput(rt, &via_vip, "three-voters")?;
    eprintln!(
        "ha: API writes/s through the VIP: {one_voter:.0} with one voter on one VM (alone), \
         {three_voters:.0} with three voters on three VMs (five VMs on the host's two cores): \
         {:.2}x",
        three_voters / one_voter
    );
    measured("API writes/s, 1 voter on 1 VM", one_voter);
    measured("API writes/s, 3 voters on 3 VMs", three_voters);
    measured("API writes/s, 3 voters / 1 voter", three_voters / one_voter);
    let kubeconfig = dir.join("kubeconfig-cp2");
    write_kubeconfig(ca, &cps[1].api(), &kubeconfig)?;
    let ready = poll(
        "three control planes and two workers Ready",
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
            (out.matches("=True").count() == 5).then_some(out)
        },
    )?;
    eprintln!("ha: nodes {ready}");
    for cp in cps.iter() {
        let (total, parts) = resident(boot, cp)?;
        eprintln!("ha: cp{} resident memory: {total:.1} MiB ({parts})", cp.n);
        measured("control plane resident memory, idle (MiB)", total);
    }
    let kubeconfig = dir.join("kubeconfig-vip");
    write_kubeconfig(ca, &format!("{VIP}:6443"), &kubeconfig)?;
    let probe = Probe::start(&kubeconfig, registry)?;

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
    let mark = probe.mark()?;
    let (leader, victim) = kill_leader(rt, ca, cps, &via_vip, &recorder)?;
    probe.report("leader kill", mark)?;

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
    cps.push(start_control_plane(boot, 4, "cp4", Some(VIP))?);
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
    measured(
        "replacement control plane joined (s)",
        replaced.elapsed().as_secs_f64(),
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
    let before = renewed(&kubeconfig).context("the worker's lease")?;
    poll(
        "the worker to renew its lease",
        Duration::from_secs(60),
        || renewed(&kubeconfig).filter(|r| *r != before),
    )?;
    let mark = probe.mark()?;
    worker_loss(&kubeconfig, &mut w1)?;
    probe.report("worker kill", mark)?;

    // Cut off a follower, then the leader, from the segment, and heal each (three live
    // voters: one cut off leaves a quorum).
    let mark = probe.mark()?;
    partition(rt, lab, ca, cps, &via_vip, &recorder, false)?;
    probe.report("follower cut off", mark)?;
    let mark = probe.mark()?;
    partition(rt, lab, ca, cps, &via_vip, &recorder, true)?;
    probe.report("leader cut off", mark)?;

    // Fault: a rolling restart of all five machines, one at a time, each from its own disk.
    let mark = probe.mark()?;
    rolling_restart(rt, ca, cps, &mut w1, &via_vip, &kubeconfig, &recorder)?;
    probe.report("rolling restart of w1 and the control planes", mark)?;
    restart_w2(&mut w2, &kubeconfig, &probe)?;

    // And once more, with the replacement among the voters.
    let mark = probe.mark()?;
    kill_leader(rt, ca, cps, &via_vip, &recorder)?;
    probe.report("leader kill", mark)?;

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
    wipe_and_restore(rt, cps, boot, &kubeconfig)
}

/// Disaster recovery: objects written, a snapshot taken with strakectl through a control
/// plane's machine API, then every control plane's QEMU killed (STATE is a tmpfs here, so
/// they are wiped). A fresh control plane restores the snapshot with strakectl and two fresh
/// ones join it; everything the snapshot held is back, readable with the old keys, and what
/// was written after it is not.
fn wipe_and_restore(
    rt: &tokio::runtime::Runtime,
    cps: &mut Vec<ControlPlane>,
    boot: &Boot<'_>,
    kubeconfig: &Path,
) -> anyhow::Result<()> {
    let (dir, ca) = (boot.state, boot.ca);
    let sc = boot.strakeconfig.to_str().context("a UTF-8 path")?;
    kubectl_ok(
        kubeconfig,
        &["create", "configmap", "dr-before", "--from-literal=k=v"],
    )?;
    kubectl_ok(
        kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            "dr-secret",
            "--from-literal=password=s3cret",
        ],
    )?;
    kubectl_ok(kubeconfig, &["create", "serviceaccount", "dr"])?;
    let token = kubectl_ok(kubeconfig, &["create", "token", "dr", "--duration=1h"])?;
    let token = token.trim().to_string();

    let live = cps
        .iter()
        .find(|cp| !cp.killed)
        .context("a live control plane")?
        .ip()
        .to_string();
    let snapshot = dir.join("dr.snapshot");
    let out = strakectl_ok(&[
        "store",
        "snapshot",
        snapshot.to_str().context("a UTF-8 path")?,
        "-n",
        &live,
        "--strakeconfig",
        sc,
    ])?;
    eprintln!("ha: {}", out.trim());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&snapshot)?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o600,
            "the snapshot (it holds the CA key) is mode {mode:o}"
        );
    }
    kubectl_ok(
        kubeconfig,
        &["create", "configmap", "dr-after", "--from-literal=k=v"],
    )?;

    // Every control plane is lost.
    for cp in cps.iter_mut().filter(|cp| !cp.killed) {
        cp.vm.kill();
        cp.killed = true;
    }
    let wiped = Instant::now();
    // A fresh control plane configured to join the cluster at the virtual IP, which nobody
    // holds: it waits, until the restore makes it a cluster of its own.
    cps.push(start_control_plane(boot, 1, "cp1-restored", Some(VIP))?);
    let fresh = cp_ip(1).to_string();
    let idx = cps.len() - 1;
    cps[idx].vm.wait_until(
        "the fresh control plane's machine API",
        Duration::from_secs(180),
        || strakectl_ok(&["version", "-n", &fresh, "--strakeconfig", sc]).is_ok(),
    )?;
    // A file that is not a whole snapshot is refused before anything changes.
    let junk = dir.join("junk.snapshot");
    std::fs::write(&junk, b"STRAKEBK but not really")?;
    let out = strakectl(&[
        "store",
        "restore",
        junk.to_str().context("a UTF-8 path")?,
        "-n",
        &fresh,
        "--strakeconfig",
        sc,
    ])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("refused before changing anything"),
        "restoring a damaged snapshot: {said}"
    );
    let out = strakectl_ok(&[
        "store",
        "restore",
        snapshot.to_str().context("a UTF-8 path")?,
        "-n",
        &fresh,
        "--strakeconfig",
        sc,
    ])?;
    eprintln!("ha: {}", out.trim());
    let (via_vip, _) = admin(ca, &format!("{VIP}:6443"))?;
    cps[idx].vm.wait_until(
        "the restored control plane to hold the virtual IP",
        Duration::from_secs(180),
        || {
            rt.block_on(via_vip.get_json("/api/v1/namespaces/default/configmaps/dr-before"))
                .is_ok()
        },
    )?;
    eprintln!(
        "ha: the restored control plane serves through the virtual IP {:.1} s after the wipe",
        wiped.elapsed().as_secs_f64()
    );
    measured(
        "restore: serving (s after the wipe)",
        wiped.elapsed().as_secs_f64(),
    );
    for n in [2, 3] {
        cps.push(start_control_plane(
            boot,
            n,
            &format!("cp{n}-restored"),
            Some(VIP),
        )?);
    }
    let mut last = String::new();
    poll(
        "the fresh control planes to join the restored one",
        Duration::from_secs(300),
        || match members(rt, &via_vip) {
            Ok((m, leader)) => {
                last = format!("{m:?} leader {leader:?}");
                (m.len() == 3 && m.values().all(|(_, voter)| *voter)).then_some(())
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        },
    )
    .with_context(|| format!("last seen: {last}"))?;
    eprintln!(
        "ha: three voters again {:.1} s after the wipe: {last}",
        wiped.elapsed().as_secs_f64()
    );
    measured(
        "restore: three voters (s after the wipe)",
        wiped.elapsed().as_secs_f64(),
    );

    // What the snapshot held is back, Secrets readable with the restored encryption key...
    let v = kubectl_ok(
        kubeconfig,
        &["get", "configmap", "dr-before", "-o", "jsonpath={.data.k}"],
    )?;
    ensure!(v == "v", "dr-before after the restore: {v:?}");
    let secret = kubectl_ok(
        kubeconfig,
        &[
            "get",
            "secret",
            "dr-secret",
            "-o",
            "jsonpath={.data.password}",
        ],
    )?;
    let secret = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(secret.trim())?
    };
    ensure!(secret == b"s3cret", "the restored Secret: {secret:?}");
    // ...and what came after it is not.
    let after = strake_e2e::kubectl(kubeconfig, &["get", "configmap", "dr-after"])?;
    ensure!(
        String::from_utf8_lossy(&after.stderr).contains("NotFound"),
        "dr-after was written after the snapshot, yet: {}{}",
        String::from_utf8_lossy(&after.stdout),
        String::from_utf8_lossy(&after.stderr)
    );
    // A service-account token issued before the wipe is accepted: the signing key came back.
    let http = reqwest_client(ca)?;
    let review: Value = rt.block_on(async {
        http.post(format!(
            "https://{VIP}:6443/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ))
        .bearer_auth(&token)
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
    })?;
    let user = review["status"]["userInfo"]["username"].as_str();
    ensure!(
        user == Some("system:serviceaccount:default:dr"),
        "the old token after the restore: {review}"
    );
    // Every restored control plane serves the restored objects (a joined one starts its API
    // server once it is a voter).
    for cp in cps.iter_mut().filter(|cp| !cp.killed) {
        let (c, _) = admin(ca, &cp.api())?;
        let name = cp.vm.config().name.clone();
        cp.vm.wait_until(
            &format!("{name} to serve the restored Secret"),
            Duration::from_secs(120),
            || {
                rt.block_on(c.get_json("/api/v1/namespaces/default/secrets/dr-secret"))
                    .is_ok()
            },
        )?;
    }
    Ok(())
}

/// `kubectl apply` of `manifest`.
fn apply(kubeconfig: &Path, manifest: &str) -> anyhow::Result<()> {
    let out =
        strake_e2e::kubectl_with_input(kubeconfig, &["apply", "-f", "-"], manifest.as_bytes())?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The replicas of the `spread` Deployment that are not being deleted: (node, phase).
fn placed(kubeconfig: &Path) -> Option<Vec<(String, String)>> {
    let out = kubectl_ok(
        kubeconfig,
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
}

/// The workload and its client: a Deployment of four web servers on the workers (two on
/// each, tolerating an unreachable node for 2 s), a Service in front of them, and a client
/// pod on w2 that requests the Service every 100 ms (each cut after 1 s: busybox's own wget
/// timeout, -T, crashes it) and logs each outcome with the time.
/// Faults are bracketed by [`Probe::mark`] and [`Probe::report`], which counts the client's
/// failures in between.
struct Probe {
    kubeconfig: PathBuf,
}

impl Probe {
    fn start(kubeconfig: &Path, registry: &str) -> anyhow::Result<Probe> {
        let manifest = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: spread\n  namespace: default\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: spread}}\n  template:\n    metadata:\n      labels: {{app: spread}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      affinity:\n        nodeAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n            - matchExpressions:\n              - {{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}}\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        whenUnsatisfiable: ScheduleAnyway\n        labelSelector:\n          matchLabels: {{app: spread}}\n      tolerations:\n      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n      containers:\n      - name: web\n        image: {registry}/e2e/busybox:1\n        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']\n        ports:\n        - containerPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: spread\n  namespace: default\nspec:\n  selector: {{app: spread}}\n  ports:\n  - port: 80\n    targetPort: 8080\n"
        );
        apply(kubeconfig, &manifest)?;
        let mut last = Vec::new();
        poll(
            "four web servers Running, two on each worker",
            Duration::from_secs(240),
            || {
                let p = placed(kubeconfig)?;
                last = p.clone();
                let on = |w: &str| {
                    p.iter()
                        .filter(|(node, phase)| node == w && phase == "Running")
                        .count()
                };
                (on("w1") == 2 && on("w2") == 2).then_some(())
            },
        )
        .with_context(|| format!("last seen: {last:?}"))?;
        let ip = kubectl_ok(
            kubeconfig,
            &[
                "get",
                "service",
                "spread",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        )?;
        let client = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: prober\n  namespace: default\nspec:\n  nodeSelector: {{kubernetes.io/hostname: w2}}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: probe\n    image: {registry}/e2e/busybox:1\n    command: [sh, -c, 'while true; do if timeout 1 wget -q -O /dev/null http://{ip}/; then r=ok; else r=fail; fi; read up idle < /proc/uptime; echo \"$r $up\"; busybox usleep 100000; done']\n"
        );
        apply(kubeconfig, &client)?;
        let probe = Probe {
            kubeconfig: kubeconfig.to_path_buf(),
        };
        poll(
            "the client pod to reach the Service",
            Duration::from_secs(180),
            || {
                let lines = probe.lines().ok()?;
                (lines.iter().filter(|(ok, _)| *ok).count() >= 5).then_some(())
            },
        )
        .with_context(|| {
            let show = |args: &[&str]| {
                let out = strake_e2e::kubectl(kubeconfig, args);
                out.map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| e.to_string())
            };
            format!(
                "pods:\n{}\nthe client's log:\n{}\nits events:\n{}\nthe Service's endpoints:\n{}",
                show(&["get", "pods", "-o", "wide"]),
                show(&["logs", "prober", "--tail", "10"]),
                show(&[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=prober"
                ]),
                show(&["get", "endpointslices", "-o", "wide"]),
            )
        })?;
        Ok(probe)
    }

    /// The client's outcomes so far: (succeeded, the guest's uptime).
    fn lines(&self) -> anyhow::Result<Vec<(bool, f64)>> {
        let out = kubectl_ok(&self.kubeconfig, &["logs", "prober"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (r, t) = l.split_once(' ')?;
                Some((r == "ok", t.trim().parse().ok()?))
            })
            .collect())
    }

    /// Where the client's log stands before a fault.
    fn mark(&self) -> anyhow::Result<usize> {
        Ok(self.lines()?.len())
    }

    /// The client's failures since `mark`, printed and measured as `fault`'s; it must be
    /// succeeding again by now.
    fn report(&self, fault: &str, mark: usize) -> anyhow::Result<()> {
        let mut since = Vec::new();
        poll(
            &format!("the client to succeed again after the {fault}"),
            Duration::from_secs(60),
            || {
                let lines = self.lines().ok()?;
                since = lines.get(mark..).unwrap_or_default().to_vec();
                since.iter().rev().take(3).all(|(ok, _)| *ok).then_some(())
            },
        )
        .with_context(|| format!("the client's outcomes since the {fault}: {since:?}"))?;
        let failed: Vec<f64> = since
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, t)| *t)
            .collect();
        let window = match (failed.first(), failed.last()) {
            (Some(first), Some(last)) => last - first + 0.1,
            _ => 0.0,
        };
        eprintln!(
            "ha: {fault}: the client's requests to the Service failed {} times of {} ({window:.1} s from the first failure to the last)",
            failed.len(),
            since.len()
        );
        measured(
            &format!("{fault}: Service requests failed"),
            failed.len() as f64,
        );
        measured(&format!("{fault}: Service failure window (s)"), window);
        Ok(())
    }
}

/// Acknowledged API writes per second through `client`: [`WRITERS`] clients each creating
/// ConfigMaps (100-byte values) one after another for [`WRITING_FOR`]. `label` marks them,
/// and they are deleted after.
fn write_throughput(
    rt: &tokio::runtime::Runtime,
    client: &strake_kubeclient::Client,
    label: &str,
) -> anyhow::Result<f64> {
    const WRITERS: usize = 8;
    const WRITING_FOR: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let written: usize = rt.block_on(async {
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (client, label) = (client.clone(), label.to_string());
            writers.spawn(async move {
                let mut acked = 0;
                for i in 0.. {
                    if started.elapsed() >= WRITING_FOR {
                        break;
                    }
                    let body = json!({
                        "metadata": {"name": format!("tp-{label}-{w}-{i}"), "labels": {"throughput": label}},
                        "data": {"v": "x".repeat(100)},
                    });
                    if client
                        .post_json("/api/v1/namespaces/default/configmaps", &body)
                        .await
                        .is_ok()
                    {
                        acked += 1;
                    }
                }
                acked
            });
        }
        writers.join_all().await.into_iter().sum()
    });
    let rate = written as f64 / started.elapsed().as_secs_f64();
    rt.block_on(client.delete_path(&format!(
        "/api/v1/namespaces/default/configmaps?labelSelector=throughput%3D{label}"
    )))
    .with_context(|| format!("deleting the {label} throughput ConfigMaps"))?;
    ensure!(
        written > 0,
        "no write was acknowledged in the {label} throughput run"
    );
    Ok(rate)
}

/// Powers `vm` off (unless it is not running) and starts it again from its disk. Returns what
/// it printed on its console before.
fn restart(vm: &mut Vm, running: bool) -> anyhow::Result<String> {
    let cfg = vm.config().clone();
    if running {
        ensure!(
            vm.power_off(Duration::from_secs(60)),
            "{} did not power off within 60 s of the power button",
            cfg.name
        );
    }
    let before = vm.console();
    *vm = Vm::start_past_kernel(cfg, Duration::from_secs(120))?;
    Ok(before)
}

/// When node `name`'s agent last renewed its lease.
fn lease_renewed(kubeconfig: &Path, name: &str) -> Option<String> {
    kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "kube-node-lease",
            "get",
            "lease",
            name,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
    )
    .ok()
}

/// Whether node `name` is Ready.
fn node_ready(kubeconfig: &Path, name: &str) -> bool {
    kubectl_ok(
        kubeconfig,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    )
    .is_ok_and(|s| s == "True")
}

/// Restarts w1 (whose QEMU was killed) and every live control plane from their disks, one at
/// a time, followers first and the store's leader last (as an upgrade goes): each must be a
/// Ready node again, and a control plane must follow the store's leader again, before the
/// next goes down. The recorder keeps writing throughout.
fn rolling_restart(
    rt: &tokio::runtime::Runtime,
    ca: &ClusterCa,
    cps: &mut [ControlPlane],
    w1: &mut Vm,
    via_vip: &strake_kubeclient::Client,
    kubeconfig: &Path,
    recorder: &RecorderTask,
) -> anyhow::Result<()> {
    let started = Instant::now();
    restart(w1, false)?;
    w1.wait_until("w1 to be Ready again", Duration::from_secs(180), || {
        node_ready(kubeconfig, "w1")
    })?;
    let (m, leader) = members(rt, via_vip)?;
    let leader_ip = leader
        .and_then(|l| m.get(&l))
        .and_then(|(addr, _)| addr.split(':').next().map(str::to_string))
        .context("the store's leader")?;
    let mut order: Vec<usize> = (0..cps.len()).filter(|i| !cps[*i].killed).collect();
    order.sort_by_key(|i| cps[*i].ip().to_string() == leader_ip);
    let mut gaps = Vec::new();
    for i in order {
        let cp = &mut cps[i];
        let name = format!("cp{}", cp.n);
        let leads = cp.ip().to_string() == leader_ip;
        let down = Instant::now();
        let console = restart(&mut cp.vm, true)?;
        // The leader hands over as it stops, rather than leaving the others to notice.
        ensure!(
            !leads || console.contains("handed the store's leadership over"),
            "{name} led the store but did not hand over as it stopped:\n{}",
            console
                .lines()
                .filter(|l| l.contains("store") || l.contains("stopping"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Renewed last by the agent that was just stopped; the next renewal is its successor's.
        let renewed = lease_renewed(kubeconfig, &name);
        let (own, _) = admin(ca, &cp.api())?;
        cp.vm.wait_until(
            &format!("{name} to serve, follow the store's leader and renew its lease again"),
            Duration::from_secs(180),
            || {
                let (_, theirs) = members(rt, via_vip).ok().unzip();
                let (_, its) = members(rt, &own).ok().unzip();
                its.flatten().is_some()
                    && its == theirs
                    && lease_renewed(kubeconfig, &name)
                        .is_some_and(|r| Some(&r) != renewed.as_ref())
                    && node_ready(kubeconfig, &name)
            },
        )?;
        let gap = recorder.longest_gap_since(down).as_secs_f64();
        if leads {
            measured(
                "rolling restart, the leader's turn: longest write gap (s)",
                gap,
            );
        }
        gaps.push(format!(
            "{name} {:.1} s (longest write gap {gap:.2} s)",
            down.elapsed().as_secs_f64(),
        ));
    }
    eprintln!(
        "ha: rolling restart of w1 and the control planes took {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        gaps.join(", ")
    );
    measured(
        "rolling restart of w1 and 3 control planes (s)",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Restarts w2, which runs the web servers and the client: they run again from its disk.
fn restart_w2(w2: &mut Vm, kubeconfig: &Path, probe: &Probe) -> anyhow::Result<()> {
    let started = |k: &Path| {
        kubectl_ok(
            k,
            &[
                "get",
                "pod",
                "prober",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.running.startedAt}",
            ],
        )
        .ok()
        .filter(|s| !s.is_empty())
    };
    let before = started(kubeconfig).context("the client's start time")?;
    let down = Instant::now();
    restart(w2, true)?;
    w2.wait_until(
        "w2 to be Ready again, its client started anew and reaching the Service",
        Duration::from_secs(180),
        || {
            node_ready(kubeconfig, "w2")
                && started(kubeconfig).is_some_and(|s| s != before)
                && probe
                    .lines()
                    .is_ok_and(|l| l.len() >= 3 && l.iter().rev().take(3).all(|(ok, _)| *ok))
        },
    )?;
    eprintln!(
        "ha: w2 restarted; its web servers and client served again {:.1} s after it went down",
        down.elapsed().as_secs_f64()
    );
    measured(
        "worker restart: serving again (s)",
        down.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// The QEMU of w1, which runs two of the web servers, is killed: they must run again on w2
/// within the tolerations (2 s) after the node is found unreachable (40 s).
fn worker_loss(kubeconfig: &Path, worker: &mut Vm) -> anyhow::Result<()> {
    let mut last = Vec::new();
    let killed = Instant::now();
    worker.kill();
    poll(
        "w1's web servers replaced on w2",
        Duration::from_secs(180),
        || {
            let p = placed(kubeconfig)?;
            last = p.clone();
            (p.iter()
                .filter(|(node, phase)| node == "w2" && phase == "Running")
                .count()
                == 4)
                .then_some(())
        },
    )
    .with_context(|| format!("last seen: {last:?}"))?;
    eprintln!(
        "ha: w1's QEMU killed; its web servers ran again on w2 {:.1} s later (node monitor grace 40 s, tolerations 2 s)",
        killed.elapsed().as_secs_f64()
    );
    measured(
        "lost worker's pods replaced (s)",
        killed.elapsed().as_secs_f64(),
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
    // Whoever leads by then (a first election may be lost to a second).
    poll(
        "the virtual IP to move to the new leader",
        Duration::from_secs(30),
        || {
            let v = rt
                .block_on(via_vip.get_json("/strake/v1/store/members"))
                .ok()?;
            let by = v["answeredBy"].as_u64();
            (by.is_some() && by == v["leader"].as_u64() && by != Some(leader)).then(|| {
                new_leader = by;
            })
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
    let again = recorder
        .writable_again_after(killed)
        .context("no write sent after the kill was acknowledged")?;
    eprintln!(
        "ha: leader {leader} killed; survivors elected {new_leader:?} within {:.2} s and the virtual IP answered from it within {:.2} s (as polled); the first write sent after the kill was acknowledged {:.2} s after it, and the longest gap between acknowledged writes was {:.2} s (the recorder's requests time out after 1 s)",
        elected.as_secs_f64(),
        moved.as_secs_f64(),
        again.as_secs_f64(),
        gap.as_secs_f64()
    );
    measured(
        "leader kill: writes through the VIP accepted again after (s)",
        again.as_secs_f64(),
    );
    // How the new leader saw it, on its own clock.
    let (m, _) = members(rt, via_vip)?;
    let new_ip = new_leader
        .and_then(|l| m.get(&l))
        .and_then(|(addr, _)| addr.split(':').next().map(str::to_string));
    if let Some(cp) = cps
        .iter()
        .find(|cp| !cp.killed && Some(cp.ip().to_string()) == new_ip)
    {
        let log = std::fs::read_to_string(cp.vm.config().serial_log()).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("pre-vote granted")
                    || l.contains("leads the store")
                    || l.contains("took the virtual IP")
            })
            .collect();
        eprintln!(
            "ha: cp{} (the new leader) logged: {}",
            cp.n,
            lines[lines.len().saturating_sub(3)..].join(" | ")
        );
    }
    measured("leader kill: new leader (s)", elected.as_secs_f64());
    measured("leader kill: virtual IP moved (s)", moved.as_secs_f64());
    measured("leader kill: write gap (s)", gap.as_secs_f64());
    Ok((leader, victim))
}

/// The resident memory of control plane `cp`'s services in MiB, as its machine API reports
/// it, and each service's.
fn resident(boot: &Boot<'_>, cp: &ControlPlane) -> anyhow::Result<(f64, String)> {
    let sc = boot.strakeconfig.to_str().context("a UTF-8 path")?;
    let node = cp.ip().to_string();
    let out = strakectl_ok(&["services", "-o", "json", "-n", &node, "--strakeconfig", sc])?;
    let list: Value = serde_json::from_str(&out).context("strakectl services -o json")?;
    let mut total = 0;
    let mut parts = Vec::new();
    for s in list.as_array().context("a list of services")? {
        let rss = s["rss_bytes"].as_u64().unwrap_or_default();
        total += rss;
        parts.push(format!(
            "{} {:.1}",
            s["name"].as_str().unwrap_or("?"),
            rss as f64 / 1048576.0
        ));
    }
    Ok((
        total as f64 / 1048576.0,
        format!("{} MiB", parts.join(", ")),
    ))
}

/// The store's term as the API at `client` answers it.
fn term(rt: &tokio::runtime::Runtime, client: &strake_kubeclient::Client) -> anyhow::Result<u64> {
    let v = rt.block_on(client.get_json("/strake/v1/store/members"))?;
    v["term"].as_u64().context("the members list has no term")
}

/// Fault: one live control plane (the leader with `leader`, else a follower) cut off the
/// segment for 6 s (its tap down), then healed. A follower cut off must not disturb the others
/// when it comes back: without a leader it asks for pre-votes, which nobody grants, so its
/// term does not grow and the leader keeps its place. A leader cut off is replaced, the
/// virtual IP moves, and on its return it follows the new leader.
fn partition(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    ca: &ClusterCa,
    cps: &[ControlPlane],
    via_vip: &strake_kubeclient::Client,
    recorder: &RecorderTask,
    leader: bool,
) -> anyhow::Result<()> {
    let (m, leader_id) = members(rt, via_vip)?;
    let leader_id = leader_id.context("no store leader")?;
    let term_before = term(rt, via_vip)?;
    let leader_ip = m[&leader_id]
        .0
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let cut = cps
        .iter()
        .find(|cp| !cp.killed && (cp.ip().to_string() == leader_ip) == leader)
        .context("no control plane to cut off")?;
    let what = if leader { "leader" } else { "follower" };
    let (cut_client, _) = admin(ca, &cut.api())?;
    let tap = format!("tap-cp{}", cut.n);
    let acked_before = recorder.acked();
    let at = Instant::now();
    lab.set_link(&tap, false)?;
    let healed = (|| -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_secs(6));
        ensure!(
            recorder.acked() > acked_before + 10,
            "writes stopped while the {what} cp{} was cut off: {:?}",
            cut.n,
            recorder.errors().last()
        );
        Ok(())
    })();
    lab.set_link(&tap, true)?;
    healed?;
    let gap = recorder.longest_gap_since(at);
    let back = Instant::now();
    let mut seen = String::new();
    poll(
        &format!("cp{} to follow the cluster's leader after the heal", cut.n),
        Duration::from_secs(60),
        || {
            let (_, now_leader) = members(rt, via_vip).ok()?;
            let (_, its_leader) = members(rt, &cut_client).ok()?;
            seen = format!(
                "the cluster's leader {now_leader:?}, cp{}'s {its_leader:?}",
                cut.n
            );
            (now_leader.is_some() && its_leader == now_leader).then_some(())
        },
    )
    .with_context(|| format!("last seen: {seen}"))?;
    // Settle, then look: nothing was disturbed by the return.
    std::thread::sleep(Duration::from_secs(3));
    let (_, after) = members(rt, via_vip)?;
    let term_after = term(rt, via_vip)?;
    eprintln!(
        "ha: {what} cp{} cut off for 6 s and healed: longest write gap {:.2} s, following again within {:.1} s, leader {leader_id} -> {after:?}, term {term_before} -> {term_after}",
        cut.n,
        gap.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    measured(
        &format!("{what} cut off 6 s: write gap (s)"),
        gap.as_secs_f64(),
    );
    if leader {
        ensure!(
            after.is_some() && after != Some(leader_id),
            "the cut-off leader {leader_id} is leader again: {after:?}"
        );
        let v = rt.block_on(via_vip.get_json("/strake/v1/store/members"))?;
        ensure!(
            v["answeredBy"].as_u64() == after,
            "the virtual IP is answered by {} but {after:?} leads",
            v["answeredBy"]
        );
    } else {
        ensure!(
            after == Some(leader_id) && term_after == term_before,
            "the follower's return disturbed the cluster: leader {leader_id} -> {after:?}, term {term_before} -> {term_after}"
        );
    }
    Ok(())
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
    /// When each acknowledged write was sent, and when it was acknowledged.
    acks: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    history: Recorder<&'static str, u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecorderTask {
    fn start(ca: &ClusterCa, endpoints: Vec<String>) -> anyhow::Result<RecorderTask> {
        let key = ca.issue_client("ha-recorder", &["system:masters"], time_days(1))?;
        let tls = strake_pki::client_config(&ca.ca.cert_pem, Some(&key))?;
        // A request to a leader that just died waits out this timeout before the next one
        // goes: the probe's own share of the gaps it measures.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
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
                    let sent = Instant::now();
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
                            .push((sent, Instant::now()));
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
        let start = acks.iter().rposition(|(_, t)| *t < since).unwrap_or(0);
        acks[start..]
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or_default()
    }

    /// From `since` until the first write sent after it was acknowledged: how long before
    /// the API took writes again.
    fn writable_again_after(&self, since: Instant) -> Option<Duration> {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        acks.iter()
            .find(|(sent, _)| *sent >= since)
            .map(|(_, acked)| *acked - since)
    }

    fn stop(mut self) -> Vec<linearizability::Operation<&'static str, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.history.history()
    }
}
