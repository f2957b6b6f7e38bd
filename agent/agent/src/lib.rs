//! The node agent (kubelet role): registers the Node and keeps it Ready, runs the pods bound to
//! it (pull, unpack, overlay rootfs, container through the runtime's shim), reports their status,
//! and serves container logs to the API server. Must not make mount or container syscalls itself:
//! those belong to `strake-runtime`.

mod env;
mod events;
mod lifecycle;
mod localpath;
mod logs;
mod netpol;
mod node;
mod pods;
mod portforward;
mod probe;
mod proxy;
mod routes;
mod sandbox;
mod status;
mod streams;
mod volumes;
mod worker;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strake_kubeclient::{Client, ClientError, Credentials};
use strake_oci::{ImageStore, RegistryConfig};
use strake_pki::BootstrapToken;
use strake_runtime::Runtime;

pub use sandbox::POD_BRIDGE;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API: {0}")]
    Api(#[from] ClientError),
    #[error("image store: {0}")]
    Image(#[from] strake_oci::OciError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is corrupt: {detail}")]
    Credentials { path: PathBuf, detail: String },
    #[error("agent API server: {0}")]
    Serve(String),
    #[error("no bootstrap token configured and no saved credentials in {0}")]
    NoToken(PathBuf),
}

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// `host:port` of the API server.
    pub api_server: String,
    pub token: Option<BootstrapToken>,
    /// `cluster.caPin`: the CA the token vouches for must have it before the token is sent.
    pub ca_pin: Option<String>,
    pub node_ip: IpAddr,
    /// Persistent state: credentials, images, pod rootfs.
    pub data_dir: PathBuf,
    /// Runtime state of containers (tmpfs).
    pub run_dir: PathBuf,
    /// Container logs, `<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_dir: PathBuf,
    /// Port of the agent's own HTTPS API (logs).
    pub port: u16,
    pub registry: RegistryConfig,
    /// The binary that implements `shim` (the multi-call `strake`).
    pub shim_exe: PathBuf,
    /// Extra node labels (e.g. the control-plane role).
    pub labels: Vec<(String, String)>,
    /// Where local-path volumes live on this node; only directories under it are removed
    /// when their volume is deleted.
    pub local_path_root: PathBuf,
    /// The cluster DNS servers for dnsPolicy ClusterFirst pods; empty: none yet.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Every pod's range (the control plane's `--cluster-cidr`): pods' traffic to it is never
    /// masqueraded.
    pub cluster_cidr: strake_net::Ipv4Net,
    /// How other nodes' pods are reached: host-gw, VXLAN, or each as fits (auto).
    pub pod_network_backend: strake_net::routes::Backend,
}

/// Everything the pod workers share.
pub(crate) struct Shared {
    pub cfg: AgentConfig,
    pub client: Client,
    pub runtime: Runtime,
    pub images: ImageStore,
    /// The node's pod network, once it has a podCIDR.
    pub network: tokio::sync::watch::Sender<Option<Arc<sandbox::PodNetwork>>>,
}

async fn credentials(cfg: &AgentConfig) -> Result<Credentials, AgentError> {
    let path = cfg.data_dir.join("credentials.json");
    if let Ok(bytes) = std::fs::read(&path) {
        return serde_json::from_slice(&bytes).map_err(|e| AgentError::Credentials {
            path: path.clone(),
            detail: e.to_string(),
        });
    }
    let token = cfg
        .token
        .clone()
        .ok_or_else(|| AgentError::NoToken(cfg.data_dir.clone()))?;
    let body = serde_json::json!({"nodeName": cfg.node_name, "addresses": [cfg.node_ip]});
    let url = format!("https://{}", cfg.api_server);
    let mut delay = Duration::from_millis(200);
    let creds = loop {
        match strake_kubeclient::bootstrap_pinned(
            &url,
            &token,
            cfg.ca_pin.as_deref(),
            "/strake/v1/node-credentials",
            &body,
        )
        .await
        {
            Ok(c) => break c,
            Err(e @ ClientError::Transport { .. })
            | Err(e @ ClientError::Api { code: 503, .. }) => {
                tracing::info!(error = %e, "API server not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::Io {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&creds).unwrap_or_default()).map_err(|source| {
        AgentError::Io {
            path: tmp.clone(),
            source,
        }
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| AgentError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(creds)
}

/// Keeps the client's list of API servers current: the configured endpoint first (a virtual
/// IP, say), then every API server the `kubernetes` Service's endpoints name, so the agent
/// moves to another control plane when the one it uses goes away.
async fn follow_api_servers(client: Client, configured: String) {
    loop {
        match client
            .get::<k8s_openapi::api::core::v1::Endpoints>(Some("default"), "kubernetes")
            .await
        {
            Ok(ep) => {
                let mut urls = vec![configured.clone()];
                for subset in ep.subsets.unwrap_or_default() {
                    let port = subset
                        .ports
                        .as_ref()
                        .and_then(|p| p.first())
                        .map_or(6443, |p| p.port);
                    for a in subset.addresses.unwrap_or_default() {
                        let url = if a.ip.contains(':') {
                            format!("https://[{}]:{port}", a.ip)
                        } else {
                            format!("https://{}:{port}", a.ip)
                        };
                        if !urls.contains(&url) {
                            urls.push(url);
                        }
                    }
                }
                if urls != client.servers() {
                    tracing::info!(servers = ?urls, "API servers this agent may use");
                    client.set_servers(urls);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the API servers' endpoints"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
}

/// Runs the agent until a fatal error.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let creds = credentials(&cfg).await?;
    let key = strake_pki::CertifiedKey {
        cert_pem: creds.cert_pem.clone(),
        key_pem: creds.key_pem.clone(),
    };
    let client = Client::new(
        &format!("https://{}", cfg.api_server),
        &creds.ca_pem,
        Some(&key),
    )?;
    let images = ImageStore::open(&cfg.data_dir.join("images"), cfg.registry.clone())?;
    let runtime = Runtime::new(cfg.run_dir.join("containers"), cfg.shim_exe.clone());
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        client,
        runtime,
        images,
        network: tokio::sync::watch::Sender::new(None),
    });
    worker::sweep_leftovers(&shared).await;
    node::register(&shared).await?;
    tokio::spawn(node::heartbeat(shared.clone()));
    tokio::spawn(follow_api_servers(
        shared.client.clone(),
        format!("https://{}", cfg.api_server),
    ));
    tokio::spawn(sandbox::run_network(shared.clone()));
    tokio::spawn(proxy::run(shared.clone()));
    tokio::spawn(netpol::run(shared.clone()));
    tokio::spawn(localpath::run(shared.clone()));
    let log_server = logs::serve(shared.clone(), &creds);
    let pods = pods::run(shared.clone());
    tokio::select! {
        r = log_server => r,
        r = pods => r,
    }
}
