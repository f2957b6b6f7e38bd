//! `strake controlplane`: the raft store, the API server, the scheduler and the controllers in
//! one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use strake_pki::BootstrapToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the store and the PKI live.
    #[arg(long, default_value = "/var/lib/strake")]
    data_dir: PathBuf,
    /// API listen address.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Address clients reach the API at (host:port); default: this node's address and port.
    #[arg(long)]
    advertise: Option<String>,
    /// Bootstrap token (default: from the boot configuration).
    #[arg(long, env = "STRAKE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The port the store listens on for its peers (on this node's address).
    #[arg(long, default_value_t = 2380)]
    store_port: u16,
    /// Join the cluster whose API is at this `host:port` (default: the boot configuration's
    /// `cluster.endpoint`); without it a fresh control plane starts a new cluster.
    #[arg(long)]
    join: Option<String>,
    /// The control planes' shared virtual IP (default: the boot configuration's), held by the
    /// store's leader; credentials name it as the API's address.
    #[arg(long)]
    vip: Option<std::net::Ipv4Addr>,
    /// How often this control plane writes a snapshot of the store to
    /// `<data-dir>/backups` (as k3s: every 12 hours); 0 turns them off.
    #[arg(long, default_value = "43200")]
    snapshot_interval_seconds: u64,
    /// Scheduled snapshots kept; older ones are deleted.
    #[arg(long, default_value_t = 5)]
    snapshot_retention: usize,
    /// Extra subject alternative names for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    #[arg(long, default_value = "strake")]
    cluster_name: String,
    /// How long pods stay bound to a lost node before they are evicted and replaced, unless
    /// they carry their own tolerations (upstream: 300).
    #[arg(long, default_value_t = strake_apimachinery::admission::DEFAULT_TOLERATION_SECONDS)]
    default_toleration_seconds: i64,
    /// How long a node may go without a heartbeat before it is marked unreachable.
    #[arg(long, default_value = "40")]
    node_monitor_grace_seconds: u64,
    /// Where the built-in local-path provisioner puts volumes on their nodes (each node's
    /// agent must serve the same directory); "" turns the provisioner and its default
    /// `local-path` StorageClass off.
    #[arg(long, default_value = strake_controllers::volumes::LOCAL_PATH_ROOT)]
    local_path_root: String,
    /// The range pods' addresses come from; each node gets a slice of it as its podCIDR.
    /// "" turns node IPAM off (nodes then need their podCIDR set by hand).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's slice of the cluster CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The range Services' cluster IPs come from (kept out of pods' slices).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Where the audit log is written, as JSON lines; "" keeps none.
    #[arg(long, default_value = "/var/log/strake/audit.log")]
    audit_log_path: PathBuf,
    /// An audit.k8s.io/v1 Policy file; by default everything but health checks and node
    /// heartbeats is recorded at Metadata level.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Megabytes an audit log file grows to before it is rotated.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit log files kept.
    #[arg(long, default_value_t = 5)]
    audit_log_maxbackup: usize,
    /// An OpenID Connect provider whose ID tokens authenticate users (an https URL, exactly
    /// the tokens' `iss`).
    #[arg(long)]
    oidc_issuer_url: Option<String>,
    /// The client id ID tokens must be issued for (their `aud`).
    #[arg(long, default_value = "")]
    oidc_client_id: String,
    /// The claim holding the username.
    #[arg(long, default_value = "sub")]
    oidc_username_claim: String,
    /// Put before every username; by default the issuer URL and `#` unless the claim is
    /// `email`; `-` for nothing.
    #[arg(long)]
    oidc_username_prefix: Option<String>,
    /// The claim holding the user's groups (a string or a list of strings).
    #[arg(long)]
    oidc_groups_claim: Option<String>,
    /// Put before every group.
    #[arg(long, default_value = "")]
    oidc_groups_prefix: String,
    /// PEM certificates the provider's serving certificate chains to (the system's bundle
    /// by default).
    #[arg(long)]
    oidc_ca_file: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let boot = crate::boot_config();
    let token = args
        .token
        .clone()
        .or_else(|| boot.as_ref().and_then(|b| b.token.clone()));
    let token = token
        .map(|t| t.parse::<BootstrapToken>())
        .transpose()
        .context("bootstrap token")?;
    if token.is_none() {
        tracing::warn!(
            "no bootstrap token: nobody can fetch credentials; pass strake.token= on the kernel command line"
        );
    }
    let service_cidr: ipnet::Ipv4Net =
        args.service_cluster_ip_range.parse().with_context(|| {
            format!(
                "--service-cluster-ip-range {:?} (an IPv4 CIDR)",
                args.service_cluster_ip_range
            )
        })?;
    let pod_network = if args.cluster_cidr.is_empty() {
        None
    } else {
        let cluster: ipnet::IpNet = args
            .cluster_cidr
            .parse()
            .with_context(|| format!("--cluster-cidr {:?}", args.cluster_cidr))?;
        Some(
            strake_controllers::nodeipam::PodNetwork::new(
                cluster,
                args.node_cidr_mask_size,
                vec![ipnet::IpNet::V4(service_cidr)],
            )
            .map_err(anyhow::Error::msg)
            .context("--cluster-cidr")?,
        )
    };
    let node_ip = crate::agent::primary_ip();
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}:{}", node_ip, args.listen.port()));
    let vip = args.vip.or_else(|| boot.as_ref().and_then(|b| b.vip));
    let mut sans = args.sans.clone();
    sans.push(node_ip.to_string());
    if let Some(vip) = vip {
        sans.push(vip.to_string());
    }
    if let Ok(h) = nix::unistd::gethostname() {
        sans.push(h.to_string_lossy().into_owned());
    }
    let store_dir = args.data_dir.join("store");
    let pki_dir = args.data_dir.join("pki");
    let join = args
        .join
        .clone()
        .or_else(|| boot.as_ref().and_then(|b| b.api_endpoint.clone()));
    let t0 = std::time::Instant::now();
    let store = open_store(&args, &store_dir, &pki_dir, node_ip, join.as_deref()).await?;
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        id = store.node_id(),
        "store ready"
    );
    let server = strake_apiserver::ApiServer::new(
        strake_apiserver::Config {
            listen: args.listen,
            advertise,
            pki_dir: pki_dir.clone(),
            cluster_name: args.cluster_name.clone(),
            token,
            sans,
            default_toleration_seconds: args.default_toleration_seconds,
            service_cidr,
        },
        store,
    )
    .context("setting up the API server")?;
    let (server, vip_holder) = match vip {
        Some(vip) => {
            let holder = crate::vip::spawn(server.store().clone(), vip, node_ip);
            (
                server.with_client_endpoint(format!("{vip}:{}", args.listen.port())),
                Some(holder),
            )
        }
        None => (server, None),
    };
    let server = if args.audit_log_path.as_os_str().is_empty() {
        server
    } else {
        let mut audit = strake_apiserver::AuditConfig::new(args.audit_log_path.clone());
        if let Some(f) = &args.audit_policy_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the audit policy {}", f.display()))?;
            audit.policy = strake_apiserver::AuditPolicy::parse(&text)
                .map_err(|e| anyhow::anyhow!("the audit policy {}: {e}", f.display()))?;
        }
        audit.max_bytes = args.audit_log_maxsize.max(1) << 20;
        audit.max_backups = args.audit_log_maxbackup;
        server.with_audit(audit).context("starting the audit log")?
    };
    let server = match &args.oidc_issuer_url {
        None => server,
        Some(issuer) => {
            let ca = match &args.oidc_ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading --oidc-ca-file {}", f.display()))?,
                ),
                None => None,
            };
            let settings = strake_apiserver::OidcSettings {
                username_claim: args.oidc_username_claim.clone(),
                username_prefix: args.oidc_username_prefix.clone(),
                groups_claim: args.oidc_groups_claim.clone(),
                groups_prefix: args.oidc_groups_prefix.clone(),
                ..strake_apiserver::OidcSettings::new(issuer, &args.oidc_client_id)
            };
            server
                .with_oidc(settings, ca)
                .context("trusting the OIDC provider")?
        }
    };
    server
        .ensure_defaults()
        .await
        .context("creating default namespaces")?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "strake".into());
    strake_controllers::manager::start(
        server.registry(),
        strake_controllers::manager::Options {
            // A restarted instance is a new holder, as upstream names them.
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            workers: 4,
            ca_pem: Some(server.ca_pem().to_string()),
            node_monitor_grace: std::time::Duration::from_secs(args.node_monitor_grace_seconds),
            metrics: None,
            local_path: (!args.local_path_root.is_empty()).then(|| args.local_path_root.clone()),
            pod_network,
            signer: Some(server.ca().clone()),
        },
    );
    if args.snapshot_interval_seconds > 0 {
        crate::snapshots::schedule(
            server.store().clone(),
            pki_dir.clone(),
            args.data_dir.join("backups"),
            std::time::Duration::from_secs(args.snapshot_interval_seconds),
            args.snapshot_retention.max(1),
        );
    }
    stop_on_sigterm(server.store().clone(), vip_holder)?;
    server.serve().await.context("API server")?;
    Ok(())
}

