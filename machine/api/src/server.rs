//! The server half: routes, roles and the apply-config rules. What a request does to the machine
//! goes through [`Host`], which machined implements with init's files and signals and the tests
//! implement in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strake_machineconfig::{Change, LIVE, MachineConfig, Mode, apply_mode, diff};
use strake_pki::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    AddressView, ApplyMode, ApplyResult, ChangeView, ConfigView, DiskView, ErrorBody, FieldProblem,
    KubeconfigView, LogLines, MAX_BACKUP, MAX_BODY, MAX_UPGRADE, Message, Role, RouteView,
    ServiceView, SocketView, StoreMembersView, StoreSnapshotView, VersionInfo, line_component,
    line_time, redact,
};

/// Which API the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// No config yet: self-signed TLS, no client certificates, `version` and `apply-config` only.
    Maintenance,
    /// Mutual TLS against the machine CA, every route by role.
    Configured,
}

/// What reboot and shutdown ask init for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    Shutdown,
}

/// Why the machine refused or failed an action; `problems` name fields of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub message: String,
    pub problems: Vec<FieldProblem>,
}

impl HostError {
    pub fn new(message: impl Into<String>) -> HostError {
        HostError {
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

/// The machine behind the API. Calls may block (they touch files and wait for init), so the
/// server runs them off the async threads.
pub trait Host: Send + Sync + 'static {
    fn hostname(&self) -> String;
    /// The machine config in force, as its YAML text.
    fn current(&self) -> Option<String>;
    /// Maintenance mode: what stops `config` being installed here (a disk it names that does
    /// not exist, nowhere to keep it). Empty when it can be.
    fn check_install(&self, config: &MachineConfig) -> Vec<FieldProblem>;
    /// Maintenance mode: hands the config to init, which installs it (STATE on the disk it
    /// names) and reboots into it. Returns what init said it did.
    fn install(&self, yaml: &str) -> Result<String, HostError>;
    /// Keeps `yaml` on STATE as the config of the next boot; unless `staged`, also as the one
    /// in force now.
    fn keep(&self, yaml: &str, staged: bool) -> Result<(), HostError>;
    /// Applies the sections that are applied live ([`LIVE`]).
    fn apply_live(&self, config: &MachineConfig) -> Result<(), HostError>;
    fn power(&self, action: Power) -> Result<(), HostError>;
    /// The A/B slot this boot came from, and whether it is on trial.
    fn slot(&self) -> Option<(char, bool)>;
    /// Writes a checked UKI into the slot not running and makes it the next boot's one shot.
    /// Returns what it did.
    fn stage_upgrade(&self, uki: &[u8]) -> Result<String, HostError>;
    /// Every service init supervises.
    fn services(&self) -> Result<Vec<ServiceView>, HostError>;
    /// Stops a running service so that init starts it again. Returns what it did.
    fn restart_service(&self, name: &str) -> Result<String, HostError>;
    /// Arranges for STATE to be wiped at the next boot. Returns what it did.
    fn reset(&self) -> Result<String, HostError>;
    /// The console log (init's and every service's lines), oldest first.
    fn console_log(&self) -> Result<Vec<String>, HostError>;
    /// The kernel's log, oldest first, as `[seconds] message`.
    fn kernel_log(&self) -> Result<Vec<String>, HostError>;
    /// Every disk, with its partitions.
    fn disks(&self) -> Result<Vec<DiskView>, HostError>;
    /// Every address on every interface.
    fn addresses(&self) -> Result<Vec<AddressView>, HostError>;
    /// The main routing table.
    fn routes(&self) -> Result<Vec<RouteView>, HostError>;
    /// Every TCP and UDP socket of the host's network.
    fn netstat(&self) -> Result<Vec<SocketView>, HostError>;
    /// Admin credentials from the cluster CA; an error on a node that holds none.
    fn kubeconfig(&self) -> Result<KubeconfigView, HostError>;
    /// The cluster store's members, asked of this control plane.
    fn store_members(&self) -> Result<StoreMembersView, HostError> {
        Err(HostError::new("this node runs no store"))
    }
    /// Removes store member `id` (refused if it would cost the store its quorum).
    fn store_remove(&self, id: u64) -> Result<StoreMembersView, HostError> {
        let _ = id;
        Err(HostError::new("this node runs no store"))
    }
    /// Takes this control plane out of the cluster store (a graceful reset); says what it did.
    fn leave_store(&self) -> Result<String, HostError> {
        Ok("this node runs no store".into())
    }
    /// A snapshot of the cluster store, taken while it serves.
    fn store_snapshot(&self) -> Result<StoreSnapshotView, HostError> {
        Err(HostError::new("this node runs no store"))
    }
    /// Starts a new one-member cluster on this control plane from `backup` (a snapshot);
    /// says what it did.
    fn store_restore(&self, backup: &[u8]) -> Result<String, HostError> {
        let _ = backup;
        Err(HostError::new("this node runs no store"))
    }
}

/// The TLS configuration for `mode`: `serving` is the self-signed certificate in maintenance
/// mode and one signed by the machine CA (`ca_pem`) otherwise.
pub fn tls_config(
    mode: ServerMode,
    serving: &CertifiedKey,
    ca_pem: Option<&str>,
) -> Result<rustls::ServerConfig, strake_pki::PkiError> {
    let alpn: &[&[u8]] = &[b"http/1.1"];
    match (mode, ca_pem) {
        (ServerMode::Configured, Some(ca)) => strake_pki::server_config(serving, ca, alpn),
        _ => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let certs = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| strake_pki::PkiError::Parse {
                    what: "certificate PEM",
                    reason: e.to_string(),
                })?;
            let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())
                .ok()
                .flatten()
                .ok_or(strake_pki::PkiError::Parse {
                    what: "private key PEM",
                    reason: "no private key found".into(),
                })?;
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
            cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(cfg)
        }
    }
}

