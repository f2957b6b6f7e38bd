//! The agent's HTTPS API for the API server: container logs (with follow) and exec streams
//! (see [`crate::streams`]). Callers must present a client certificate from the cluster CA in
//! group system:masters (the API server's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strake_kubeclient::Credentials;
use strake_runtime::ContainerState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;

use crate::worker::container_id;
use crate::{AgentError, Shared};

#[derive(Clone)]
struct Caller(Option<strake_pki::Identity>);

/// The newest (or, with `previous`, the one before) log of a container, and its attempt number.
fn find_log(
    log_root: &Path,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Option<(PathBuf, String, i32)> {
    let prefix = format!("{ns}_{pod}_");
    let pod_dir = std::fs::read_dir(log_root)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?;
    let uid = pod_dir.file_name().to_string_lossy()[prefix.len()..].to_string();
    let dir = pod_dir.path().join(container);
    let mut attempts: Vec<i32> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    attempts.sort_unstable();
    let n = if previous {
        *attempts.iter().rev().nth(1)?
    } else {
        *attempts.last()?
    };
    Some((dir.join(format!("{n}.log")), uid, n))
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// The 403 for any caller but the API server (a client certificate in system:masters).
fn refuse_unless_api_server(caller: &Caller) -> Option<Response> {
    let allowed = caller
        .0
        .as_ref()
        .is_some_and(|id| id.groups.iter().any(|g| g == "system:masters"));
    (!allowed).then(|| {
        text(
            StatusCode::FORBIDDEN,
            "a client certificate of the API server is required".into(),
        )
    })
}

/// The uid of pod `ns/name` if it runs (or ran) here, from its log directory.
fn pod_uid(log_root: &Path, ns: &str, name: &str) -> Option<String> {
    let prefix = format!("{ns}_{name}_");
    std::fs::read_dir(log_root)
        .ok()?
        .flatten()
        .find_map(|e| Some(e.file_name().to_str()?.strip_prefix(&prefix)?.to_string()))
}

/// `/portForward/{ns}/{pod}`: SPDY on a connection upgraded to `SPDY/3.1` (POST), or a
/// WebSocket carrying SPDY or the channel protocol (GET); see [`crate::portforward`].
async fn port_forward(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    mut req: axum::extract::Request,
) -> Response {
    use crate::portforward::{self, Target};
    if let Some(refusal) = refuse_unless_api_server(&caller) {
        return refusal;
    }
    let Some(uid) = pod_uid(&shared.cfg.log_dir, &ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node"),
        );
    };
    let target = Target {
        pod: pod.clone(),
        netns: crate::sandbox::netns_of(&shared, &uid),
        uid,
    };
    if let Ok(ws) = ws {
        let ws = ws.protocols(portforward::WS_PROTOCOLS);
        let tunnel = ws
            .selected_protocol()
            .is_some_and(|p| p == portforward::WS_PROTOCOLS[0]);
        if tunnel {
            return ws.on_upgrade(move |socket| portforward::serve_tunnel(socket, target));
        }
        let pairs = crate::streams::query_pairs(query.as_deref().unwrap_or_default());
        return match portforward::ports(&pairs) {
            Ok(ports) => {
                ws.on_upgrade(move |socket| portforward::serve_channels(socket, target, ports))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        };
    }
    let protocol = match spdy_handshake(&req, &[portforward::SPDY_PROTOCOL]) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => portforward::serve_spdy(TokioIo::new(io), target).await,
            Err(e) => tracing::info!(error = %e, "port-forward: the upgrade failed"),
        }
    });
    spdy_switch(&protocol)
}

/// Checks an upgrade to SPDY/3.1 and picks the first protocol the client offers (in
/// `X-Stream-Protocol-Version`) that we serve; the refusal is the response to send.
fn spdy_handshake(req: &axum::extract::Request, served: &[&str]) -> Result<String, Box<Response>> {
    let header_has = |name: header::HeaderName, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(want))
    };
    if !header_has(header::CONNECTION, "upgrade") || !header_has(header::UPGRADE, "spdy/3.1") {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "this stream needs an upgrade to SPDY/3.1 or to a WebSocket".into(),
        )));
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "X-Stream-Protocol-Version is missing".into(),
        )));
    }
    if let Some(p) = offered.iter().find(|p| served.contains(&p.as_str())) {
        return Ok(p.clone());
    }
    let mut resp = Response::builder().status(StatusCode::FORBIDDEN);
    for p in served {
        resp = resp.header("X-Accepted-Stream-Protocol-Versions", *p);
    }
    Err(Box::new(resp
        .body(Body::from(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {served:?}"
        )))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())))
}

