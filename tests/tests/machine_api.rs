//! The appliance flow through the machine API, driven with the strakectl binary as a user would:
//! a node with a blank disk and no config boots into maintenance mode; `strakectl gen config`
//! makes a machine CA and a control plane config; `apply-config --insecure --fingerprint`
//! refuses a config naming a missing disk, then installs the good one (partitions the disk,
//! formats STATE, keeps the config) and the node reboots into a one-node cluster. There the API
//! needs the machine CA's client certificate: `version`, `get machineconfig`, `logs`, `dmesg`, a dry run, a live
//! sysctl change that a pod then reads, a change refused live, `reboot`, and `reset`, after
//! which the node is back in maintenance mode. Last, a config
//! drive (FAT, labelled STRAKECFG): bad YAML on it means maintenance mode with the errors on the
//! console; a good config on it boots a node with a static address.
//!
//! Needs the image and strakectl built by `scripts/test.sh`, qemu-system-x86_64,
//! docker-registry, busybox-static and kubectl 1.32. Any missing prerequisite fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use strake_e2e::{
    Registry, bootstrap_admin, image_dir, kubectl, kubectl_ok, kubectl_path, on_failure, poll,
    push_busybox, strakectl, strakectl_ok, strakectl_path, wait_for_fingerprint,
};
use strake_pki::BootstrapToken;
use strake_qemu::{Accel, Nic, PortForward, Vm, VmConfig};

