//! The Kubernetes-compatible API server: the HTTP surface (HTTPS, h2 + http/1.1) over the
//! machinery in `strake-apimachinery` and the kinds in `strake-kinds` — routing by request-info,
//! discovery and OpenAPI from the resource table, patches, server-side apply, subresources,
//! reviews, authentication. Persists only through the registry's store trait.

mod apply;
mod audit;
mod auth;
mod authz;
mod bootstrap;
mod certificates;
mod controllers;
mod discovery;
mod dispatch;
mod endpoints;
mod limits;
mod oidc;
mod openapi;
mod pods;
mod policies;
mod protobuf;
mod render;
mod reviews;
mod routes;
pub mod storeadmin;
mod streams;
mod subresources;
mod tokens;
pub mod typed;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use strake_pki::{BootstrapToken, CertifiedKey, ClusterCa};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use audit::{AuditConfig, Policy as AuditPolicy};
pub use discovery::MINOR;
pub use limits::Limits;
pub use strake_apimachinery::admission::{DEFAULT_SERVICE_CIDR, DEFAULT_TOLERATION_SECONDS};
pub use strake_apimachinery::{ApiError, Filter, Registry};
pub use strake_tokens::oidc::Settings as OidcSettings;

pub use strake_pki::Credentials;

/// Errors that stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cluster PKI: {0}")]
    Pki(#[from] strake_pki::PkiError),
    #[error("{0}")]
    Tokens(#[from] strake_tokens::KeyError),
    #[error("{0}")]
    Encryption(String),
    #[error("the OIDC provider: {0}")]
    Oidc(String),
    #[error("the audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the node client: {0}")]
    Client(String),
    #[error("creating default object {what}: {source}")]
    Defaults { what: String, source: Box<ApiError> },
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
    /// How long new pods tolerate their node being lost, unless they say (DefaultTolerationSeconds).
    pub default_toleration_seconds: i64,
    /// Where Services' cluster IPs come from; the first is the `kubernetes` Service's.
    pub service_cidr: ipnet::Ipv4Net,
}

/// Shared state of all handlers.
pub struct AppState {
    pub registry: Registry,
    /// The `kubernetes` Service's cluster IP.
    pub kubernetes_ip: std::net::Ipv4Addr,
    /// The `kube-dns` Service's cluster IP, which every node's agent answers.
    pub dns_ip: std::net::Ipv4Addr,
    pub ca: ClusterCa,
    pub token: Option<BootstrapToken>,
    pub advertise: String,
    /// Client for node agents (logs), authenticating as the API server.
    pub node_client: reqwest::Client,
    /// The same identity for the streams proxied to agents (exec): HTTP/1.1 only, which
    /// the upgrade needs.
    pub node_tls: Arc<rustls::ClientConfig>,
    /// Every request's authorizer (system:masters, nodes, RBAC), fed by watches.
    pub authz: Arc<strake_rbac::Authorizer>,
    /// Signs and checks service-account tokens.
    pub tokens: strake_tokens::Signer,
    /// Requests in flight and watches per user.
    pub gate: limits::Gate,
    /// The audit log, when one is kept.
    pub audit: Option<audit::Log>,
    /// Users of an OpenID Connect provider, when one is trusted.
    pub oidc: Option<oidc::Oidc>,
    /// Where credentials this server issues tell clients to reach the API (`host:port`): the
    /// control planes' virtual IP when there is one, else `advertise`.
    pub client_endpoint: String,
    /// The raft store itself, for membership and backups (`storeadmin`).
    pub store: strake_store::Store,
    /// Where the CA and the cluster's shared keys live.
    pub pki_dir: PathBuf,
}

/// The periodic upkeep the server does for the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Housekeeping {
    /// Every interval the store is compacted to the revision it had one interval earlier, so
    /// watches can resume within the window (kube-apiserver: 5 minutes). Zero disables it.
    pub compaction: Duration,
    /// Events not seen for this long are deleted (kube-apiserver's event TTL: 1 hour).
    pub event_ttl: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            compaction: Duration::from_secs(300),
            event_ttl: strake_apimachinery::events::DEFAULT_TTL,
        }
    }
}

/// The encryption configuration's file in the PKI directory (an EncryptionConfiguration,
/// written with a fresh key at first start).
pub const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";

pub struct ApiServer {
    encrypted:
        Arc<strake_apimachinery::storage::Encrypted<strake_apimachinery::storage::RaftStore>>,
    housekeeping: Housekeeping,
    app: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    listen: SocketAddr,
    webhooks: Arc<webhooks::Webhooks>,
    policies: Arc<policies::Policies>,
    serving: Serving,
}

/// The serving certificate and when it is renewed: a new one from the cluster CA once two
/// thirds of its lifetime have passed, presented from the next handshake on (no restart, and
/// open connections such as watches keep going).
struct Serving {
    cert: Arc<strake_pki::RotatingCert>,
    sans: Vec<String>,
    lifetime: Duration,
    check: Duration,
}