/// On SIGTERM (init stopping the node, or a service restart): hands the store's leadership
/// to another voter if this node leads (writes are held meanwhile, then go to the new leader;
/// otherwise the others would notice only after a lease and elect), gives up the virtual IP,
/// so that nothing here answers for it while the new leader takes it, and stops the store;
/// then exits. Without this the process died at once but the address stayed on the link
/// until the node powered off, and its clients failed for as long.
fn stop_on_sigterm(
    store: strake_store::Store,
    vip: Option<crate::vip::Holder>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    tokio::spawn(async move {
        term.recv().await;
        tracing::info!("stopping: leaving the store to the other members");
        if let Some(leader) = store.hand_over().await {
            tracing::info!(leader, "stopping: node {leader} leads the store now");
        }
        if let Some(vip) = vip {
            vip.stop().await;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(3), store.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "stopping the store"),
            Err(_) => tracing::warn!("the store did not stop within 3 s"),
        }
        std::process::exit(0);
    });
    Ok(())
}

/// Opens this control plane's store node: a listening lone voter that others join, or, with
/// `join` and no store yet (or without the cluster's shared keys), a node that joins the
/// cluster at `join` and returns once it is a voter. With a backup staged for restore, a new
/// one-member cluster from that backup, whatever `join` says.
async fn open_store(
    args: &Args,
    store_dir: &std::path::Path,
    pki_dir: &std::path::Path,
    node_ip: std::net::IpAddr,
    join: Option<&str>,
) -> anyhow::Result<strake_store::Store> {
    let restoring = crate::restore::prepare(&args.data_dir, store_dir, pki_dir)?;
    let join = join.filter(|_| restoring.is_none());
    let id = crate::membership::store_id(&args.data_dir, store_dir)?;
    let fresh = std::fs::read_dir(store_dir).map_or(true, |mut d| d.next().is_none());
    let ca = match (strake_pki::ClusterCa::load(pki_dir)?, join) {
        (Some(ca), _) => ca,
        (None, Some(endpoint)) => anyhow::bail!(
            "this control plane joins the cluster at {endpoint} but has no cluster CA in {}: give it the cluster's CA (cluster.ca in its machine config; strakectl gen config writes it)",
            pki_dir.display()
        ),
        (None, None) => strake_pki::ClusterCa::load_or_generate(pki_dir, &args.cluster_name)
            .context("creating the cluster CA")?,
    };
    let tls = crate::membership::peer_tls(&ca, id)?;
    let peer_address = std::net::SocketAddr::new(node_ip, args.store_port).to_string();
    let joining = join.filter(|_| fresh || !crate::membership::has_shared_files(pki_dir));
    let cfg = strake_store::StoreConfig {
        join: joining.is_some(),
        ..strake_store::StoreConfig::cluster(
            id,
            store_dir,
            peer_address.clone(),
            Vec::new(),
            tls.clone(),
        )
    };
    if let Some(staged) = restoring {
        let store = strake_store::Store::restore(&staged.path, cfg)
            .await
            .with_context(|| format!("restoring the store from {}", staged.path.display()))?;
        crate::restore::finish(&staged);
        tracing::info!(
            id,
            revision = staged.contents.revision,
            keys = staged.contents.keys,
            kept_aside = %staged.aside.display(),
            "restored the store from a backup: a new one-member cluster, which the other control planes join"
        );
        renew_peer_certificate(store.clone(), ca, id);
        return Ok(store);
    }
    let store = strake_store::Store::open(cfg)
        .await
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    if let Some(endpoint) = joining {
        tracing::info!(id, endpoint, %peer_address, "joining the cluster's store");
        crate::membership::join(endpoint, &tls, id, &peer_address, pki_dir).await?;
    }
    renew_peer_certificate(store.clone(), ca, id);
    Ok(store)
}

/// How often the peer certificate's age is looked at.
const PEER_CERT_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Issues store node `id` a new peer certificate once two thirds of the current one's life
/// have passed, and has the store present it from its next handshakes on: a control plane
/// that runs for longer than a certificate lasts needs no restart.
fn renew_peer_certificate(store: strake_store::Store, ca: strake_pki::ClusterCa, id: u64) {
    tokio::spawn(async move {
        let mut issued = std::time::Instant::now();
        loop {
            tokio::time::sleep(PEER_CERT_CHECK).await;
            if issued.elapsed() < strake_store::PEER_CERT_LIFETIME * 2 / 3 {
                continue;
            }
            let renewed = crate::membership::peer_tls(&ca, id)
                .and_then(|tls| store.rotate_peer_tls(&tls).map_err(anyhow::Error::from));
            match renewed {
                Ok(()) => issued = std::time::Instant::now(),
                Err(e) => tracing::warn!(error = %e, "cannot renew the store's peer certificate"),
            }
        }
    });
}
