//! Container probes: one check ([`check`]: httpGet, tcpSocket, grpc or exec, bounded by
//! `timeoutSeconds`) and the loop that runs a container's startup, liveness and readiness
//! probes with upstream's timing fields ([`Prober`]).
//!
//! As kubelet: the startup probe runs first and the others only once it passed; readiness
//! starts false and flips after `successThreshold` successes or `failureThreshold` failures;
//! liveness and startup failures past the threshold ask the container's worker to restart it.
//! HTTPS probes do not verify the certificate, and an HTTP status from 200 to 399 succeeds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure(String),
}

/// Runs a command in the container and returns its exit code and output, or why it could not.
pub type ExecFn = Arc<
    dyn Fn(
            Vec<String>,
            Duration,
        ) -> futures::future::BoxFuture<'static, Result<(i32, String), String>>
        + Send
        + Sync,
>;

/// Where the container's probes connect.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP (probes without `host` connect there).
    pub ip: String,
    /// The container's ports, for named probe ports.
    pub ports: Vec<ContainerPort>,
    /// Runs exec probes, when the runtime can.
    pub exec: Option<ExecFn>,
}

/// The probe kinds, in the words of upstream's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

/// The probe's timing, with upstream's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        Self {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(p: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| format!("unable to find port {s:?} in the container's ports"))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs one check of `probe` against `target`, bounded by the probe's timeout.
pub async fn check(probe: &Probe, target: &Target) -> Verdict {
    let timeout = Timing::of(probe).timeout;
    let outcome = if let Some(h) = &probe.http_get {
        let run = async {
            let port = port(&h.port, &target.ports)?;
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| target.ip.clone());
            let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let path = h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            let url = format!("{scheme}://{}{path}", authority(&host, port));
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|hd| (hd.name.clone(), hd.value.clone()))
                .collect();
            http_get(&scheme, &host, port, &path, &headers, timeout)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))
        };
        run.await
    } else if let Some(t) = &probe.tcp_socket {
        match port(&t.port, &target.ports) {
            Ok(p) => {
                let host = t
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| target.ip.clone());
                let addr = authority(&host, p);
                match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                    Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
                }
            }
            Err(e) => Err(e),
        }
    } else if let Some(g) = &probe.grpc {
        match u16::try_from(g.port).ok().filter(|p| *p > 0) {
            Some(p) => grpc_check(&target.ip, p, g.service.as_deref().unwrap_or(""), timeout).await,
            None => Err(format!("invalid port number: {}", g.port)),
        }
    } else if let Some(e) = &probe.exec {
        let command = e.command.clone().unwrap_or_default();
        match &target.exec {
            _ if command.is_empty() => Err("exec probe has no command".into()),
            None => Err("exec probes are not supported by this node's runtime yet".into()),
            Some(exec) => match exec(command.clone(), timeout).await {
                Ok((0, _)) => Ok(()),
                Ok((code, out)) => Err(if out.trim().is_empty() {
                    format!("command {command:?} exited with {code}")
                } else {
                    format!("command {command:?} exited with {code}: {}", out.trim())
                }),
                Err(e) => Err(e),
            },
        }
    } else {
        Err("probe has no handler (exec, httpGet, tcpSocket or grpc)".into())
    };
    match outcome {
        Ok(()) => Verdict::Success,
        Err(e) => Verdict::Failure(e),
    }
}

/// `GET path` over HTTP/1.1 (or TLS without verification), succeeding on status 200–399.
async fn http_get(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        let tcp = TcpStream::connect(authority(host, port))
            .await
            .map_err(|e| format!("dial tcp {}: connect: {e}", authority(host, port)))?;
        let mut request = format!("GET {path} HTTP/1.1\r\n");
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !has("host") {
            request.push_str(&format!("Host: {}\r\n", authority(host, port)));
        }
        if !has("user-agent") {
            request.push_str("User-Agent: kube-probe/1.33\r\n");
        }
        if !has("accept") {
            request.push_str("Accept: */*\r\n");
        }
        for (n, v) in headers {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        let status = if scheme == "https" {
            let config = strake_pki::probe_client_config().map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("server name {host:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(tls, &request).await?
        } else {
            exchange(tcp, &request).await?
        };
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            Err("context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into())
        }
    }
}

/// Sends the request and reads the status code of the response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> Result<u16, String> {
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    line.strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {line:?}"))
}