struct App {
    host: Arc<dyn Host>,
    mode: ServerMode,
    version: String,
    /// How long reboot and shutdown wait after answering, so the answer reaches the client.
    power_delay: Duration,
}

/// Who is calling, from the TLS handshake.
#[derive(Clone, Debug)]
struct Peer {
    user: String,
    role: Option<Role>,
}

/// Serves the machine API on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    host: Arc<dyn Host>,
    mode: ServerMode,
    version: &str,
) {
    let app = Arc::new(App {
        host,
        mode,
        version: version.to_owned(),
        power_delay: Duration::from_millis(500),
    });
    let router = router(app);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = peer(tls.get_ref().1.peer_certificates(), addr);
            let svc = hyper_util::service::TowerToHyperService::new(router.layer(Extension(peer)));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%addr, error = %e, "connection ended with error");
            }
        });
    }
}

fn peer(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>, addr: SocketAddr) -> Peer {
    match certs
        .and_then(|c| c.first())
        .and_then(|c| strake_pki::peer_identity(c).ok())
    {
        Some(id) => Peer {
            role: Role::from_groups(&id.groups),
            user: id.user,
        },
        None => Peer {
            user: addr.to_string(),
            role: None,
        },
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/apply-config", post(apply_config))
        .route("/v1/machineconfig", get(machineconfig))
        .route("/v1/reboot", post(reboot))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/upgrade", post(upgrade))
        .route("/v1/reset", post(reset))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}/restart", post(restart_service))
        .route("/v1/logs", get(logs))
        .route("/v1/dmesg", get(dmesg))
        .route("/v1/disks", get(disks))
        .route("/v1/addresses", get(addresses))
        .route("/v1/routes", get(routes))
        .route("/v1/netstat", get(netstat))
        .route("/v1/kubeconfig", get(kubeconfig))
        .route("/v1/store/members", get(store_members))
        .route("/v1/store/members/{id}/remove", post(store_remove))
        .route("/v1/store/snapshot", get(store_snapshot))
        .route("/v1/store/restore", post(store_restore))
        .fallback(not_found)
        .with_state(app)
}

/// A refusal or failure, answered as JSON [`ErrorBody`].
struct Refused {
    status: StatusCode,
    body: ErrorBody,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        json(self.status, &self.body)
    }
}

type Answer = Result<Response, Refused>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn error(status: StatusCode, message: impl Into<String>, errors: Vec<FieldProblem>) -> Refused {
    Refused {
        status,
        body: ErrorBody {
            message: message.into(),
            errors,
        },
    }
}

