//! Boots the Strake image in QEMU (TCG) as a one-node cluster and drives it with kubectl 1.32:
//! node Ready, a pod that prints a marker (Running, logs, logs -f, get -w), deletion, a missing
//! image, malformed manifests, and a clean power-off; then boots the same STATE disk again and
//! finds the cluster, its objects and its pods there. Prints the measured figures.
//!
//! Needs the image built by `scripts/test.sh` (or `STRAKE_IMAGE_DIR`), qemu-system-x86_64,
//! docker-registry, busybox-static and kubectl 1.32. Any missing prerequisite fails the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use strake_e2e::{
    Registry, bootstrap_admin, kubectl, kubectl_ok, kubectl_path, kubectl_with_input, poll,
    push_busybox, workspace_root,
};
use strake_pki::BootstrapToken;
use strake_qemu::{Accel, Nic, PortForward, Vm, VmConfig};

fn image_dir() -> PathBuf {
    std::env::var_os("STRAKE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/image"))
}

#[test]
fn one_node_cluster_runs_pods_through_kubectl() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let images = image_dir();
    for f in ["vmlinuz", "initramfs.zst"] {
        ensure!(
            images.join(f).exists(),
            "{} is missing: run scripts/test.sh (it builds the image) or set STRAKE_IMAGE_DIR",
            images.join(f).display()
        );
    }
    kubectl_path()?;

    // A registry on the host's loopback, which the guest reaches as 10.0.2.2.
    let registry = Registry::start()?;
    rt.block_on(push_busybox(registry.port, "e2e/busybox", "1"))?;
    let guest_registry = format!("10.0.2.2:{}", registry.port);

    let token = BootstrapToken::generate();
    let api_port = strake_qemu::free_port();
    let state = strake_e2e::TempDir::new("strake-e2e")?;
    // A blank disk for STATE: init partitions and formats it, and the second boot below finds
    // the cluster on it.
    let disk = state.path().join("state.img");
    std::fs::File::create(&disk)?.set_len(4 << 30)?;
    let cfg = VmConfig {
        name: "e2e-node".into(),
        kernel: images.join("vmlinuz"),
        initrd: images.join("initramfs.zst"),
        cmdline: format!(
            "strake.token={token} strake.hostname=e2e-node strake.registry.insecure={guest_registry} strake.disk=/dev/vda"
        ),
        memory_mib: 2048,
        cpus: 2,
        accel: Accel::from_env(),
        nics: vec![Nic::user(vec![PortForward {
            host: api_port,
            guest: 6443,
        }])],
        disks: vec![disk],
        fw_cfg: Vec::new(),
        uefi: None,
        state_dir: state.path().to_path_buf(),
    };
    let console_path = cfg.serial_log();
    let mut vm = Vm::start(cfg)?;
    let result = drive(
        &rt,
        &mut vm,
        &token,
        api_port,
        &guest_registry,
        state.path(),
    );
    if result.is_err() {
        eprintln!(
            "---- guest console ----\n{}\n-----------------------",
            strake_qemu::tail(&console_path, 150)
        );
    }
    result?;

    // Clean power-off through the ACPI power button.
    let clean = vm.power_off(Duration::from_secs(60));
    let console = vm.console();
    ensure!(
        clean,
        "the guest did not power off within 60 s of the power button"
    );
    ensure!(
        console.contains("power"),
        "no shutdown messages on the console"
    );
    ensure!(
        console.contains("STATE is /dev/vda1") && console.contains("formatted on this boot"),
        "the first boot did not report formatting STATE on /dev/vda1"
    );

    // Boot the same disk again, configured by a machine config on the command line instead of
    // strake.* keys: the cluster is still there, reached with the same kubeconfig.
    let kubeconfig = state.path().join("kubeconfig");
    let first = vm.config().clone();
    let machine_config = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: e2e-node\n  install:\n    disk: /dev/vda\ncluster:\n  name: e2e\n  token: {token}\n"
    );
    let mut again = first.clone();
    again.name = "e2e-node-reboot".into();
    again.cmdline = format!(
        "strake.registry.insecure={guest_registry} strake.config={}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &machine_config)
    );
    boot_again(again, |vm| {
        after_reboot(&rt, vm, api_port, &kubeconfig, true)?;
        let console = vm.console();
        ensure!(
            console.contains("machine config from the kernel command line")
                && console.contains("machine config kept on STATE"),
            "the second boot did not take its machine config from the command line and keep it"
        );
        Ok(())
    })?;

    // A third boot takes the same config through QEMU's fw_cfg.
    let config_file = state.path().join("machine.yaml");
    std::fs::write(&config_file, &machine_config)?;
    let mut third = first.clone();
    third.name = "e2e-node-fw-cfg".into();
    third.cmdline = format!("strake.registry.insecure={guest_registry}");
    third.fw_cfg = vec![("opt/strake/config".into(), config_file)];
    boot_again(third, |vm| {
        after_reboot(&rt, vm, api_port, &kubeconfig, false)?;
        ensure!(
            vm.console()
                .contains("machine config from QEMU fw_cfg (opt/strake/config)"),
            "the third boot did not take its machine config from fw_cfg"
        );
        Ok(())
    })?;

    // A fourth boot with nothing on the command line but the registry: STATE is found by its
    // label and the machine config kept on it names the node and its role.
    let mut fourth = first;
    fourth.name = "e2e-node-fourth".into();
    fourth.cmdline = format!("strake.registry.insecure={guest_registry}");
    boot_again(fourth, |vm| {
        after_reboot(&rt, vm, api_port, &kubeconfig, false)?;
        ensure!(
            vm.console()
                .contains("machine config from /var/lib/strake/config/machine.yaml"),
            "the fourth boot did not take the machine config kept on STATE"
        );
        Ok(())
    })
}

/// Boots `cfg`, runs `check`, and powers the VM off; on failure prints its console.
fn boot_again(
    cfg: VmConfig,
    check: impl FnOnce(&mut Vm) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut vm = Vm::start(cfg)?;
    let result = check(&mut vm).and_then(|()| {
        ensure!(
            vm.power_off(Duration::from_secs(60)),
            "the guest did not power off within 60 s of the power button"
        );
        Ok(())
    });
    if result.is_err() {
        eprintln!(
            "---- guest console of {} ----\n{}\n-----------------------",
            vm.config().name,
            strake_qemu::tail(&vm.config().serial_log(), 150)
        );
    }
    result
}

/// Objects the reboot must keep: a namespace, a ConfigMap, a Secret (encrypted at rest, so
/// its key must persist too) and a Deployment whose pod must run again.
fn before_reboot(kubeconfig: &std::path::Path, registry: &str) -> anyhow::Result<String> {
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: persist\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  namespace: persist\ndata:\n  colour: teal\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: keep\n  namespace: persist\nstringData:\n  password: s3cret-across-reboots\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: keeper\n  namespace: persist\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: keeper\n  template:\n    metadata:\n      labels:\n        app: keeper\n    spec:\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
    );
    let applied = kubectl_with_input(kubeconfig, &["apply", "-f", "-"], manifest.as_bytes())?;
    ensure!(
        applied.status.success(),
        "kubectl apply of the objects to keep: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    poll(
        "the keeper deployment Available",
        Duration::from_secs(120),
        || {
            let out = kubectl_ok(
                kubeconfig,
                &[
                    "-n",
                    "persist",
                    "get",
                    "deploy",
                    "keeper",
                    "-o",
                    "jsonpath={.status.availableReplicas}",
                ],
            )
            .ok()?;
            (out.trim() == "1").then_some(())
        },
    )?;
    kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "persist",
            "get",
            "configmap",
            "keep",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    )
}