/// How long a serving certificate lasts by default.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

impl ApiServer {
    pub fn new(cfg: Config, store: strake_store::Store) -> Result<Self, ServerError> {
        let ca = ClusterCa::load_or_generate(&cfg.pki_dir, &cfg.cluster_name)?;
        let tokens = strake_tokens::Signer::load_or_generate(&cfg.pki_dir)?;
        let services = strake_apimachinery::servicealloc::ServiceAllocation::new(
            cfg.service_cidr,
            strake_apimachinery::servicealloc::NODE_PORTS,
        );
        let kubernetes_ip = services.first_ip();
        let mut sans = vec![
            "localhost".to_string(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
            // Pods reach the API at the `kubernetes` Service's address.
            kubernetes_ip.to_string(),
        ];
        if let Some(host) = cfg
            .advertise
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        {
            sans.push(host);
        }
        sans.extend(cfg.sans.iter().cloned());
        sans.sort();
        sans.dedup();
        let serving = ca.issue_server_for(
            "kube-apiserver",
            &sans,
            time::Duration::seconds(SERVING_LIFETIME.as_secs() as i64),
        )?;
        let rotating = strake_pki::RotatingCert::new(&serving)?;
        let tls = strake_pki::rotating_server_config(
            rotating.clone(),
            &ca.ca.cert_pem,
            &[b"h2", b"http/1.1"],
        )?;
        let kubelet_client: CertifiedKey = ca.issue_client(
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            time::Duration::days(365),
        )?;
        let client_tls = strake_pki::client_config(&ca.ca.cert_pem, Some(&kubelet_client))?;
        let mut node_tls = client_tls.clone();
        node_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let node_client = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ServerError::Client(e.to_string()))?;
        // Secrets (and whatever else the configuration names) are sealed at rest.
        let encryption = strake_apimachinery::storage::EncryptionConfig::load_or_generate(
            &cfg.pki_dir.join(ENCRYPTION_CONFIG),
        )
        .map_err(ServerError::Encryption)?;
        let raft_store = store.clone();
        let encrypted = Arc::new(strake_apimachinery::storage::Encrypted::new(
            strake_apimachinery::storage::RaftStore::new(store),
            encryption,
        ));
        let store: Arc<dyn strake_apimachinery::storage::ObjectStore> = encrypted.clone();
        let dns_ip = services.dns_ip();
        let authz = Arc::new(strake_rbac::Authorizer::new());
        let webhooks = webhooks::Webhooks::new(ca.ca.cert_pem.clone());
        let policies = policies::Policies::new();
        let admission =
            strake_apimachinery::admission::with_services(cfg.default_toleration_seconds, services)
                .with_before("PodSecurity", webhooks.mutating())
                .with(strake_rbac::admission::NodeRestriction)
                .with(strake_rbac::admission::Escalation {
                    authz: authz.clone(),
                })
                .with(certificates::Certificates {
                    authz: authz.clone(),
                })
                .with(policies.plugin())
                .with(webhooks.validating());
        let registry = Registry::new(store, strake_kinds::builtin_table(), admission);
        let app = Arc::new(AppState {
            registry,
            ca,
            token: cfg.token,
            advertise: cfg.advertise.clone(),
            node_client,
            node_tls: Arc::new(node_tls),
            kubernetes_ip,
            dns_ip,
            authz,
            tokens,
            gate: limits::Gate::new(Limits::default()),
            audit: None,
            oidc: None,
            client_endpoint: cfg.advertise.clone(),
            store: raft_store,
            pki_dir: cfg.pki_dir.clone(),
        });
        Ok(Self {
            encrypted,
            housekeeping: Housekeeping::default(),
            app,
            tls: Arc::new(tls),
            listen: cfg.listen,
            webhooks,
            policies,
            serving: Serving {
                cert: rotating,
                sans,
                lifetime: SERVING_LIFETIME,
                check: Duration::from_secs(3600),
            },
        })
    }

    /// Changes the limits against abuse (before serving).
    pub fn with_limits(mut self, l: Limits) -> Self {
        match Arc::get_mut(&mut self.app) {
            Some(app) => app.gate = limits::Gate::new(l),
            None => tracing::warn!("the API server's limits cannot change once it serves"),
        }
        self
    }

    /// Keeps an audit log as `cfg` says (before serving).
    pub fn with_audit(mut self, cfg: AuditConfig) -> Result<Self, ServerError> {
        let path = cfg.path.clone();
        let log = audit::Log::start(cfg).map_err(|source| ServerError::Audit { path, source })?;
        match Arc::get_mut(&mut self.app) {
            Some(app) => app.audit = Some(log),
            None => tracing::warn!("the audit log cannot change once the server serves"),
        }
        Ok(self)
    }