fn host_error(status: StatusCode, e: HostError) -> Refused {
    error(status, e.message, e.problems)
}

/// Lets the request through when the peer may call `route` in this mode.
fn allow(app: &App, peer: &Peer, route: &str, needs: Role) -> Result<(), Refused> {
    if app.mode == ServerMode::Maintenance {
        return if matches!(route, "version" | "apply-config" | "disks") {
            Ok(())
        } else {
            Err(error(
                StatusCode::FORBIDDEN,
                format!(
                    "the node is in maintenance mode (it has no machine config yet) and accepts only apply-config, version and disks, not {route}"
                ),
                Vec::new(),
            ))
        };
    }
    match peer.role {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            format!(
                "{route} needs a client certificate signed by the machine CA with the organization {}, {} or {}",
                Role::Admin.group(),
                Role::Operator.group(),
                Role::Reader.group()
            ),
            Vec::new(),
        )),
        Some(role) if role < needs => Err(error(
            StatusCode::FORBIDDEN,
            format!("{} has the {role} role; {route} needs {needs}", peer.user),
            Vec::new(),
        )),
        Some(_) => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refused> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("machined: {e}"),
            Vec::new(),
        )
    })
}

async fn not_found(req: Request) -> Refused {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such machine API route: {} {}",
            req.method(),
            req.uri().path()
        ),
        Vec::new(),
    )
}

async fn version(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    allow(&app, &peer, "version", Role::Reader)?;
    let host = app.host.clone();
    let (hostname, slot) = blocking(move || (host.hostname(), host.slot())).await?;
    Ok(json(
        StatusCode::OK,
        &VersionInfo {
            version: app.version.clone(),
            hostname,
            maintenance: app.mode == ServerMode::Maintenance,
            slot: slot.map(|(s, _)| s.to_string()),
            on_trial: slot.is_some_and(|(_, trial)| trial),
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyQuery {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    dry_run: Option<String>,
}

fn views(changes: Vec<Change>) -> Vec<ChangeView> {
    changes
        .into_iter()
        .map(|c| ChangeView {
            path: c.path,
            old: c.old,
            new: c.new,
        })
        .collect()
}

/// Every section of a config that arrives where there was none.
fn from_nothing(config: &MachineConfig) -> Vec<ChangeView> {
    let value = config.to_value().unwrap_or(Value::Null);
    match value {
        Value::Object(map) => map
            .into_iter()
            .filter(|(k, _)| k == "machine" || k == "cluster")
            .map(|(path, new)| ChangeView {
                path,
                old: Value::Null,
                new,
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn apply_config(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<ApplyQuery>,
    body: Body,
) -> Answer {
    allow(&app, &peer, "apply-config", Role::Admin)?;
    let requested = match q.mode.as_deref() {
        None | Some("") => ApplyMode::Auto,
        Some(m) => ApplyMode::parse(m).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("unknown mode `{m}`: use auto, no-reboot, reboot or staged"),
                Vec::new(),
            )
        })?,
    };
    let dry_run = match q.dry_run.as_deref() {
        None | Some("" | "false") => false,
        Some("true" | "All") => true,
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("dryRun must be true or false, not `{other}`"),
                Vec::new(),
            ));
        }
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the machine config is larger than {MAX_BODY} bytes"),
            Vec::new(),
        )
    })?;
    let yaml = String::from_utf8(bytes.to_vec()).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the machine config is not UTF-8 text: {e}"),
            Vec::new(),
        )
    })?;
    let config = MachineConfig::parse(&yaml).map_err(|e| {
        let n = e.errors.len();
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "the machine config is not valid ({n} problem{}); nothing was applied",
                if n == 1 { "" } else { "s" }
            ),
            e.errors
                .into_iter()
                .map(|f| FieldProblem {
                    path: f.path,
                    message: f.message,
                })
                .collect(),
        )
    })?;
    match app.mode {
        ServerMode::Maintenance => {
            apply_in_maintenance(&app, requested, dry_run, yaml, config).await
        }
        ServerMode::Configured => apply_configured(&app, requested, dry_run, yaml, config).await,
    }
}