/// Checks a boot after the first: STATE mounted and not formatted, the node Ready under its
/// old credentials, the objects written before with their uids, and (with `pods`) the keeper
/// deployment's pod running again.
fn after_reboot(
    rt: &tokio::runtime::Runtime,
    vm: &mut Vm,
    api_port: u16,
    kubeconfig: &std::path::Path,
    pods: bool,
) -> anyhow::Result<()> {
    let server = format!("https://127.0.0.1:{api_port}");
    vm.wait_until(
        "the API server to answer /version after the reboot",
        Duration::from_secs(180),
        || {
            rt.block_on(strake_kubeclient::answers_version(
                &server,
                Duration::from_millis(500),
            ))
        },
    )?;
    let console = vm.console();
    ensure!(
        console.contains("STATE is /dev/vda1") && !console.contains("formatted on this boot"),
        "the second boot did not mount the existing STATE without formatting it"
    );
    let uid = std::fs::read_to_string(kubeconfig.with_file_name("persist-uid"))?;
    let kubectl = |args: &[&str]| kubectl_ok(kubeconfig, args);
    // The old admin credentials work: same CA, same store.
    poll(
        "node e2e-node Ready again",
        Duration::from_secs(120),
        || {
            let out = kubectl(&["get", "nodes", "e2e-node"]).ok()?;
            out.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("Ready"))
                .then_some(())
        },
    )?;
    let got = kubectl(&[
        "-n",
        "persist",
        "get",
        "configmap",
        "keep",
        "-o",
        "jsonpath={.metadata.uid} {.data.colour}",
    ])?;
    ensure!(
        got == format!("{} teal", uid.trim()),
        "the ConfigMap after the reboot is {got:?}, not the one written before it (uid {uid})"
    );
    let secret = kubectl(&[
        "-n",
        "persist",
        "get",
        "secret",
        "keep",
        "-o",
        "jsonpath={.data.password}",
    ])?;
    ensure!(
        secret.trim() == "czNjcmV0LWFjcm9zcy1yZWJvb3Rz",
        "the Secret after the reboot reads {secret:?}"
    );
    if !pods {
        return Ok(());
    }
    // The deployment's pod runs again: a container answers exec on this boot.
    poll(
        "the keeper pod running again after the reboot",
        Duration::from_secs(180),
        || {
            let pod = kubectl(&[
                "-n",
                "persist",
                "get",
                "pods",
                "-l",
                "app=keeper",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .ok()?;
            let out = kubectl(&[
                "-n",
                "persist",
                "exec",
                pod.trim(),
                "--",
                "cat",
                "/proc/1/cmdline",
            ])
            .ok()?;
            out.contains("sleep").then_some(())
        },
    )?;
    println!(
        "MEASURED: QEMU start -> API ready, booting a cluster from STATE: {:.2} s",
        vm.uptime().as_secs_f64()
    );
    Ok(())
}

fn drive(
    rt: &tokio::runtime::Runtime,
    vm: &mut Vm,
    token: &BootstrapToken,
    api_port: u16,
    registry: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    let (creds, api_ready) = bootstrap_admin(
        rt,
        vm,
        &server,
        token,
        Duration::from_secs(180),
        "strake-e2e",
        &kubeconfig,
    )?;
    let client = strake_kubeclient::Client::new(
        &server,
        &creds.ca_pem,
        Some(&strake_pki::CertifiedKey {
            cert_pem: creds.cert_pem.clone(),
            key_pem: creds.key_pem.clone(),
        }),
    )?;

    // The node registers and turns Ready.
    poll(
        "node e2e-node Ready in `kubectl get nodes`",
        Duration::from_secs(120),
        || {
            let out = kubectl_ok(&kubeconfig, &["get", "nodes"]).ok()?;
            out.lines()
                .any(|l| l.starts_with("e2e-node ") && l.split_whitespace().nth(1) == Some("Ready"))
                .then_some(())
        },
    )?;
    println!(
        "{}",
        kubectl_ok(&kubeconfig, &["get", "nodes", "-o", "wide"])?
    );

    // `kubectl get pods -w` in the background: it must show the pod reaching Running.
    let mut watcher = Command::new(kubectl_path()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let watch_out = watcher.stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(watch_out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // A pod that prints a marker and sleeps.
    let marker = "STRAKE-E2E-MARKER-7f3a";
    let pod_yaml = dir.join("marker.yaml");
    std::fs::write(
        &pod_yaml,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: marker\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: main\n    image: {registry}/e2e/busybox:1\n    command: [\"sh\", \"-c\", \"echo {marker}; echo second-line; sleep 3600\"]\n"
        ),
    )?;
    let applied = Instant::now();
    // Default client-side apply: kubectl checks /openapi/v3 and uses server-side field validation.
    kubectl_ok(
        &kubeconfig,
        &["apply", "-f", pod_yaml.to_str().unwrap_or_default()],
    )?;
    poll("pod marker Running", Duration::from_secs(120), || {
        let pod: Pod = rt.block_on(client.get(Some("default"), "marker")).ok()?;
        (pod.status?.phase.as_deref() == Some("Running")).then_some(())
    })?;
    let apply_to_running = applied.elapsed();

    let logs = poll(
        "the marker in `kubectl logs`",
        Duration::from_secs(30),
        || {
            let out = kubectl_ok(&kubeconfig, &["logs", "marker"]).ok()?;
            out.contains(marker).then_some(out)
        },
    )?;
    ensure!(
        logs.contains("second-line"),
        "kubectl logs is missing the second line: {logs:?}"
    );

    // logs -f streams and keeps the connection open.
    let mut follow = Command::new(kubectl_path()?)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["logs", "-f", "marker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(follow.stdout.take().context("logs -f stdout")?).read_line(&mut first)?;
    ensure!(first.contains(marker), "kubectl logs -f printed {first:?}");
    ensure!(
        follow.try_wait()?.is_none(),
        "kubectl logs -f ended although the container runs"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    let saw_running = poll(
        "`kubectl get pods -w` to show marker Running",
        Duration::from_secs(30),
        || {
            rx.try_iter()
                .find(|l| l.starts_with("marker ") && l.contains("Running"))
        },
    )?;
    println!("get -w: {saw_running}");
    let _ = watcher.kill();
    let _ = watcher.wait();

    // A second pod from the same image, now present on the node: the warm start latency.
    let warm_yaml = dir.join("warm.yaml");
    std::fs::write(
        &warm_yaml,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: warm\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {registry}/e2e/busybox:1\n    command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    let applied = Instant::now();
    kubectl_ok(
        &kubeconfig,
        &["apply", "-f", warm_yaml.to_str().unwrap_or_default()],
    )?;
    poll("pod warm Running", Duration::from_secs(60), || {
        let pod: Pod = rt.block_on(client.get(Some("default"), "warm")).ok()?;
        (pod.status?.phase.as_deref() == Some("Running")).then_some(())
    })?;
    let warm_apply_to_running = applied.elapsed();
    kubectl_ok(&kubeconfig, &["delete", "pod", "warm", "--timeout=60s"])?;

    // Deleting stops the container (SIGTERM, then SIGKILL after the 3 s grace) and removes the pod.
    kubectl_ok(&kubeconfig, &["delete", "pod", "marker", "--timeout=90s"])?;
    let gone = kubectl(&kubeconfig, &["get", "pod", "marker"])?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "pod still there after delete"
    );
    vm.wait_for_console("pod removed pod=default/marker", Duration::from_secs(10))?;

    // A missing image ends in ErrImagePull / ImagePullBackOff with the registry's reason.
    let missing_yaml = dir.join("missing.yaml");
    std::fs::write(
        &missing_yaml,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: missing\nspec:\n  containers:\n  - name: main\n    image: {registry}/e2e/does-not-exist:1\n"
        ),
    )?;
    kubectl_ok(
        &kubeconfig,
        &[
            "apply",
            "-f",
            missing_yaml.to_str().unwrap_or_default(),
            "--validate=false",
        ],
    )?;
    let waiting = poll(
        "pull error in the missing pod's status",
        Duration::from_secs(60),
        || {
            let pod: Pod = rt.block_on(client.get(Some("default"), "missing")).ok()?;
            let w = pod
                .status?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .waiting?;
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
            .then_some(w)
        },
    )?;
    let message = waiting.message.unwrap_or_default();
    ensure!(
        message.contains("MANIFEST_UNKNOWN") || message.contains("NAME_UNKNOWN"),
        "pull error does not carry the registry's reason: {message:?}"
    );
    println!(
        "missing image: {} — {message}",
        waiting.reason.unwrap_or_default()
    );
    let status = kubectl_ok(&kubeconfig, &["get", "pod", "missing"])?;
    ensure!(
        status.contains("ErrImagePull") || status.contains("ImagePullBackOff"),
        "kubectl get pod missing shows: {status}"
    );
    kubectl_ok(&kubeconfig, &["delete", "pod", "missing", "--timeout=60s"])?;

    // Malformed manifests get errors that name the problem.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers: \"not-a-list\"\n",
    )?;
    let out = kubectl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            bad.to_str().unwrap_or_default(),
            "--validate=false",
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("spec.containers"),
        "malformed manifest was not refused clearly: {err}"
    );
    let invalid = dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Not_Valid\nspec:\n  containers:\n  - name: c\n",
    )?;
    let out = kubectl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            invalid.to_str().unwrap_or_default(),
            "--validate=false",
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("metadata.name")
            && err.contains("spec.containers[0].image"),
        "invalid pod was not refused with field errors: {err}"
    );

    let unknown = dir.join("unknown.yaml");
    std::fs::write(
        &unknown,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n  - name: c\n    image: {registry}/e2e/busybox:1\n    imagePullPolcy: Always\n"
        ),
    )?;
    let out = kubectl(
        &kubeconfig,
        &["apply", "-f", unknown.to_str().unwrap_or_default()],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("unknown field") && err.contains("imagePullPolcy"),
        "a misspelt field was not refused: {err}"
    );

    // kubectl run: a pod that runs to completion, and its exit code in the status.
    kubectl_ok(
        &kubeconfig,
        &[
            "run",
            "once",
            &format!("--image={registry}/e2e/busybox:1"),
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "echo ran-once; exit 3",
        ],
    )?;
    let code = poll("pod once to finish", Duration::from_secs(60), || {
        let pod: Pod = rt.block_on(client.get(Some("default"), "once")).ok()?;
        let status = pod.status?;
        (status.phase.as_deref() == Some("Failed")).then_some(())?;
        Some(
            status
                .container_statuses?
                .first()?
                .state
                .clone()?
                .terminated?
                .exit_code,
        )
    })?;
    ensure!(code == 3, "exit code {code}, expected 3");
    ensure!(
        kubectl_ok(&kubeconfig, &["logs", "once"])?.contains("ran-once"),
        "logs of a finished pod"
    );
    kubectl_ok(&kubeconfig, &["delete", "pod", "once", "--timeout=60s"])?;

    api_machinery_scenarios(&kubeconfig, dir, registry)?;
    rollout_scenarios(&kubeconfig, dir, registry)?;
    volume_scenarios(&kubeconfig, dir, registry)?;
    env_and_probe_scenarios(&kubeconfig, dir, registry)?;
    init_container_scenarios(&kubeconfig, dir, registry)?;
    exec_scenarios(&kubeconfig, dir, registry)?;
    port_forward_scenarios(&kubeconfig, registry)?;
    lifecycle_hook_scenarios(&kubeconfig, dir, registry)?;
    pod_network_scenarios(&kubeconfig, registry)?;
    service_scenarios(&kubeconfig, registry)?;

    // The node is still healthy after all that.
    let nodes = kubectl_ok(&kubeconfig, &["get", "nodes"])?;
    if !nodes.contains(" Ready") {
        bail!("node not Ready at the end: {nodes}");
    }
    let uid = before_reboot(&kubeconfig, registry)?;
    std::fs::write(dir.join("persist-uid"), uid)?;
    if let Some(line) = vm
        .console()
        .lines()
        .rev()
        .find(|l| l.contains("strake processes RSS"))
    {
        println!("node memory: {}", line.trim());
    }
    println!(
        "MEASURED: QEMU start -> API ready: {:.2} s",
        api_ready.as_secs_f64()
    );
    println!(
        "MEASURED: kubectl apply -> pod Running (first pull): {:.2} s",
        apply_to_running.as_secs_f64()
    );
    println!(
        "MEASURED: kubectl apply -> pod Running (image present): {:.2} s",
        warm_apply_to_running.as_secs_f64()
    );
    Ok(())
}

