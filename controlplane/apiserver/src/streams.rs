//! Streaming pod subresources (`pods/exec`, `pods/portforward`), proxied to the agent of the
//! pod's node: the client's upgrade request (to a WebSocket, or to SPDY/3.1) is replayed to the
//! agent over mTLS, the agent's `101 Switching Protocols` answer is passed back, and from then
//! on bytes flow both ways untouched, so the protocol runs between the client and the agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use strake_apimachinery::ApiError;
use strake_apimachinery::request::RequestInfo;

use crate::AppState;
use crate::pods::Pick;

/// The subresources served here.
pub fn is_stream(info: &RequestInfo) -> bool {
    info.group.is_empty()
        && info.resource == "pods"
        && matches!(info.subresource.as_deref(), Some("exec" | "portforward"))
}

/// SPDY's protocol negotiation header.
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// Headers of the upgrade handshake that travel to the agent (every value).
const HANDSHAKE: [&str; 6] = [
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    STREAM_PROTOCOL,
];

/// Headers of the agent's 101 that travel back.
const ANSWER: [&str; 4] = [
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
];

/// `container` is the request's `container` parameter.
pub async fn proxy(
    app: &Arc<AppState>,
    info: &RequestInfo,
    container: Option<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let ns = info.namespace.clone().unwrap_or_default();
    let name = info.name.clone().ok_or(ApiError::NoRoute)?;
    let query = req.uri().query().unwrap_or_default().to_string();
    let upgrade_to = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let sub = info.subresource.as_deref().unwrap_or_default();
    if !(upgrade_to.contains("websocket") || upgrade_to.contains("spdy/3.1")) {
        return Err(ApiError::BadRequest(format!(
            "Upgrade request required: {sub} is served over WebSocket or SPDY/3.1"
        )));
    }
    let path = if sub == "exec" {
        let (endpoint, container, pod) = crate::pods::locate(
            app,
            &ns,
            &name,
            Pick::Container(container.as_ref()),
            "containers to exec in",
        )
        .await?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Err(ApiError::BadRequest(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        (endpoint, format!("/exec/{ns}/{name}/{container}?{query}"))
    } else {
        let (endpoint, _, _) =
            crate::pods::locate(app, &ns, &name, Pick::Pod, "ports to forward").await?;
        (endpoint, format!("/portForward/{ns}/{name}?{query}"))
    };
    let (endpoint, path) = path;
    let mut forward = HeaderMap::new();
    for h in HANDSHAKE {
        for v in req.headers().get_all(h) {
            forward.append(h, v.clone());
        }
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let agent = dial(app, &endpoint, req.method().clone(), &path, forward).await?;
    if agent.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = agent.status();
        let text = agent
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(match status {
            StatusCode::NOT_FOUND => ApiError::NotFound {
                resource: strake_apimachinery::GroupResource::new("", format!("pods/{sub}")),
                name: text,
            },
            _ => ApiError::BadRequest(text),
        });
    }
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in ANSWER.into_iter().chain([STREAM_PROTOCOL]) {
        for v in agent.headers().get_all(h) {
            resp = resp.header(h, v.clone());
        }
    }
    let agent_upgrade = hyper::upgrade::on(agent);
    tokio::spawn(async move {
        let (client, agent) = match tokio::join!(client_upgrade, agent_upgrade) {
            (Ok(c), Ok(a)) => (c, a),
            (c, a) => {
                tracing::info!(client = ?c.err(), agent = ?a.err(), "exec stream: upgrade failed");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    resp.body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Sends the upgrade request to the agent at `endpoint` over mTLS (HTTP/1.1).
async fn dial(
    app: &AppState,
    endpoint: &str,
    method: axum::http::Method,
    path: &str,
    headers: HeaderMap,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    let unreachable = |e: String| {
        ApiError::ServiceUnavailable(format!("cannot reach the agent at {endpoint}: {e}"))
    };
    let addr: SocketAddr = endpoint
        .parse()
        .map_err(|_| unreachable("not an address".into()))?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(app.node_tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = hyper::Request::builder().method(method).uri(path).header(
        header::HOST,
        HeaderValue::from_str(endpoint).unwrap_or(HeaderValue::from_static("agent")),
    );
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))
}
