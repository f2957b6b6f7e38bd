//! `kubectl port-forward` served by the agent, in the two framings clients use:
//! - SPDY (`portforward.k8s.io`), either on a connection upgraded to `SPDY/3.1` or tunnelled in
//!   a WebSocket as kubectl 1.31+ sends it (`SPDY/3.1+portforward.k8s.io`, raw SPDY bytes in
//!   binary messages). Each forwarded connection is a pair of client streams with one
//!   `requestid`: `error` (what went wrong, as text) and `data` (the bytes), for the `port`
//!   they name.
//! - The WebSocket channel protocol (`v4.channel.k8s.io`, the Python client): one connection
//!   per port in `?ports=`, data on channel 2i and errors on 2i+1, each channel opened by a
//!   message holding the port (16-bit little-endian).
//!
//! The agent connects to the port on localhost inside the pod's network namespace (so a
//! server bound to the pod's loopback is reachable, as with the kubelet), or on the node's
//! for a `hostNetwork` pod.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use strake_spdy::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The SPDY subprotocol of port-forward.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocols: the SPDY tunnel, then the channel protocol.
pub const WS_PROTOCOLS: [&str; 2] = ["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"];

/// How long a forwarded connection waits for its other stream.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Where forwarded connections go: `pod` names it in errors.
#[derive(Clone)]
pub struct Target {
    pub pod: String,
    pub uid: String,
    /// The pod's network namespace; None: the node's.
    pub netns: Option<std::path::PathBuf>,
}

async fn connect(port: u16, netns: Option<&std::path::Path>) -> Result<TcpStream, String> {
    let Some(netns) = netns else {
        return match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => Ok(s),
            Err(e4) => TcpStream::connect(("::1", port)).await.map_err(|e6| {
                format!("failed to connect to localhost:{port}, IPv4: {e4} IPv6: {e6}")
            }),
        };
    };
    let netns = netns.to_owned();
    let attempt = |ip: std::net::IpAddr| {
        let netns = netns.clone();
        tokio::task::spawn_blocking(move || {
            strake_net::connect_in(&netns, (ip, port).into(), CONNECT_TIMEOUT)
        })
    };
    let joined = |r: Result<std::io::Result<std::net::TcpStream>, tokio::task::JoinError>| {
        r.map_err(std::io::Error::other).and_then(|r| r)
    };
    let std_stream = match joined(attempt(std::net::Ipv4Addr::LOCALHOST.into()).await) {
        Ok(s) => s,
        Err(e4) => joined(attempt(std::net::Ipv6Addr::LOCALHOST.into()).await).map_err(|e6| {
            format!(
                "failed to connect to localhost:{port} inside namespace {}, IPv4: {e4} IPv6: {e6}",
                netns.display()
            )
        })?,
    };
    std_stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std_stream))
        .map_err(|e| format!("adopting the connection to localhost:{port}: {e}"))
}

/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a SPDY port-forward session on `io` until the client leaves.
pub async fn serve_spdy<IO>(io: IO, target: Target)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut conn = strake_spdy::serve(io);
    // requestid → the stream that arrived first.
    let mut waiting: HashMap<String, (Stream, tokio::time::Instant)> = HashMap::new();
    while let Some(mut stream) = conn.incoming.recv().await {
        waiting.retain(|_, (_, since)| since.elapsed() < PAIR_TIMEOUT);
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        if !matches!(kind.as_str(), "error" | "data") || port.is_none() {
            tracing::info!(stream = stream.id, %kind, "port-forward: refusing a stream without a valid streamtype and port");
            stream.reset().await;
            continue;
        }
        if stream.reply().await.is_err() {
            break;
        }
        // Old clients send no request id: the error stream is opened just before its data.
        let request = stream
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| match kind.as_str() {
                "error" => stream.id.to_string(),
                _ => stream.id.saturating_sub(2).to_string(),
            });
        match waiting.remove(&request) {
            None => {
                waiting.insert(request, (stream, tokio::time::Instant::now()));
            }
            Some((first, _)) => {
                let first_kind = first.header("streamtype").unwrap_or_default().to_string();
                if first_kind == kind {
                    let (mut a, mut b) = (first, stream);
                    let msg = format!(
                        "error processing stream for request {request}: {kind} stream already assigned"
                    );
                    let err = if kind == "error" { &a } else { &b };
                    let _ = err.write(msg.as_bytes()).await;
                    a.reset().await;
                    b.reset().await;
                    continue;
                }
                let (error, data) = if kind == "error" {
                    (stream, first)
                } else {
                    (first, stream)
                };
                tokio::spawn(forward_spdy(error, data, target.clone()));
            }
        }
    }
    for (_, (mut s, _)) in waiting {
        s.reset().await;
    }
    conn.close().await;
}

/// One forwarded connection: the data stream's bytes to and from the pod's port.
async fn forward_spdy(error: Stream, mut data: Stream, target: Target) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_default();
    let tcp = match connect(port, target.netns.as_deref()).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid {}: {e}",
                target.pod, target.uid
            );
            let _ = error.write(msg.as_bytes()).await;
            error.finish().await;
            data.reset().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let sending = data.writer();
    let inbound = async {
        while let Some(chunk) = data.read().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sending.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    // As the kubelet does: when one direction ends, give the other a second, then close.
    tokio::pin!(inbound, outbound);
    tokio::select! {
        _ = &mut inbound => { let _ = tokio::time::timeout(Duration::from_secs(1), &mut outbound).await; }
        _ = &mut outbound => { let _ = tokio::time::timeout(Duration::from_secs(1), &mut inbound).await; }
    }
    sending.finish().await;
    error.finish().await;
}

