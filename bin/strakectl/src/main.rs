//! `strakectl`: the operator's CLI. Builds images, boots local clusters in QEMU, and turns a
//! bootstrap token into an admin kubeconfig.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod health;
mod machine;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use strake_pki::BootstrapToken;
use strake_qemu::{Accel, Nic, PortForward, Vm, VmConfig};

#[derive(Parser)]
#[command(
    name = "strakectl",
    version,
    about = "Operate Strake nodes and clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build boot artifacts.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Local clusters in QEMU.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Check a machine config (strake.dev/v1alpha1 MachineConfig) and list every problem in
    /// it, each with its field path; exits non-zero if there is any.
    Validate {
        /// The YAML file ("-" reads standard input).
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate a machine CA, a control plane machine config carrying it, and an admin client
    /// config (strakeconfig) for the machine API.
    Gen {
        #[command(subcommand)]
        cmd: GenCmd,
    },
    /// Send a machine config to nodes: installs it on a node in maintenance mode (--insecure),
    /// or applies it to a configured one.
    ApplyConfig {
        /// The YAML file ("-" reads standard input).
        #[arg(long, short)]
        file: PathBuf,
        /// auto (live when it can be, else reboot), no-reboot, reboot or staged (next boot).
        #[arg(long, default_value = "auto", value_parser = parse_mode)]
        mode: strake_machineapi::ApplyMode,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The nodes' Strake version, and whether they are in maintenance mode.
    Version {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Read machine resources.
    Get {
        #[command(subcommand)]
        cmd: GetCmd,
    },
    /// Reboot the nodes.
    Reboot {
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Upgrade nodes to a UKI (build/image/strake.efi): it is checked, written to the slot not
    /// running, and booted once; the node keeps it if it comes up healthy, and boots the old
    /// slot again otherwise.
    Upgrade {
        #[arg(long)]
        image: PathBuf,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The services init supervises on the node, and their state.
    Services {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Whether the cluster is healthy: every node's machine API (configured, not on a trial
    /// slot, every service running), the Kubernetes API, every node Ready, and the pods in
    /// kube-system. Fails if a check fails.
    Health {
        /// The Kubernetes API's URL, when the node's own address is not reachable from here.
        #[arg(long)]
        server: Option<String>,
        /// Keep checking until every check passes or this much time has gone (e.g. 5m).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait_timeout: Duration,
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The nodes' disks and partitions. Works in maintenance mode (with --insecure) too, to
    /// pick the install disk.
    Disks {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The addresses on the nodes' interfaces.
    Addresses {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The nodes' TCP and UDP sockets, with the process holding each.
    Netstat {
        /// Only listening TCP sockets and unconnected UDP ones.
        #[arg(long, short)]
        listening: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The nodes' routing tables.
    Routes {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Admin credentials for the cluster from a control plane, merged into a kubeconfig
    /// ($KUBECONFIG or ~/.kube/config unless a path is given) as the current context.
    Kubeconfig {
        path: Option<PathBuf>,
        /// The API server URL to put in it, when the node's own address is not reachable from
        /// here (a port forward, a load balancer).
        #[arg(long)]
        server: Option<String>,
        /// Replace the file instead of merging into it.
        #[arg(long)]
        force: bool,
        /// Fetch the credentials from the API server at --server with the cluster's bootstrap
        /// token instead of through the machine API.
        #[arg(
            long,
            env = "STRAKE_TOKEN",
            hide_env_values = true,
            requires = "server"
        )]
        token: Option<String>,
        /// With --token: the name of the cluster, user and context.
        #[arg(long, default_value = "strake", requires = "token")]
        cluster_name: String,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The cluster store (on control planes): its members, removing one, a snapshot.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Act on one service.
    Service {
        name: String,
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Wipe the nodes' STATE (the store, the PKI, the machine config, images, volumes, logs)
    /// and reboot them: they come back in maintenance mode.
    Reset {
        /// A control plane leaves the cluster store first (refused, and nothing wiped, if the
        /// members left would lack a quorum that answers).
        #[arg(long)]
        graceful: bool,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// A service's lines of the node's console log (machined, controlplane, agent; all without
    /// a name).
    Logs {
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The node's kernel log.
    Dmesg {
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Power the nodes off.
    Shutdown {
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// The client config: contexts and endpoints.
    Config {
        #[command(subcommand)]
        cmd: machine::ConfigCmd,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// The store's members as each node asked sees them: id, peer address, voter or
    /// learner, and which one leads.
    Members {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Removes a member by its id (`store members` lists them); refused, with the reason, if
    /// the voters left would not have a quorum that answers.
    Remove {
        id: u64,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Writes a snapshot of the store, taken while it serves and holding every acknowledged
    /// write, to a file.
    Snapshot {
        file: PathBuf,
        #[command(flatten)]
        conn: machine::Conn,
    },
    /// Starts a new one-member cluster on a fresh control plane from a snapshot: its objects,
    /// keys and CA. What the node held is kept aside on its STATE. Then boot the other
    /// control planes with `cluster.endpoint` naming it (or the virtual IP): they join it.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        conn: machine::Conn,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Stop it; init starts it again.
    Restart {
        #[command(flatten)]
        conn: machine::Conn,
    },
}

#[derive(Subcommand)]
enum GenCmd {
    /// Write controlplane.yaml and strakeconfig.
    Config(machine::GenArgs),
}

#[derive(Subcommand)]
enum GetCmd {
    /// The machine config in force (secrets redacted unless the client is an admin).
    Machineconfig {
        #[arg(long, short, value_enum, default_value_t)]
        output: machine::Output,
        #[command(flatten)]
        conn: machine::Conn,
    },
}

fn parse_mode(s: &str) -> Result<strake_machineapi::ApplyMode, String> {
    strake_machineapi::ApplyMode::parse(s)
        .ok_or_else(|| format!("`{s}`: use auto, no-reboot, reboot or staged"))
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build vmlinuz + initramfs from the pinned kernel and a static strake binary, and the boot
    /// forms made of them: a UKI, and a GPT disk image (raw and qcow2) that boots it with
    /// systemd-boot under UEFI.
    Build {
        #[arg(long)]
        strake: PathBuf,
        #[arg(long, default_value = "build/image")]
        out: PathBuf,
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Boot a one-node cluster in QEMU (TCG; STRAKE_QEMU_ACCEL=kvm to opt into KVM) and write a kubeconfig.
    Up(UpArgs),
    /// Power the cluster's VM off.
    Down {
        #[arg(long, default_value = ".cache/cluster")]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[arg(long, default_value = "build/image")]
    image: PathBuf,
    /// The VM's console log, token, kubeconfig and STATE disk live here.
    #[arg(long, default_value = ".cache/cluster")]
    state_dir: PathBuf,
    /// Host port (on 127.0.0.1) forwarded to the API server.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Host port (on 127.0.0.1) forwarded to the machine API.
    #[arg(long, default_value_t = strake_machineapi::PORT)]
    machine_api_port: u16,
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Registries the node may reach over plain HTTP (host:port as the guest sees it, e.g. 10.0.2.2:5000).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Size of the STATE disk (`<state-dir>/state.img`, a sparse file made on first use).
    /// The cluster lives on it: `cluster down` then `cluster up` finds it again. Delete the
    /// file to start over.
    #[arg(long, default_value = "8G")]
    disk_size: String,
    /// No STATE disk: everything is on tmpfs and is gone when the VM stops.
    #[arg(long)]
    ephemeral: bool,
}

const VM_NAME: &str = "strake-0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Image {
            cmd: ImageCmd::Build { strake, out, cache },
        } => {
            let a = strake_image::build(&strake_image::BuildOptions {
                strake_binary: strake,
                cache_dir: cache,
                out_dir: out,
                extra_modules: vec![],
            })?;
            println!(
                "kernel {}\n  {}\n  {}\n  {} (UKI)\n  {} (GPT disk: ESP with systemd-boot and slot A, STATE)\n  {}\n  {} (hybrid ISO, BIOS and UEFI, live)",
                a.kernel_version,
                a.vmlinuz.display(),
                a.initramfs.display(),
                a.uki.display(),
                a.raw.display(),
                a.qcow2.display(),
                a.iso.display()
            );
            Ok(())
        }
        Cmd::Cluster {
            cmd: ClusterCmd::Up(args),
        } => cluster_up(&args),
        Cmd::Validate { config } => validate(&config),
        Cmd::Gen {
            cmd: GenCmd::Config(args),
        } => machine::gen_config(&args),
        Cmd::ApplyConfig {
            file,
            mode,
            dry_run,
            conn,
        } => machine::apply_config(&conn, &file, mode, dry_run),
        Cmd::Version { output, conn } => machine::version(&conn, output),
        Cmd::Get {
            cmd: GetCmd::Machineconfig { output, conn },
        } => machine::get_machineconfig(&conn, output),
        Cmd::Reboot { conn } => machine::power(&conn, true),
        Cmd::Shutdown { conn } => machine::power(&conn, false),
        Cmd::Upgrade { image, conn } => machine::upgrade(&conn, &image),
        Cmd::Reset { graceful, conn } => machine::reset(&conn, graceful),
        Cmd::Store {
            action: StoreAction::Members { output, conn },
        } => machine::store_members(&conn, output),
        Cmd::Store {
            action: StoreAction::Remove { id, conn },
        } => machine::store_remove(&conn, id),
        Cmd::Store {
            action: StoreAction::Snapshot { file, conn },
        } => machine::store_snapshot(&conn, &file),
        Cmd::Store {
            action: StoreAction::Restore { file, conn },
        } => machine::store_restore(&conn, &file),
        Cmd::Services { output, conn } => machine::services(&conn, output),
        Cmd::Disks { output, conn } => machine::disks(&conn, output),
        Cmd::Health {
            server,
            wait_timeout,
            output,
            conn,
        } => health::health(&conn, server.as_deref(), wait_timeout, output),
        Cmd::Addresses { output, conn } => machine::addresses(&conn, output),
        Cmd::Routes { output, conn } => machine::routes(&conn, output),
        Cmd::Netstat {
            listening,
            output,
            conn,
        } => machine::netstat(&conn, output, listening),
        Cmd::Kubeconfig {
            path,
            server,
            force,
            token: Some(token),
            cluster_name,
            conn: _,
        } => {
            let token: BootstrapToken = token.parse()?;
            let server = server.context("--token needs --server")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let creds = rt.block_on(fetch_admin(&server, &token, Duration::from_secs(30)))?;
            machine::save_kubeconfig(&creds, &cluster_name, &server, path.as_deref(), force)
        }
        Cmd::Kubeconfig {
            path,
            server,
            force,
            token: None,
            cluster_name: _,
            conn,
        } => machine::kubeconfig(&conn, path.as_deref(), server.as_deref(), force),
        Cmd::Service {
            name,
            action: ServiceAction::Restart { conn },
        } => machine::restart_service(&conn, &name),
        Cmd::Logs {
            service,
            follow,
            tail,
            conn,
        } => machine::logs(&conn, Some(service.as_deref()), follow, tail),
        Cmd::Dmesg { follow, tail, conn } => machine::logs(&conn, None, follow, tail),
        Cmd::Config { cmd } => machine::config(&cmd),
        Cmd::Cluster {
            cmd: ClusterCmd::Down { state_dir },
        } => {
            let clean = strake_qemu::stop_detached(&state_dir, VM_NAME, Duration::from_secs(30))?;
            println!(
                "{}",
                if clean {
                    "powered off"
                } else {
                    "no running cluster (or it had to be killed)"
                }
            );
            Ok(())
        }
    }
}

/// Retries the token bootstrap until the API answers or `timeout` passes.
/// Admin credentials from the API server at `server` with the bootstrap token, retried until
/// `timeout`.
async fn fetch_admin(
    server: &str,
    token: &BootstrapToken,
    timeout: Duration,
) -> anyhow::Result<strake_pki::Credentials> {
    let deadline = Instant::now() + timeout;
    loop {
        match strake_kubeclient::bootstrap(
            server,
            token,
            "/strake/v1/kubeconfig",
            &serde_json::json!({}),
        )
        .await
        {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            Err(e) => return Err(e).context(format!("fetching credentials from {server}")),
        }
    }
}

/// Writes a kubeconfig for the cluster named `strake` at `output` with credentials fetched
/// with the bootstrap token.
async fn write_kubeconfig(
    server: &str,
    token: &BootstrapToken,
    output: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let creds = fetch_admin(server, token, timeout).await?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(output, creds.kubeconfig("strake", server))
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn validate(path: &Path) -> anyhow::Result<()> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    match strake_machineconfig::MachineConfig::parse(&text) {
        Ok(cfg) => {
            println!(
                "{}: a valid {:?} machine config",
                path.display(),
                cfg.machine.role
            );
            Ok(())
        }
        Err(errors) => {
            let n = errors.errors.len();
            bail!(
                "{} is not a valid machine config ({n} problem{}):\n{errors}",
                path.display(),
                if n == 1 { "" } else { "s" }
            )
        }
    }
}

/// The STATE disk of `cluster up`: a sparse raw file, made on first use.
fn state_disk(state_dir: &Path, size: &str) -> anyhow::Result<PathBuf> {
    let disk = state_dir.join("state.img");
    if disk.exists() {
        println!(
            "STATE disk {} (the cluster from the last `cluster up`)",
            disk.display()
        );
        return Ok(disk);
    }
    let bytes = parse_size(size)?;
    std::fs::create_dir_all(state_dir)?;
    let file = std::fs::File::create_new(&disk)
        .with_context(|| format!("creating the STATE disk {}", disk.display()))?;
    file.set_len(bytes)
        .with_context(|| format!("sizing the STATE disk {} to {size}", disk.display()))?;
    println!("STATE disk {} ({size}, new)", disk.display());
    Ok(disk)
}

/// `8G`, `512M` or a byte count: binary units, as qemu-img reads them.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("disk size {s:?}: expected a number with K, M, G or T"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .with_context(|| format!("disk size {s:?} is too large"))?;
    if bytes < 1 << 30 {
        bail!("disk size {s:?}: STATE needs at least 1G");
    }
    Ok(bytes)
}

fn cluster_up(args: &UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        image,
        state_dir,
        api_port,
        machine_api_port,
        memory,
        cpus,
        insecure_registries: insecure,
        timeout_secs,
        disk_size,
        ephemeral,
    } = args;
    let (api_port, memory, cpus) = (*api_port, *memory, *cpus);
    let timeout = Duration::from_secs(*timeout_secs);
    let kernel = image.join("vmlinuz");
    let initrd = image.join("initramfs.zst");
    for p in [&kernel, &initrd] {
        if !p.exists() {
            bail!(
                "{} is missing: build the image first (strakectl image build)",
                p.display()
            );
        }
    }
    if std::net::TcpListener::bind(("127.0.0.1", api_port)).is_err() {
        bail!(
            "port 127.0.0.1:{api_port} is in use (is a cluster already up? try `strakectl cluster down`)"
        );
    }
    if std::net::TcpListener::bind(("127.0.0.1", *machine_api_port)).is_err() {
        bail!("port 127.0.0.1:{machine_api_port} is in use (pass --machine-api-port)");
    }
    let disks = if *ephemeral {
        Vec::new()
    } else {
        vec![std::path::absolute(state_disk(state_dir, disk_size)?)?]
    };
    // The node's machine config, made once and kept with the cluster: the same token (and
    // machine CA) at every `cluster up` of the same STATE disk.
    std::fs::create_dir_all(state_dir)?;
    let config_path = std::path::absolute(state_dir.join("machine.yaml"))?;
    let strakeconfig = std::path::absolute(state_dir.join("strakeconfig"))?;
    let token_path = state_dir.join("token");
    let token: BootstrapToken = if config_path.exists() && token_path.exists() {
        std::fs::read_to_string(&token_path)?.trim().parse()?
    } else {
        // A STATE disk from before machine configs keeps its token.
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !disks.is_empty() && disks[0].exists() => t.trim().parse()?,
            _ => BootstrapToken::generate(),
        };
        let generated = machine::generate(&machine::Generate {
            cluster: "strake",
            hostname: Some(VM_NAME),
            install_disk: (!*ephemeral).then_some("/dev/vda"),
            endpoints: vec![format!("127.0.0.1:{machine_api_port}")],
            token: token.clone(),
            insecure_registries: insecure,
            // The control plane makes its own: this config may be for a STATE disk that has
            // one already.
            cluster_ca: None,
            kubernetes_endpoint: None,
        })?;
        machine::write_private(&config_path, &generated.yaml)?;
        generated.client.save(&strakeconfig)?;
        token
    };
    // The endpoint follows --machine-api-port.
    let mut client = strake_machineapi::StrakeConfig::load(&strakeconfig)?;
    for ctx in client.contexts.values_mut() {
        ctx.endpoints = vec![format!("127.0.0.1:{machine_api_port}")];
    }
    client.save(&strakeconfig)?;
    let cmdline = String::new();
    let cfg = VmConfig {
        name: VM_NAME.into(),
        kernel,
        initrd,
        cmdline,
        memory_mib: memory,
        cpus,
        accel: Accel::from_env(),
        nics: vec![Nic::user(vec![
            PortForward {
                host: api_port,
                guest: 6443,
            },
            PortForward {
                host: *machine_api_port,
                guest: strake_machineapi::PORT,
            },
        ])],
        disks,
        fw_cfg: vec![("opt/strake/config".into(), config_path)],
        uefi: None,
        state_dir: state_dir.to_path_buf(),
    };
    let console = cfg.serial_log();
    let t0 = Instant::now();
    let pid = Vm::start_detached(cfg).context("starting QEMU")?;
    println!("QEMU started (pid {pid}); console: {}", console.display());
    std::fs::write(state_dir.join("token"), token.to_string())?;
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = std::path::absolute(state_dir.join("kubeconfig"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + timeout;
    while !rt.block_on(strake_kubeclient::answers_version(
        &server,
        Duration::from_millis(500),
    )) {
        if Instant::now() > deadline {
            bail!(
                "the API did not answer within {timeout:?}; console tail:\n{}",
                strake_qemu::tail(&console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(write_kubeconfig(&server, &token, &kubeconfig, timeout))
        .with_context(|| {
            format!(
                "the API did not come up; console tail:\n{}",
                strake_qemu::tail(&console, 30)
            )
        })?;
    println!("API ready after {:.1}s", t0.elapsed().as_secs_f64());
    // Ready means a node that can run pods, not just an API.
    let creds = rt.block_on(strake_kubeclient::bootstrap(
        &server,
        &token,
        "/strake/v1/kubeconfig",
        &serde_json::json!({}),
    ))?;
    let client = strake_kubeclient::Client::new(
        &server,
        &creds.ca_pem,
        Some(&strake_pki::CertifiedKey {
            cert_pem: creds.cert_pem,
            key_pem: creds.key_pem,
        }),
    )?;
    loop {
        let nodes = rt
            .block_on(client.list::<k8s_openapi::api::core::v1::Node>(None, None))
            .map(|(n, _)| n)
            .unwrap_or_default();
        let ready = nodes.iter().any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no node became Ready within {timeout:?}; console tail:\n{}",
                strake_qemu::tail(&console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("node Ready after {:.1}s", t0.elapsed().as_secs_f64());
    println!(
        "\nThe cluster is up. Use it with:\n\n  export KUBECONFIG={}\n  kubectl get nodes\n\nand the node's machine API with:\n\n  strakectl version --strakeconfig {}    (or export STRAKECONFIG={})\n\n(stop it with: strakectl cluster down --state-dir {})",
        kubeconfig.display(),
        strakeconfig.display(),
        strakeconfig.display(),
        state_dir.display()
    );
    Ok(())
}

/// `90s`, `5m`, `1h` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations_are_read_in_seconds_minutes_or_hours() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(super::parse_duration("2").unwrap().as_secs(), 2);
        assert!(super::parse_duration("5d").is_err());
        assert!(super::parse_duration("m").is_err());
    }
}