/// kubectl against the served kinds: apply (client-side, changed, server-side), diff,
/// server-side dry runs that write nothing, every patch type, label, annotate, scale, get in
/// every output, api-resources, and deletion with each cascade mode.
fn api_machinery_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    // Every image is on the test's own registry (controllers create pods from these
    // templates, and the node must never pull from anywhere else); some do not exist.
    let img = |name: &str| format!("{registry}/e2e/{name}");
    let app = |image: &str, replicas: u32| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scen\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: scen\ndata:\n  mode: fast\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: scen\nstringData:\n  password: hunter2\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: scen\n  labels:\n    app: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: {image}\n        ports:\n        - containerPort: 80\n        env:\n        - name: MODE\n          value: fast\n      - name: sidecar\n        image: {registry}/e2e/busybox:1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: scen\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 80\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\n  namespace: scen\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers:\n          - name: job\n            image: {registry}/e2e/busybox:1\n"
        )
    };
    let manifest = dir.join("app.yaml");
    let path = manifest.to_str().unwrap_or_default();
    let ns = ["-n", "scen"];
    let get = |args: &[&str]| -> anyhow::Result<String> {
        let mut a = args.to_vec();
        a.extend(ns);
        kubectl_ok(kubeconfig, &a)
    };

    // Client-side apply creates, then re-applied with changes (a strategic merge patch with
    // $setElementOrder) updates.
    std::fs::write(&manifest, app(&img("web:1"), 2))?;
    kubectl_ok(kubeconfig, &["apply", "-f", path])?;
    // A server-side dry run of a create writes nothing.
    let dry = dir.join("dry.yaml");
    std::fs::write(
        &dry,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\n  namespace: scen\ndata:\n  a: b\n",
    )?;
    kubectl_ok(
        kubeconfig,
        &[
            "apply",
            "-f",
            dry.to_str().unwrap_or_default(),
            "--dry-run=server",
        ],
    )?;
    ensure!(
        !kubectl(kubeconfig, &["get", "cm", "dry", "-n", "scen"])?
            .status
            .success(),
        "apply --dry-run=server created the configmap"
    );
    std::fs::write(&manifest, app(&img("web:2"), 3))?;
    let diff = kubectl(kubeconfig, &["diff", "-f", path])?;
    let diff_out = String::from_utf8_lossy(&diff.stdout);
    ensure!(
        diff.status.code() == Some(1) && diff_out.contains("web:2"),
        "kubectl diff did not show the change: {diff_out}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    ensure!(
        get(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ])? == img("web:1"),
        "kubectl diff wrote"
    );
    kubectl_ok(kubeconfig, &["apply", "-f", path])?;
    let image = get(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.replicas} {.metadata.generation}",
    ])?;
    ensure!(
        image == format!("{} 3 2", img("web:2")),
        "re-apply: {image}"
    );
    ensure!(
        get(&["get", "secret", "creds", "-o", "jsonpath={.data.password}"])? == "aHVudGVyMg==",
        "stringData is stored as data"
    );

    // Server-side apply takes over, and a second manager's change conflicts.
    std::fs::write(&manifest, app(&img("web:3"), 3))?;
    kubectl_ok(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", path],
    )?;
    let managers = get(&[
        "get",
        "deploy",
        "web",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ])?;
    ensure!(managers.contains("kubectl"), "managers: {managers}");
    std::fs::write(&manifest, app(&img("web:4"), 3))?;
    let out = kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            path,
        ],
    )?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "a second manager did not conflict: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Patches of each type, label, annotate, scale; dry runs write nothing.
    get(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ])?;
    get(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])?;
    get(&[
        "patch",
        "deploy",
        "web",
        "-p",
        &format!(
            r#"{{"spec":{{"template":{{"spec":{{"containers":[{{"name":"sidecar","image":"{}"}}]}}}}}}}}"#,
            img("busybox:2")
        ),
    ])?;
    get(&["label", "deploy", "web", "tier=front"])?;
    get(&["annotate", "deploy", "web", "note=hello"])?;
    get(&["scale", "deploy", "web", "--replicas=5"])?;
    get(&["scale", "deploy", "web", "--replicas=9", "--dry-run=server"])?;
    get(&["label", "deploy", "web", "dry=run", "--dry-run=server"])?;
    let state = get(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.labels.merged} {.metadata.labels.tier} {.metadata.annotations.note} {.spec.template.spec.containers[1].image} {.metadata.labels.dry}",
    ])?;
    ensure!(
        state.trim() == format!("5 yes front hello {}", img("busybox:2")),
        "after the patches: {state:?}"
    );

    // get in every output kubectl users reach for, and discovery.
    let table = get(&["get", "deploy", "-o", "wide"])?;
    ensure!(
        table.contains("READY")
            && table.contains("UP-TO-DATE")
            && table.contains("AVAILABLE")
            && table.contains("CONTAINERS"),
        "{table}"
    );
    ensure!(
        get(&["get", "deploy", "web", "-o", "yaml"])?.contains("kind: Deployment"),
        "-o yaml"
    );
    ensure!(
        get(&["get", "cm", "settings", "-o", "json"])?.contains("\"mode\": \"fast\""),
        "-o json"
    );
    let svc = get(&["get", "svc", "web"])?;
    ensure!(svc.contains("80/TCP"), "{svc}");
    let cj = get(&["get", "cronjob", "nightly"])?;
    ensure!(cj.contains("0 3 * * *"), "{cj}");
    let resources = kubectl_ok(kubeconfig, &["api-resources"])?;
    for r in [
        "deployments",
        "cronjobs",
        "customresourcedefinitions",
        "clusterrolebindings",
        "leases",
        "networkpolicies",
    ] {
        ensure!(
            resources.contains(r),
            "api-resources lacks {r}:\n{resources}"
        );
    }
    let all = get(&["get", "all"])?;
    ensure!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "get all: {all}"
    );

    // Deletion in each cascade mode: background deletes at once.
    get(&["delete", "cm", "settings", "--cascade=background"])?;
    ensure!(
        !kubectl(kubeconfig, &["get", "cm", "settings", "-n", "scen"])?
            .status
            .success(),
        "configmap still there"
    );
    // Orphan and foreground deletions hold the owner with their finalizer until its dependents
    // are orphaned or gone; kubectl waits for that.
    get(&[
        "delete",
        "deploy",
        "web",
        "--cascade=orphan",
        "--timeout=60s",
    ])?;
    ensure!(
        !kubectl(kubeconfig, &["get", "deploy", "web", "-n", "scen"])?
            .status
            .success(),
        "deployment still there after an orphaning delete"
    );
    get(&[
        "delete",
        "cronjob",
        "nightly",
        "--cascade=foreground",
        "--timeout=60s",
    ])?;
    // The namespace goes with everything in it.
    kubectl_ok(
        kubeconfig,
        &["delete", "namespace", "scen", "--timeout=60s"],
    )?;
    ensure!(
        !kubectl(kubeconfig, &["get", "namespace", "scen"])?
            .status
            .success(),
        "namespace still there"
    );
    // kubectl's typed commands send protobuf bodies; explain and auth read the generated
    // schemas and the review kinds.
    kubectl_ok(kubeconfig, &["create", "namespace", "made"])?;
    kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "made",
            "create",
            "configmap",
            "cm",
            "--from-literal=a=1",
        ],
    )?;
    kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "made",
            "create",
            "deployment",
            "dep",
            &format!("--image={}", img("busybox:1")),
            "--replicas=2",
        ],
    )?;
    kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "made",
            "create",
            "cronjob",
            "tick",
            &format!("--image={}", img("busybox:1")),
            "--schedule=*/5 * * * *",
        ],
    )?;
    let made = kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "made",
            "get",
            "deploy",
            "dep",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )?;
    ensure!(made == "2", "kubectl create deployment: {made}");
    let explain = kubectl_ok(kubeconfig, &["explain", "deployment.spec.strategy"])?;
    ensure!(
        explain.contains("rollingUpdate"),
        "kubectl explain: {explain}"
    );
    let can = kubectl_ok(kubeconfig, &["auth", "can-i", "create", "pods"])?;
    ensure!(can.trim() == "yes", "kubectl auth can-i: {can}");
    kubectl_ok(
        kubeconfig,
        &["delete", "namespace", "made", "--timeout=60s"],
    )?;
    println!(
        "api machinery scenarios: apply, diff, server-side apply, dry runs, patches, scale, get, create, explain, auth, delete: ok"
    );
    Ok(())
}

