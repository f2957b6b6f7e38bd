//! The boot forms the build makes, each booted in QEMU (TCG) one after the other:
//! - the hybrid ISO, by BIOS (isolinux) and by UEFI (OVMF, systemd-boot, the UKI), live into
//!   maintenance mode; under UEFI, a config naming a blank disk installs Strake on it (ESP copied
//!   from the ISO, STATE) and the machine, the ISO still attached, boots the disk into a one-node
//!   cluster;
//! - the PXE bundle from QEMU's TFTP server: the UKI by OVMF's PXE, and the iPXE script (kernel
//!   and initramfs) by the NIC's iPXE under BIOS, each into maintenance mode;
//! - the qcow2 disk (GPT: an ESP with systemd-boot and the UKI in slot A, and a STATE partition)
//!   under OVMF into maintenance mode, with STATE found by its label and grown to its partition;
//!   a config applied over the machine API is kept on that STATE, the node reboots into a
//!   one-node cluster, and a pod runs;
//! - upgrades of that node over the machine API: a truncated image refused, a good one written
//!   to slot b, booted once and blessed, and a broken one (its kernel panics) rolled back to b
//!   with the cluster intact.
//!
//! Prints the measured times from QEMU start.
//!
//! Needs the image built by `scripts/test.sh` (or `STRAKE_IMAGE_DIR`), qemu-system-x86_64, OVMF,
//! docker-registry, busybox-static and kubectl 1.32. Any missing prerequisite fails the test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use strake_e2e::{
    Registry, bootstrap_admin, image_dir, kubectl, kubectl_path, kubectl_with_input, on_failure,
    poll, push_busybox, wait_for_fingerprint,
};
use strake_machineapi::{ApplyMode, Client, Trust};
use strake_pki::BootstrapToken;
use strake_qemu::{Accel, NetBoot, Nic, PortForward, Uefi, Vm, VmConfig};

/// How long a boot may take to get through firmware and the kernel's own start.
const BOOT: Duration = Duration::from_secs(120);

