use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::config::Role;
use crate::fake::FakeKernel;
use crate::sequence::run_sequence;
use crate::supervisor::RestartPolicy;

const MODULES_DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/net/vxlan.ko:
";

fn root_with(cmdline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path(), cmdline);
    dir
}

/// The files a boot reads, under `p`.
fn populate(p: &std::path::Path, cmdline: &str) {
    std::fs::create_dir_all(p.join("proc")).expect("proc");
    std::fs::write(p.join("proc/cmdline"), cmdline).expect("cmdline");
    std::fs::create_dir_all(p.join("sys/fs/cgroup")).expect("cgroup");
    std::fs::write(
        p.join("sys/fs/cgroup/cgroup.controllers"),
        "cpu memory pids\n",
    )
    .expect("controllers");
    let mods = p.join("lib/modules/6.1.0-test");
    std::fs::create_dir_all(&mods).expect("modules");
    std::fs::write(mods.join("modules.dep"), MODULES_DEP).expect("dep");
}

fn ctx_for(root: &std::path::Path, fake: &FakeKernel) -> BootCtx {
    let net = fake.clone();
    let seams = Seams {
        root_switcher: Box::new(fake.clone()),
        mounter: Box::new(fake.clone()),
        modules: Box::new(fake.clone()),
        host: Box::new(fake.clone()),
        block: Box::new(fake.clone()),
        net_factory: Box::new(move || Ok(Box::new(net.clone()) as Box<dyn NetConfigurator>)),
    };
    let make = |cfg: &BootConfig| {
        let mut v = vec![ServiceSpec::new(
            "machined",
            &["/bin/strake", "machined"],
            RestartPolicy::Always,
        )];
        if cfg.role == Role::Controlplane && !cfg.maintenance {
            v.push(ServiceSpec::new(
                "controlplane",
                &["/bin/strake", "controlplane"],
                RestartPolicy::Always,
            ));
        }
        v
    };
    let mut ctx = BootCtx::new(root.to_owned(), seams, Box::new(make));
    ctx.use_dev_console = false;
    ctx.dhcp_policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    ctx
}

#[test]
fn full_boot_against_the_fake_kernel() {
    let root = root_with(
        "console=ttyS0 strake.role=worker strake.modules=vxlan strake.token=t0k strake.bogus=1\n",
    );
    let fake = FakeKernel::with_nic();
    fake.state().root_is_initramfs = true;
    fake.state().links_hidden_for = 2; // virtio_net still probing
    let mut ctx = ctx_for(root.path(), &fake);

    let reports = run_sequence(&phases(), &mut ctx).expect("boot");
    let names: Vec<&str> = reports.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [
            "switch-root",
            "mounts",
            "console-log",
            "modules",
            "machine-config",
            "state",
            "hostname",
            "network",
            "services"
        ]
    );

    let calls = fake.state().calls.clone();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("no call {c}: {calls:#?}"))
    };
    assert_eq!(calls[0], "switch-root");
    assert!(pos("mount /proc") < pos("mount /sys/fs/cgroup"));
    assert!(
        pos("load virtio_ring") < pos("load virtio") && pos("load virtio") < pos("load virtio_net")
    );
    assert!(
        pos("load vxlan") > pos("load virtio_net"),
        "extra modules after the defaults"
    );
    assert!(pos("load virtio_pci") < pos("hostname strake-123456"));
    assert!(pos("hostname strake-123456") < pos("up 1"));
    assert_eq!(
        calls[pos("up 1")..],
        [
            "up 1",
            "addr 1 127.0.0.1/8",
            "up 2",
            "dhcp eth0",
            "addr 2 10.0.2.15/24",
            "route 2 via 10.0.2.2"
        ]
    );

    let p = root.path();
    let boot_json = p.join("run/strake/boot.json");
    assert_eq!(
        std::fs::metadata(&boot_json)
            .expect("boot.json")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // No disk: the node runs on tmpfs and says so in state.json.
    let state = std::fs::read_to_string(p.join("run/strake/state.json")).expect("state.json");
    assert!(state.contains("\"device\": null"), "{state}");
    let cfg = BootConfig::load(&boot_json).expect("load");
    assert_eq!(
        (cfg.role, cfg.token.as_deref()),
        (Role::Worker, Some("t0k"))
    );
    assert_eq!(
        std::fs::read_to_string(p.join("etc/hostname")).expect("hostname"),
        "strake-123456\n"
    );
    assert!(
        std::fs::read_to_string(p.join("etc/resolv.conf"))
            .expect("resolv")
            .contains("nameserver 10.0.2.3")
    );
    assert_eq!(
        std::fs::read_to_string(p.join("sys/fs/cgroup/cgroup.subtree_control")).expect("ctl"),
        "+cpu +memory +pids"
    );
    assert!(p.join("run/strake/log/init.log").exists());
    assert_eq!(
        ctx.services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["machined"]
    );
    assert!(
        ctx.net.is_none(),
        "the netlink connection is closed after the network phase"
    );
}