/// The kubectl rollout family on a real node, against the Deployment and ReplicaSet
/// controllers: status, history, undo, restart, pause and resume, scale and wait, and the
/// garbage collector removing the sets and pods of a deleted deployment.
fn rollout_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    // What the controllers keep for every node and namespace.
    let holder = kubectl_ok(
        kubeconfig,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "e2e-node",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )?;
    ensure!(holder == "e2e-node", "node lease holder: {holder:?}");
    let taints = kubectl_ok(
        kubeconfig,
        &["get", "node", "e2e-node", "-o", "jsonpath={.spec.taints}"],
    )?;
    ensure!(
        taints.trim().is_empty(),
        "a healthy node is tainted: {taints}"
    );
    let sa = poll(
        "the default service account",
        Duration::from_secs(30),
        || k(&["get", "serviceaccount", "default", "-o", "name"]).ok(),
    )?;
    ensure!(sa.contains("serviceaccount/default"), "{sa}");
    let ca = k(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ])?;
    ensure!(ca.contains("BEGIN CERTIFICATE"), "kube-root-ca.crt: {ca}");

    let manifest = dir.join("roll.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: roll\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: roll\n  template:\n    metadata:\n      labels:\n        app: roll\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    let status = |what: &str| -> anyhow::Result<()> {
        let out = k(&["rollout", "status", "deployment/roll", "--timeout=180s"])
            .with_context(|| format!("kubectl rollout status after {what}"))?;
        ensure!(
            out.contains("successfully rolled out"),
            "rollout status after {what}: {out}"
        );
        Ok(())
    };
    let revision = || {
        k(&[
            "get",
            "deploy",
            "roll",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ])
    };
    let sets = || -> anyhow::Result<usize> {
        Ok(k(&["get", "rs", "-l", "app=roll", "-o", "name"])?
            .lines()
            .filter(|l| !l.is_empty())
            .count())
    };
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    status("create")?;
    ensure!(revision()? == "1", "first revision: {}", revision()?);
    let pods = k(&["get", "pods", "-l", "app=roll", "--no-headers"])?;
    ensure!(
        pods.lines().filter(|l| l.contains("Running")).count() == 2,
        "two Running pods: {pods}"
    );

    // A changed template rolls out as a new set; history lists both revisions.
    k(&["set", "env", "deployment/roll", "MODE=two"])?;
    status("set env")?;
    ensure!(revision()? == "2", "after set env: {}", revision()?);
    ensure!(sets()? == 2, "two sets after one rollout");
    let history = k(&["rollout", "history", "deployment/roll"])?;
    ensure!(
        history.contains("REVISION")
            && history.lines().any(|l| l.starts_with("1 "))
            && history.lines().any(|l| l.starts_with("2 ")),
        "rollout history: {history}"
    );
    let rev2 = k(&["rollout", "history", "deployment/roll", "--revision=2"])?;
    ensure!(rev2.contains("MODE"), "revision 2's template: {rev2}");

    // Undo brings revision 1's template back as revision 3, reusing its set.
    let undo = k(&["rollout", "undo", "deployment/roll"])?;
    ensure!(undo.contains("rolled back"), "rollout undo: {undo}");
    status("undo")?;
    ensure!(revision()? == "3", "after undo: {}", revision()?);
    ensure!(sets()? == 2, "undo reused the old set");
    let env = k(&[
        "get",
        "deploy",
        "roll",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ])?;
    ensure!(env.trim().is_empty(), "undo kept the env: {env}");

    // Paused: a template change waits; resume rolls it out.
    k(&["rollout", "pause", "deployment/roll"])?;
    k(&["set", "env", "deployment/roll", "MODE=three"])?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(sets()? == 2, "a paused deployment rolled out");
    let paused = k(&[
        "get",
        "deploy",
        "roll",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
    ])?;
    ensure!(paused == "DeploymentPaused", "paused condition: {paused}");
    k(&["rollout", "resume", "deployment/roll"])?;
    status("resume")?;
    ensure!(revision()? == "4", "after resume: {}", revision()?);

    // Restart replaces every pod with the same template plus a restartedAt annotation.
    let before = k(&["get", "pods", "-l", "app=roll", "-o", "name"])?;
    k(&["rollout", "restart", "deployment/roll"])?;
    status("restart")?;
    let after = poll("the restarted pods", Duration::from_secs(120), || {
        let now = k(&["get", "pods", "-l", "app=roll", "-o", "name"]).ok()?;
        let old: Vec<&str> = before.lines().collect();
        (now.lines().count() == 2 && now.lines().all(|l| !old.contains(&l))).then_some(now)
    })?;
    println!("restarted pods: {}", after.replace('\n', " "));

    // Scale, then wait for the Available condition.
    k(&["scale", "deployment/roll", "--replicas=3"])?;
    k(&[
        "wait",
        "--for=condition=Available",
        "deployment/roll",
        "--timeout=120s",
    ])?;
    status("scale")?;
    let ready = k(&[
        "get",
        "deploy",
        "roll",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ])?;
    ensure!(ready == "3", "ready replicas after scale: {ready}");
    let events = k(&["get", "events", "--field-selector=reason=ScalingReplicaSet"])?;
    ensure!(
        events.contains("Scaled up replica set roll-"),
        "ScalingReplicaSet events: {events}"
    );

    // Deleting the deployment (background cascade) takes its sets and pods with it.
    k(&["delete", "deployment", "roll", "--timeout=60s"])?;
    poll(
        "the deleted deployment's sets and pods to go",
        Duration::from_secs(120),
        || {
            let left = k(&["get", "rs,pods", "-l", "app=roll", "-o", "name"]).ok()?;
            left.trim().is_empty().then_some(())
        },
    )?;
    // Jobs: one that succeeds, one that fails past its backoff limit (one retry, after the
    // 10 s pod back-off).
    k(&[
        "create",
        "job",
        "ok",
        &format!("--image={registry}/e2e/busybox:1"),
        "--",
        "sh",
        "-c",
        "echo job-done",
    ])?;
    k(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=120s",
    ])?;
    ensure!(
        k(&["logs", "job/ok"])?.contains("job-done"),
        "the job's output"
    );
    let bad = dir.join("bad-job.yaml");
    std::fs::write(
        &bad,
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: bad\nspec:\n  backoffLimit: 1\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sh\", \"-c\", \"exit 3\"]\n"
        ),
    )?;
    k(&["apply", "-f", bad.to_str().unwrap_or_default()])?;
    k(&[
        "wait",
        "--for=condition=failed",
        "job/bad",
        "--timeout=180s",
    ])?;
    let failed = k(&[
        "get",
        "job",
        "bad",
        "-o",
        "jsonpath={.status.failed} {.status.conditions[?(@.type==\"Failed\")].reason}",
    ])?;
    ensure!(
        failed == "2 BackoffLimitExceeded",
        "the failed job: {failed}"
    );
    k(&["delete", "job", "ok", "bad", "--timeout=60s"])?;

    // A CronJob every minute fires within a minute and records its success.
    k(&[
        "create",
        "cronjob",
        "tick",
        &format!("--image={registry}/e2e/busybox:1"),
        "--schedule=* * * * *",
        "--",
        "sh",
        "-c",
        "echo tick",
    ])?;
    let fired = poll("the cronjob's first run", Duration::from_secs(90), || {
        let t = k(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastScheduleTime}",
        ])
        .ok()?;
        (!t.trim().is_empty()).then_some(t)
    })?;
    poll(
        "the cronjob's first success",
        Duration::from_secs(120),
        || {
            let t = k(&[
                "get",
                "cronjob",
                "tick",
                "-o",
                "jsonpath={.status.lastSuccessfulTime}",
            ])
            .ok()?;
            (!t.trim().is_empty()).then_some(())
        },
    )?;
    println!("cronjob fired at {fired}");
    k(&["delete", "cronjob", "tick", "--timeout=60s"])?;

    // A DaemonSet: one pod on the node; a NoExecute taint it does not tolerate removes it,
    // and it comes back when the taint goes.
    let ds = dir.join("ds.yaml");
    std::fs::write(
        &ds,
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agentd\nspec:\n  selector:\n    matchLabels:\n      app: agentd\n  template:\n    metadata:\n      labels:\n        app: agentd\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    k(&["apply", "-f", ds.to_str().unwrap_or_default()])?;
    let out = k(&["rollout", "status", "daemonset/agentd", "--timeout=120s"])?;
    ensure!(
        out.contains("successfully rolled out"),
        "daemonset rollout: {out}"
    );
    let daemons = || -> anyhow::Result<usize> {
        Ok(k(&[
            "get",
            "pods",
            "-l",
            "app=agentd",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ])?
        .lines()
        .filter(|l| !l.is_empty())
        .count())
    };
    ensure!(daemons()? == 1, "one daemon pod on the node");
    kubectl_ok(
        kubeconfig,
        &["taint", "node", "e2e-node", "maint=now:NoExecute"],
    )?;
    poll(
        "the daemon to leave the tainted node",
        Duration::from_secs(90),
        || {
            let n = k(&["get", "pods", "-l", "app=agentd", "-o", "name"]).ok()?;
            n.trim().is_empty().then_some(())
        },
    )?;
    kubectl_ok(kubeconfig, &["taint", "node", "e2e-node", "maint-"])?;
    poll(
        "the daemon back after the taint went",
        Duration::from_secs(90),
        || (daemons().ok()? == 1).then_some(()),
    )?;
    k(&["delete", "daemonset", "agentd", "--timeout=60s"])?;

    // A StatefulSet scaled up and down in order, with stable names.
    let sts = dir.join("sts.yaml");
    std::fs::write(
        &sts,
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  replicas: 2\n  serviceName: db\n  selector:\n    matchLabels:\n      app: db\n  template:\n    metadata:\n      labels:\n        app: db\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sleep\", \"3600\"]\n"
        ),
    )?;
    k(&["apply", "-f", sts.to_str().unwrap_or_default()])?;
    k(&["rollout", "status", "statefulset/db", "--timeout=180s"])?;
    k(&["scale", "statefulset/db", "--replicas=3"])?;
    k(&["rollout", "status", "statefulset/db", "--timeout=180s"])?;
    let created = k(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    ensure!(
        created == "db-0 db-1 db-2",
        "members in creation order: {created}"
    );
    k(&["scale", "statefulset/db", "--replicas=1"])?;
    poll(
        "the set scaled down to db-0",
        Duration::from_secs(120),
        || {
            let n = k(&[
                "get",
                "pods",
                "-l",
                "app=db",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .ok()?;
            (n.trim() == "db-0").then_some(())
        },
    )?;
    k(&["delete", "statefulset", "db", "--timeout=60s"])?;

    // kubectl drain against a PodDisruptionBudget: with the only node cordoned the evicted
    // pod cannot come back, so the budget (minAvailable 1 of 2) lets one eviction through and
    // refuses the other with 429 until drain gives up.
    let guarded = dir.join("guarded.yaml");
    std::fs::write(
        &guarded,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: guarded\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: guarded\n  template:\n    metadata:\n      labels:\n        app: guarded\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {registry}/e2e/busybox:1\n        command: [\"sleep\", \"3600\"]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: guarded\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels:\n      app: guarded\n"
        ),
    )?;
    k(&["apply", "-f", guarded.to_str().unwrap_or_default()])?;
    k(&["rollout", "status", "deployment/guarded", "--timeout=120s"])?;
    poll(
        "the budget to allow one disruption",
        Duration::from_secs(60),
        || {
            let n = k(&[
                "get",
                "pdb",
                "guarded",
                "-o",
                "jsonpath={.status.disruptionsAllowed}",
            ])
            .ok()?;
            (n == "1").then_some(())
        },
    )?;
    let drain = kubectl(
        kubeconfig,
        &[
            "drain",
            "e2e-node",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=25s",
        ],
    )?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    ensure!(
        !drain.status.success() && said.contains("disruption budget"),
        "drain did not stop at the budget: {said}"
    );
    ensure!(said.contains("evicted"), "drain evicted nothing: {said}");
    let left = k(&[
        "get",
        "pods",
        "-l",
        "app=guarded",
        "--field-selector=status.phase=Running",
        "-o",
        "name",
    ])?;
    ensure!(
        left.lines().count() >= 1,
        "the budget's last pod was evicted: {left}"
    );
    kubectl_ok(kubeconfig, &["uncordon", "e2e-node"])?;
    k(&["rollout", "status", "deployment/guarded", "--timeout=120s"])?;
    k(&["delete", "deployment", "guarded", "--timeout=60s"])?;
    k(&["delete", "pdb", "guarded"])?;

    println!(
        "controller scenarios: node lease, default service account and root CA, rollout status, history, undo, pause, resume, restart, scale, wait, cascade, jobs, cronjob, daemonset and taints, statefulset scaling, drain against a disruption budget: ok"
    );
    Ok(())
}

/// Volumes on a real node: the default local-path class provisions a claim where its first
/// consumer runs; the pod writes to it and reads a ConfigMap, a Secret (by item), the
/// downward API and a memory emptyDir; a second pod on the same claim sees the data; deleting
/// the claim removes the volume and its directory (the agent lifts the cleanup finalizer).
fn volume_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let class = k(&["get", "storageclass"])?;
    ensure!(
        class.contains("local-path (default)") && class.contains("WaitForFirstConsumer"),
        "storage classes: {class}"
    );
    let pod = |name: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    tier: store\nspec:\n  terminationGracePeriodSeconds: 0\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {registry}/e2e/busybox:1\n    command: [\"sh\", \"-c\", \"{script}\"]\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n    - {{name: cfg, mountPath: /etc/cfg}}\n    - {{name: sec, mountPath: /etc/sec, readOnly: true}}\n    - {{name: info, mountPath: /etc/info}}\n    - {{name: scratch, mountPath: /scratch}}\n  volumes:\n  - {{name: data, persistentVolumeClaim: {{claimName: store}}}}\n  - {{name: cfg, configMap: {{name: vol-settings}}}}\n  - {{name: sec, secret: {{secretName: vol-creds, items: [{{key: password, path: pw/file}}]}}}}\n  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}\n  - {{name: scratch, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}\n"
        )
    };
    let manifest = dir.join("volumes.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vol-settings\ndata:\n  mode: fast\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: vol-creds\nstringData:\n  password: hunter2\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: store\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n---\n{}",
            pod(
                "writer",
                "echo persisted > /data/file; cat /etc/cfg/mode /etc/sec/pw/file /etc/info/labels; mount | grep -c ' /scratch type tmpfs'; touch /etc/sec/x 2>/dev/null || echo read-only",
            )
        ),
    )?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let logs = poll("the writer's output", Duration::from_secs(180), || {
        let phase = k(&["get", "pod", "writer", "-o", "jsonpath={.status.phase}"]).ok()?;
        (phase == "Succeeded").then(|| k(&["logs", "writer"]).ok())?
    })?;
    ensure!(
        logs.contains("fast")
            && logs.contains("hunter2")
            && logs.contains("tier=\"store\"")
            && logs.contains("read-only")
            && logs.lines().any(|l| l.trim() == "1"),
        "the writer saw its volumes wrongly: {logs}"
    );
    let claim = k(&[
        "get",
        "pvc",
        "store",
        "-o",
        "jsonpath={.status.phase} {.spec.storageClassName} {.spec.volumeName}",
    ])?;
    let fields: Vec<&str> = claim.split_whitespace().collect();
    ensure!(
        fields.len() == 3 && fields[0] == "Bound" && fields[1] == "local-path",
        "claim: {claim}"
    );
    let volume = fields[2].to_string();
    let pv = k(&[
        "get",
        "pv",
        &volume,
        "-o",
        "jsonpath={.spec.hostPath.path} {.spec.persistentVolumeReclaimPolicy}",
    ])?;
    ensure!(
        pv.starts_with("/var/lib/strake/local-path/pvc-") && pv.ends_with(" Delete"),
        "volume: {pv}"
    );
    std::fs::write(&manifest, pod("reader", "cat /data/file"))?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let logs = poll("the reader's output", Duration::from_secs(120), || {
        let phase = k(&["get", "pod", "reader", "-o", "jsonpath={.status.phase}"]).ok()?;
        (phase == "Succeeded").then(|| k(&["logs", "reader"]).ok())?
    })?;
    ensure!(logs.trim() == "persisted", "the reader saw: {logs}");
    k(&[
        "delete",
        "pod",
        "writer",
        "reader",
        "--wait=true",
        "--timeout=60s",
    ])?;
    k(&["delete", "pvc", "store", "--wait=true", "--timeout=60s"])?;
    poll("the volume removed", Duration::from_secs(60), || {
        let out = kubectl(kubeconfig, &["get", "pv", &volume]).ok()?;
        (!out.status.success()).then_some(())
    })?;
    // A volume that cannot be set up: the pod waits and the reason is a FailedMount Event.
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: nomount}}
spec:
  terminationGracePeriodSeconds: 0
  volumes: [{{name: cfg, configMap: {{name: absent-cm}}}}]
  containers:
  - {{name: main, image: "{registry}/e2e/busybox:1", command: ["sleep", "3600"], volumeMounts: [{{name: cfg, mountPath: /c}}]}}