#[test]
fn every_boot_form_boots() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let images = image_dir(&[
        "strake.qcow2",
        "strake.iso",
        "strake.efi",
        "vmlinuz",
        "initramfs.zst",
        "strake.ipxe",
    ])?;
    let qcow2 = images.join("strake.qcow2");
    let iso = images.join("strake.iso");
    kubectl_path()?;
    let registry = Registry::start()?;
    rt.block_on(push_busybox(registry.port, "e2e/busybox", "1"))?;
    let guest_registry = format!("10.0.2.2:{}", registry.port);

    let dir = strake_e2e::TempDir::new("strake-forms")?;
    println!(
        "ISO size: {:.1} MB",
        std::fs::metadata(&iso)?.len() as f64 / 1e6
    );
    // The ISO by BIOS: live into maintenance mode.
    let machine_port = strake_qemu::free_port();
    let mut vm = Vm::start_past_kernel(
        fw_vm(
            "e2e-iso-bios",
            None,
            Nic::user(forwards(machine_port, None)),
            vec![iso.clone()],
            dir.path(),
        ),
        BOOT,
    )?;
    let result = to_maintenance(&rt, &mut vm, machine_port).map(|took| {
        println!(
            "ISO by BIOS: maintenance mode's API up {:.1}s after QEMU start",
            took.as_secs_f64()
        );
    });
    on_failure(&vm, result)?;
    drop(vm);

    // PXE from QEMU's TFTP server: UEFI (OVMF's own PXE) boots the UKI, BIOS (the NIC's iPXE)
    // runs the bundle's script, which loads the kernel and initramfs.
    for (uefi, bootfile) in [(true, "strake.efi"), (false, "strake.ipxe")] {
        let name = if uefi { "e2e-pxe-uefi" } else { "e2e-pxe-bios" };
        let machine_port = strake_qemu::free_port();
        let nic = Nic::User {
            forwards: forwards(machine_port, None),
            netboot: Some(NetBoot {
                tftp_root: images.clone(),
                bootfile: bootfile.into(),
            }),
        };
        let firmware = if uefi {
            Some(Uefi::ovmf(dir.path().join(format!("{name}.vars.fd")))?)
        } else {
            None
        };
        let mut vm =
            Vm::start_past_kernel(fw_vm(name, firmware, nic, Vec::new(), dir.path()), BOOT)?;
        let result = to_maintenance(&rt, &mut vm, machine_port).map(|took| {
            println!(
                "PXE by {} ({bootfile}): maintenance mode's API up {:.1}s after QEMU start",
                if uefi { "UEFI" } else { "BIOS" },
                took.as_secs_f64()
            );
        });
        on_failure(&vm, result)?;
    }

    // The ISO by UEFI, with a blank disk before it in the boot order: maintenance mode, then an
    // install onto the disk, which boots by itself from then on.
    let blank = dir.path().join("installed.raw");
    std::fs::File::create(&blank)?.set_len(2 << 30)?;
    let vars = Uefi::ovmf(dir.path().join("iso-uefi.vars.fd"))?;
    let machine_port = strake_qemu::free_port();
    let api_port = strake_qemu::free_port();
    let installing = fw_vm(
        "e2e-iso-uefi",
        Some(vars),
        Nic::user(forwards(machine_port, Some(api_port))),
        vec![blank.clone(), iso.clone()],
        dir.path(),
    );
    let mut vm = Vm::start_past_kernel(installing.clone(), BOOT)?;
    let result = to_maintenance(&rt, &mut vm, machine_port).map(|took| {
        println!(
            "ISO by UEFI: maintenance mode's API up {:.1}s after QEMU start",
            took.as_secs_f64()
        );
    });
    on_failure(&vm, result)?;
    let token = BootstrapToken::generate();
    let config = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: e2e-installed\n  install:\n    disk: /dev/vda\ncluster:\n  name: installed\n  token: {token}\n"
    );
    apply_in_maintenance(
        &rt,
        &mut vm,
        machine_port,
        &config,
        "installed Strake on the disk",
    )?;
    drop(vm);
    let mut booted = installing.clone();
    booted.name = "e2e-iso-installed".into();
    let mut vm = Vm::start_past_kernel(booted, BOOT)?;
    let result = (|| -> anyhow::Result<()> {
        let kubeconfig = dir.path().join("installed.kubeconfig");
        let (_, api_ready) = bootstrap_admin(
            &rt,
            &mut vm,
            &format!("https://127.0.0.1:{api_port}"),
            &token,
            Duration::from_secs(180),
            "installed",
            &kubeconfig,
        )?;
        let console = vm.console();
        ensure!(
            console.contains("booted entry strake-a.efi"),
            "the installed disk's slot A did not boot"
        );
        ensure!(
            console.contains("STATE is /dev/vda2"),
            "the installed STATE was not used"
        );
        poll("the node Ready", Duration::from_secs(120), || {
            let out = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "node",
                    "e2e-installed",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            )
            .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
        })?;
        println!(
            "installed from the ISO: API ready {:.1}s after QEMU start, booting the disk",
            api_ready.as_secs_f64()
        );
        Ok(())
    })();
    on_failure(&vm, result)?;
    drop(vm);

    // The machine's own disk: a copy of the image, as a user would make.
    let disk = dir.path().join("node.qcow2");
    std::fs::copy(&qcow2, &disk).context("copying the qcow2 image")?;
    let api_port = strake_qemu::free_port();
    let machine_port = strake_qemu::free_port();
    let cfg = VmConfig {
        name: "e2e-qcow2".into(),
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        cmdline: String::new(),
        uefi: Some(Uefi::ovmf(dir.path().join("vars.fd"))?),
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
        state_dir: dir.path().to_path_buf(),
    };

    let mut vm = Vm::start_past_kernel(cfg.clone(), BOOT)?;
    let result = to_maintenance(&rt, &mut vm, machine_port).and_then(|took| {
        ensure!(
            vm.console().contains("STATE is /dev/vda2"),
            "the disk's STATE partition was not found and mounted"
        );
        println!(
            "qcow2 under UEFI: maintenance mode's API up {:.1}s after QEMU start",
            took.as_secs_f64()
        );
        Ok(())
    });
    on_failure(&vm, result)?;

    // The disk already has STATE: the config needs no install disk.
    let token = BootstrapToken::generate();
    let ca = strake_machineapi::generate_ca("disk")?;
    let admin = Client::new(
        &format!("127.0.0.1:{machine_port}"),
        &Trust::Ca {
            ca_pem: ca.crt.clone(),
            client: strake_machineapi::issue_client(
                &ca,
                "admin",
                strake_machineapi::Role::Admin,
                1,
            )?,
        },
    )?;
    let config = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: e2e-disk\n  ca:\n    crt: {}\n    key: {}\n  registries:\n    mirrors:\n      {guest_registry}:\n        endpoints: [\"http://{guest_registry}\"]\ncluster:\n  name: disk\n  token: {token}\n",
        serde_json::to_string(&ca.crt)?,
        serde_json::to_string(&ca.key)?,
    );
    apply_in_maintenance(
        &rt,
        &mut vm,
        machine_port,
        &config,
        "kept it on STATE (/dev/vda2)",
    )?;
    drop(vm);

    let mut again = cfg.clone();
    again.name = "e2e-qcow2-configured".into();
    let mut vm = Vm::start_past_kernel(again, BOOT)?;
    let kubeconfig = dir.path().join("kubeconfig");
    let result = (|| -> anyhow::Result<()> {
        let (_, api_ready) = bootstrap_admin(
            &rt,
            &mut vm,
            &format!("https://127.0.0.1:{api_port}"),
            &token,
            Duration::from_secs(180),
            "disk",
            &kubeconfig,
        )?;
        ensure!(
            vm.console()
                .contains("machine config from the machine API (apply-config)"),
            "the node did not boot the config kept on its disk"
        );
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {guest_registry}/e2e/busybox:1\n    command: [\"echo\", \"booted-from-disk\"]\n"
        );
        let out = kubectl_with_input(&kubeconfig, &["apply", "-f", "-"], pod.as_bytes())?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        poll("the pod's output", Duration::from_secs(120), || {
            let out = kubectl(&kubeconfig, &["logs", "hello"]).ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "booted-from-disk").then_some(())
        })?;
        println!(
            "qcow2 under UEFI (TCG): API ready {:.1}s after QEMU start (configured boot)",
            api_ready.as_secs_f64()
        );
        let v = rt.block_on(admin.version())?;
        ensure!(v.slot.as_deref() == Some("a") && !v.on_trial, "{v:?}");
        Ok(())
    })();
    on_failure(&vm, result)?;

    // Upgrade bad input: a truncated image is refused before anything is written.
    let uki = std::fs::read(images.join("strake.efi"))?;
    let result = (|| -> anyhow::Result<()> {
        let cut = uki[..uki.len() / 2].to_vec();
        match rt.block_on(admin.upgrade(cut)) {
            Err(strake_machineapi::ClientError::Api { status: 400, body }) => {
                ensure!(body.message.contains("truncated"), "{}", body.message)
            }
            other => anyhow::bail!("a truncated image was not refused: {other:?}"),
        }
        // A good upgrade: written to slot b, booted once, blessed when healthy.
        let started = Instant::now();
        let m = rt.block_on(admin.upgrade(uki.clone()))?;
        ensure!(m.message.contains("to slot b"), "{}", m.message);
        vm.wait_exit("the node to reboot into slot b", Duration::from_secs(60))?;
        let mut next = cfg.clone();
        next.name = "e2e-qcow2-slot-b".into();
        vm = Vm::start(next)?;
        let blessed = poll("slot b blessed", Duration::from_secs(240), || {
            let v = rt.block_on(admin.version()).ok()?;
            (v.slot.as_deref() == Some("b") && !v.on_trial).then_some(())
        });
        blessed?;
        println!(
            "upgrade to slot b: {:.1}s from the command to blessed",
            started.elapsed().as_secs_f64()
        );
        ensure!(
            vm.console().contains("blessed it and made it the default"),
            "no blessing on the console"
        );
        let pods = kubectl(&kubeconfig, &["get", "pod", "hello"])?;
        ensure!(
            pods.status.success(),
            "the cluster did not survive the upgrade"
        );
        Ok(())
    })();
    on_failure(&vm, result)?;

    // A broken image: its kernel finds no init and panics. The one trial boot fails, and the
    // next boot is the blessed slot b again, cluster intact.
    let broken = dir.path().join("broken.efi");
    strake_image::forms::build_uki(
        &images.join("vmlinuz"),
        &images.join("initramfs.zst"),
        "NAME=Strake\nID=strake\nVERSION_ID=broken\n",
        "console=ttyS0 panic=-1 rdinit=/nonexistent",
        1,
        &broken,
    )?;
    let result = (|| -> anyhow::Result<()> {
        let m = rt.block_on(admin.upgrade(std::fs::read(&broken)?))?;
        ensure!(m.message.contains("to slot a"), "{}", m.message);
        vm.wait_exit(
            "the node to reboot into the broken slot",
            Duration::from_secs(60),
        )?;
        let mut trial = cfg.clone();
        trial.name = "e2e-qcow2-broken".into();
        vm = Vm::start(trial)?;
        vm.wait_exit("the broken slot to panic", Duration::from_secs(120))?;
        ensure!(
            vm.console().contains("Kernel panic"),
            "the broken slot did not fail the way it was built to"
        );
        let mut back = cfg.clone();
        back.name = "e2e-qcow2-rollback".into();
        vm = Vm::start_past_kernel(back, BOOT)?;
        let v = poll("the node back on slot b", Duration::from_secs(240), || {
            rt.block_on(admin.version()).ok()
        })?;
        ensure!(
            v.slot.as_deref() == Some("b") && !v.on_trial,
            "after the rollback: {v:?}"
        );
        poll(
            "the cluster after the rollback",
            Duration::from_secs(120),
            || {
                kubectl(&kubeconfig, &["get", "pod", "hello"])
                    .ok()
                    .filter(|o| o.status.success())
            },
        )?;
        Ok(())
    })();
    on_failure(&vm, result)
}

