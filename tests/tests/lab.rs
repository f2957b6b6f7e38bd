//! Boots a three-node Strake cluster in QEMU (TCG) on a private network and drives it with
//! kubectl 1.32: one control plane and two workers, inside a network namespace this test
//! creates (`strake_qemu::Lab`). The control plane and worker 1 share an L2 segment; worker 2
//! sits on a second segment one routed hop away, so the agents reach worker 1's pods host-gw
//! and worker 2's over VXLAN, each picked by itself. The lab is booted once and every
//! scenario runs in it: workers join with the bootstrap token, every node gets a podCIDR, pods
//! reach each other on one node and across nodes by both paths, a ClusterIP spreads over pods
//! on all three nodes, cluster DNS answers on a worker, and a NodePort and a LoadBalancer
//! address answer from the lab's side of the network.
//!
//! Needs root, the image built by `scripts/test.sh` (or `STRAKE_IMAGE_DIR`), qemu-system-x86_64,
//! iproute2, docker-registry, busybox-static and kubectl 1.32. Any missing prerequisite fails
//! the test. Nothing it does reaches the host's own network.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use strake_e2e::{
    Registry, bootstrap_admin, kubectl_ok, kubectl_path, poll, push_busybox, workspace_root,
};
use strake_pki::BootstrapToken;
use strake_qemu::{Accel, Lab, Nic, Vm, VmConfig};

fn image_dir() -> PathBuf {
    std::env::var_os("STRAKE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/image"))
}

/// One machine of the lab.
struct Machine {
    name: &'static str,
    tap: &'static str,
    segment: &'static str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    worker: bool,
}

const CP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
const MACHINES: [Machine; 3] = [
    Machine {
        name: "lab-cp",
        tap: "tap-cp",
        segment: "seg-a",
        ip: CP_IP,
        gateway: Ipv4Addr::new(192, 168, 77, 1),
        worker: false,
    },
    Machine {
        name: "lab-w1",
        tap: "tap-w1",
        segment: "seg-a",
        ip: Ipv4Addr::new(192, 168, 77, 11),
        gateway: Ipv4Addr::new(192, 168, 77, 1),
        worker: true,
    },
    Machine {
        name: "lab-w2",
        tap: "tap-w2",
        segment: "seg-b",
        ip: Ipv4Addr::new(192, 168, 78, 12),
        gateway: Ipv4Addr::new(192, 168, 78, 1),
        worker: true,
    },
];

#[test]
fn three_node_lab_networking() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the lab test creates a network namespace and taps: run it as root"
    );
    let images = image_dir();
    for f in ["vmlinuz", "initramfs.zst"] {
        ensure!(
            images.join(f).exists(),
            "{} is missing: run scripts/test.sh (it builds the image) or set STRAKE_IMAGE_DIR",
            images.join(f).display()
        );
    }
    kubectl_path()?;

    let lab = Lab::create(&format!("strake-lab-{}", std::process::id()))?;
    lab.add_segment("seg-a", Ipv4Addr::new(192, 168, 77, 1), 24)?;
    lab.add_segment("seg-b", Ipv4Addr::new(192, 168, 78, 1), 24)?;
    for m in &MACHINES {
        lab.add_tap(m.tap, m.segment)?;
    }
    // From here on this thread, and QEMU, kubectl and the registry it starts, live in the lab.
    lab.enter()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The registry listens on the lab's addresses only (the namespace has no others).
    let registry = Registry::start_on(Ipv4Addr::UNSPECIFIED)?;
    rt.block_on(push_busybox(registry.port, "e2e/busybox", "1"))?;
    let guest_registry = format!("192.168.77.1:{}", registry.port);

    let token = BootstrapToken::generate();
    let state = strake_e2e::TempDir::new("strake-lab")?;
    let mut vms = Vec::new();
    let booted = Instant::now();
    for (i, m) in MACHINES.iter().enumerate() {
        let mut cmdline = format!(
            "strake.token={token} strake.hostname={} strake.ip={}/24:{}:eth0 strake.registry.insecure={guest_registry}",
            m.name, m.ip, m.gateway
        );
        if m.worker {
            cmdline.push_str(&format!(" strake.role=worker strake.api={CP_IP}:6443"));
        }
        let cfg = VmConfig {
            name: m.name.into(),
            kernel: images.join("vmlinuz"),
            initrd: images.join("initramfs.zst"),
            cmdline,
            memory_mib: if m.worker { 1024 } else { 2048 },
            cpus: if m.worker { 1 } else { 2 },
            accel: Accel::from_env(),
            nics: vec![Nic::Tap {
                ifname: m.tap.into(),
                mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x10 + i as u8],
            }],
            disks: Vec::new(),
            fw_cfg: Vec::new(),
            uefi: None,
            state_dir: state.path().to_path_buf(),
        };
        vms.push(Vm::start(cfg)?);
    }
    let result = drive(&rt, &mut vms, &token, &guest_registry, state.path(), booted);
    if result.is_err() {
        for vm in &vms {
            eprintln!(
                "---- {} console ----\n{}\n-----------------------",
                vm.config().name,
                strake_qemu::tail(&vm.config().serial_log(), 80)
            );
        }
    }
    result?;
    for vm in &mut vms {
        ensure!(
            vm.power_off(Duration::from_secs(60)),
            "{} did not power off within 60 s of the power button",
            vm.config().name
        );
    }
    drop(registry);
    drop(lab);
    Ok(())
}