#[test]
fn maintenance_mode_install_and_the_machine_api() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let images = image_dir(&["vmlinuz", "initramfs.zst"])?;
    strakectl_path()?;
    kubectl_path()?;
    let registry = Registry::start()?;
    rt.block_on(push_busybox(registry.port, "e2e/busybox", "1"))?;
    let guest_registry = format!("10.0.2.2:{}", registry.port);

    let dir = strake_e2e::TempDir::new("strake-machine-api")?;
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)?.set_len(4 << 30)?;
    let api_port = strake_qemu::free_port();
    let machine_port = strake_qemu::free_port();
    let node = format!("127.0.0.1:{machine_port}");
    let out_dir = dir.path().display().to_string();
    strakectl_ok(&[
        "gen",
        "config",
        "e2e",
        "--output-dir",
        &out_dir,
        "--hostname",
        "e2e-machine",
        "--install-disk",
        "/dev/vda",
        "--endpoint",
        &node,
    ])?;
    let config_path = dir.path().join("controlplane.yaml");
    let strakeconfig = dir.path().join("strakeconfig");
    let config = std::fs::read_to_string(&config_path)?;
    // A worker's config too, pinned to the cluster CA the control plane's config carries.
    let worker = dir.path().join("worker.yaml");
    strakectl_ok(&["validate", "--config", worker.to_str().unwrap_or("")])?;
    let pin_of = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("caPin: ").map(str::to_owned))
    };
    ensure!(
        pin_of(&config).is_some() && pin_of(&std::fs::read_to_string(&worker)?) == pin_of(&config),
        "worker.yaml is not pinned to the control plane's CA"
    );
    let token: BootstrapToken = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .context("gen config wrote no token")?
        .parse()?;

    let first = VmConfig {
        name: "e2e-maintenance".into(),
        kernel: images.join("vmlinuz"),
        initrd: images.join("initramfs.zst"),
        // Nothing that configures the node: maintenance mode.
        cmdline: format!("strake.registry.insecure={guest_registry}"),
        memory_mib: 2048,
        cpus: 2,
        accel: Accel::from_env(),
        nics: vec![Nic::user(vec![
            PortForward {
                host: api_port,
                guest: 6443,
            },
            PortForward {
                host: machine_port,
                guest: strake_machineapi::PORT,
            },
        ])],
        disks: vec![disk],
        fw_cfg: Vec::new(),
        uefi: None,
        state_dir: dir.path().to_path_buf(),
    };
    let mut vm = Vm::start(first.clone())?;
    let result = maintenance(&mut vm, &node, &config_path, dir.path());
    on_failure(&vm, result)?;

    let mut second = first.clone();
    second.name = "e2e-installed".into();
    let mut vm = Vm::start(second)?;
    let result = installed(
        &rt,
        &mut vm,
        api_port,
        &token,
        (&node, &strakeconfig),
        &config,
        dir.path(),
        &guest_registry,
    );
    on_failure(&vm, result)?;
    drop(vm);

    // Reset: the node wipes STATE at the next boot and comes back in maintenance mode.
    let mut after = first.clone();
    after.name = "e2e-reset".into();
    let mut vm = Vm::start(after.clone())?;
    let sc = strakeconfig.to_str().unwrap_or("").to_owned();
    let result = (|| -> anyhow::Result<()> {
        poll(
            "the machine API after the reboot",
            Duration::from_secs(120),
            || strakectl_ok(&["version", "--strakeconfig", &sc]).ok(),
        )?;
        // The only voter cannot leave the store: a graceful reset is refused, nothing wiped.
        let out = strakectl(&["reset", "--graceful", "--strakeconfig", &sc])?;
        let why = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && why.contains("nothing was wiped"),
            "a graceful reset of the only control plane: {why}"
        );
        let out = strakectl_ok(&["reset", "--strakeconfig", &sc])?;
        ensure!(out.contains("is wiped at the next boot"), "reset: {out}");
        vm.wait_exit("the node to reboot for the reset", Duration::from_secs(90))?;
        Ok(())
    })();
    on_failure(&vm, result)?;
    after.name = "e2e-after-reset".into();
    let mut vm = Vm::start(after)?;
    let result = (|| -> anyhow::Result<()> {
        let (fingerprint, console) = wait_for_fingerprint(&mut vm, Duration::from_secs(90))?;
        ensure!(
            console.contains("wiped, as `strakectl reset` asked"),
            "STATE was not wiped on the console"
        );
        let v = poll(
            "maintenance mode after the reset",
            Duration::from_secs(60),
            || {
                strakectl_ok(&[
                    "version",
                    "-o",
                    "json",
                    "--insecure",
                    "--fingerprint",
                    &fingerprint,
                    "-n",
                    &node,
                ])
                .ok()
            },
        )?;
        ensure!(v.contains("\"maintenance\": true"), "after the reset: {v}");
        Ok(())
    })();
    on_failure(&vm, result)?;
    drop(vm);

    // A config drive: a FAT volume labelled STRAKECFG. With bad YAML on it the node waits in
    // maintenance mode and says why; with a good config it runs it, static address included.
    let mut third = first;
    third.name = "e2e-config-drive".into();
    let bad = config_drive(dir.path(), "bad", "machine:\n  role: [controlplane\n")?;
    third.disks = vec![bad];
    let mut vm = Vm::start(third.clone())?;
    let result = (|| -> anyhow::Result<()> {
        vm.wait_for_console("maintenance mode: ", Duration::from_secs(90))?;
        let console = vm.console();
        ensure!(
            console.contains("the machine config from the config drive (a volume labelled STRAKECFG) is not valid"),
            "the bad config drive's errors are not on the console"
        );
        Ok(())
    })();
    on_failure(&vm, result)?;
    drop(vm);
    let drive_config = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: e2e-drive\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.2.15/24]\n        routes: [{{network: 0.0.0.0/0, gateway: 10.0.2.2}}]\n    nameservers: [10.0.2.3]\ncluster:\n  name: drive\n  token: {token}\n"
    );
    third.disks = vec![config_drive(dir.path(), "good", &drive_config)?];
    let mut vm = Vm::start(third)?;
    let result = (|| -> anyhow::Result<()> {
        let kubeconfig = dir.path().join("kubeconfig-drive");
        bootstrap_admin(
            &rt,
            &mut vm,
            &format!("https://127.0.0.1:{api_port}"),
            &token,
            Duration::from_secs(180),
            "drive",
            &kubeconfig,
        )?;
        let console = vm.console();
        ensure!(
            console.contains("machine config from the config drive (a volume labelled STRAKECFG)")
                && console.contains("ip 10.0.2.15/24 static")
                && console.contains("hostname is e2e-drive"),
            "the node did not run the config drive's config with its static address"
        );
        Ok(())
    })();
    on_failure(&vm, result)
}