/// Applies `config` to a node in maintenance mode, expects `said` in the answer, and waits for
/// the node to reboot into it (QEMU exits: `-no-reboot`).
fn apply_in_maintenance(
    rt: &tokio::runtime::Runtime,
    vm: &mut Vm,
    machine_port: u16,
    config: &str,
    said: &str,
) -> anyhow::Result<()> {
    let client = Client::new(
        &format!("127.0.0.1:{machine_port}"),
        &Trust::Insecure { fingerprint: None },
    )?;
    let result = (|| -> anyhow::Result<()> {
        let r = rt.block_on(client.apply_config(config, ApplyMode::Auto, false))?;
        ensure!(r.message.contains(said), "{}", r.message);
        vm.wait_exit(
            "the node to reboot into its config",
            Duration::from_secs(60),
        )?;
        Ok(())
    })();
    on_failure(vm, result)
}

/// A VM booting `disks` by firmware (BIOS, or UEFI with `uefi`), with user-mode networking.
fn fw_vm(
    name: &str,
    uefi: Option<Uefi>,
    nic: Nic,
    disks: Vec<PathBuf>,
    state_dir: &std::path::Path,
) -> VmConfig {
    VmConfig {
        name: name.into(),
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        cmdline: String::new(),
        uefi,
        memory_mib: 2048,
        cpus: 2,
        accel: Accel::from_env(),
        nics: vec![nic],
        disks,
        fw_cfg: Vec::new(),
        state_dir: state_dir.to_path_buf(),
    }
}

/// Forwards of the machine API and, optionally, the Kubernetes API.
fn forwards(machine_port: u16, api_port: Option<u16>) -> Vec<PortForward> {
    let mut forwards = vec![PortForward {
        host: machine_port,
        guest: strake_machineapi::PORT,
    }];
    if let Some(port) = api_port {
        forwards.push(PortForward {
            host: port,
            guest: 6443,
        });
    }
    forwards
}

/// Waits for maintenance mode, checks it over the machine API with the console's fingerprint,
/// and returns how long after QEMU started the API answered.
fn to_maintenance(
    rt: &tokio::runtime::Runtime,
    vm: &mut Vm,
    machine_port: u16,
) -> anyhow::Result<Duration> {
    let (fingerprint, _) = wait_for_fingerprint(vm, Duration::from_secs(120))?;
    let client = Client::new(
        &format!("127.0.0.1:{machine_port}"),
        &Trust::Insecure {
            fingerprint: Some(fingerprint),
        },
    )?;
    let version = poll("the machine API", Duration::from_secs(60), || {
        rt.block_on(client.version()).ok()
    })?;
    ensure!(version.maintenance, "not in maintenance mode: {version:?}");
    Ok(vm.uptime())
}