fn drive(
    rt: &tokio::runtime::Runtime,
    vms: &mut [Vm],
    token: &BootstrapToken,
    registry: &str,
    dir: &Path,
    booted: Instant,
) -> anyhow::Result<()> {
    let server = format!("https://{CP_IP}:6443");
    let kubeconfig = dir.join("kubeconfig");
    bootstrap_admin(
        rt,
        &mut vms[0],
        &server,
        token,
        Duration::from_secs(240),
        "strake-lab",
        &kubeconfig,
    )?;
    let k = |args: &[&str]| {
        let mut a = vec!["-n", "default"];
        a.extend(args);
        kubectl_ok(&kubeconfig, &a)
    };

    // Every node joins and turns Ready, each with a podCIDR of its own.
    let mut last = String::new();
    let ready = poll("all three nodes Ready", Duration::from_secs(300), || {
        for vm in vms.iter_mut() {
            // A VM that died fails now, not at the deadline.
            if let Err(e) = vm.check_alive() {
                last = e.to_string();
                return Some(Err(e));
            }
        }
        let out = k(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}{\"\\n\"}{end}",
        ])
        .ok()?;
        last = out.clone();
        let ready = out
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[1] == "True" && f[2].starts_with("10.244.")
            })
            .count();
        (ready == 3).then_some(Ok(out))
    })
    .with_context(|| format!("last seen:\n{last}"))??;
    let cidrs: std::collections::BTreeSet<&str> = ready
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    ensure!(cidrs.len() == 3, "each node its own podCIDR: {ready}");
    eprintln!(
        "lab: three nodes Ready {:.1} s after QEMU started:\n{}",
        booted.elapsed().as_secs_f64(),
        kubectl_ok(&kubeconfig, &["get", "nodes", "-o", "wide"])?
    );

    cross_node_scenarios(&k, &kubeconfig, registry)?;
    network_policy_scenarios(&kubeconfig, registry)?;
    churn_scenarios(&k, &kubeconfig)?;
    Ok(())
}

/// `kubectl apply -f -` of `yaml`.
fn apply(kubeconfig: &Path, yaml: &str) -> anyhow::Result<()> {
    let out = strake_e2e::kubectl_with_input(kubeconfig, &["apply", "-f", "-"], yaml.as_bytes())?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An HTTP/1.0 GET of `/` from this thread (inside the lab); the body.
fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_string())
        }
        _ => bail!("{addr} answered {out:?}"),
    }
}