/// The gRPC health checking protocol: `grpc.health.v1.Health/Check` over HTTP/2 cleartext,
/// succeeding when the server answers SERVING.
async fn grpc_check(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = authority(host, port);
    let work = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("timeout: failed to connect service {addr:?}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
        let driver = tokio::spawn(conn);
        // HealthCheckRequest { string service = 1; } in a length-prefixed gRPC message.
        let mut msg = Vec::new();
        if !service.is_empty() {
            msg.push(0x0a);
            put_varint(&mut msg, service.len() as u64);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "kube-probe/1.33")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("rpc error: {e}"));
        let result = async {
            let resp = resp?;
            let code = resp.status();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("rpc error: {e}"))?;
            let trailers = collected.trailers().cloned();
            let bytes = collected.to_bytes();
            if let Some(t) = trailers
                && let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok())
                && s != "0"
            {
                let m = t
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                return Err(format!("rpc error: code = {s} desc = {m}"));
            }
            if !code.is_success() {
                return Err(format!("rpc error: HTTP status {code}"));
            }
            match health_status(&bytes) {
                Some(1) => Ok(()),
                Some(s) => Err(format!(
                    "service unhealthy (responded with {:?})",
                    match s {
                        0 => "UNKNOWN",
                        2 => "NOT_SERVING",
                        3 => "SERVICE_UNKNOWN",
                        _ => "?",
                    }
                )),
                None => Err("malformed gRPC health response".into()),
            }
        }
        .await;
        driver.abort();
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` (field 1, varint) of a length-prefixed HealthCheckResponse; absent means 0.
fn health_status(frame: &[u8]) -> Option<u64> {
    let (&compressed, rest) = frame.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&tag, tail)) = msg.split_first() {
        let (value, used) = varint(tail)?;
        match tag {
            0x08 => status = value,
            t if t & 7 == 0 => {}
            _ => return None,
        }
        msg = &tail[used..];
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What a probe loop reports to its container's worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The startup probe passed (or there is none): the container counts as started.
    Started,
    /// Readiness changed.
    Ready(bool),
    /// A check failed (an Event, `Unhealthy`).
    Unhealthy { kind: Kind, message: String },
    /// The container must be restarted (liveness or startup failed past the threshold).
    Restart { kind: Kind, message: String },
}

/// A container's probes.
pub struct Prober {
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    pub target: Target,
}

impl Prober {
    /// Runs until the container stops (the caller drops the future) or a restart is asked.
    pub async fn run(self, report: tokio::sync::mpsc::Sender<Report>) {
        if let Some(p) = &self.startup {
            match probe_loop(Kind::Startup, p, &self.target, &report, true).await {
                Some(()) => {}
                None => return,
            }
        }
        if report.send(Report::Started).await.is_err() {
            return;
        }
        let live = async {
            if let Some(p) = &self.liveness {
                probe_loop(Kind::Liveness, p, &self.target, &report, false).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let ready = async {
            match &self.readiness {
                Some(p) => {
                    probe_loop(Kind::Readiness, p, &self.target, &report, false).await;
                }
                None => {
                    let _ = report.send(Report::Ready(true)).await;
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = live => {}
            _ = ready => {}
        }
    }
}

/// Runs one probe on its period. The startup probe returns `Some` on its first success;
/// liveness and startup send `Restart` and return `None` once failures reach the threshold;
/// readiness only reports changes and never returns.
async fn probe_loop(
    kind: Kind,
    probe: &Probe,
    target: &Target,
    report: &tokio::sync::mpsc::Sender<Report>,
    until_success: bool,
) -> Option<()> {
    let t = Timing::of(probe);
    tokio::time::sleep(t.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ready: Option<bool> = None;
    loop {
        match check(probe, target).await {
            Verdict::Success => {
                successes += 1;
                failures = 0;
                if until_success {
                    return Some(());
                }
                if kind == Kind::Readiness
                    && successes >= t.success_threshold
                    && ready != Some(true)
                {
                    ready = Some(true);
                    report.send(Report::Ready(true)).await.ok()?;
                }
            }
            Verdict::Failure(message) => {
                failures += 1;
                successes = 0;
                report
                    .send(Report::Unhealthy {
                        kind,
                        message: message.clone(),
                    })
                    .await
                    .ok()?;
                if failures >= t.failure_threshold {
                    match kind {
                        Kind::Readiness => {
                            if ready != Some(false) {
                                ready = Some(false);
                                report.send(Report::Ready(false)).await.ok()?;
                            }
                        }
                        Kind::Liveness | Kind::Startup => {
                            let _ = report.send(Report::Restart { kind, message }).await;
                            return None;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(t.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    fn target() -> Target {
        Target {
            ip: "127.0.0.1".into(),
            ports: vec![ContainerPort {
                name: Some("web".into()),
                container_port: 1,
                ..Default::default()
            }],
            exec: None,
        }
    }

    /// An HTTP server answering each connection with `status`, recording the requests.
    async fn http_server(status: u16) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn http_get_sends_headers_and_judges_the_status() {
        let (port, seen) = http_server(204).await;
        let p = probe(json!({"httpGet": {"path": "healthz", "port": port,
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}}));
        assert_eq!(check(&p, &target()).await, Verdict::Success);
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("X-Probe: yes\r\n") && req.contains("User-Agent: kube-probe/"));

        let (port, _) = http_server(503).await;
        let p = probe(json!({"httpGet": {"path": "/", "port": port}}));
        assert_eq!(
            check(&p, &target()).await,
            Verdict::Failure(
                "Get \"http://127.0.0.1:".to_string()
                    + &port.to_string()
                    + "/\": HTTP probe failed with statuscode: 503"
            )
        );
    }

    #[tokio::test]
    async fn tcp_socket_and_named_ports() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut t = target();
        t.ports[0].container_port = port as i32;
        let p = probe(json!({"tcpSocket": {"port": "web"}}));
        assert_eq!(check(&p, &t).await, Verdict::Success);
        drop(l);
        let Verdict::Failure(m) = check(&p, &t).await else {
            panic!("closed port passed")
        };
        assert!(
            m.starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
            "{m}"
        );
        let p = probe(json!({"tcpSocket": {"port": "nope"}}));
        let Verdict::Failure(m) = check(&p, &t).await else {
            panic!("unknown port passed")
        };
        assert!(m.contains("\"nope\""), "{m}");
    }

    #[tokio::test]
    async fn a_hanging_server_is_bounded_by_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let p = probe(json!({"httpGet": {"port": port}, "timeoutSeconds": 1}));
        let start = std::time::Instant::now();
        let Verdict::Failure(m) = check(&p, &target()).await else {
            panic!("hang passed")
        };
        assert!(m.contains("deadline exceeded"), "{m}");
        assert!(start.elapsed() < Duration::from_secs(10));
        hold.abort();
    }

    #[test]
    fn grpc_health_frames() {
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 0x02]), Some(2));
        assert_eq!(health_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(
            health_status(&[1, 0, 0, 0, 0]),
            None,
            "compressed frames are not ours"
        );
        assert_eq!(health_status(&[0, 0, 0, 0, 9, 0x08]), None, "short");
    }

    #[tokio::test]
    async fn readiness_follows_thresholds_and_liveness_asks_for_a_restart() {
        let (port, _) = http_server(200).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let prober = Prober {
            startup: Some(probe(
                json!({"tcpSocket": {"port": port}, "periodSeconds": 1}),
            )),
            liveness: Some(probe(
                json!({"tcpSocket": {"port": 1}, "periodSeconds": 1, "failureThreshold": 2}),
            )),
            readiness: Some(probe(
                json!({"httpGet": {"port": port}, "periodSeconds": 1}),
            )),
            target: target(),
        };
        let run = tokio::spawn(prober.run(tx));
        let mut got = Vec::new();
        while let Some(r) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
        {
            let done = matches!(r, Report::Restart { .. });
            got.push(r);
            if done {
                break;
            }
        }
        run.abort();
        assert_eq!(got[0], Report::Started);
        assert!(got.contains(&Report::Ready(true)), "{got:?}");
        let unhealthy = got
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Report::Unhealthy {
                        kind: Kind::Liveness,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(unhealthy, 2, "{got:?}");
        assert!(matches!(
            got.last(),
            Some(Report::Restart {
                kind: Kind::Liveness,
                ..
            })
        ));
    }
}