/// A 1.44 MB FAT image labelled STRAKECFG holding `machine.yaml`, made with mtools (no loop
/// mounts).
fn config_drive(dir: &Path, name: &str, config: &str) -> anyhow::Result<PathBuf> {
    let image = dir.join(format!("cfgdrive-{name}.img"));
    let file = dir.join(format!("cfgdrive-{name}.yaml"));
    std::fs::write(&file, config)?;
    let _ = std::fs::remove_file(&image);
    for args in [
        vec![
            "mformat",
            "-i",
            image.to_str().unwrap_or(""),
            "-C",
            "-f",
            "1440",
            "-v",
            "STRAKECFG",
            "::",
        ],
        vec![
            "mcopy",
            "-i",
            image.to_str().unwrap_or(""),
            file.to_str().unwrap_or(""),
            "::machine.yaml",
        ],
    ] {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .with_context(|| format!("running {} (apt-get install mtools)", args[0]))?;
        ensure!(
            out.status.success(),
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(image)
}

fn maintenance(vm: &mut Vm, node: &str, config: &Path, dir: &Path) -> anyhow::Result<()> {
    let (fingerprint, _) = wait_for_fingerprint(vm, Duration::from_secs(90))?;
    vm.wait_for_console("machine API listening", Duration::from_secs(30))?;
    let insecure = ["--insecure", "--fingerprint", &fingerprint, "-n", node];
    let version = poll(
        "the machine API in maintenance mode",
        Duration::from_secs(30),
        || strakectl_ok(&[&["version", "-o", "json"], &insecure[..]].concat()).ok(),
    )?;
    let v: serde_json::Value = serde_json::from_str(&version)?;
    ensure!(
        v["maintenance"] == true,
        "not in maintenance mode: {version}"
    );
    // The disks, to pick the install disk from: the blank one has no partitions yet.
    let disks = strakectl_ok(&[&["disks"], &insecure[..]].concat())?;
    ensure!(
        disks
            .lines()
            .any(|l| l.starts_with("/dev/vda ") && l.trim_end().ends_with(" -")),
        "disks in maintenance mode: {disks}"
    );

    // A wrong fingerprint: strakectl refuses to talk to the node.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = strakectl(&["version", "--insecure", "--fingerprint", &wrong, "-n", node])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "a wrong fingerprint was accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only apply-config and version in maintenance mode.
    let out = strakectl(&[&["reboot"], &insecure[..]].concat())?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("maintenance mode"),
        "reboot was not refused in maintenance mode: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad input: invalid locally (nothing sent), then a disk the node does not have.
    let text = std::fs::read_to_string(config)?;
    let invalid = dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        text.replace("hostname: e2e-machine", "hostname: Bad_Name")
            .replace("role: controlplane", "role: pilot"),
    )?;
    let out = strakectl(
        &[
            &["apply-config", "-f", invalid.to_str().unwrap_or("")],
            &insecure[..],
        ]
        .concat(),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("nothing was sent"),
        "an invalid config was not refused locally: {err}"
    );
    let missing = dir.join("missing-disk.yaml");
    std::fs::write(&missing, text.replace("disk: /dev/vda", "disk: /dev/vdz"))?;
    let out = strakectl(
        &[
            &["apply-config", "-f", missing.to_str().unwrap_or("")],
            &insecure[..],
        ]
        .concat(),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("machine.install.disk: /dev/vdz is not a disk on this machine"),
        "a config naming a missing disk was not refused by the node: {err}"
    );
    ensure!(
        !vm.console().contains("STATE is /dev/vda1"),
        "the refused configs touched the disk"
    );

    let dry = strakectl_ok(
        &[
            &[
                "apply-config",
                "--dry-run",
                "-f",
                config.to_str().unwrap_or(""),
            ],
            &insecure[..],
        ]
        .concat(),
    )?;
    ensure!(dry.contains("installs it and reboots"), "dry run: {dry}");
    let done = strakectl_ok(
        &[
            &["apply-config", "-f", config.to_str().unwrap_or("")],
            &insecure[..],
        ]
        .concat(),
    )?;
    ensure!(
        done.contains("partitioned the disk, formatted STATE"),
        "apply-config in maintenance mode: {done}"
    );
    // The guest reboots; QEMU runs with -no-reboot, so it exits.
    vm.wait_exit(
        "the node to reboot into its config",
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn installed(
    rt: &tokio::runtime::Runtime,
    vm: &mut Vm,
    api_port: u16,
    token: &BootstrapToken,
    (node, strakeconfig): (&str, &Path),
    config: &str,
    dir: &Path,
    registry: &str,
) -> anyhow::Result<()> {
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    bootstrap_admin(
        rt,
        vm,
        &server,
        token,
        Duration::from_secs(180),
        "e2e",
        &kubeconfig,
    )?;
    let console = vm.console();
    ensure!(
        console.contains("machine config from the machine API (apply-config)")
            && console.contains("STATE is /dev/vda1")
            && !console.contains("maintenance mode:"),
        "the second boot did not run the installed config from STATE"
    );
    // The control plane signs with the config's CA, and its own agent joined only after
    // checking the pin (the node could not be Ready otherwise).
    ensure!(
        console.contains("cluster CA from cluster.ca put in /var/lib/strake/pki"),
        "the control plane did not take the config's cluster CA"
    );
    poll("node e2e-machine Ready", Duration::from_secs(120), || {
        let out = kubectl_ok(&kubeconfig, &["get", "nodes", "e2e-machine"]).ok()?;
        out.contains(" Ready").then_some(())
    })?;

    let sc = strakeconfig.to_str().unwrap_or("");
    let mtls = ["--strakeconfig", sc];
    let version = poll(
        "the machine API over mutual TLS",
        Duration::from_secs(60),
        || strakectl_ok(&[&["version", "-o", "json"], &mtls[..]].concat()).ok(),
    )?;
    let v: serde_json::Value = serde_json::from_str(&version)?;
    ensure!(
        v["maintenance"] == false && v["hostname"] == "e2e-machine",
        "version over mTLS: {version}"
    );
    // Without the client certificate the node answers nothing but a refusal.
    let out = strakectl(&["version", "--insecure", "-n", node])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("client certificate"),
        "an unauthenticated client was not refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = strakectl_ok(&[&["get", "machineconfig"], &mtls[..]].concat())?;
    ensure!(
        got.contains("hostname: e2e-machine") && got.contains(&token.to_string()),
        "get machineconfig as admin: {got}"
    );
    // The services, and one restarted by request: init starts it again.
    let services = strakectl_ok(&[&["services", "-o", "json"], &mtls[..]].concat())?;
    let list: serde_json::Value = serde_json::from_str(&services)?;
    let running = |name: &str| {
        list.as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s["name"] == name && s["state"] == "running")
        })
    };
    ensure!(
        running("machined") && running("controlplane") && running("agent"),
        "services: {services}"
    );
    let out = strakectl_ok(&[&["service", "agent", "restart"], &mtls[..]].concat())?;
    ensure!(
        out.contains("stopped agent"),
        "service agent restart: {out}"
    );
    poll("the agent started again", Duration::from_secs(60), || {
        let s = strakectl_ok(&[&["services", "-o", "json"], &mtls[..]].concat()).ok()?;
        let l: serde_json::Value = serde_json::from_str(&s).ok()?;
        l.as_array()?
            .iter()
            .any(|s| s["name"] == "agent" && s["state"] == "running" && s["restarts"] == 1)
            .then_some(())
    })?;

    // No shell on the node: its logs come through the machine API.
    let logs = strakectl_ok(&[&["logs", "machined"], &mtls[..]].concat())?;
    ensure!(
        logs.contains("machine API listening") && !logs.contains("] agent:"),
        "logs machined: {logs}"
    );
    let dmesg = strakectl_ok(&[&["dmesg", "--tail", "3"], &mtls[..]].concat())?;
    ensure!(dmesg.lines().count() == 3, "dmesg --tail 3: {dmesg}");
    let all = strakectl_ok(&[&["dmesg"], &mtls[..]].concat())?;
    ensure!(all.contains("Linux version"), "dmesg has no boot banner");

    // The machine as it sees itself: STATE on the disk, its address and default route.
    let disks = strakectl_ok(&[&["disks", "-o", "json"], &mtls[..]].concat())?;
    let disks: serde_json::Value = serde_json::from_str(&disks)?;
    ensure!(
        disks[0]["device"] == "/dev/vda" && disks[0]["partitions"][0]["label"] == "STATE",
        "disks: {disks}"
    );
    let addresses = strakectl_ok(&[&["addresses"], &mtls[..]].concat())?;
    ensure!(
        addresses.contains("10.0.2.15/24") && addresses.contains("127.0.0.1/8"),
        "addresses: {addresses}"
    );
    let routes = strakectl_ok(&[&["routes", "-o", "json"], &mtls[..]].concat())?;
    let routes: serde_json::Value = serde_json::from_str(&routes)?;
    ensure!(
        routes.as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["destination"] == "0.0.0.0/0" && r["gateway"] == "10.0.2.2")),
        "routes: {routes}"
    );
    let sockets = strakectl_ok(&[&["netstat", "--listening"], &mtls[..]].concat())?;
    ensure!(
        sockets
            .lines()
            .any(|l| l.contains(":50000") && l.contains("LISTEN") && l.contains("/strake")),
        "netstat: {sockets}"
    );
    // The store: one voter, which leads, and a snapshot of it.
    let members = strakectl_ok(&[&["store", "members", "-o", "json"], &mtls[..]].concat())?;
    let members: serde_json::Value = serde_json::from_str(&members)?;
    ensure!(
        members["members"].as_array().is_some_and(|m| m.len() == 1
            && m[0]["voter"] == true
            && m[0]["leader"] == true
            && m[0]["peerAddress"] == "10.0.2.15:2380"),
        "store members: {members}"
    );
    let snapshot = dir.join("store.snapshot");
    let said = strakectl_ok(
        &[
            &["store", "snapshot", snapshot.to_str().context("path")?],
            &mtls[..],
        ]
        .concat(),
    )?;
    let bytes = std::fs::read(&snapshot)?;
    ensure!(
        bytes.starts_with(b"STRAKEBK") && said.contains("wrote a snapshot at revision"),
        "store snapshot: {said} ({} bytes)",
        bytes.len()
    );
    let id = members["members"][0]["id"].to_string();
    let refused = strakectl(&[&["store", "remove", &id], &mtls[..]].concat())?;
    let why = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && why.contains("no voter"),
        "removing the only voter must be refused, saying why: {why}"
    );
    // A kubeconfig from the machine API alone (no bootstrap token), merged into an existing
    // file next to another cluster's entries.
    let merged = dir.join("merged.kubeconfig");
    std::fs::copy(&kubeconfig, &merged)?;
    let text = std::fs::read_to_string(&merged)?
        .lines()
        .map(|l| {
            let names = [
                "name: e2e",
                "cluster: e2e",
                "user: e2e",
                "current-context: e2e",
            ];
            if names
                .iter()
                .any(|n| l.trim_start().trim_start_matches("- ").starts_with(n))
            {
                l.replace("e2e", "other")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&merged, text)?;
    let merged_arg = merged.to_str().unwrap_or("");
    let out =
        strakectl_ok(&[&["kubeconfig", merged_arg, "--server", &server], &mtls[..]].concat())?;
    ensure!(out.contains("context e2e"), "kubeconfig: {out}");
    let nodes = kubectl_ok(&merged, &["get", "nodes", "e2e-machine"])?;
    ensure!(
        nodes.contains(" Ready"),
        "nodes with the merged kubeconfig: {nodes}"
    );
    let health = strakectl_ok(
        &[
            &["health", "--server", &server, "--wait-timeout", "2m"],
            &mtls[..],
        ]
        .concat(),
    )?;
    ensure!(
        health.contains("ok   nodes Ready: 1 of 1") && !health.contains("FAIL"),
        "health: {health}"
    );
    let contexts = kubectl_ok(&merged, &["config", "get-contexts", "-o", "name"])?;
    ensure!(
        contexts.contains("other") && contexts.contains("e2e"),
        "the merge dropped a context: {contexts}"
    );

    // A sysctl is applied live: a dry run says so, the apply does it, and a pod reads it.
    let live = dir.join("live.yaml");
    std::fs::write(
        &live,
        config.replace(
            "  install:",
            "  sysctls:\n    vm.swappiness: \"13\"\n  install:",
        ),
    )?;
    let live_arg = live.to_str().unwrap_or("");
    let dry = strakectl_ok(&[&["apply-config", "--dry-run", "-f", live_arg], &mtls[..]].concat())?;
    ensure!(
        dry.contains("mode no-reboot") && dry.contains("machine.sysctls"),
        "dry run of a live change: {dry}"
    );
    let applied = strakectl_ok(
        &[
            &["apply-config", "--mode", "no-reboot", "-f", live_arg],
            &mtls[..],
        ]
        .concat(),
    )?;
    ensure!(
        applied.contains("applied 1 change(s) live"),
        "live apply: {applied}"
    );
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: swappiness\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {registry}/e2e/busybox:1\n    command: [\"cat\", \"/proc/sys/vm/swappiness\"]\n"
    );
    let created =
        strake_e2e::kubectl_with_input(&kubeconfig, &["apply", "-f", "-"], pod.as_bytes())?;
    ensure!(
        created.status.success(),
        "creating the pod: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    poll(
        "the pod to print vm.swappiness",
        Duration::from_secs(120),
        || {
            let out = kubectl(&kubeconfig, &["logs", "swappiness"]).ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "13").then_some(())
        },
    )?;

    // A hostname change is read at boot: refused live, with its path, and nothing kept.
    let renamed = dir.join("renamed.yaml");
    std::fs::write(
        &renamed,
        std::fs::read_to_string(&live)?.replace("hostname: e2e-machine", "hostname: e2e-renamed"),
    )?;
    let out = strakectl(
        &[
            &[
                "apply-config",
                "--mode",
                "no-reboot",
                "-f",
                renamed.to_str().unwrap_or(""),
            ],
            &mtls[..],
        ]
        .concat(),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("machine.hostname: read at boot"),
        "a hostname change was not refused live: {err}"
    );
    let got = strakectl_ok(&[&["get", "machineconfig"], &mtls[..]].concat())?;
    ensure!(
        got.contains("hostname: e2e-machine"),
        "the refused change was kept: {got}"
    );

    let out = strakectl_ok(&[&["reboot"], &mtls[..]].concat())?;
    ensure!(out.contains("e2e-machine is rebooting"), "reboot: {out}");
    vm.wait_exit("the node to reboot on request", Duration::from_secs(90))?;
    Ok(())
}