/// Pods on every node, reached pod to pod, through a ClusterIP, by name, and from outside.
fn cross_node_scenarios(
    k: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    kubeconfig: &Path,
    registry: &str,
) -> anyhow::Result<()> {
    // One web pod pinned to each node, answering with its own name.
    let mut manifest = String::new();
    for m in &MACHINES {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{node}\n  labels:\n    app: web\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {registry}/e2e/busybox:1\n    command: [\"sh\", \"-c\", \"mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www\"]\n    ports:\n    - containerPort: 8080\n      name: http\n",
            node = m.name
        ));
    }
    manifest.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: http\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-np\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: web\n  ports:\n  - port: 8081\n    targetPort: 8080\n",
    );
    apply(kubeconfig, &manifest)?;
    for m in &MACHINES {
        k(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/web-{}", m.name),
            "--timeout=180s",
        ])?;
    }
    let ips: Vec<String> = MACHINES
        .iter()
        .map(|m| {
            k(&[
                "get",
                "pod",
                &format!("web-{}", m.name),
                "-o",
                "jsonpath={.status.podIP}",
            ])
        })
        .collect::<anyhow::Result<_>>()?;

    // Pod to pod: control plane → worker 1 (host-gw), → worker 2 (VXLAN), worker 2 → worker 1
    // (VXLAN, through the routed hop), and each pod to itself by address.
    let fetch = |from: &str, url: &str| {
        k(&[
            "exec",
            &format!("web-{from}"),
            "--",
            "timeout",
            "15",
            "wget",
            "-qO-",
            url,
        ])
        .map(|s| s.trim().to_string())
    };
    for (from, to) in [(0, 1), (0, 2), (2, 1), (1, 2), (2, 0), (1, 1)] {
        let got = fetch(MACHINES[from].name, &format!("http://{}:8080/", ips[to]))
            .with_context(|| format!("{} -> {}", MACHINES[from].name, MACHINES[to].name))?;
        let want = format!("web-{}", MACHINES[to].name);
        ensure!(
            got == want,
            "{} -> {}: {got:?}",
            MACHINES[from].name,
            ips[to]
        );
    }
    eprintln!("lab scenarios: pod to pod on one node, host-gw and VXLAN across nodes: ok");

    // A ClusterIP spreads over the pods of all three nodes, from a worker.
    let cluster_ip = k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let script = format!(
        "i=0; while [ $i -lt 40 ]; do timeout 5 wget -qO- http://{cluster_ip}/; i=$((i+1)); done"
    );
    let seen = k(&[
        "exec",
        "web-lab-w2",
        "--",
        "timeout",
        "120",
        "sh",
        "-c",
        &script,
    ])?;
    for m in &MACHINES {
        ensure!(
            seen.contains(&format!("web-{}", m.name)),
            "40 requests to the ClusterIP {cluster_ip} from lab-w2 never reached web-{}: {seen}",
            m.name
        );
    }
    // Session affinity: the same client (lab-w2's pod) keeps one endpoint.
    k(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ])?;
    let sticky_script = format!(
        "i=0; while [ $i -lt 12 ]; do timeout 5 wget -qO- http://{cluster_ip}/; i=$((i+1)); done"
    );
    poll(
        "sessionAffinity ClientIP to keep lab-w2 on one endpoint",
        Duration::from_secs(60),
        || {
            let out = k(&["exec", "web-lab-w2", "--", "sh", "-c", &sticky_script]).ok()?;
            let names: std::collections::BTreeSet<&str> = out.split_whitespace().collect();
            (names.len() == 1 && out.split_whitespace().count() == 12).then_some(())
        },
    )?;
    k(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ])?;
    // Cluster DNS on the workers: the Service by its short name (the search list) and in
    // full, and the API's. busybox's nslookup exits 1 when any search domain has no answer,
    // so its output is what counts.
    let short =
        k(&["exec", "web-lab-w1", "--", "nslookup", "web"]).unwrap_or_else(|e| e.to_string());
    ensure!(
        short.contains(&cluster_ip),
        "nslookup web on lab-w1: {short}"
    );
    let lookup = k(&[
        "exec",
        "web-lab-w2",
        "--",
        "nslookup",
        "web.default.svc.cluster.local",
    ])
    .unwrap_or_else(|e| e.to_string());
    ensure!(
        lookup.contains(&cluster_ip),
        "nslookup web.default.svc.cluster.local on lab-w2: {lookup}"
    );
    let api = k(&["exec", "web-lab-w2", "--", "nslookup", "kubernetes.default"])
        .unwrap_or_else(|e| e.to_string());
    ensure!(
        api.contains("10.96.0.1"),
        "nslookup kubernetes.default on lab-w2: {api}"
    );
    eprintln!(
        "lab scenarios: a ClusterIP over three nodes, session affinity, cluster DNS on the workers: ok"
    );

    // A NodePort answers on every node's address from the lab's side, whichever node the
    // endpoint it picks is on (the node masquerades, so the reply finds its way back).
    let node_port: u16 = k(&[
        "get",
        "service",
        "web-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?
    .parse()
    .context("the nodePort")?;
    for m in &MACHINES {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..12 {
            let body = http_get(SocketAddr::from((m.ip, node_port)))
                .with_context(|| format!("NodePort {node_port} on {}", m.name))?;
            names.insert(body);
        }
        ensure!(
            names.iter().any(|n| !n.ends_with(m.name)),
            "NodePort on {}: every answer came from its own pod ({names:?}); no cross-node hop was tried",
            m.name
        );
    }
    // externalTrafficPolicy Local: a node port leads only to the pod on the node asked.
    apply(
        kubeconfig,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-local\n  namespace: default\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    )?;
    let local_port: u16 = k(&[
        "get",
        "service",
        "web-local",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?
    .parse()
    .context("web-local's nodePort")?;
    for m in &MACHINES {
        let want = format!("web-{}", m.name);
        let mut names = std::collections::BTreeSet::new();
        poll(
            &format!("web-local's node port on {} to answer", m.name),
            Duration::from_secs(30),
            || http_get(SocketAddr::from((m.ip, local_port))).ok(),
        )?;
        for _ in 0..8 {
            names.insert(http_get(SocketAddr::from((m.ip, local_port)))?);
        }
        ensure!(
            names == std::collections::BTreeSet::from([want.clone()]),
            "externalTrafficPolicy Local on {}: answers from {names:?}, want only {want}",
            m.name
        );
    }
    // A LoadBalancer address (ServiceLB: the nodes' addresses) answers on its port.
    let ingress = poll(
        "web-lb's load balancer ingress",
        Duration::from_secs(60),
        || {
            let out = k(&[
                "get",
                "service",
                "web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ])
            .ok()?;
            let ips: Vec<Ipv4Addr> = out
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            (ips.len() == 3).then_some(ips)
        },
    )?;
    for ip in &ingress {
        ensure!(
            MACHINES.iter().any(|m| m.ip == *ip),
            "ingress {ip} is not a node's address"
        );
        let body = http_get(SocketAddr::from((*ip, 8081)))?;
        ensure!(
            body.starts_with("web-lab-"),
            "LoadBalancer {ip}:8081: {body:?}"
        );
    }
    eprintln!(
        "lab scenarios: NodePort on every node from outside, externalTrafficPolicy Local, LoadBalancer addresses: ok"
    );
    Ok(())
}

/// The seeds' NetworkPolicy examples across nodes: a frontend on worker 1, a backend on worker
/// 2 and another pod on the control plane; `deny-all` isolates the frontend both ways, and
/// `allow-specific` lets only `role=backend` in. Traffic is shown allowed before and blocked
/// after, each change awaited (the agents apply policies within moments).
fn network_policy_scenarios(kubeconfig: &Path, registry: &str) -> anyhow::Result<()> {
    let k = |args: &[&str]| {
        let mut a = vec!["-n", "np"];
        a.extend(args);
        kubectl_ok(kubeconfig, &a)
    };
    let apply = |yaml: &str| apply(kubeconfig, yaml);
    let mut pods = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: np\n");
    for (name, role, node) in [
        ("frontend", "frontend", "lab-w1"),
        ("backend", "backend", "lab-w2"),
        ("other", "other", "lab-cp"),
    ] {
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: np\n  labels:\n    role: {role}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {registry}/e2e/busybox:1\n    command: [\"sh\", \"-c\", \"mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www\"]\n"
        ));
    }
    apply(&pods)?;
    for name in ["frontend", "backend", "other"] {
        k(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=180s",
        ])?;
    }
    let ip = |name: &str| k(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    let (front, back) = (ip("frontend")?, ip("backend")?);
    // Whether `from` gets `to`'s page (a blocked try is cut after 5 s; busybox's own wget
    // timeout, -T, crashes it).
    let gets = |from: &str, to_ip: &str, to: &str| {
        k(&[
            "exec",
            from,
            "--",
            "timeout",
            "5",
            "wget",
            "-qO-",
            &format!("http://{to_ip}:8080/"),
        ])
        .is_ok_and(|body| body.trim() == to)
    };
    let expect = |what: &str, from: &str, to_ip: &str, to: &str, allowed: bool| {
        poll(what, Duration::from_secs(60), || {
            (gets(from, to_ip, to) == allowed).then_some(())
        })
    };
    expect(
        "backend -> frontend before any policy",
        "backend",
        &front,
        "frontend",
        true,
    )?;
    expect(
        "other -> frontend before any policy",
        "other",
        &front,
        "frontend",
        true,
    )?;
    expect(
        "frontend -> backend before any policy",
        "frontend",
        &back,
        "backend",
        true,
    )?;

    apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  namespace: np\nspec:\n  podSelector:\n    matchLabels:\n      role: frontend\n  policyTypes:\n  - Ingress\n  - Egress\n",
    )?;
    expect(
        "deny-all: backend -> frontend blocked",
        "backend",
        &front,
        "frontend",
        false,
    )?;
    expect(
        "deny-all: frontend -> backend blocked",
        "frontend",
        &back,
        "backend",
        false,
    )?;
    ensure!(
        gets("other", &back, "backend"),
        "deny-all isolates the frontend only"
    );

    k(&["delete", "networkpolicy", "deny-all"])?;
    apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-specific\n  namespace: np\nspec:\n  podSelector:\n    matchLabels:\n      role: frontend\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          role: backend\n",
    )?;
    expect(
        "allow-specific: backend -> frontend allowed",
        "backend",
        &front,
        "frontend",
        true,
    )?;
    expect(
        "allow-specific: other -> frontend blocked",
        "other",
        &front,
        "frontend",
        false,
    )?;
    ensure!(
        gets("frontend", &back, "backend"),
        "allow-specific leaves egress open"
    );
    k(&["delete", "namespace", "np", "--wait=false"])?;
    eprintln!("lab scenarios: NetworkPolicy deny-all and allow-specific across nodes: ok");
    Ok(())
}

/// Churn: 50 Services of 10 endpoints each (selector-less, with EndpointSlices naming
/// addresses where nothing answers), then every slice emptied. Before, a sample of the
/// cluster IPs leads somewhere (a connection is attempted and times out); after, every one of
/// the 50 is refused at once from a pod on each worker: no rule of the old endpoints is left.
fn churn_scenarios(
    k: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    kubeconfig: &Path,
) -> anyhow::Result<()> {
    const SERVICES: usize = 50;
    let slices = |endpoints: usize| {
        let mut yaml = String::new();
        for i in 0..SERVICES {
            let mut eps = String::new();
            for e in 0..endpoints {
                // 10.244.250.0/24 is no node's pod range: nothing answers there.
                eps.push_str(&format!(
                    "- addresses: [\"10.244.250.{}\"]\n  conditions:\n    ready: true\n",
                    i * 4 + e + 1
                ));
            }
            let eps = if eps.is_empty() {
                "[]\n".to_string()
            } else {
                format!("\n{eps}")
            };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: churn-{i}\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: churn-{i}-a\n  namespace: default\n  labels:\n    kubernetes.io/service-name: churn-{i}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints: {eps}"
            ));
        }
        yaml
    };
    apply(kubeconfig, &slices(10))?;
    let ips: Vec<String> = (0..SERVICES)
        .map(|i| {
            k(&[
                "get",
                "service",
                &format!("churn-{i}"),
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
        })
        .collect::<anyhow::Result<_>>()?;
    // Refused (at once) or not, for each address, from a pod.
    let refused = |pod: &str, ips: &[String]| -> anyhow::Result<usize> {
        let script = ips
            .iter()
            .map(|ip| format!("timeout 3 nc -w 2 {ip} 80 -e true 2>&1;"))
            .collect::<String>();
        let out = k(&["exec", pod, "--", "sh", "-c", &format!("{script} true")])?;
        Ok(out.matches("refused").count())
    };
    let sample = &ips[..3];
    poll(
        "the churn Services' endpoints to be programmed",
        Duration::from_secs(60),
        || (refused("web-lab-w1", sample).ok()? == 0).then_some(()),
    )?;
    // Every slice emptied: each port is refused again, on every worker.
    apply(kubeconfig, &slices(0))?;
    for pod in ["web-lab-w1", "web-lab-w2"] {
        let mut last = 0;
        poll(
            &format!("all {SERVICES} churn Services refused from {pod}"),
            Duration::from_secs(90),
            || {
                last = refused(pod, &ips).ok()?;
                (last == SERVICES).then_some(())
            },
        )
        .with_context(|| format!("{last} of {SERVICES} refused"))?;
    }
    let mut names = vec!["delete", "service"];
    let svc: Vec<String> = (0..SERVICES).map(|i| format!("churn-{i}")).collect();
    names.extend(svc.iter().map(String::as_str));
    k(&names)?;
    eprintln!(
        "lab scenarios: churn of {SERVICES} Services x 10 endpoints, none left after scaling to 0: ok"
    );
    Ok(())
}