"#
        ),
    )?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let event = poll("the FailedMount event", Duration::from_secs(120), || {
        let e = k(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nomount,reason=FailedMount",
            "-o",
            "jsonpath={.items[0].message}",
        ])
        .ok()?;
        (!e.is_empty()).then_some(e)
    })?;
    ensure!(
        event.contains("MountVolume.SetUp failed for volume \"cfg\"")
            && event.contains("configmap \"absent-cm\" not found"),
        "FailedMount: {event}"
    );
    k(&["delete", "pod", "nomount", "--wait=true", "--timeout=60s"])?;
    Ok(())
}

/// Env from ConfigMaps, Secrets and the downward API with `$(VAR)` expansion; a missing key;
/// a command that does not exist; exec readiness and liveness probes with their Events.
fn env_and_probe_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("{registry}/e2e/busybox:1");
    let manifest = dir.join("env.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: env-cfg}}
data: {{MODE: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: env-creds}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envs}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo \"$MODE $DB_password $PW $URL $POD $(MODE)\""]
    envFrom:
    - configMapRef: {{name: env-cfg}}
    - secretRef: {{name: env-creds}}
      prefix: DB_
    - configMapRef: {{name: absent, optional: true}}
    env:
    - {{name: PW, valueFrom: {{secretKeyRef: {{name: env-creds, key: password}}}}}}
    - {{name: URL, value: "http://$(DB_password)@h/$(MODE)"}}
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envmiss}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    env:
    - {{name: PW, valueFrom: {{secretKeyRef: {{name: env-creds, key: nope}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nocmd}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: main, image: "{image}", command: ["/no/such/command"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 20; touch /tmp/ready; sleep 3600"]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/ready"]}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: unlive}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {{command: ["sh", "-c", "exit 3"]}}
      periodSeconds: 1
      failureThreshold: 2
"#
        ),
    )?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let logs = poll("the env pod's output", Duration::from_secs(120), || {
        let phase = k(&["get", "pod", "envs", "-o", "jsonpath={.status.phase}"]).ok()?;
        (phase == "Succeeded").then(|| k(&["logs", "envs"]).ok())?
    })?;
    ensure!(
        logs.trim() == "fast hunter2 hunter2 http://hunter2@h/fast envs fast",
        "env pod printed: {logs}"
    );
    let waiting = poll("the missing key reported", Duration::from_secs(120), || {
        let w = k(&[
            "get",
            "pod",
            "envmiss",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
        ])
        .ok()?;
        w.starts_with("CreateContainerConfigError").then_some(w)
    })?;
    ensure!(
        waiting.contains("couldn't find key nope in Secret default/env-creds"),
        "missing key: {waiting}"
    );
    let start = poll("the start error", Duration::from_secs(120), || {
        let t = k(&[
            "get",
            "pod",
            "nocmd",
            "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}",
        ])
        .ok()?;
        t.starts_with("Failed").then_some(t)
    })?;
    ensure!(start == "Failed StartError 128", "bad command: {start}");
    // Not ready until the probe's file exists, then ready.
    let early = k(&[
        "get",
        "pod",
        "probed",
        "-o",
        "jsonpath={.status.containerStatuses[0].ready}",
    ])?;
    poll(
        "the readiness probe to pass",
        Duration::from_secs(120),
        || {
            let ready = k(&[
                "get",
                "pod",
                "probed",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()?;
            (ready == "True").then_some(())
        },
    )?;
    ensure!(early != "true", "ready before its probe passed");
    poll("the liveness restart", Duration::from_secs(180), || {
        let n = k(&[
            "get",
            "pod",
            "unlive",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .ok()?;
        (n.trim().parse::<i32>().ok()? >= 1).then_some(())
    })?;
    let events = k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=unlive",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])?;
    ensure!(
        events.contains("Unhealthy: Liveness probe failed: command")
            && events.contains("Killing: Container main failed liveness probe, will be restarted"),
        "events of the unhealthy pod: {events}"
    );
    k(&[
        "delete",
        "pod",
        "envs",
        "envmiss",
        "nocmd",
        "probed",
        "unlive",
        "--wait=true",
        "--timeout=60s",
    ])?;
    Ok(())
}

/// Init containers run in order, a sidecar starts between them and outlives them, a failed
/// init container fails a never-restarting pod, a pending one shows `Init:0/1`, and a pod whose
/// containers completed succeeds although its sidecar would run forever.
fn init_container_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("{registry}/e2e/busybox:1");
    let manifest = dir.join("init.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: initseq}}
spec:
  terminationGracePeriodSeconds: 0
  volumes: [{{name: work, emptyDir: {{}}}}]
  initContainers:
  - {{name: first, image: "{image}", command: ["sh", "-c", "echo first >> /w/log"], volumeMounts: [{{name: work, mountPath: /w}}]}}
  - name: side
    image: {image}
    restartPolicy: Always
    command: ["sh", "-c", "echo side >> /w/log; sleep 3600"]
    volumeMounts: [{{name: work, mountPath: /w}}]
  - {{name: second, image: "{image}", command: ["sh", "-c", "echo second >> /w/log"], volumeMounts: [{{name: work, mountPath: /w}}]}}
  containers:
  - {{name: main, image: "{image}", command: ["sh", "-c", "cat /w/log; sleep 3600"], volumeMounts: [{{name: work, mountPath: /w}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: initfail}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  initContainers:
  - {{name: broken, image: "{image}", command: ["sh", "-c", "exit 3"]}}
  containers:
  - {{name: main, image: "{image}", command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: initwait}}
spec:
  terminationGracePeriodSeconds: 0
  initContainers:
  - {{name: forever, image: "{image}", command: ["sleep", "3600"]}}
  containers:
  - {{name: main, image: "{image}", command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sidejob}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: helper, image: "{image}", restartPolicy: Always, command: ["sleep", "3600"]}}
  containers:
  - {{name: main, image: "{image}", command: ["echo", "done"]}}
"#
        ),
    )?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let row = poll(
        "the initialized pod running",
        Duration::from_secs(180),
        || {
            // The sidecar and the main container each become ready on their own status
            // update: wait for both (1/2 Running is a legitimate moment in between).
            let row = k(&["get", "pod", "initseq", "--no-headers"]).ok()?;
            (row.contains("Running") && row.split_whitespace().nth(1) == Some("2/2")).then_some(row)
        },
    )?;
    ensure!(
        row.split_whitespace().nth(1) == Some("2/2"),
        "the sidecar counts as a container: {row}"
    );
    let log = poll(
        "the main container's output",
        Duration::from_secs(60),
        || {
            let l = k(&["logs", "initseq", "-c", "main"]).ok()?;
            (!l.is_empty()).then_some(l)
        },
    )?;
    ensure!(
        log.split_whitespace().collect::<Vec<_>>() == ["first", "side", "second"],
        "init order: {log}"
    );
    let inits = k(&[
        "get",
        "pod",
        "initseq",
        "-o",
        "jsonpath={range .status.initContainerStatuses[*]}{.name}={.state.terminated.reason}{.state.running.startedAt}/{.ready} {end}{.status.conditions[?(@.type==\"Initialized\")].status}",
    ])?;
    let words: Vec<_> = inits.split_whitespace().collect();
    ensure!(
        words.len() == 4
            && words[0] == "first=Completed/true"
            && words[1].starts_with("side=20")
            && words[1].ends_with("/true")
            && words[2] == "second=Completed/true"
            && words[3] == "True",
        "init statuses: {inits}"
    );
    let failed = poll(
        "the failed init container",
        Duration::from_secs(120),
        || {
            let row = k(&["get", "pod", "initfail", "--no-headers"]).ok()?;
            row.contains("Init:Error").then_some(row)
        },
    )?;
    let phase = k(&[
        "get",
        "pod",
        "initfail",
        "-o",
        "jsonpath={.status.phase} {.status.containerStatuses[0].state.waiting.reason}",
    ])?;
    ensure!(
        phase == "Failed PodInitializing",
        "a failed init container: {phase} ({failed})"
    );
    let waiting = k(&["get", "pod", "initwait", "--no-headers"])?;
    ensure!(
        waiting.contains("Init:0/1"),
        "a running init container: {waiting}"
    );
    let cond = k(&[
        "get",
        "pod",
        "initwait",
        "-o",
        "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Initialized\")].reason}",
    ])?;
    ensure!(
        cond == "Pending ContainersNotInitialized",
        "initializing: {cond}"
    );
    poll(
        "the sidecar job to succeed",
        Duration::from_secs(120),
        || {
            let phase = k(&["get", "pod", "sidejob", "-o", "jsonpath={.status.phase}"]).ok()?;
            (phase == "Succeeded").then_some(())
        },
    )?;
    k(&[
        "delete",
        "pod",
        "initseq",
        "initfail",
        "initwait",
        "sidejob",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!("init container scenarios: order, sidecars, Init:Error, Init:0/1, sidecar job: ok");
    Ok(())
}

/// `kubectl exec` over WebSocket through the API server to the agent: output split into
/// stdout and stderr, the exit code, stdin with end-of-file, a terminal, and `kubectl cp`
/// both ways (tar through exec).
fn exec_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("{registry}/e2e/busybox:1");
    k(&[
        "run",
        "shell",
        &format!("--image={image}"),
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    k(&[
        "wait",
        "--for=condition=Ready",
        "pod/shell",
        "--timeout=120s",
    ])?;
    let out = kubectl(
        kubeconfig,
        &[
            "-n",
            "default",
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    )?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(3) && stdout.trim() == "out" && stderr.starts_with("err"),
        "exec exit code and streams: {:?} stdout {stdout:?} stderr {stderr:?}",
        out.status
    );
    let piped = kubectl_with_input(
        kubeconfig,
        &[
            "-n",
            "default",
            "exec",
            "-i",
            "shell",
            "--",
            "sh",
            "-c",
            "cat > /tmp/in; wc -c < /tmp/in",
        ],
        b"hello world\n",
    )?;
    ensure!(
        piped.status.success() && String::from_utf8_lossy(&piped.stdout).trim() == "12",
        "exec with stdin: {:?} {} {}",
        piped.status,
        String::from_utf8_lossy(&piped.stdout),
        String::from_utf8_lossy(&piped.stderr)
    );
    // The same over SPDY, as kubectl before 1.30 and client-go's SPDY executor speak it.
    let spdy = Command::new(kubectl_path()?)
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "-n",
            "default",
            "exec",
            "-i",
            "shell",
            "--",
            "sh",
            "-c",
            "wc -c; echo oops >&2; exit 5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut i) = c.stdin.take() {
                i.write_all(b"seven b")?;
            }
            c.wait_with_output()
        })?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&spdy.stdout),
        String::from_utf8_lossy(&spdy.stderr),
    );
    ensure!(
        spdy.status.code() == Some(5) && stdout.trim() == "7" && stderr.contains("oops"),
        "exec over SPDY: {:?} stdout {stdout:?} stderr {stderr:?}",
        spdy.status
    );
    // A terminal: `script` gives kubectl one of its own, so `-t` is honoured.
    let line = format!(
        "{} --kubeconfig {} -n default exec -it shell -- sh -c 'test -t 0 && echo tty-yes; exit 4'",
        kubectl_path()?.display(),
        kubeconfig.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&tty.stdout);
    ensure!(
        text.contains("tty-yes") && tty.status.code() == Some(4),
        "exec with a terminal: {:?} {text:?} {}",
        tty.status,
        String::from_utf8_lossy(&tty.stderr)
    );
    let local = dir.join("cp-in.txt");
    std::fs::write(&local, "copied in\n")?;
    k(&[
        "cp",
        local.to_str().unwrap_or_default(),
        "shell:/tmp/cp-in.txt",
    ])?;
    let back = k(&["exec", "shell", "--", "cat", "/tmp/cp-in.txt"])?;
    ensure!(back == "copied in\n", "kubectl cp into the pod: {back:?}");
    let fetched = dir.join("cp-out.txt");
    k(&[
        "cp",
        "shell:/tmp/cp-in.txt",
        fetched.to_str().unwrap_or_default(),
    ])?;
    let got = std::fs::read_to_string(&fetched)?;
    ensure!(got == "copied in\n", "kubectl cp out of the pod: {got:?}");
    let missing = kubectl(
        kubeconfig,
        &["-n", "default", "exec", "shell", "-c", "nope", "--", "true"],
    )?;
    let err = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        !missing.status.success() && err.contains("container nope is not valid for pod shell"),
        "exec into a missing container: {err}"
    );
    k(&[
        "delete",
        "pod",
        "shell",
        "--grace-period=0",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!("exec scenarios: streams, exit code, stdin, tty, cp both ways, bad container: ok");
    Ok(())
}

/// postStart runs before the container counts as started and a failing one restarts it;
/// preStop runs on deletion before the stop signal (it leaves a file on the node, read back by
/// a second pod).
fn lifecycle_hook_scenarios(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    registry: &str,
) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("{registry}/e2e/busybox:1");
    let manifest = dir.join("hooks.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: host, hostPath: {{path: /var/lib/strake-e2e-hooks, type: DirectoryOrCreate}}}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "cat /tmp/hook; sleep 3600"]
    volumeMounts: [{{name: host, mountPath: /h}}]
    lifecycle:
      postStart: {{exec: {{command: ["sh", "-c", "echo from-post-start > /tmp/hook"]}}}}
      preStop: {{exec: {{command: ["sh", "-c", "echo from-pre-stop > /h/stopped"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    lifecycle:
      postStart: {{exec: {{command: ["sh", "-c", "exit 7"]}}}}
"#
        ),
    )?;
    k(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    k(&[
        "wait",
        "--for=condition=Ready",
        "pod/hooks",
        "--timeout=120s",
    ])?;
    let log = poll(
        "the postStart file in the log",
        Duration::from_secs(60),
        || {
            let l = k(&["logs", "hooks"]).ok()?;
            (!l.is_empty()).then_some(l)
        },
    )?;
    // The container's command may read the file before the hook wrote it (upstream gives no
    // order either), but the hook ran in the container when the file is there afterwards.
    let after = k(&["exec", "hooks", "--", "cat", "/tmp/hook"])?;
    ensure!(
        after.trim() == "from-post-start",
        "postStart: log {log:?}, file {after:?}"
    );
    k(&["delete", "pod", "hooks", "--wait=true", "--timeout=60s"])?;
    k(&[
        "run",
        "hookcheck",
        &format!("--image={image}"),
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"volumes":[{"name":"h","hostPath":{"path":"/var/lib/strake-e2e-hooks"}}],"containers":[{"name":"hookcheck","image":"IMAGE","command":["cat","/h/stopped"],"volumeMounts":[{"name":"h","mountPath":"/h"}]}]}}"#
            .replace("IMAGE", &image)
            .as_str(),
    ])?;
    let stopped = poll("the preStop file", Duration::from_secs(120), || {
        let phase = k(&["get", "pod", "hookcheck", "-o", "jsonpath={.status.phase}"]).ok()?;
        (phase == "Succeeded").then(|| k(&["logs", "hookcheck"]).ok())?
    })?;
    ensure!(stopped.trim() == "from-pre-stop", "preStop: {stopped:?}");
    poll(
        "the failed postStart restarting",
        Duration::from_secs(180),
        || {
            let n = k(&[
                "get",
                "pod",
                "badhook",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ])
            .ok()?;
            (n.trim().parse::<i32>().ok()? >= 1).then_some(())
        },
    )?;
    let events = k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=badhook",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])?;
    ensure!(
        events.contains("FailedPostStartHook: PostStartHook failed: command"),
        "events of the failing hook: {events}"
    );
    k(&[
        "delete",
        "pod",
        "badhook",
        "hookcheck",
        "--wait=true",
        "--timeout=60s",
    ])?;
    // A new image on a running pod restarts that container with it (here the same image,
    // named by its digest, as the pod's imageID spells it).
    k(&[
        "run",
        "reimage",
        &format!("--image={image}"),
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    k(&[
        "wait",
        "--for=condition=Ready",
        "pod/reimage",
        "--timeout=120s",
    ])?;
    let id = k(&[
        "get",
        "pod",
        "reimage",
        "-o",
        "jsonpath={.status.containerStatuses[0].imageID}",
    ])?;
    ensure!(
        id.starts_with(registry) && id.contains("/e2e/busybox@sha256:"),
        "imageID names the registry and the digest: {id}"
    );
    k(&["set", "image", "pod/reimage", &format!("reimage={id}")])?;
    let now = poll(
        "the container restarted on its new image",
        Duration::from_secs(120),
        || {
            let s = k(&[
            "get",
            "pod",
            "reimage",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].image} {.status.phase}",
        ])
        .ok()?;
            (s.starts_with("1 ") && s.ends_with(" Running")).then_some(s)
        },
    )?;
    ensure!(now == format!("1 {id} Running"), "after set image: {now}");
    let events = k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=reimage,reason=Killing",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    ensure!(
        events.contains("Container reimage definition changed, will be restarted"),
        "the restart's event: {events}"
    );
    k(&[
        "delete",
        "pod",
        "reimage",
        "--grace-period=0",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!("lifecycle hook scenarios: postStart, failing postStart, preStop, image change: ok");
    Ok(())
}

/// Pod sandboxes on the pod network: the node's podCIDR from the control plane, a network
/// namespace per pod (two pods serve one port), pod to pod traffic over the bridge, the
/// kubelet's /etc/hosts, hostname and resolv.conf (the cluster DNS and search list), and a
/// hostNetwork pod on the node's address.
fn pod_network_scenarios(kubeconfig: &std::path::Path, registry: &str) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("--image={registry}/e2e/busybox:1");
    let cidr = k(&["get", "nodes", "-o", "jsonpath={.items[0].spec.podCIDR}"])?;
    ensure!(cidr == "10.244.0.0/24", "the node's podCIDR: {cidr:?}");
    for (name, text) in [("net-a", "from-a"), ("net-b", "from-b")] {
        k(&[
            "run",
            name,
            &image,
            "--restart=Never",
            "--",
            "sh",
            "-c",
            &format!("mkdir -p /www && echo {text} > /www/index.html && httpd -f -p 8080 -h /www"),
        ])?;
    }
    k(&[
        "run",
        "net-host",
        &image,
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"hostNetwork":true}}"#,
        "--",
        "sleep",
        "3600",
    ])?;
    for name in ["net-a", "net-b", "net-host"] {
        k(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
    }
    let ip_of = |name: &str| {
        k(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.podIP} {.status.hostIP}",
        ])
    };
    let (a, b, host) = (ip_of("net-a")?, ip_of("net-b")?, ip_of("net-host")?);
    let (ip_a, node_ip) = a.split_once(' ').context("net-a's IPs")?;
    let ip_b = b.split(' ').next().unwrap_or_default();
    ensure!(
        ip_a.starts_with("10.244.0.") && ip_b.starts_with("10.244.0.") && ip_a != ip_b,
        "pod IPs: {a:?} {b:?}"
    );
    ensure!(
        host == format!("{node_ip} {node_ip}"),
        "the hostNetwork pod's IPs: {host:?}"
    );
    for (from, to, want) in [("net-b", ip_a, "from-a"), ("net-a", ip_b, "from-b")] {
        let got = k(&[
            "exec",
            from,
            "--",
            "timeout",
            "10",
            "wget",
            "-qO-",
            &format!("http://{to}:8080/"),
        ])?;
        ensure!(got.trim() == want, "{from} -> {to}: {got:?}");
    }
    let ifaces = k(&["exec", "net-a", "--", "cat", "/proc/net/dev"])?;
    ensure!(
        ifaces.contains("eth0:") && ifaces.contains("lo:") && ifaces.lines().count() == 4,
        "net-a's interfaces: {ifaces}"
    );
    let hosts = k(&["exec", "net-a", "--", "cat", "/etc/hosts"])?;
    ensure!(
        hosts.starts_with("# Kubernetes-managed hosts file.")
            && hosts.contains(&format!("\n{ip_a}\tnet-a\n")),
        "net-a's /etc/hosts: {hosts}"
    );
    let name = k(&["exec", "net-a", "--", "hostname"])?;
    ensure!(name.trim() == "net-a", "net-a's hostname: {name:?}");
    let resolv = k(&["exec", "net-a", "--", "cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv.starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("\nnameserver 10.96.0.10\n")
            && resolv.ends_with("options ndots:5\n"),
        "net-a's resolv.conf: {resolv}"
    );
    // The hostNetwork pod sees the node's interfaces, the bridge among them.
    let node_ifaces = k(&["exec", "net-host", "--", "cat", "/proc/net/dev"])?;
    ensure!(
        node_ifaces.contains("strake0:"),
        "net-host's interfaces: {node_ifaces}"
    );
    k(&[
        "delete",
        "pod",
        "net-a",
        "net-b",
        "net-host",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!(
        "pod network scenarios: podCIDR, pod to pod, same port twice, hosts, hostname, resolv.conf, hostNetwork: ok"
    );
    Ok(())
}

/// Services through the node's nf_tables rules: a ClusterIP spreading over two replicas, a
/// NodePort on the node's address, the `kubernetes` Service reaching the API server, a Service
/// scaled to nothing answering nothing, and a pod reaching outside the cluster (the test
/// registry on the host, through QEMU's user network) only because its traffic is masqueraded.
fn service_scenarios(kubeconfig: &std::path::Path, registry: &str) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("--image={registry}/e2e/busybox:1");
    k(&[
        "create",
        "deployment",
        "svc-web",
        &image,
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www",
    ])?;
    k(&[
        "run",
        "svc-client",
        &image,
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])?;
    k(&[
        "expose",
        "deployment",
        "svc-web",
        "--port=80",
        "--target-port=8080",
    ])?;
    k(&[
        "expose",
        "deployment",
        "svc-web",
        "--name=svc-web-np",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ])?;
    k(&["rollout", "status", "deployment/svc-web", "--timeout=120s"])?;
    k(&[
        "wait",
        "--for=condition=Ready",
        "pod/svc-client",
        "--timeout=120s",
    ])?;
    let cluster_ip = k(&[
        "get",
        "service",
        "svc-web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    // Anywhere in the default service range, 10.96.0.0/12.
    let octets = cluster_ip.parse::<std::net::Ipv4Addr>()?.octets();
    ensure!(
        octets[0] == 10 && (96..=111).contains(&octets[1]),
        "clusterIP {cluster_ip:?} outside 10.96.0.0/12"
    );
    let wget = |url: &str| {
        k(&[
            "exec",
            "svc-client",
            "--",
            "timeout",
            "10",
            "wget",
            "-qO-",
            url,
        ])
    };
    let pods = k(&[
        "get",
        "pods",
        "-l",
        "app=svc-web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        if seen.len() == 2 {
            break;
        }
        if let Ok(body) = wget(&format!("http://{cluster_ip}/")) {
            ensure!(
                pods.contains(body.trim()),
                "the ClusterIP answered {body:?}, not one of {pods}"
            );
            seen.insert(body.trim().to_string());
        }
    }
    ensure!(
        seen.len() == 2,
        "both replicas behind the ClusterIP answer: {seen:?}"
    );
    let node_port = k(&[
        "get",
        "service",
        "svc-web-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    let node_ip = k(&[
        "get",
        "pod",
        "svc-client",
        "-o",
        "jsonpath={.status.hostIP}",
    ])?;
    let body = wget(&format!("http://{node_ip}:{node_port}/"))?;
    ensure!(pods.contains(body.trim()), "the NodePort answered {body:?}");
    // A LoadBalancer without a cloud: ServiceLB gives it the node's address.
    k(&[
        "expose",
        "deployment",
        "svc-web",
        "--name=svc-web-lb",
        "--type=LoadBalancer",
        "--port=8088",
        "--target-port=8080",
    ])?;
    let lb_ip = poll(
        "the LoadBalancer's address",
        Duration::from_secs(60),
        || {
            let ip = k(&[
                "get",
                "service",
                "svc-web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .ok()?;
            (!ip.trim().is_empty()).then_some(ip)
        },
    )?;
    ensure!(
        lb_ip == node_ip,
        "the LoadBalancer's address {lb_ip:?}, the node's {node_ip:?}"
    );
    let body = wget(&format!("http://{lb_ip}:8088/"))?;
    ensure!(
        pods.contains(body.trim()),
        "the LoadBalancer answered {body:?}"
    );
    let api = k(&[
        "exec",
        "svc-client",
        "--",
        "sh",
        "-c",
        "nc -w 5 10.96.0.1 443 -e true && echo connected",
    ])?;
    ensure!(api.trim() == "connected", "the kubernetes Service: {api:?}");
    // Cluster DNS, answered on every node for the kube-dns address.
    // busybox's nslookup asks every search domain (A and AAAA) and exits 1 if any says
    // NXDOMAIN, even when one answered: judge by what it prints.
    let lookup = |name: &str| {
        k(&[
            "exec",
            "svc-client",
            "--",
            "sh",
            "-c",
            &format!("timeout 10 nslookup {name}; echo exit=$?"),
        ])
    };
    for (name, want) in [
        ("svc-web.default.svc.cluster.local", cluster_ip.as_str()),
        ("kubernetes.default.svc.cluster.local", "10.96.0.1"),
        ("kube-dns.kube-system.svc.cluster.local", "10.96.0.10"),
        // No dot: through the search list.
        ("svc-web", cluster_ip.as_str()),
        // Reverse.
        (cluster_ip.as_str(), "svc-web.default.svc.cluster.local"),
    ] {
        let out = lookup(name)?;
        ensure!(out.contains(want), "nslookup {name}: {out}");
    }
    let missing = lookup("nope.default.svc.cluster.local")?;
    ensure!(
        missing.contains("NXDOMAIN")
            && !missing.contains("Address: 10.")
            && missing.contains("exit=1"),
        "a missing name: {missing}"
    );
    let catalog = wget(&format!("http://{registry}/v2/_catalog"))?;
    ensure!(
        catalog.contains("e2e/busybox"),
        "a pod reaching the registry outside: {catalog:?}"
    );
    k(&["scale", "deployment", "svc-web", "--replicas=0"])?;
    poll(
        "the ClusterIP without endpoints",
        Duration::from_secs(60),
        || {
            wget(&format!("http://{cluster_ip}/"))
                .is_err()
                .then_some(())
        },
    )?;
    // The pod's own service-account token (projected by admission, requested by the node
    // through TokenRequest) stands for its account and holds what that account is bound to,
    // nothing more; the `kubernetes` Service's variables lead to the API.
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let in_pod = |script: &str| k(&["exec", "svc-client", "--", "sh", "-c", script]);
    ensure!(in_pod(&format!("cat {sa_dir}/namespace"))?.trim() == "default");
    ensure!(in_pod(&format!("grep -c 'BEGIN CERTIFICATE' {sa_dir}/ca.crt"))?.trim() == "1");
    let kube_ip = k(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(
        in_pod("echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT")?.trim()
            == format!("{kube_ip}:443")
    );
    // From inside the pod the Service reaches the API server's TLS. (busybox's TLS client
    // offers only RSA signatures, so it cannot finish a handshake with the cluster's ECDSA
    // certificate; the token is used from outside below.)
    let reach = in_pod(
        "timeout 10 wget -qO- https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version 2>&1; true",
    )?;
    ensure!(
        reach.contains("TLS error") || reach.contains("gitVersion"),
        "the kubernetes Service did not lead to the API from the pod: {reach}"
    );
    let token = in_pod(&format!("cat {sa_dir}/token"))?;
    let server = k(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ])?;
    let ca = k(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ])?;
    let token_config = kubeconfig.with_extension("pod-token");
    std::fs::write(
        &token_config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: pod\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: pod\ncurrent-context: c\n",
            token.trim()
        ),
    )?;
    let as_pod = |args: &[&str]| {
        let mut a = vec!["-n", "default"];
        a.extend(args);
        kubectl(&token_config, &a)
    };
    let who = as_pod(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    ensure!(
        String::from_utf8_lossy(&who.stdout).trim() == "system:serviceaccount:default:default",
        "whoami with the pod's token: {who:?}"
    );
    let refused = as_pod(&["get", "pods"])?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains(
                r#"User "system:serviceaccount:default:default" cannot list resource "pods""#
            ),
        "the default account read pods before any binding: {refused:?}"
    );
    k(&[
        "create",
        "rolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ])?;
    poll(
        "the pod's token to list pods",
        Duration::from_secs(60),
        || {
            let out = as_pod(&["get", "pods", "-o", "name"]).ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("pod/svc-client")
                .then_some(())
        },
    )?;
    let secrets = as_pod(&["get", "secrets"])?;
    ensure!(!secrets.status.success(), "view read secrets: {secrets:?}");
    k(&["delete", "rolebinding", "default-view"])?;
    k(&["delete", "service", "svc-web", "svc-web-np", "svc-web-lb"])?;
    k(&["delete", "deployment", "svc-web"])?;
    k(&[
        "delete",
        "pod",
        "svc-client",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!(
        "service scenarios: ClusterIP over two replicas, NodePort, LoadBalancer, kubernetes, cluster DNS (search list, reverse, NXDOMAIN), no endpoints, egress masquerade, a pod's service-account token against the API: ok"
    );
    Ok(())
}

/// An HTTP/1.0 GET through `127.0.0.1:port`; the whole response.
fn http_get(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `kubectl port-forward` (SPDY tunnelled in a WebSocket, as kubectl 1.31+ sends it) and the
/// Python client's port-forward (the channel protocol) reach a server in the pod, connection
/// after connection; a closed port is reported.
fn port_forward_scenarios(kubeconfig: &std::path::Path, registry: &str) -> anyhow::Result<()> {
    let k = in_default(kubeconfig);
    let image = format!("{registry}/e2e/busybox:1");
    k(&[
        "run",
        "pf",
        &format!("--image={image}"),
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-pf > /www/index.html && httpd -f -p 18080 -h /www",
    ])?;
    k(&["wait", "--for=condition=Ready", "pod/pf", "--timeout=120s"])?;
    let mut child = Command::new(kubectl_path()?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "-n",
            "default",
            "port-forward",
            "pod/pf",
            "28080:18080",
            "28081:18081",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let stdout = child.stdout.take().context("port-forward's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("port-forward printed nothing")??;
        ensure!(
            first.contains("Forwarding from 127.0.0.1:28080"),
            "port-forward said: {first}"
        );
        // Wait for the last listener to be announced.
        while let Some(Ok(line)) = lines.next() {
            if line.contains("28081") && line.contains("[::1]") {
                break;
            }
        }
        for round in 0..3 {
            let body = poll("a forwarded response", Duration::from_secs(30), || {
                http_get(28080).ok().filter(|r| r.contains("hello-pf"))
            })?;
            ensure!(body.starts_with("HTTP/1."), "round {round}: {body}");
        }
        // Nothing listens on 18081: the connection fails and the error reaches kubectl, which
        // then ends the session (as it does against a kubelet).
        let _ = http_get(28081);
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    let _ = child.kill();
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    result.with_context(|| format!("kubectl port-forward: {stderr}"))?;
    ensure!(
        stderr.contains("error forwarding port 18081 to pod pf"),
        "the closed port's error: {stderr}"
    );
    // Plain SPDY, as kubectl before 1.31 speaks it.
    let mut spdy = Command::new(kubectl_path()?)
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", "default", "port-forward", "pod/pf", "28082:18080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let plain = poll(
        "a response over plain SPDY",
        Duration::from_secs(30),
        || http_get(28082).ok().filter(|r| r.contains("hello-pf")),
    );
    let _ = spdy.kill();
    let out = spdy.wait_with_output()?;
    plain.with_context(|| {
        format!(
            "port-forward over SPDY: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let python = workspace_root().join(".cache/pyclients/bin/python3");
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "pf", "default", ports="18080")
sock = pf.socket(18080)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    d = sock.recv(4096)
    if not d:
        break
    data += d
sock.close()
print("python-pf", b"hello-pf" in data)
"#;
    let py = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(kubeconfig)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let said = String::from_utf8_lossy(&py.stdout);
    ensure!(
        py.status.success() && said.trim() == "python-pf True",
        "port-forward from the Python client: {said} {}",
        String::from_utf8_lossy(&py.stderr)
    );
    k(&[
        "delete",
        "pod",
        "pf",
        "--grace-period=0",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eprintln!(
        "port-forward scenarios: kubectl (SPDY in WebSocket), Python (channels), closed port: ok"
    );
    Ok(())
}

/// kubectl in the `default` namespace, failing on a non-zero exit.
fn in_default(kubeconfig: &std::path::Path) -> impl Fn(&[&str]) -> anyhow::Result<String> + '_ {
    move |args: &[&str]| {
        let mut a = vec!["-n", "default"];
        a.extend(args);
        kubectl_ok(kubeconfig, &a)
    }
}