/// The 101 that switches the connection to SPDY with `protocol`.
fn spdy_switch(protocol: &str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `/exec/{ns}/{pod}/{container}?command=…`: a process in the container's current instance,
/// streamed over a WebSocket.
async fn exec(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    mut req: axum::extract::Request,
) -> Response {
    if let Some(refusal) = refuse_unless_api_server(&caller) {
        return refusal;
    }
    let opts = match crate::streams::ExecOptions::parse(query.as_deref().unwrap_or_default()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let running = find_log(&shared.cfg.log_dir, &ns, &pod, &container, false)
        .map(|(_, uid, attempt)| container_id(&uid, &container, attempt))
        .filter(|id| {
            matches!(
                shared.runtime.status(id),
                Ok(ContainerState::Running { .. })
            )
        });
    let Some(id) = running else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {ns}/{pod}"),
        );
    };
    if let Ok(ws) = ws {
        return crate::streams::upgrade(shared, id, opts, ws);
    }
    // SPDY, as clients before kubectl 1.30 (and Go programs using its executor) speak it.
    let protocol = match spdy_handshake(&req, &crate::streams::SPDY_PROTOCOLS) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let chosen = protocol.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => crate::streams::serve_spdy(TokioIo::new(io), shared, id, opts, chosen).await,
            Err(e) => tracing::info!(error = %e, "exec: the upgrade failed"),
        }
    });
    spdy_switch(&protocol)
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refusal) = refuse_unless_api_server(&caller) {
        return refusal;
    }
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let Some((path, uid, attempt)) = find_log(&shared.cfg.log_dir, &ns, &pod, &container, previous)
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "container \"{container}\" in pod \"{pod}\" has no logs yet (it has not started)"
            ),
        );
    };
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}", path.display()),
            );
        }
    };
    let mut start = 0usize;
    if let Some(n) = q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        start = tail_offset(&data, n);
    }
    let mut initial = data[start..].to_vec();
    if let Some(limit) = q.get("limitBytes").and_then(|n| n.parse::<usize>().ok()) {
        initial.truncate(limit);
    }
    let follow = q.get("follow").is_some_and(|v| v == "true") && !previous;
    if !follow {
        return (StatusCode::OK, initial).into_response();
    }
    let id = container_id(&uid, &container, attempt);
    let offset = data.len() as u64;
    let stream = futures::stream::unfold(
        (Some(initial), offset, path, shared, id, false),
        |(first, mut offset, path, shared, id, mut ending)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(first)),
                    (None, offset, path, shared, id, ending),
                ));
            }
            loop {
                let mut buf = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                {
                    let _ = f.read_to_end(&mut buf).await;
                }
                if !buf.is_empty() {
                    offset += buf.len() as u64;
                    return Some((
                        Ok(Bytes::from(buf)),
                        (None, offset, path, shared, id, ending),
                    ));
                }
                if ending {
                    return None;
                }
                let running = matches!(
                    shared.runtime.status(&id),
                    Ok(ContainerState::Running { .. } | ContainerState::Starting)
                );
                if !running {
                    // One more read after the container ended, to catch its last words.
                    ending = true;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Byte offset where the last `n` lines of `data` begin.
fn tail_offset(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    let mut seen = 0;
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Serves the agent API until the listener fails.
pub async fn serve(shared: Arc<Shared>, creds: &Credentials) -> Result<(), AgentError> {
    let (Some(cert), Some(key)) = (
        creds.serving_cert_pem.clone(),
        creds.serving_key_pem.clone(),
    ) else {
        return Err(AgentError::Serve(
            "the node credentials carry no serving certificate".into(),
        ));
    };
    let serving = strake_pki::CertifiedKey {
        cert_pem: cert,
        key_pem: key,
    };
    let tls = strake_pki::server_config(&serving, &creds.ca_pem, &[b"h2", b"http/1.1"])
        .map_err(|e| AgentError::Serve(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = SocketAddr::new(shared.cfg.node_ip, shared.cfg.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Serve(format!("listening on {addr}: {e}")))?;
    tracing::info!(%addr, "agent API listening");
    let router = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/portForward/{ns}/{pod}",
            get(port_forward).post(port_forward),
        )
        .with_state(shared);
    loop {
        let (tcp, _) = match listener.accept().await {
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
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| strake_pki::peer_identity(c).ok());
            let svc = hyper_util::service::TowerToHyperService::new(
                router.layer(axum::Extension(Caller(id))),
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_offset(d, 1)..], b"c\n");
        assert_eq!(&d[tail_offset(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_offset(d, 10)..], b"a\nb\nc\n");
        assert_eq!(&d[tail_offset(d, 0)..], b"");
        assert_eq!(&b"x\ny"[tail_offset(b"x\ny", 1)..], b"y");
    }

    #[test]
    fn finds_newest_and_previous_log() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("default_web_u1").join("app");
        std::fs::create_dir_all(&c).unwrap();
        for n in [0, 1, 2] {
            std::fs::write(c.join(format!("{n}.log")), "x").unwrap();
        }
        let (p, uid, n) = find_log(dir.path(), "default", "web", "app", false).unwrap();
        assert_eq!(
            (p.file_name().unwrap().to_str().unwrap(), uid.as_str(), n),
            ("2.log", "u1", 2)
        );
        assert_eq!(
            find_log(dir.path(), "default", "web", "app", true)
                .unwrap()
                .2,
            1
        );
        assert!(find_log(dir.path(), "default", "other", "app", false).is_none());
    }
}
