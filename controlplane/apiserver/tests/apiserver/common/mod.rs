//! One loopback API server for the integration tests: a real single-voter store in a temporary
//! directory, HTTPS on 127.0.0.1, admin credentials from the bootstrap flow, a kubeconfig, and
//! an HTTP client that presents the admin certificate.

use std::path::PathBuf;

use serde_json::json;
use strake_apiserver::{ApiServer, Config, Housekeeping, Limits, Registry};
use strake_pki::{BootstrapToken, CertifiedKey, Credentials};

pub struct Loopback {
    pub base: String,
    pub http: reqwest::Client,
    pub creds: Credentials,
    pub kubeconfig: PathBuf,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> Loopback {
    start_with(Housekeeping::default()).await
}

pub async fn start_with(housekeeping: Housekeeping) -> Loopback {
    start_limited(housekeeping, Limits::default()).await
}

pub async fn start_limited(housekeeping: Housekeeping, limits: Limits) -> Loopback {
    start_full(housekeeping, limits, None).await
}

pub async fn start_full(
    housekeeping: Housekeeping,
    limits: Limits,
    audit: Option<strake_apiserver::AuditConfig>,
) -> Loopback {
    start_configured(housekeeping, limits, audit, |s| s).await
}

/// A server `configure` adds to before it serves (an OIDC provider).
pub async fn start_configured(
    housekeeping: Housekeeping,
    limits: Limits,
    audit: Option<strake_apiserver::AuditConfig>,
    configure: impl FnOnce(ApiServer) -> ApiServer,
) -> Loopback {
    let dir = tempfile::tempdir().unwrap();
    let store = strake_store::Store::open(strake_store::StoreConfig::single(
        1,
        dir.path().join("store"),
    ))
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = BootstrapToken::generate();
    let config = Config {
        listen: addr,
        advertise: addr.to_string(),
        pki_dir: dir.path().join("pki"),
        cluster_name: "t".into(),
        token: Some(token.clone()),
        sans: vec![],
        default_toleration_seconds: strake_apimachinery::admission::DEFAULT_TOLERATION_SECONDS,
        service_cidr: strake_apimachinery::admission::DEFAULT_SERVICE_CIDR,
    };
    let server = ApiServer::new(config, store)
        .unwrap()
        .with_housekeeping(housekeeping)
        .with_limits(limits);
    let server = match audit {
        Some(a) => server.with_audit(a).unwrap(),
        None => server,
    };
    let server = configure(server);
    server.ensure_defaults().await.unwrap();
    let registry = server.registry();
    // The namespace and volume controllers, as the controller manager runs them beside the
    // API server (deletions wait for them).
    strake_controllers::namespace::start_standalone(registry.clone());
    strake_controllers::volumes::start_standalone(registry.clone());
    tokio::spawn(server.serve_on(listener));
    let base = format!("https://{addr}");
    let creds = strake_kubeclient::bootstrap(&base, &token, "/strake/v1/kubeconfig", &json!({}))
        .await
        .unwrap();
    let tls = strake_pki::client_config(
        &creds.ca_pem,
        Some(&CertifiedKey {
            cert_pem: creds.cert_pem.clone(),
            key_pem: creds.key_pem.clone(),
        }),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, creds.kubeconfig("t", &base)).unwrap();
    Loopback {
        base,
        http,
        creds,
        kubeconfig,
        registry,
        dir,
    }
}

/// An HTTPS server on loopback for `app`, presenting a certificate for 127.0.0.1 and `names`
/// signed by `ca` (a webhook, an identity provider).
pub async fn serve_https(
    app: axum::Router,
    ca: &strake_pki::ClusterCa,
    names: &[&str],
) -> std::net::SocketAddr {
    let mut sans = vec!["127.0.0.1".to_string()];
    sans.extend(names.iter().map(|n| n.to_string()));
    let serving = ca.issue_server("test-server", &sans).unwrap();
    let tls = strake_pki::server_config(&serving, &ca.ca.cert_pem, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

/// A request as the admin with a JSON body: the status, the JSON answer and its warnings.
pub async fn send(
    c: &Loopback,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value, Vec<String>) {
    let r = c
        .http
        .request(method.parse().unwrap(), format!("{}{path}", c.base))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let warnings = r
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    (code, r.json().await.unwrap(), warnings)
}