#[test]
fn static_ip_and_configured_hostname_skip_dhcp() {
    let root = root_with("strake.hostname=cp1 strake.ip=192.168.9.4/24:192.168.9.1:eth0:9.9.9.9");
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    let calls = fake.state().calls.clone();
    assert!(
        !calls.iter().any(|c| c == "switch-root"),
        "not an initramfs: {calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("dhcp")), "{calls:?}");
    assert!(calls.contains(&"hostname cp1".to_string()));
    assert!(calls.contains(&"addr 2 192.168.9.4/24".to_string()));
    assert!(calls.contains(&"route 2 via 192.168.9.1".to_string()));
    // Nothing names the node's role or cluster: maintenance mode, reachable at its static
    // address before any DHCP.
    assert!(ctx.config.maintenance);
    assert_eq!(ctx.services.len(), 1);
}

#[test]
fn first_failure_stops_the_sequence_with_its_name() {
    let root = root_with("");
    let fake = FakeKernel::with_nic();
    fake.state()
        .fail_mounts
        .insert("/sys/fs/cgroup".into(), Errno::ENODEV);
    let mut ctx = ctx_for(root.path(), &fake);
    let err = run_sequence(&phases(), &mut ctx).expect_err("must fail");
    assert_eq!((err.phase, err.task), ("mounts", "base-mounts"));
    assert_eq!(
        err.to_string(),
        "phase `mounts` failed in task `base-mounts`: mounting cgroup2 on /sys/fs/cgroup: ENODEV: No such device"
    );
    assert!(
        !fake.state().calls.iter().any(|c| c.starts_with("load")),
        "later phases must not run"
    );
}

#[test]
fn a_missing_nic_is_a_clear_network_error() {
    let root = root_with("strake.hostname=x");
    let fake = FakeKernel::with_nic();
    fake.state().links.retain(|l| l.loopback);
    let mut ctx = ctx_for(root.path(), &fake);
    ctx.nic_timeout = Duration::from_millis(50);
    let err = run_sequence(&phases(), &mut ctx).expect_err("must fail");
    assert_eq!((err.phase, err.task), ("network", "interface"));
    assert!(
        err.to_string().contains("no ethernet interface appeared"),
        "{err}"
    );
}

#[test]
fn duplicate_service_names_are_refused() {
    let root = root_with("");
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    ctx.make_services = Box::new(|_| {
        vec![
            ServiceSpec::new("a", &["/bin/strake"], RestartPolicy::Always),
            ServiceSpec::new("a", &["/bin/strake"], RestartPolicy::Always),
        ]
    });
    let err = run_sequence(&phases(), &mut ctx).expect_err("dup");
    assert_eq!(err.phase, "services");
}

fn inline_config(yaml: &str) -> String {
    use base64::Engine as _;
    format!(
        "strake.config={}",
        base64::engine::general_purpose::STANDARD.encode(yaml)
    )
}

#[test]
fn an_inline_machine_config_wins_over_the_command_line_keys() {
    let yaml = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  hostname: from-config\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [192.168.9.4/24]\n        routes: [{network: 0.0.0.0/0, gateway: 192.168.9.1}]\ncluster:\n  name: lab\n  endpoint: https://192.168.9.2:6443\n  token: abcdef.0123456789abcdef\n  caPin: sha256:0000000000000000000000000000000000000000000000000000000000000000\n";
    let root = root_with(&format!(
        "strake.hostname=from-cmdline strake.role=controlplane {}",
        inline_config(yaml)
    ));
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    let calls = fake.state().calls.clone();
    assert!(
        calls.contains(&"hostname from-config".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"addr 2 192.168.9.4/24".to_string()));
    assert!(!calls.iter().any(|c| c.starts_with("dhcp")), "{calls:?}");
    let cfg = BootConfig::load(root.path().join("run/strake/boot.json")).expect("boot.json");
    assert_eq!(cfg.role, Role::Worker);
    assert_eq!(cfg.api_endpoint.as_deref(), Some("192.168.9.2:6443"));
    assert_eq!(cfg.token.as_deref(), Some("abcdef.0123456789abcdef"));
    // The worker role's services, not the control plane's.
    assert_eq!(ctx.services.len(), 1);
}

#[test]
fn an_invalid_machine_config_means_maintenance_with_every_error() {
    let yaml = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  hostname: -bad-\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [192.168.9.400/24]\ncluster:\n  name: lab\n";
    // Even with keys on the command line that would otherwise make it a node.
    let root = root_with(&format!(
        "strake.role=controlplane strake.token=abc.def {}",
        inline_config(yaml)
    ));
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("the boot goes on, into maintenance mode");
    assert!(ctx.config.maintenance);
    assert!(ctx.machine.is_none());
    let text = ctx.config_problem.clone().unwrap_or_default();
    for path in [
        "machine.hostname",
        "machine.network.interfaces[0].addresses[0]",
        "cluster",
    ] {
        assert!(text.contains(path), "{path} missing from: {text}");
    }
    assert_eq!(ctx.services.len(), 1, "only machined: {:?}", ctx.services);
}

#[test]
fn a_config_drive_is_read_after_the_command_line_and_before_fw_cfg() {
    let yaml = |h: &str| {
        format!(
            "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: {h}\ncluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n"
        )
    };
    let root = root_with("");
    let p = root.path();
    std::fs::create_dir_all(p.join("sys/class/block/vdb")).expect("sysfs");
    std::fs::create_dir_all(p.join("dev")).expect("dev");
    std::fs::write(
        p.join("dev/vdb"),
        crate::cfgdrive::tests::fat16("STRAKECFG"),
    )
    .expect("drive");
    let mounted = p.join(crate::cfgdrive::MOUNT_AT.trim_start_matches('/'));
    std::fs::create_dir_all(&mounted).expect("mount point");
    std::fs::write(mounted.join("machine.yaml"), yaml("from-drive")).expect("config");
    let raw = p.join("sys/firmware/qemu_fw_cfg/by_name/opt/strake/config/raw");
    std::fs::create_dir_all(raw.parent().expect("parent")).expect("fw_cfg dir");
    std::fs::write(&raw, yaml("from-fw-cfg")).expect("fw_cfg");
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(p, &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert_eq!(
        ctx.machine.as_ref().map(|m| m.source),
        Some(Source::ConfigDrive)
    );
    assert!(
        fake.state()
            .calls
            .contains(&"hostname from-drive".to_string())
    );

    // Bad YAML on the drive: maintenance mode, with the decoder's message.
    std::fs::write(mounted.join("machine.yaml"), "machine: [").expect("config");
    let mut ctx = ctx_for(p, &FakeKernel::with_nic());
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert!(ctx.config.maintenance);
    assert!(
        ctx.config_problem
            .as_deref()
            .unwrap_or_default()
            .contains("config drive"),
        "{:?}",
        ctx.config_problem
    );

    // The command line's config wins over the drive.
    populate(p, &inline_config(&yaml("from-cmdline")));
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(p, &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert!(
        fake.state()
            .calls
            .contains(&"hostname from-cmdline".to_string())
    );
}

#[test]
fn a_machine_config_from_fw_cfg_applies_and_loads_its_modules() {
    let yaml = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: from-fw-cfg\n  kernel:\n    modules:\n      - name: vxlan\ncluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n  caPin: sha256:0000000000000000000000000000000000000000000000000000000000000000\n";
    let root = root_with("strake.hostname=from-cmdline");
    let raw = root
        .path()
        .join("sys/firmware/qemu_fw_cfg/by_name/opt/strake/config/raw");
    std::fs::create_dir_all(raw.parent().expect("parent")).expect("fw_cfg dir");
    std::fs::write(&raw, yaml).expect("fw_cfg");
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    let calls = fake.state().calls.clone();
    assert!(
        calls.contains(&"hostname from-fw-cfg".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"load vxlan".to_string()), "{calls:?}");
    assert_eq!(
        ctx.machine.as_ref().map(|m| m.source),
        Some(machine::Source::FwCfg)
    );
}

#[test]
fn time_servers_from_the_machine_config_step_the_clock() {
    // An SNTP server on loopback one hour ahead, answering one request.
    let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    let answer = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).expect("request");
        let ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
        let r = crate::ntp::reply_to(&buf[..n], ahead, 1);
        server.send_to(&r, from).expect("reply");
    });
    let yaml = format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  time:\n    servers: [\"not-an-address\", \"127.0.0.1:{port}\"]\ncluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n"
    );
    let root = root_with(&inline_config(&yaml));
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    answer.join().expect("server");
    let calls = fake.state().calls.clone();
    let set = calls
        .iter()
        .find_map(|c| c.strip_prefix("set-time "))
        .unwrap_or_else(|| panic!("no set-time: {calls:?}"));
    let secs: u64 = set.parse().expect("secs");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("epoch")
        .as_secs();
    assert!(secs > now + 3000 && secs < now + 4200, "{secs} vs {now}");
}

