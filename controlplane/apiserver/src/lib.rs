//! The Kubernetes-compatible API server: REST over HTTPS (h2 + http/1.1), discovery, watch,
//! Table output, authentication with cluster-CA client certificates and bootstrap tokens.
//! Owns the HTTP surface and the object rules; persists only through `strake-store`'s public API.

mod auth;
mod bootstrap;
mod controllers;
mod discovery;
pub mod error;
mod handlers;
pub mod kinds;
mod openapi;
mod pods;
pub mod registry;
mod routes;
mod selectors;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Namespace;
use strake_pki::{BootstrapToken, CertifiedKey, ClusterCa};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use strake_pki::Credentials;
pub use discovery::MINOR;
pub use pods::bind;
pub use registry::{Deleted, Filter, Registry};

/// Errors that stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cluster PKI: {0}")]
    Pki(#[from] strake_pki::PkiError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("building the node client: {0}")]
    Client(String),
    #[error("creating default object {what}: {source}")]
    Defaults { what: String, source: error::ApiError },
}

/// How the API server is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The address clients use (`host:port`), reported in discovery and credentials.
    pub advertise: String,
    /// Where the CA and serving certificates live.
    pub pki_dir: PathBuf,
    pub cluster_name: String,
    /// The bootstrap token: holders may fetch admin and node credentials.
    pub token: Option<BootstrapToken>,
    /// Extra names and IPs for the serving certificate.
    pub sans: Vec<String>,
}

/// Shared state of all handlers.
pub struct AppState {
    pub registry: Registry,
    pub ca: ClusterCa,
    pub token: Option<BootstrapToken>,
    pub advertise: String,
    /// Client for node agents (logs), authenticating as the API server.
    pub node_client: reqwest::Client,
}

pub struct ApiServer {
    app: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    listen: SocketAddr,
}

impl ApiServer {
    pub fn new(cfg: Config, store: strake_store::Store) -> Result<Self, ServerError> {
        let ca = ClusterCa::load_or_generate(&cfg.pki_dir, &cfg.cluster_name)?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "kubernetes".into(), "kubernetes.default".into(), "kubernetes.default.svc".into()];
        if let Some(host) = cfg.advertise.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()) {
            sans.push(host);
        }
        sans.extend(cfg.sans.iter().cloned());
        sans.sort();
        sans.dedup();
        let serving = ca.issue_server("kube-apiserver", &sans)?;
        let tls = strake_pki::server_config(&serving, &ca.ca.cert_pem, &[b"h2", b"http/1.1"])?;
        let kubelet_client: CertifiedKey = ca.issue_client("kube-apiserver-kubelet-client", &["system:masters"], time::Duration::days(365))?;
        let client_tls = strake_pki::client_config(&ca.ca.cert_pem, Some(&kubelet_client))?;
        let node_client = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ServerError::Client(e.to_string()))?;
        let app = Arc::new(AppState { registry: Registry::new(store), ca, token: cfg.token, advertise: cfg.advertise, node_client });
        Ok(Self { app, tls: Arc::new(tls), listen: cfg.listen })
    }

    pub fn registry(&self) -> Registry {
        self.app.registry.clone()
    }

    pub fn ca_pem(&self) -> &str {
        &self.app.ca.ca.cert_pem
    }

    /// Creates the namespaces every cluster has.
    pub async fn ensure_defaults(&self) -> Result<(), ServerError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("static namespace");
            match self.app.registry.create(None, obj).await {
                Ok(_) | Err(error::ApiError::AlreadyExists { .. }) => {}
                Err(source) => return Err(ServerError::Defaults { what: format!("namespace {ns}"), source }),
            }
        }
        Ok(())
    }

    /// Serves until the listener fails. Also runs the built-in namespace controller.
    pub async fn serve(self) -> Result<(), ServerError> {
        let listener = TcpListener::bind(self.listen).await.map_err(|source| ServerError::Listen { addr: self.listen, source })?;
        self.serve_on(listener).await
    }

    pub async fn serve_on(self, listener: TcpListener) -> Result<(), ServerError> {
        let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: self.listen, source })?;
        tokio::spawn(controllers::namespaces(self.app.registry.clone()));
        let router = routes::router(self.app.clone());
        let acceptor = TlsAcceptor::from(self.tls.clone());
        tracing::info!(%addr, "API server listening");
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let cert_identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| strake_pki::peer_identity(c).ok());
                let svc = router.layer(axum::Extension(auth::ConnInfo { peer, cert_identity }));
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
            });
        }
    }
}
