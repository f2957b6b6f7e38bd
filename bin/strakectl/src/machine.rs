//! strakectl's machine API commands: `gen config`, `apply-config`, `version`,
//! `get machineconfig`, `reboot`, `shutdown` and `config` (the client config's contexts).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use strake_machineapi::{ApplyMode, Client, Context, Role, StrakeConfig, Trust};
use strake_machineconfig::MachineConfig;
use strake_pki::BootstrapToken;

/// How to reach the nodes, shared by every machine API command.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Nodes to talk to (`host[:port]`, port 50000 by default); the context's first endpoint
    /// when none is given.
    #[arg(long, short = 'n', value_delimiter = ',')]
    nodes: Vec<String>,
    /// The client config (default: $STRAKECONFIG, else ~/.strake/config).
    #[arg(long)]
    strakeconfig: Option<PathBuf>,
    /// The context to use instead of the config's current one.
    #[arg(long)]
    context: Option<String>,
    /// Maintenance mode: the node has a self-signed certificate and no client is authenticated.
    #[arg(long)]
    insecure: bool,
    /// With --insecure: the certificate fingerprint the node printed on its console
    /// (`sha256:...`). Without it the node's identity is not checked at all.
    #[arg(long, requires = "insecure")]
    fingerprint: Option<String>,
}

/// `-o` for reads.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
    Yaml,
}

impl Conn {
    fn config_path(&self) -> PathBuf {
        self.strakeconfig
            .clone()
            .unwrap_or_else(StrakeConfig::default_path)
    }