const NODE_CONFIG: &str = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  hostname: installed\n  install:\n    disk: /dev/vda\ncluster:\n  name: lab\n  endpoint: https://10.0.0.1:6443\n  token: abcdef.0123456789abcdef\n  caPin: sha256:0000000000000000000000000000000000000000000000000000000000000000\n";

fn read(root: &std::path::Path, abs: &str) -> String {
    std::fs::read_to_string(crate::mounts::host_path(root, abs)).unwrap_or_default()
}

#[test]
fn no_config_and_no_node_keys_means_maintenance() {
    let root = root_with("strake.hostname=waiting strake.registry.insecure=10.0.2.2:5000");
    let fake = FakeKernel::with_nic();
    let mut ctx = ctx_for(root.path(), &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert!(ctx.config.maintenance);
    let cfg = BootConfig::load(root.path().join("run/strake/boot.json")).expect("boot.json");
    assert!(cfg.maintenance, "the services see it");
    // The network still comes up: the machine API must be reachable.
    assert!(fake.state().calls.iter().any(|c| c.starts_with("dhcp")));

    // A command line that names the node's role or cluster is enough, as it always was.
    let root = root_with("strake.token=abcdef.0123456789abcdef");
    let mut ctx = ctx_for(root.path(), &FakeKernel::with_nic());
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert!(!ctx.config.maintenance);
}

#[test]
fn a_handed_over_config_is_installed_on_the_disk_it_names_and_the_next_boot_runs_it() {
    let dir = crate::state::tests::machine();
    let root = dir.path();
    populate(root, "strake.hostname=waiting");
    let fake = FakeKernel::with_nic();
    let sectors = 1048576 - 2048 - 33 - 1;
    crate::state::tests::kernel_shows_partition(&fake, root, sectors);
    let mut ctx = ctx_for(root, &fake);
    run_sequence(&phases(), &mut ctx).expect("boot");
    assert!(
        ctx.config.maintenance,
        "a blank disk nobody named is not ours"
    );

    // Nothing handed over, or a bad config: refused, still in maintenance, disk untouched.
    let err = install_handoff(&mut ctx).expect_err("nothing handed over");
    assert!(err.to_string().contains("no config at"), "{err}");
    crate::machine::store_at(root, crate::machine::HANDOFF, "machine: [").expect("handoff");
    let err = install_handoff(&mut ctx).expect_err("bad yaml");
    assert!(err.to_string().contains("not valid"), "{err}");
    // Without a disk to keep it on, the config would not survive the reboot.
    let diskless = NODE_CONFIG.replace("  install:\n    disk: /dev/vda\n", "");
    crate::machine::store_at(root, crate::machine::HANDOFF, &diskless).expect("handoff");
    let err = install_handoff(&mut ctx).expect_err("no disk");
    assert!(err.to_string().contains("no STATE partition"), "{err}");
    assert!(ctx.config.maintenance && ctx.machine.is_none());
    assert!(!fake.state().calls.iter().any(|c| c.starts_with("zero ")));
    assert!(
        !crate::mounts::host_path(root, crate::machine::IN_FORCE).exists(),
        "a refused config is not in force"
    );

    crate::machine::store_at(root, crate::machine::HANDOFF, NODE_CONFIG).expect("handoff");
    let message = install_handoff(&mut ctx).expect("install");
    assert!(
        message.contains("partitioned the disk, formatted STATE") && message.contains("/dev/vda1"),
        "{message}"
    );
    assert_eq!(read(root, crate::machine::APPLIED), NODE_CONFIG);
    assert_eq!(read(root, crate::machine::IN_FORCE), NODE_CONFIG);

    // The next boot: STATE by its label, the applied config in force, no maintenance.
    populate(root, "strake.hostname=waiting");
    let next = FakeKernel::with_nic();
    let mut ctx = ctx_for(root, &next);
    run_sequence(&phases(), &mut ctx).expect("second boot");
    assert!(!ctx.config.maintenance);
    assert_eq!(ctx.machine.as_ref().map(|m| m.source), Some(Source::Api));
    assert_eq!(ctx.config.role, Role::Worker);
    assert!(
        next.state()
            .calls
            .contains(&"hostname installed".to_string())
    );
    assert!(
        !next.state().calls.iter().any(|c| c.starts_with("zero ")),
        "nothing formatted again"
    );
}

#[test]
fn an_applied_config_wins_over_the_boot_sources_and_a_staged_one_takes_over_at_boot() {
    let dir = crate::state::tests::machine();
    let root = dir.path();
    let fake = FakeKernel::with_nic();
    crate::state::tests::kernel_shows_partition(&fake, root, 1048576 - 2048 - 33 - 1);
    let given = NODE_CONFIG.replace("hostname: installed", "hostname: from-cmdline");
    populate(root, &inline_config(&given));
    let mut ctx = ctx_for(root, &fake);
    run_sequence(&phases(), &mut ctx).expect("first boot");
    assert_eq!(
        ctx.machine.as_ref().map(|m| m.source),
        Some(Source::CommandLine)
    );
    assert_eq!(read(root, crate::machine::STORED), given);

    // The machine API applied one (it writes APPLIED): it wins over the command line's.
    let applied = NODE_CONFIG.replace("hostname: installed", "hostname: from-api");
    crate::machine::store_at(root, crate::machine::APPLIED, &applied).expect("applied");
    let second = FakeKernel::with_nic();
    let mut ctx = ctx_for(root, &second);
    run_sequence(&phases(), &mut ctx).expect("second boot");
    assert_eq!(ctx.machine.as_ref().map(|m| m.source), Some(Source::Api));
    assert!(
        second
            .state()
            .calls
            .contains(&"hostname from-api".to_string())
    );
    assert_eq!(read(root, crate::machine::IN_FORCE), applied);

    // Staged: the next boot promotes it.
    let staged = NODE_CONFIG.replace("hostname: installed", "hostname: staged");
    crate::machine::store_at(root, crate::machine::STAGED, &staged).expect("staged");
    let third = FakeKernel::with_nic();
    let mut ctx = ctx_for(root, &third);
    run_sequence(&phases(), &mut ctx).expect("third boot");
    assert!(third.state().calls.contains(&"hostname staged".to_string()));
    assert_eq!(read(root, crate::machine::APPLIED), staged);
    assert!(!crate::mounts::host_path(root, crate::machine::STAGED).exists());
}