async fn apply_in_maintenance(
    app: &App,
    requested: ApplyMode,
    dry_run: bool,
    yaml: String,
    config: MachineConfig,
) -> Answer {
    if matches!(requested, ApplyMode::NoReboot | ApplyMode::Staged) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "in maintenance mode a config is installed and the node reboots into it: mode {} is not possible (use auto or reboot)",
                requested.name()
            ),
            Vec::new(),
        ));
    }
    let host = app.host.clone();
    let checked = config.clone();
    let problems = blocking(move || host.check_install(&checked)).await?;
    if !problems.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the machine config cannot be installed on this machine; nothing was applied",
            problems,
        ));
    }
    let changes = from_nothing(&config);
    if dry_run {
        return Ok(json(
            StatusCode::OK,
            &ApplyResult {
                mode: ApplyMode::Reboot,
                dry_run,
                changes,
                message:
                    "the config is valid; applying it installs it and reboots the node into it"
                        .into(),
            },
        ));
    }
    let host = app.host.clone();
    let message = blocking(move || host.install(&yaml))
        .await?
        .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    Ok(json(
        StatusCode::OK,
        &ApplyResult {
            mode: ApplyMode::Reboot,
            dry_run,
            changes,
            message,
        },
    ))
}

async fn apply_configured(
    app: &App,
    requested: ApplyMode,
    dry_run: bool,
    yaml: String,
    config: MachineConfig,
) -> Answer {
    let host = app.host.clone();
    let current = blocking(move || host.current())
        .await?
        .and_then(|text| MachineConfig::parse(&text).ok());
    let (changes, needs) = match &current {
        Some(old) => {
            let changes = diff(old, &config);
            let needs = apply_mode(&changes);
            (views(changes), needs)
        }
        None => (from_nothing(&config), Mode::Reboot),
    };
    let mode = match (requested, needs) {
        (ApplyMode::Auto, Mode::NoReboot) => ApplyMode::NoReboot,
        (ApplyMode::Auto, Mode::Reboot) => ApplyMode::Reboot,
        (ApplyMode::NoReboot, Mode::Reboot) => {
            let at_boot = changes
                .iter()
                .filter(|c| !LIVE.iter().any(|s| under(&c.path, s)))
                .map(|c| FieldProblem {
                    path: c.path.clone(),
                    message: "read at boot: changing it needs a reboot".into(),
                })
                .collect();
            return Err(error(
                StatusCode::CONFLICT,
                "these changes cannot be applied live; apply with mode reboot or staged (nothing was applied)",
                at_boot,
            ));
        }
        (m, _) => m,
    };
    let n = changes.len();
    let message = match mode {
        _ if dry_run => format!("{n} change(s); applying would use mode {}", mode.name()),
        ApplyMode::NoReboot if n == 0 => "no changes".to_owned(),
        ApplyMode::NoReboot => format!("applied {n} change(s) live and kept the config on STATE"),
        ApplyMode::Staged => {
            format!("kept the config on STATE for the next boot; {n} change(s) take effect then")
        }
        _ => format!("kept the config on STATE; rebooting into it ({n} change(s))"),
    };
    if !dry_run {
        let host = app.host.clone();
        let applied = config.clone();
        blocking(move || -> Result<(), HostError> {
            host.keep(&yaml, mode == ApplyMode::Staged)?;
            if mode == ApplyMode::NoReboot {
                host.apply_live(&applied)?;
            }
            Ok(())
        })
        .await?
        .map_err(|e| host_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        if mode == ApplyMode::Reboot {
            power_later(app, Power::Reboot);
        }
    }
    Ok(json(
        StatusCode::OK,
        &ApplyResult {
            mode,
            dry_run,
            changes,
            message,
        },
    ))
}

fn under(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Asks for `action` once the answer had time to leave.
fn power_later(app: &App, action: Power) {
    let host = app.host.clone();
    let delay = app.power_delay;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let result = tokio::task::spawn_blocking(move || host.power(action)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{action:?}: {}", e.message),
            Err(e) => tracing::error!("{action:?}: {e}"),
        }
    });
}