    /// One client per node.
    pub(crate) fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let (trust, endpoints) = if self.insecure {
            let trust = Trust::Insecure {
                fingerprint: self.fingerprint.clone(),
            };
            if self.nodes.is_empty() {
                bail!("--insecure needs --nodes: the address the node printed on its console");
            }
            (trust, self.nodes.clone())
        } else {
            let path = self.config_path();
            let config = StrakeConfig::load(&path).with_context(|| {
                "a client config is needed (`strakectl gen config` writes one), or --insecure for a node in maintenance mode"
            })?;
            let context = config.context(&path, self.context.as_deref())?;
            let endpoints = if self.nodes.is_empty() {
                context.endpoints.iter().take(1).cloned().collect()
            } else {
                self.nodes.clone()
            };
            if endpoints.is_empty() {
                bail!(
                    "no node given and the context has no endpoints: pass --nodes or run `strakectl config endpoints <address>`"
                );
            }
            (context.trust(), endpoints)
        };
        endpoints
            .iter()
            .map(|e| Client::new(e, &trust).map_err(Into::into))
            .collect()
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

pub(crate) fn print<T: serde::Serialize>(
    out: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match out {
        Output::Text => println!("{}", text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(value)?),
    }
    Ok(())
}

/// Runs `call` against every node, printing each failure with the node's endpoint; fails if
/// any did.
fn each_node<T>(
    conn: &Conn,
    mut call: impl FnMut(&tokio::runtime::Runtime, &Client) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let rt = runtime()?;
    let clients = conn.clients()?;
    let many = clients.len() > 1;
    let mut out = Vec::new();
    let mut failed = 0;
    for client in &clients {
        match call(&rt, client) {
            Ok(v) => out.push(v),
            Err(e) if many => {
                eprintln!("{}: {e:#}", client.endpoint());
                failed += 1;
            }
            Err(e) => return Err(e.context(format!("node {}", client.endpoint()))),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes failed", clients.len());
    }
    Ok(out)
}

pub fn apply_config(
    conn: &Conn,
    file: &Path,
    mode: ApplyMode,
    dry_run: bool,
) -> anyhow::Result<()> {
    let yaml = read_input(file)?;
    // Check locally first: the same rules as the node, every problem at once.
    if let Err(errors) = MachineConfig::parse(&yaml) {
        let n = errors.errors.len();
        bail!(
            "{} is not a valid machine config ({n} problem{}); nothing was sent:\n{errors}",
            file.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    each_node(conn, |rt, client| {
        let r = rt.block_on(client.apply_config(&yaml, mode, dry_run))?;
        println!("{}: {}", client.endpoint(), r.message);
        if dry_run {
            for c in &r.changes {
                println!("  {}: {} -> {}", c.path, short(&c.old), short(&c.new));
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// A JSON value on one line, cut to a readable length.
fn short(v: &serde_json::Value) -> String {
    let s = if v.is_null() {
        "(none)".to_owned()
    } else {
        v.to_string()
    };
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(99).collect::<String>())
    } else {
        s
    }
}

pub fn version(conn: &Conn, out: Output) -> anyhow::Result<()> {
    let all = each_node(conn, |rt, client| {
        Ok((client.endpoint().to_owned(), rt.block_on(client.version())?))
    })?;
    for (endpoint, v) in all {
        print(out, &v, || {
            let slot = match (&v.slot, v.on_trial) {
                (Some(s), false) => format!(", slot {s}"),
                (Some(s), true) => format!(", slot {s} (on trial)"),
                (None, _) => String::new(),
            };
            format!(
                "{endpoint}: strake {} on {}{}{slot}",
                v.version,
                v.hostname,
                if v.maintenance {
                    " (maintenance mode)"
                } else {
                    ""
                }
            )
        })?;
    }
    Ok(())
}

pub fn get_machineconfig(conn: &Conn, out: Output) -> anyhow::Result<()> {
    let all = each_node(conn, |rt, client| Ok(rt.block_on(client.machineconfig())?))?;
    for view in all {
        match out {
            Output::Text | Output::Yaml => print!("{}", view.yaml),
            Output::Json => {
                let value: serde_json::Value = serde_saphyr::from_str(&view.yaml)
                    .context("the node's machine config is not YAML")?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
    }
    Ok(())
}

pub fn power(conn: &Conn, reboot: bool) -> anyhow::Result<()> {
    each_node(conn, |rt, client| {
        let m = if reboot {
            rt.block_on(client.reboot())?
        } else {
            rt.block_on(client.shutdown())?
        };
        println!("{}: {}", client.endpoint(), m.message);
        Ok(())
    })?;
    Ok(())
}

/// Prints the console log (`which` is `Some(service or all)`) or, with `None`, the kernel's
/// log, of one node; `follow` keeps polling for new lines.
pub fn logs(
    conn: &Conn,
    which: Option<Option<&str>>,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let clients = conn.clients()?;
    if clients.len() > 1 {
        bail!("logs reads one node: pass one --nodes");
    }
    let client = &clients[0];
    let fetch = |tail: Option<usize>, since: Option<f64>| {
        rt.block_on(async {
            match which {
                Some(service) => client.logs(service, tail, since).await,
                None => client.dmesg(tail, since).await,
            }
        })
    };
    let mut got = fetch(tail, None).with_context(|| format!("node {}", client.endpoint()))?;
    loop {
        for line in &got.lines {
            println!("{line}");
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        got = fetch(None, Some(got.last)).with_context(|| format!("node {}", client.endpoint()))?;
    }
}

/// A read of every node: as a table under each node's endpoint, or as JSON or YAML.
fn table<T: serde::Serialize>(
    conn: &Conn,
    out: Output,
    fetch: impl Fn(&tokio::runtime::Runtime, &Client) -> anyhow::Result<Vec<T>>,
    header: &str,
    row: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let all = each_node(conn, |rt, client| {
        Ok((client.endpoint().to_owned(), fetch(rt, client)?))
    })?;
    for (endpoint, list) in all {
        print(out, &list, || {
            let mut text = format!("{endpoint}\n{header}");
            for item in &list {
                text.push('\n');
                text.push_str(&row(item));
            }
            text
        })?;
    }
    Ok(())
}

pub fn services(conn: &Conn, out: Output) -> anyhow::Result<()> {
    table(
        conn,
        out,
        |rt, client| Ok(rt.block_on(client.services())?),
        "NAME           STATE     PID      RSS       RESTARTS  SINCE",
        |s| {
            format!(
                "{:<14} {:<9} {:<8} {:<9} {:<9} {}",
                s.name,
                s.state,
                s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                s.rss_bytes.map_or_else(
                    || "-".into(),
                    |b| format!("{:.1} MiB", b as f64 / 1048576.0)
                ),
                s.restarts,
                s.since
                    .map_or_else(|| "-".into(), |t| format!("{t:.1}s after boot"))
            )
        },
    )
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The nodes' disks; with `--insecure`, a node in maintenance mode's too (to pick its install
/// disk).
pub fn disks(conn: &Conn, out: Output) -> anyhow::Result<()> {
    table(
        conn,
        out,
        |rt, client| Ok(rt.block_on(client.disks())?),
        "DEVICE         SIZE        MODEL              SERIAL             PARTITIONS",
        |d| {
            let parts: Vec<String> = d
                .partitions
                .iter()
                .map(|p| match &p.label {
                    Some(l) => format!("{} ({l}, {})", p.device, size(p.bytes)),
                    None => format!("{} ({})", p.device, size(p.bytes)),
                })
                .collect();
            format!(
                "{:<14} {:<11} {:<18} {:<18} {}",
                d.device,
                size(d.bytes),
                d.model.as_deref().unwrap_or("-"),
                d.serial.as_deref().unwrap_or("-"),
                if parts.is_empty() {
                    "-".into()
                } else {
                    parts.join(", ")
                }
            )
        },
    )
}

pub fn addresses(conn: &Conn, out: Output) -> anyhow::Result<()> {
    table(
        conn,
        out,
        |rt, client| Ok(rt.block_on(client.addresses())?),
        "INTERFACE        ADDRESS",
        |a| format!("{:<16} {}", a.interface, a.address),
    )
}

pub fn routes(conn: &Conn, out: Output) -> anyhow::Result<()> {
    table(
        conn,
        out,
        |rt, client| Ok(rt.block_on(client.routes())?),
        "DESTINATION                GATEWAY                    INTERFACE        METRIC",
        |r| {
            format!(
                "{:<26} {:<26} {:<16} {}",
                r.destination,
                r.gateway.as_deref().unwrap_or("-"),
                r.interface,
                r.metric
            )
        },
    )
}

/// The nodes' sockets; `listening` keeps only listening TCP and unconnected UDP ones.
pub fn netstat(conn: &Conn, out: Output, listening: bool) -> anyhow::Result<()> {
    table(
        conn,
        out,
        |rt, client| {
            let mut list = rt.block_on(client.netstat())?;
            list.retain(|s| !listening || s.state == "LISTEN" || s.state.is_empty());
            Ok(list)
        },
        "PROTO  LOCAL                          REMOTE                         STATE        PROCESS",
        |s| {
            format!(
                "{:<6} {:<30} {:<30} {:<12} {}",
                s.protocol,
                s.local,
                s.remote,
                if s.state.is_empty() { "-" } else { &s.state },
                s.process.as_deref().unwrap_or("-")
            )
        },
    )
}

/// Where `kubeconfig` writes without a path: $KUBECONFIG's first file, else ~/.kube/config.
fn default_kubeconfig() -> anyhow::Result<PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("HOME is not set: name the kubeconfig's path")?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// Merges `new` (a kubeconfig with one cluster, user and context) into `old`: entries of the
/// same name are replaced, others kept, and the new context becomes the current one.
pub fn merge_kubeconfig(
    old: serde_json::Value,
    new: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut merged = old;
    if !merged.is_object() {
        bail!("the existing kubeconfig is not a YAML mapping");
    }
    for key in ["clusters", "users", "contexts"] {
        let fresh = new[key].as_array().cloned().unwrap_or_default();
        let list = merged
            .as_object_mut()
            .expect("checked above")
            .entry(key)
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if list.is_null() {
            *list = serde_json::Value::Array(Vec::new());
        }
        let Some(list) = list.as_array_mut() else {
            bail!("the existing kubeconfig's {key} is not a list");
        };
        for entry in fresh {
            list.retain(|e| e.get("name") != entry.get("name"));
            list.push(entry);
        }
    }
    for key in ["apiVersion", "kind", "current-context"] {
        merged[key] = new[key].clone();
    }
    Ok(merged)
}

/// Admin credentials from a control plane, merged into a kubeconfig (or written over it with
/// `force`).
pub fn kubeconfig(
    conn: &Conn,
    path: Option<&Path>,
    server: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let views = each_node(conn, |rt, client| Ok(rt.block_on(client.kubeconfig())?))?;
    let view = views.into_iter().next().context("no node answered")?;
    let creds = strake_pki::Credentials {
        server: view.server.clone(),
        ca_pem: view.ca_pem,
        cert_pem: view.cert_pem,
        key_pem: view.key_pem,
        serving_cert_pem: None,
        serving_key_pem: None,
    };
    save_kubeconfig(
        &creds,
        &view.cluster,
        server.unwrap_or(&view.server),
        path,
        force,
    )
}

/// Writes a kubeconfig for `cluster` at `server` to `path` ($KUBECONFIG's first file or
/// ~/.kube/config without one), merged into what is there unless `force`.
pub fn save_kubeconfig(
    creds: &strake_pki::Credentials,
    cluster: &str,
    server: &str,
    path: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    let text = creds.kubeconfig(cluster, server);
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_kubeconfig()?,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(old) if !force && !old.trim().is_empty() => {
            let old: serde_json::Value = serde_saphyr::from_str(&old).with_context(|| {
                format!("reading {} (use --force to replace it)", path.display())
            })?;
            let new: serde_json::Value = serde_saphyr::from_str(&text)?;
            serde_saphyr::to_string(&merge_kubeconfig(old, new)?)?
        }
        Ok(_) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => text,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(&path, &text)?;
    println!(
        "kubeconfig for the cluster {cluster} ({server}) in {}; context {cluster}",
        path.display()
    );
    Ok(())
}

pub fn restart_service(conn: &Conn, name: &str) -> anyhow::Result<()> {
    each_node(conn, |rt, client| {
        let m = rt.block_on(client.restart_service(name))?;
        println!("{}: {}", client.endpoint(), m.message);
        Ok(())
    })?;
    Ok(())
}

pub fn reset(conn: &Conn, graceful: bool) -> anyhow::Result<()> {
    each_node(conn, |rt, client| {
        let m = if graceful {
            rt.block_on(client.reset_graceful())?
        } else {
            rt.block_on(client.reset())?
        };
        println!("{}: {}", client.endpoint(), m.message);
        Ok(())
    })?;
    Ok(())
}

pub fn store_members(conn: &Conn, out: Output) -> anyhow::Result<()> {
    let all = each_node(conn, |rt, client| {
        Ok((
            client.endpoint().to_owned(),
            rt.block_on(client.store_members())?,
        ))
    })?;
    for (endpoint, view) in all {
        print(out, &view, || {
            let mut text = format!(
                "{endpoint} (store node {}, term {})\nID                 PEER ADDRESS           ROLE     LEADER",
                view.answered_by, view.term
            );
            for m in &view.members {
                text.push_str(&format!(
                    "\n{:<18} {:<22} {:<8} {}",
                    m.id,
                    m.peer_address,
                    if m.voter { "voter" } else { "learner" },
                    if m.leader { "*" } else { "" }
                ));
            }
            text
        })?;
    }
    Ok(())
}

/// One node: store changes are made once, through one control plane. The first endpoint
/// given that can be reached answers; one that cannot be connected to (or does not answer in
/// time) is passed over for the next.
fn one_node<T>(
    conn: &Conn,
    mut call: impl FnMut(&tokio::runtime::Runtime, &Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = runtime()?;
    let clients = conn.clients()?;
    anyhow::ensure!(
        !clients.is_empty(),
        "give a control plane's machine API endpoint (--endpoints)"
    );
    let mut last = None;
    for client in &clients {
        match call(&rt, client) {
            Err(e)
                if e.downcast_ref::<strake_machineapi::ClientError>()
                    .is_some_and(|c| {
                        matches!(
                            c,
                            strake_machineapi::ClientError::Connect { .. }
                                | strake_machineapi::ClientError::Timeout { .. }
                        )
                    }) =>
            {
                eprintln!("{}: {e:#}; trying the next endpoint", client.endpoint());
                last = Some(e.context(format!("node {}", client.endpoint())));
            }
            other => return other.with_context(|| format!("node {}", client.endpoint())),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoint answered")))
}

pub fn store_remove(conn: &Conn, id: u64) -> anyhow::Result<()> {
    one_node(conn, |rt, client| {
        let view = rt.block_on(client.store_remove(id))?;
        println!(
            "{}: removed store node {id}; {} members left",
            client.endpoint(),
            view.members.len()
        );
        Ok(())
    })
}

pub fn store_snapshot(conn: &Conn, file: &Path) -> anyhow::Result<()> {
    one_node(conn, |rt, client| {
        let view = rt.block_on(client.store_snapshot())?;
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(&view.data)
                .context("the snapshot is not base64")?
        };
        // It carries the cluster CA's key: only its owner reads it.
        let tmp = file.with_extension("partial");
        strake_pki::write_private(&tmp, &bytes)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(std::fs::rename(&tmp, file)?))
            .with_context(|| format!("writing {}", file.display()))?;
        println!(
            "{}: wrote a snapshot at revision {} ({} bytes) to {}; it holds the cluster's keys and CA, keep it as secret as they are",
            client.endpoint(),
            view.revision,
            bytes.len(),
            file.display()
        );
        Ok(())
    })
}

/// How a store backup file begins.
const BACKUP_MAGIC: &[u8] = b"STRAKEBK";

pub fn store_restore(conn: &Conn, file: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        conn.nodes.len() <= 1,
        "a restore starts a new cluster on ONE fresh control plane; name one node (-n), and join the others to it"
    );
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // The node checks all of it; this saves sending something else.
    anyhow::ensure!(
        bytes.starts_with(BACKUP_MAGIC),
        "{} is not a strake store snapshot (it does not start with STRAKEBK)",
        file.display()
    );
    anyhow::ensure!(
        bytes.len() <= strake_machineapi::MAX_BACKUP,
        "{} is {} bytes, more than a node accepts ({})",
        file.display(),
        bytes.len(),
        strake_machineapi::MAX_BACKUP
    );
    let clients = conn.clients()?;
    let client = clients
        .first()
        .context("give the fresh control plane's machine API endpoint (-n)")?;
    let rt = runtime()?;
    let answer = rt
        .block_on(client.store_restore(bytes))
        .with_context(|| format!("node {}", client.endpoint()))?;
    println!("{}: {}", client.endpoint(), answer.message);
    Ok(())
}

pub fn upgrade(conn: &Conn, image: &Path) -> anyhow::Result<()> {
    let uki = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    // The node checks it too; failing here saves the upload.
    strake_machineapi::check_uki(&uki)
        .map_err(|e| anyhow::anyhow!("{} cannot be an upgrade: {e}", image.display()))?;
    each_node(conn, |rt, client| {
        let m = rt.block_on(client.upgrade(uki.clone()))?;
        println!("{}: {}", client.endpoint(), m.message);
        Ok(())
    })?;
    Ok(())
}

/// `strakectl gen config`: a machine CA, a control plane config carrying it, and a client
/// config with an admin certificate.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// The cluster's name.
    cluster: String,
    /// Where to write controlplane.yaml and strakeconfig.
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
    /// The disk the node installs to (its STATE partition goes there).
    #[arg(long, default_value = "/dev/vda")]
    install_disk: String,
    /// The node's hostname (also its Kubernetes node name).
    #[arg(long)]
    hostname: Option<String>,
    /// Machine API endpoints written into the client config (`host[:port]`).
    #[arg(long = "endpoint", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Registries the node reaches over plain HTTP (`host:port`): written as mirrors of
    /// themselves at an http:// endpoint.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Where workers reach the Kubernetes API (`host[:port]`, port 6443 by default); the first
    /// --endpoint's host when not given. Without either, no worker.yaml is written.
    #[arg(long)]
    kubernetes_endpoint: Option<String>,
    /// Overwrite files that exist.
    #[arg(long)]
    force: bool,
}

/// What a new cluster needs: the control plane's machine config, a worker's (when the
/// Kubernetes endpoint is known), and an admin client config.
pub struct Generated {
    pub yaml: String,
    pub worker: Option<String>,
    pub client: StrakeConfig,
}

/// Options of [`generate`].
pub struct Generate<'a> {
    pub cluster: &'a str,
    pub hostname: Option<&'a str>,
    /// `None`: no install section (the node runs on tmpfs, or from a disk image with STATE).
    pub install_disk: Option<&'a str>,
    pub endpoints: Vec<String>,
    pub token: BootstrapToken,
    /// Registries reached over plain HTTP (`host:port`), as mirrors of themselves.
    pub insecure_registries: &'a [String],
    /// The cluster CA the control plane signs with (`cluster.ca`); its pin goes into every
    /// config. `None`: the control plane makes its own, and no worker config can be made.
    pub cluster_ca: Option<&'a strake_pki::ClusterCa>,
    /// `host:port` where workers reach the Kubernetes API.
    pub kubernetes_endpoint: Option<&'a str>,
}

/// A machine CA, a control plane config carrying it and the token, and an admin client config.
pub fn generate(g: &Generate<'_>) -> anyhow::Result<Generated> {
    let ca = strake_machineapi::generate_ca(g.cluster)?;
    let json = |s: &str| serde_json::to_string(s);
    let pin = g
        .cluster_ca
        .map(|c| strake_pki::ca_pin(&c.ca.cert_pem))
        .transpose()?;
    // One document per role; only the control plane carries the cluster CA's key.
    let config = |role: &str, hostname: Option<&str>| -> anyhow::Result<String> {
        let mut yaml = format!(
            "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: {role}\n"
        );
        if let Some(h) = hostname {
            yaml.push_str(&format!("  hostname: {h}\n"));
        }
        if let Some(disk) = g.install_disk {
            yaml.push_str(&format!("  install:\n    disk: {disk}\n"));
        }
        yaml.push_str(&format!(
            "  ca:\n    crt: {}\n    key: {}\n",
            json(&ca.crt)?,
            json(&ca.key)?,
        ));
        if !g.insecure_registries.is_empty() {
            yaml.push_str("  registries:\n    mirrors:\n");
            for r in g.insecure_registries {
                yaml.push_str(&format!(
                    "      {}:\n        endpoints: [{}]\n",
                    json(r)?,
                    json(&format!("http://{r}"))?
                ));
            }
        }
        yaml.push_str(&format!(
            "cluster:\n  name: {}\n  token: {}\n",
            g.cluster, g.token
        ));
        if let Some(pin) = &pin {
            yaml.push_str(&format!("  caPin: {pin}\n"));
        }
        match (role, g.cluster_ca) {
            ("controlplane", Some(c)) => yaml.push_str(&format!(
                "  ca:\n    crt: {}\n    key: {}\n",
                json(&c.ca.cert_pem)?,
                json(&c.ca.key_pem)?,
            )),
            ("worker", _) => yaml.push_str(&format!(
                "  endpoint: https://{}\n",
                g.kubernetes_endpoint.unwrap_or_default()
            )),
            _ => {}
        }
        MachineConfig::parse(&yaml)
            .map_err(|e| anyhow::anyhow!("the generated {role} config is not valid:\n{e}"))?;
        Ok(yaml)
    };
    let yaml = config("controlplane", g.hostname)?;
    let worker = match (g.kubernetes_endpoint, &pin) {
        (Some(_), Some(_)) => Some(config("worker", None)?),
        _ => None,
    };
    let admin = strake_machineapi::issue_client(&ca, "admin", Role::Admin, 3650)?;
    let mut client = StrakeConfig::default();
    client.merge(
        g.cluster,
        Context {
            endpoints: g.endpoints.clone(),
            ca: ca.crt.clone(),
            crt: admin.cert_pem,
            key: admin.key_pem,
        },
    );
    Ok(Generated {
        yaml,
        worker,
        client,
    })
}

/// `host[:port]` (`[v6]:port` for IPv6) as host and port.
fn split_host_port(text: &str) -> (&str, Option<&str>) {
    if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (text, None),
        }
    } else {
        match text.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            // A bare IPv6 address.
            _ => (text, None),
        }
    }
}

/// Where workers reach the Kubernetes API: `given` (port 6443 unless it has one), else the
/// first machine API endpoint's host at 6443.
pub fn kubernetes_endpoint(given: Option<&str>, endpoints: &[String]) -> Option<String> {
    let (host, port) = match given {
        Some(g) => {
            let (h, p) = split_host_port(g);
            (h, p.unwrap_or("6443"))
        }
        None => (split_host_port(endpoints.first()?).0, "6443"),
    };
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

pub fn gen_config(args: &GenArgs) -> anyhow::Result<()> {
    let cluster_ca = strake_pki::ClusterCa::generate(&args.cluster)?;
    let kube = kubernetes_endpoint(args.kubernetes_endpoint.as_deref(), &args.endpoints);
    let generated = generate(&Generate {
        cluster: &args.cluster,
        hostname: args.hostname.as_deref(),
        install_disk: Some(&args.install_disk),
        endpoints: args.endpoints.clone(),
        token: BootstrapToken::generate(),
        insecure_registries: &args.insecure_registries,
        cluster_ca: Some(&cluster_ca),
        kubernetes_endpoint: kube.as_deref(),
    })?;
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    let config_path = args.output_dir.join("controlplane.yaml");
    let worker_path = args.output_dir.join("worker.yaml");
    let client_path = args.output_dir.join("strakeconfig");
    for p in [&config_path, &worker_path, &client_path] {
        if p.exists() && !args.force {
            bail!("{} exists (pass --force to overwrite)", p.display());
        }
    }
    write_private(&config_path, &generated.yaml)?;
    println!(
        "wrote {} (holds the machine and cluster CA keys and the join token: keep it private)",
        config_path.display()
    );
    match &generated.worker {
        Some(worker) => {
            write_private(&worker_path, worker)?;
            println!(
                "wrote {} (joins https://{}; holds the join token: keep it private)",
                worker_path.display(),
                kube.as_deref().unwrap_or_default()
            );
        }
        None => println!(
            "no worker.yaml: give --endpoint or --kubernetes-endpoint for where workers reach the API"
        ),
    }
    generated.client.save(&client_path)?;
    println!("wrote {} (admin client config)", client_path.display());
    Ok(())
}

/// Writes a secret file 0600.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `strakectl config`: the client config's contexts and endpoints.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Set the current context's endpoints.
    Endpoints {
        #[arg(required = true)]
        endpoints: Vec<String>,
        #[arg(long)]
        strakeconfig: Option<PathBuf>,
    },
    /// Make a context the current one.
    UseContext {
        name: String,
        #[arg(long)]
        strakeconfig: Option<PathBuf>,
    },
    /// List the contexts (the current one is marked `*`).
    Contexts {
        #[arg(long)]
        strakeconfig: Option<PathBuf>,
    },
    /// Add the contexts of another client config (e.g. one `gen config` wrote) to this one.
    Merge {
        file: PathBuf,
        #[arg(long)]
        strakeconfig: Option<PathBuf>,
    },
}

pub fn config(cmd: &ConfigCmd) -> anyhow::Result<()> {
    let path_of = |p: &Option<PathBuf>| p.clone().unwrap_or_else(StrakeConfig::default_path);
    match cmd {
        ConfigCmd::Endpoints {
            endpoints,
            strakeconfig,
        } => {
            let path = path_of(strakeconfig);
            let mut c = StrakeConfig::load(&path)?;
            let name = c.context.clone();
            c.context(&path, None)?;
            if let Some(ctx) = c.contexts.get_mut(&name) {
                ctx.endpoints.clone_from(endpoints);
            }
            c.save(&path)?;
            println!("context {name}: endpoints {}", endpoints.join(", "));
        }
        ConfigCmd::UseContext { name, strakeconfig } => {
            let path = path_of(strakeconfig);
            let mut c = StrakeConfig::load(&path)?;
            c.context(&path, Some(name))?;
            c.context.clone_from(name);
            c.save(&path)?;
            println!("current context: {name}");
        }
        ConfigCmd::Contexts { strakeconfig } => {
            let path = path_of(strakeconfig);
            let c = StrakeConfig::load(&path)?;
            for (name, ctx) in &c.contexts {
                let mark = if *name == c.context { "*" } else { " " };
                println!("{mark} {name}\t{}", ctx.endpoints.join(","));
            }
        }
        ConfigCmd::Merge { file, strakeconfig } => {
            let path = path_of(strakeconfig);
            let other = StrakeConfig::load(file)?;
            let mut c = if path.exists() {
                StrakeConfig::load(&path)?
            } else {
                StrakeConfig::default()
            };
            for (name, ctx) in other.contexts {
                c.merge(&name, ctx);
            }
            if !other.context.is_empty() {
                c.context = other.context;
            }
            c.save(&path)?;
            println!("merged {} into {}", file.display(), path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod kubeconfig_tests {
    use serde_json::json;

    #[test]
    fn a_kubeconfig_is_merged_by_name_and_its_context_made_current() {
        let old = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "other",
            "clusters": [{"name": "other", "cluster": {"server": "https://o"}},
                         {"name": "lab", "cluster": {"server": "https://stale"}}],
            "users": [{"name": "other-admin", "user": {}}],
            "contexts": [{"name": "other", "context": {"cluster": "other"}}],
            "preferences": {"colors": true},
        });
        let new = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": "https://new"}}],
            "users": [{"name": "lab-admin", "user": {}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab"}}],
        });
        let merged = super::merge_kubeconfig(old, new).unwrap();
        assert_eq!(merged["current-context"], "lab");
        let clusters = merged["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[1]["cluster"]["server"], "https://new");
        assert_eq!(merged["users"].as_array().unwrap().len(), 2);
        assert_eq!(merged["preferences"]["colors"], true);
        assert!(super::merge_kubeconfig(json!("text"), json!({})).is_err());
        assert!(super::merge_kubeconfig(json!({"clusters": 3}), json!({})).is_err());
    }
}

#[cfg(test)]
mod gen_tests {
    use super::*;

    #[test]
    fn the_kubernetes_endpoint_defaults_to_the_first_node_at_6443() {
        let eps = vec!["10.0.0.5:50000".to_owned()];
        assert_eq!(
            kubernetes_endpoint(None, &eps).as_deref(),
            Some("10.0.0.5:6443")
        );
        assert_eq!(
            kubernetes_endpoint(Some("api.lab"), &eps).as_deref(),
            Some("api.lab:6443")
        );
        assert_eq!(
            kubernetes_endpoint(Some("api.lab:443"), &eps).as_deref(),
            Some("api.lab:443")
        );
        assert_eq!(
            kubernetes_endpoint(Some("fd00::1"), &[]).as_deref(),
            Some("[fd00::1]:6443")
        );
        assert_eq!(
            kubernetes_endpoint(None, &["[fd00::2]:50000".into()]).as_deref(),
            Some("[fd00::2]:6443")
        );
        assert_eq!(kubernetes_endpoint(None, &[]), None);
    }

    #[test]
    fn a_cluster_ca_gives_a_control_plane_with_it_and_a_worker_pinned_to_it() {
        let ca = strake_pki::ClusterCa::generate("lab").unwrap();
        let pin = strake_pki::ca_pin(&ca.ca.cert_pem).unwrap();
        let g = generate(&Generate {
            cluster: "lab",
            hostname: Some("cp-1"),
            install_disk: Some("/dev/vda"),
            endpoints: vec!["10.0.0.5".into()],
            token: BootstrapToken::generate(),
            insecure_registries: &[],
            cluster_ca: Some(&ca),
            kubernetes_endpoint: Some("10.0.0.5:6443"),
        })
        .unwrap();
        let cp = MachineConfig::parse(&g.yaml).unwrap();
        assert_eq!(cp.cluster.ca.as_ref().unwrap().crt, ca.ca.cert_pem);
        assert_eq!(cp.cluster.ca_pin.as_deref(), Some(pin.as_str()));
        let worker = MachineConfig::parse(g.worker.as_deref().unwrap()).unwrap();
        assert_eq!(worker.machine.role, strake_machineconfig::Role::Worker);
        assert!(worker.cluster.ca.is_none() && worker.machine.hostname.is_none());
        assert_eq!(worker.cluster.ca_pin.as_deref(), Some(pin.as_str()));
        assert_eq!(
            worker.cluster.endpoint.as_ref().unwrap().raw(),
            "https://10.0.0.5:6443"
        );
        assert_eq!(worker.cluster.token, cp.cluster.token);
        // The same machine CA: one strakeconfig reaches every node.
        assert_eq!(worker.machine.ca, cp.machine.ca);

        // Without a cluster CA (cluster up): no pin, no worker.
        let g = generate(&Generate {
            cluster: "lab",
            hostname: None,
            install_disk: None,
            endpoints: Vec::new(),
            token: BootstrapToken::generate(),
            insecure_registries: &[],
            cluster_ca: None,
            kubernetes_endpoint: Some("10.0.0.5:6443"),
        })
        .unwrap();
        assert!(g.worker.is_none() && !g.yaml.contains("caPin"));
    }
}