    /// The raft store under this server.
    pub fn store(&self) -> &strake_store::Store {
        &self.app.store
    }

    /// Tells clients given credentials to reach the API at `endpoint` (`host:port`, the
    /// control planes' virtual IP) instead of this server's own address (before serving).
    pub fn with_client_endpoint(mut self, endpoint: String) -> Self {
        match Arc::get_mut(&mut self.app) {
            Some(app) => app.client_endpoint = endpoint,
            None => tracing::warn!("the client endpoint cannot change once the server serves"),
        }
        self
    }

    /// Trusts an OpenID Connect provider's ID tokens (before serving); `ca_pem` verifies the
    /// provider (the system's bundle when None).
    pub fn with_oidc(
        mut self,
        settings: OidcSettings,
        ca_pem: Option<String>,
    ) -> Result<Self, ServerError> {
        let o = oidc::Oidc::new(settings, ca_pem).map_err(ServerError::Oidc)?;
        match Arc::get_mut(&mut self.app) {
            Some(app) => app.oidc = Some(o),
            None => tracing::warn!("the OIDC provider cannot change once the server serves"),
        }
        Ok(self)
    }

    /// Serving certificates last `lifetime` and are checked for renewal every `check` (tests
    /// shorten both); the current one is replaced at once.
    pub fn with_serving_rotation(
        mut self,
        lifetime: Duration,
        check: Duration,
    ) -> Result<Self, ServerError> {
        let next = self.app.ca.issue_server_for(
            "kube-apiserver",
            &self.serving.sans,
            time::Duration::seconds(lifetime.as_secs() as i64),
        )?;
        self.serving.cert.set(&next)?;
        self.serving.lifetime = lifetime;
        self.serving.check = check;
        Ok(self)
    }

    /// Turns authorization off (upstream's `--authorization-mode=AlwaysAllow`): every
    /// authenticated request is allowed. For measuring what authorization costs; a cluster
    /// never runs so.
    pub fn with_always_allow(self) -> Self {
        self.app.authz.set_always_allow(true);
        self
    }

    /// Changes the periodic upkeep (tests shorten it).
    pub fn with_housekeeping(mut self, h: Housekeeping) -> Self {
        self.housekeeping = h;
        self
    }

    pub fn registry(&self) -> Registry {
        self.app.registry.clone()
    }

    /// The cluster CA (the controllers' certificate signer uses it).
    pub fn ca(&self) -> &ClusterCa {
        &self.app.ca
    }

    pub fn ca_pem(&self) -> &str {
        &self.app.ca.ca.cert_pem
    }