async fn machineconfig(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    allow(&app, &peer, "machineconfig", Role::Reader)?;
    let host = app.host.clone();
    let Some(text) = blocking(move || host.current()).await? else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "this node has no machine config",
            Vec::new(),
        ));
    };
    let redacted = peer.role != Some(Role::Admin);
    let yaml = if redacted {
        let mut value: Value = serde_saphyr::from_str(&text).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the machine config in force does not parse: {e}"),
                Vec::new(),
            )
        })?;
        redact(&mut value);
        serde_saphyr::to_string(&value).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("writing the machine config: {e}"),
                Vec::new(),
            )
        })?
    } else {
        text
    };
    Ok(json(StatusCode::OK, &ConfigView { yaml, redacted }))
}

async fn reboot(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    allow(&app, &peer, "reboot", Role::Operator)?;
    power_later(&app, Power::Reboot);
    Ok(json(
        StatusCode::OK,
        &Message {
            message: format!("{} is rebooting", app.host.hostname()),
        },
    ))
}

async fn shutdown(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    allow(&app, &peer, "shutdown", Role::Operator)?;
    power_later(&app, Power::Shutdown);
    Ok(json(
        StatusCode::OK,
        &Message {
            message: format!("{} is shutting down", app.host.hostname()),
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
struct LogQuery {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    since: Option<f64>,
}

/// Keeps the lines after `since`, then the last `tail` of them.
fn select_lines(lines: Vec<String>, q: &LogQuery) -> LogLines {
    let mut kept: Vec<String> = lines
        .into_iter()
        .filter(|l| match q.since {
            Some(t) => line_time(l).is_some_and(|at| at > t),
            None => true,
        })
        .collect();
    if let Some(n) = q.tail {
        let skip = kept.len().saturating_sub(n);
        kept.drain(..skip);
    }
    let last = kept
        .iter()
        .rev()
        .find_map(|l| line_time(l))
        .or(q.since)
        .unwrap_or(0.0);
    LogLines { lines: kept, last }
}

async fn logs(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<LogQuery>,
) -> Answer {
    log_route(&app, &peer, "logs", q, |h| h.console_log()).await
}

async fn dmesg(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<LogQuery>,
) -> Answer {
    log_route(&app, &peer, "dmesg", q, |h| h.kernel_log()).await
}

/// Reads a log through `read` and answers the lines the query selects (`service` filters
/// console lines by component).
async fn log_route(
    app: &App,
    peer: &Peer,
    route: &str,
    q: LogQuery,
    read: fn(&dyn Host) -> Result<Vec<String>, HostError>,
) -> Answer {
    allow(app, peer, route, Role::Reader)?;
    let host = app.host.clone();
    let lines = blocking(move || read(host.as_ref()))
        .await?
        .map_err(|e| host_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let lines = match q.service.as_deref() {
        None | Some("") => lines,
        Some(service) => lines
            .into_iter()
            .filter(|l| line_component(l) == Some(service))
            .collect(),
    };
    Ok(json(StatusCode::OK, &select_lines(lines, &q)))
}

/// A read of the machine: allowed for `needs` and up, answered off the async threads.
async fn read<T: Serialize + Send + 'static>(
    app: &App,
    peer: &Peer,
    route: &str,
    needs: Role,
    failed: StatusCode,
    f: impl FnOnce(&dyn Host) -> Result<T, HostError> + Send + 'static,
) -> Answer {
    allow(app, peer, route, needs)?;
    let host = app.host.clone();
    let value = blocking(move || f(host.as_ref()))
        .await?
        .map_err(|e| host_error(failed, e))?;
    Ok(json(StatusCode::OK, &value))
}

const FAILED: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

async fn services(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(&app, &peer, "services", Role::Reader, FAILED, |h| {
        h.services()
    })
    .await
}

async fn disks(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(&app, &peer, "disks", Role::Reader, FAILED, |h| h.disks()).await
}

async fn addresses(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(&app, &peer, "addresses", Role::Reader, FAILED, |h| {
        h.addresses()
    })
    .await
}

async fn routes(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(&app, &peer, "routes", Role::Reader, FAILED, |h| h.routes()).await
}

async fn netstat(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(&app, &peer, "netstat", Role::Reader, FAILED, |h| {
        h.netstat()
    })
    .await
}

async fn kubeconfig(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(
        &app,
        &peer,
        "kubeconfig",
        Role::Admin,
        StatusCode::CONFLICT,
        |h| h.kubeconfig(),
    )
    .await
}

async fn store_members(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(
        &app,
        &peer,
        "store members",
        Role::Reader,
        StatusCode::CONFLICT,
        |h| h.store_members(),
    )
    .await
}

async fn store_snapshot(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>) -> Answer {
    read(
        &app,
        &peer,
        "store snapshot",
        Role::Admin,
        StatusCode::CONFLICT,
        |h| h.store_snapshot(),
    )
    .await
}

async fn store_restore(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Answer {
    allow(&app, &peer, "store restore", Role::Admin)?;
    let bytes = axum::body::to_bytes(body, MAX_BACKUP).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the backup is larger than {MAX_BACKUP} bytes"),
            Vec::new(),
        )
    })?;
    let host = app.host.clone();
    let message = blocking(move || host.store_restore(&bytes))
        .await?
        .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    Ok(json(StatusCode::OK, &Message { message }))
}

async fn store_remove(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Answer {
    allow(&app, &peer, "store remove", Role::Admin)?;
    let host = app.host.clone();
    let members = blocking(move || host.store_remove(id))
        .await?
        .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    Ok(json(StatusCode::OK, &members))
}

async fn restart_service(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Answer {
    allow(&app, &peer, "service restart", Role::Operator)?;
    let host = app.host.clone();
    let message = blocking(move || host.restart_service(&name))
        .await?
        .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    Ok(json(StatusCode::OK, &Message { message }))
}

#[derive(Debug, Deserialize)]
struct ResetQuery {
    #[serde(default)]
    graceful: bool,
}

async fn reset(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<ResetQuery>,
) -> Answer {
    allow(&app, &peer, "reset", Role::Admin)?;
    let host = app.host.clone();
    let message = blocking(move || {
        // A control plane leaves the store first; if it cannot (the rest would lose their
        // quorum), nothing is wiped.
        let left = if q.graceful {
            Some(host.leave_store()?)
        } else {
            None
        };
        let wiped = host.reset()?;
        Ok::<_, HostError>(match left {
            Some(left) => format!("{left}; {wiped}"),
            None => wiped,
        })
    })
    .await?
    .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    power_later(&app, Power::Reboot);
    Ok(json(StatusCode::OK, &Message { message }))
}

async fn upgrade(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Answer {
    allow(&app, &peer, "upgrade", Role::Admin)?;
    let bytes = axum::body::to_bytes(body, MAX_UPGRADE).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the image is larger than {MAX_UPGRADE} bytes"),
            Vec::new(),
        )
    })?;
    crate::check_uki(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("refused before writing anything: {e}"),
            Vec::new(),
        )
    })?;
    let host = app.host.clone();
    let message = blocking(move || host.stage_upgrade(&bytes))
        .await?
        .map_err(|e| host_error(StatusCode::CONFLICT, e))?;
    power_later(&app, Power::Reboot);
    Ok(json(StatusCode::OK, &Message { message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_selected_by_time_then_tail() {
        let lines: Vec<String> = (1..=5)
            .map(|i| format!("[{i}.5] agent: line {i}"))
            .collect();
        let q = LogQuery {
            since: Some(2.5),
            tail: Some(2),
            ..LogQuery::default()
        };
        let got = select_lines(lines.clone(), &q);
        assert_eq!(got.lines, ["[4.5] agent: line 4", "[5.5] agent: line 5"]);
        assert_eq!(got.last, 5.5);
        let none = select_lines(
            lines,
            &LogQuery {
                since: Some(9.0),
                ..LogQuery::default()
            },
        );
        assert!(none.lines.is_empty());
        assert_eq!(none.last, 9.0, "a follower keeps its place");
    }

    #[test]
    fn sections_match_whole() {
        assert!(under("machine.sysctls", "machine.sysctls"));
        assert!(under("machine.sysctls[\"a.b\"]", "machine.sysctls"));
        assert!(under("machine.files[0].path", "machine.files"));
        assert!(!under("machine.filesystem", "machine.files"));
    }
}