/// Serves SPDY tunnelled in a WebSocket: binary messages carry the byte stream.
pub async fn serve_tunnel(socket: WebSocket, target: Target) {
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(remote);
    let (mut sink, mut source) = socket.split();
    let session = tokio::spawn(serve_spdy(local, target));
    let up = async {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    };
    tokio::join!(up, down);
    let _ = session.await;
}

/// The ports of a channel-protocol request (`ports=a,b` or repeated `port`).
pub fn ports(pairs: &[(String, String)]) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        if k != "ports" && k != "port" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if out.is_empty() {
        return Err("at least one port must be specified".into());
    }
    Ok(out)
}

/// Serves the channel protocol: one connection per requested port, for the socket's life.
pub async fn serve_channels(socket: WebSocket, target: Target, ports: Vec<u16>) {
    let (mut sink, mut source) = socket.split();
    let (out, mut queue) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });
    let mut inputs = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = |ch: u8| Message::Binary(Bytes::from(vec![ch, port as u8, (port >> 8) as u8]));
        let _ = out.send(prefix(data_ch)).await;
        let _ = out.send(prefix(err_ch)).await;
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(32);
        inputs.push(in_tx);
        let out = out.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = match connect(port, target.netns.as_deref()).await {
                Ok(t) => t,
                Err(e) => {
                    let mut msg = vec![err_ch];
                    msg.extend(
                        format!(
                            "error forwarding port {port} to pod {}, uid {}: {e}",
                            target.pod, target.uid
                        )
                        .into_bytes(),
                    );
                    let _ = out.send(Message::Binary(msg.into())).await;
                    return;
                }
            };
            let (mut rd, mut wr) = tcp.into_split();
            let inbound = async {
                while let Some(chunk) = in_rx.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let outbound = async {
                let mut buf = vec![0u8; 32 * 1024];
                buf[0] = data_ch;
                loop {
                    match rd.read(&mut buf[1..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let msg = Message::Binary(Bytes::copy_from_slice(&buf[..=n]));
                            if out.send(msg).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            tokio::pin!(inbound, outbound);
            tokio::select! {
                _ = &mut inbound => {}
                _ = &mut outbound => {}
            }
        }));
    }
    drop(out);
    // Until the client leaves or every port's connection has ended (then the socket closes,
    // which is how the client learns it).
    let all = futures::future::join_all(tasks);
    tokio::pin!(all);
    loop {
        let msg = tokio::select! {
            _ = &mut all => break,
            m = source.next() => m,
        };
        let data = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let Some((&ch, payload)) = data.split_first() else {
            continue;
        };
        if ch % 2 == 0
            && let Some(tx) = inputs.get(usize::from(ch / 2))
        {
            let _ = tx.send(Bytes::copy_from_slice(payload)).await;
        }
    }
    drop(inputs);
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut all).await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        crate::streams::query_pairs(s)
    }

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports(&q("ports=8080,9090")).unwrap(), [8080, 9090]);
        assert_eq!(ports(&q("port=80&port=81")).unwrap(), [80, 81]);
        assert!(ports(&q("ports=0")).unwrap_err().contains("invalid port"));
        assert!(ports(&q("")).unwrap_err().contains("at least one port"));
    }

    /// A client through the SPDY codec: the error stream, then the data stream, bytes to a
    /// local echo server and back, FIN on both at the end; a closed port is reported on the
    /// error stream.
    #[tokio::test]
    async fn spdy_pairs_forward_to_the_port() {
        use bytes::BytesMut;
        use strake_spdy::frame::{Decoder, Encoder};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
        });
        let (client, server) = tokio::io::duplex(64 * 1024);
        let target = Target {
            pod: "web".into(),
            uid: "u1".into(),
            netns: None,
        };
        tokio::spawn(serve_spdy(server, target));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut enc = Encoder::new();
        let syn = |id, kind: &str, port: u16, req: &str| strake_spdy::Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), req.into()),
            ],
        };
        let mut wire = Vec::new();
        for f in [
            syn(1, "error", port, "0"),
            syn(3, "data", port, "0"),
            strake_spdy::Frame::Data {
                id: 3,
                fin: false,
                data: Bytes::from_static(b"echo me"),
            },
            syn(5, "error", 1, "1"),
            syn(7, "data", 1, "1"),
        ] {
            enc.encode(&f, &mut wire).unwrap();
        }
        cwr.write_all(&wire).await.unwrap();
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let (mut echoed, mut error_text) = (Vec::new(), String::new());
        let (mut fins, mut resets) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(fins.contains(&1) && fins.contains(&3) && fins.contains(&5) && resets.contains(&7))
        {
            let n = tokio::time::timeout_at(deadline, crd.read_buf(&mut buf))
                .await
                .expect("frames before the deadline")
                .unwrap();
            assert!(n > 0, "the session ended early");
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                match f {
                    strake_spdy::Frame::Data { id, fin, data } => {
                        match id {
                            3 => echoed.extend_from_slice(&data),
                            5 => error_text.push_str(&String::from_utf8_lossy(&data)),
                            _ => {}
                        }
                        if fin {
                            fins.push(id);
                        }
                    }
                    strake_spdy::Frame::RstStream { id, .. } => resets.push(id),
                    _ => {}
                }
            }
        }
        assert_eq!(echoed, b"echo me");
        assert!(
            error_text.starts_with("error forwarding port 1 to pod web, uid u1: failed to connect"),
            "{error_text}"
        );
    }
}