    /// Creates the objects every cluster has: the system namespaces and priority classes, and
    /// serves the CRDs already stored.
    pub async fn ensure_defaults(&self) -> Result<(), ServerError> {
        let table = self.app.registry.table().snapshot();
        let mut objects: Vec<(&str, &str, &str, serde_json::Value)> = Vec::new();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            objects.push((
                "",
                "v1",
                "namespaces",
                serde_json::json!({"metadata": {"name": ns}}),
            ));
        }
        // The `kubernetes` Service on the range's first address, and where it leads: this API
        // server (its Endpoints and EndpointSlice are rewritten on every start, as upstream's
        // endpoint reconciler keeps them).
        let ip = self.app.kubernetes_ip.to_string();
        objects.push(("", "v1", "services", serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        })));
        // The cluster DNS Service, as kubeadm names it: the agents answer its address on
        // every node, so it needs no endpoints.
        let dns = self.app.dns_ip.to_string();
        objects.push((
            "",
            "v1",
            "services",
            serde_json::json!({
                "metadata": {"name": "kube-dns", "namespace": "kube-system",
                    "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "Strake-DNS",
                        "kubernetes.io/cluster-service": "true"}},
                "spec": {"type": "ClusterIP", "clusterIP": dns, "clusterIPs": [dns],
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
            }),
        ));
        let advertised = self.app.advertise.parse::<std::net::SocketAddr>().ok();
        for (name, value, desc) in [
            (
                "system-node-critical",
                2_000_001_000i64,
                "Used for system critical pods that must not be moved from their current node.",
            ),
            (
                "system-cluster-critical",
                2_000_000_000,
                "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
            ),
        ] {
            objects.push(("scheduling.k8s.io", "v1", "priorityclasses", serde_json::json!({"metadata": {"name": name}, "value": value, "description": desc})));
        }
        for (group, version, plural, obj) in objects {
            let def =
                table
                    .lookup(group, version, plural)
                    .ok_or_else(|| ServerError::Defaults {
                        what: plural.into(),
                        source: Box::new(ApiError::NoRoute),
                    })?;
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (obj, _) = def
                .strategy
                .decode(def, obj, Default::default())
                .map_err(|source| ServerError::Defaults {
                    what: name.clone(),
                    source: Box::new(source),
                })?;
            match self
                .app
                .registry
                .create(
                    def,
                    obj["metadata"]["namespace"]
                        .as_str()
                        .map(str::to_string)
                        .as_deref(),
                    obj.clone(),
                    &Default::default(),
                )
                .await
            {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(source) => {
                    return Err(ServerError::Defaults {
                        what: format!("{plural} {name}"),
                        source: Box::new(source),
                    });
                }
            }
        }
        if let Some(addr) = advertised {
            // This server and every other that renewed its lease lately.
            let live = endpoints::renew_and_list(&self.app.registry, addr)
                .await
                .map_err(|source| ServerError::Defaults {
                    what: "the API servers' leases".into(),
                    source: Box::new(source),
                })?;
            endpoints::point_kubernetes_at(&self.app.registry, &live)
                .await
                .map_err(|source| ServerError::Defaults {
                    what: "endpoints default/kubernetes".into(),
                    source: Box::new(source),
                })?;
        }
        controllers::crd_pass(&self.app.registry)
            .await
            .map_err(|source| ServerError::Defaults {
                what: "custom resource definitions".into(),
                source: Box::new(source),
            })?;
        // Values sealed with an older key (or not at all) are sealed with the current one.
        let resealed =
            self.encrypted.rewrite().await.map_err(|e| {
                ServerError::Encryption(format!("re-encrypting stored objects: {e}"))
            })?;
        if resealed > 0 {
            tracing::info!(
                objects = resealed,
                "re-encrypted stored objects with the current key"
            );
        }
        authz::reconcile_defaults(&self.app.registry)
            .await
            .map_err(|source| ServerError::Defaults {
                what: "the default RBAC policy".into(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Serves until the listener fails. Also runs the built-in namespace controller.
    pub async fn serve(self) -> Result<(), ServerError> {
        let listener =
            TcpListener::bind(self.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: self.listen,
                    source,
                })?;
        self.serve_on(listener).await
    }

    pub async fn serve_on(self, listener: TcpListener) -> Result<(), ServerError> {
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: self.listen,
                source,
            })?;
        if let Ok(advertised) = self.app.advertise.parse::<SocketAddr>() {
            tokio::spawn(endpoints::reconcile(self.app.registry.clone(), advertised));
        }
        tokio::spawn(renew_serving(
            self.app.ca.clone(),
            self.serving.cert.clone(),
            self.serving.sans.clone(),
            self.serving.lifetime,
            self.serving.check,
        ));
        authz::start(&self.app.registry, &self.app.authz)
            .await
            .map_err(|source| ServerError::Defaults {
                what: "the authorizer's state".into(),
                source: Box::new(source),
            })?;
        self.policies
            .start(&self.app.registry)
            .await
            .map_err(|source| ServerError::Defaults {
                what: "the validating admission policies".into(),
                source: Box::new(source),
            })?;
        self.webhooks
            .start(&self.app.registry)
            .await
            .map_err(|source| ServerError::Defaults {
                what: "the admission webhook configurations".into(),
                source: Box::new(source),
            })?;
        tokio::spawn(controllers::crds(self.app.registry.clone()));
        tokio::spawn(controllers::compactor(
            self.app.registry.clone(),
            self.housekeeping.compaction,
        ));
        tokio::spawn(controllers::event_sweeper(
            self.app.registry.clone(),
            self.housekeeping.event_ttl,
        ));
        let router = routes::router(self.app.clone());
        let acceptor = TlsAcceptor::from(self.tls.clone());
        tracing::info!(%addr, "API server listening");
        let limits = self.app.gate.limits;
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
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let cert_identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| strake_pki::peer_identity(c).ok());
                let svc = router.layer(axum::Extension(auth::ConnInfo {
                    peer,
                    cert_identity,
                }));
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192));
                builder
                    .http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .max_header_list_size(limits.max_header_bytes as u32);
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
            });
        }
    }
}

/// Renews the serving certificate once two thirds of its lifetime have passed, for as long as
/// the server runs.
async fn renew_serving(
    ca: ClusterCa,
    cert: Arc<strake_pki::RotatingCert>,
    sans: Vec<String>,
    lifetime: Duration,
    check: Duration,
) {
    let mut issued = std::time::Instant::now();
    loop {
        tokio::time::sleep(check).await;
        if issued.elapsed() < lifetime * 2 / 3 {
            continue;
        }
        let next = ca.issue_server_for(
            "kube-apiserver",
            &sans,
            time::Duration::seconds(lifetime.as_secs() as i64),
        );
        match next.map(|c| cert.set(&c)) {
            Ok(Ok(())) => {
                issued = std::time::Instant::now();
                tracing::info!("renewed the API server's serving certificate");
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot renew the API server's serving certificate");
            }
        }
    }
}
