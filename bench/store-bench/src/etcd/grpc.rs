//! A minimal unary gRPC client: one cleartext HTTP/2 connection (h2c with prior knowledge, as
//! clientv3 uses for an `http://` endpoint) that multiplexes every concurrent call as its own
//! stream. Each call POSTs one length-prefixed protobuf message to `/{service}/{method}` and
//! reads one back, then the `grpc-status` and `grpc-message` trailers (or, for a failure
//! answered without a body, the same names among the response headers).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::proto::Message;
use crate::BenchError;

/// How long one call may take before it is cancelled (its stream reset).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The gRPC message prefix: a compressed flag, then the length as a big-endian u32.
const PREFIX_LEN: usize = 5;

/// A gRPC status code, shown with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub u32);

impl GrpcCode {
    pub const OK: GrpcCode = GrpcCode(0);

    fn name(self) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("unknown code")
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.name())
    }
}

/// One HTTP/2 connection to a gRPC server; clones share it.
#[derive(Clone)]
pub struct Channel {
    send: http2::SendRequest<Full<Bytes>>,
    authority: Authority,
    /// How the connection ended, once it has (for the errors of the calls it took down).
    ended: Arc<OnceLock<String>>,
}

impl Channel {
    /// Connects to `url` (`http://host:port`) and starts the HTTP/2 connection.
    pub async fn connect(url: &str) -> Result<Channel, BenchError> {
        let fail = |detail: String| BenchError::EtcdConnect {
            url: url.to_owned(),
            detail,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(fail("only http:// (cleartext HTTP/2) is supported".into()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| fail("the URL has no host".into()))?;
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| fail(format!("TCP connect: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| fail(format!("setting TCP_NODELAY: {e}")))?;
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(format!("HTTP/2 handshake: {}", chain(&e))))?;
        let ended = Arc::new(OnceLock::new());
        let record = ended.clone();
        // Drives the connection until every clone of `send` is gone or the server hangs up.
        tokio::spawn(async move {
            let how = match connection.await {
                Ok(()) => "was closed".to_owned(),
                Err(e) => format!("failed: {}", chain(&e)),
            };
            let _ = record.set(how);
        });
        Ok(Channel {
            send,
            authority,
            ended,
        })
    }

    /// Calls the unary method `rpc` (`/package.Service/Method`) with `request`.
    pub async fn unary<Req: Message, Resp: Message>(
        &self,
        rpc: &'static str,
        request: &Req,
    ) -> Result<Resp, BenchError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call(rpc, request)).await {
            Ok(result) => result,
            Err(_) => Err(BenchError::EtcdRpc {
                rpc,
                detail: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        rpc: &'static str,
        request: &Req,
    ) -> Result<Resp, BenchError> {
        let fail = |detail: String| BenchError::EtcdRpc { rpc, detail };
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(rpc)
            .build()
            .map_err(|e| fail(format!("building the request URI: {e}")))?;
        let body = frame(request).map_err(fail)?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(body))
            .map_err(|e| fail(format!("building the request: {e}")))?;
        let response = self
            .send
            .clone()
            .send_request(request)
            .await
            .map_err(|e| fail(self.transport_error("sending the request", &e)))?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let status = status_of(&parts.headers)
                .ok()
                .flatten()
                .map(|(code, message)| format!(" (grpc-status {code}: {message})"))
                .unwrap_or_default();
            return Err(fail(format!("answered HTTP {}{status}", parts.status)));
        }
        // A call that fails before any message may answer with headers only ("Trailers-Only").
        if let Some((code, message)) = status_of(&parts.headers).map_err(&fail)? {
            if code != GrpcCode::OK {
                return Err(BenchError::EtcdStatus { rpc, code, message });
            }
            return Err(fail(
                "grpc-status 0 in the headers, but no response message".into(),
            ));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| fail(self.transport_error("reading the response", &e)))?;
        let status = match collected.trailers() {
            Some(trailers) => status_of(trailers).map_err(&fail)?,
            None => None,
        };
        match status {
            None => {
                return Err(fail(
                    "the response ended without a grpc-status trailer".into(),
                ));
            }
            Some((GrpcCode::OK, _)) => {}
            Some((code, message)) => return Err(BenchError::EtcdStatus { rpc, code, message }),
        }
        let body = collected.to_bytes();
        let message = unframe(&body).map_err(&fail)?;
        Resp::decode(message).map_err(|e| fail(format!("decoding the response: {e}")))
    }

    fn transport_error(&self, what: &str, e: &hyper::Error) -> String {
        match self.ended.get() {
            Some(how) => format!("{what}: {} (the HTTP/2 connection {how})", chain(e)),
            None => format!("{what}: {}", chain(e)),
        }
    }
}

/// An error with its sources, `outer: inner: innermost`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `message` encoded behind the gRPC prefix (uncompressed).
fn frame<M: Message>(message: &M) -> Result<Bytes, String> {
    let mut buf = vec![0u8; PREFIX_LEN];
    message.encode_fields(&mut buf);
    let len = buf.len() - PREFIX_LEN;
    let len = u32::try_from(len)
        .map_err(|_| format!("a request of {len} bytes does not fit in a gRPC message"))?;
    buf[1..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(buf.into())
}

/// The one message of a unary response body.
fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let Some((prefix, rest)) = body.split_first_chunk::<PREFIX_LEN>() else {
        return Err(format!(
            "the response body has {} bytes, too few for a gRPC message",
            body.len()
        ));
    };
    match prefix[0] {
        0 => {}
        1 => return Err("the response message is compressed, which we never asked for".into()),
        flag => return Err(format!("invalid gRPC compressed flag {flag}")),
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if rest.len() < len {
        return Err(format!(
            "truncated gRPC message: {len} bytes announced, {} received",
            rest.len()
        ));
    }
    if rest.len() > len {
        return Err(format!(
            "{} bytes after the response message (a unary call answers with one message)",
            rest.len() - len
        ));
    }
    Ok(rest)
}

/// The `grpc-status` and (percent-decoded) `grpc-message` in `headers`, if there is a status.
fn status_of(headers: &HeaderMap) -> Result<Option<(GrpcCode, String)>, String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(None);
    };
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unreadable grpc-status {status:?}"))?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Ok(Some((GrpcCode(code), message)))
}

/// Undoes the percent-encoding gRPC applies to `grpc-message`; malformed escapes stay as is.
fn percent_decode(text: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let Some(&[hi, lo]) = text.get(i + 1..i + 3)
            && let (Some(hi), Some(lo)) = (hex(hi), hex(lo))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderValue, Response};
    use http_body_util::StreamBody;
    use http_body_util::combinators::BoxBody;
    use hyper::body::{Frame, Incoming};

    use super::*;
    use crate::etcd::proto::PutRequest;

    #[test]
    fn messages_are_framed_and_unframed() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
        };
        let framed = frame(&put).unwrap();
        let encoded = put.encode();
        assert_eq!(framed[0], 0);
        assert_eq!(&framed[1..5], (encoded.len() as u32).to_be_bytes());
        assert_eq!(unframe(&framed).unwrap(), encoded);
        assert_eq!(unframe(&[0, 0, 0, 0, 0]).unwrap(), b"");

        let errors: [(&[u8], &str); 5] = [
            (b"", "0 bytes, too few"),
            (b"\x00\x00\x00", "3 bytes, too few"),
            (b"\x01\x00\x00\x00\x00", "compressed"),
            (b"\x00\x00\x00\x00\x05abc", "5 bytes announced, 3 received"),
            (
                b"\x00\x00\x00\x00\x01abc",
                "2 bytes after the response message",
            ),
        ];
        for (body, problem) in errors {
            let err = unframe(body).unwrap_err();
            assert!(err.contains(problem), "{body:?}: {err}");
        }
    }

    #[test]
    fn status_and_message_are_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), Ok(None));
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(status_of(&headers), Ok(Some((GrpcCode::OK, String::new()))));
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: no leader %E2%9C%93 100%"),
        );
        let (code, message) = status_of(&headers).unwrap().unwrap();
        assert_eq!(code.to_string(), "14 UNAVAILABLE");
        assert_eq!(message, "etcdserver: no leader \u{2713} 100%");
        headers.insert("grpc-status", HeaderValue::from_static("fourteen"));
        assert!(status_of(&headers).unwrap_err().contains("fourteen"));
        assert_eq!(GrpcCode(99).to_string(), "99 unknown code");
        assert_eq!(percent_decode(b"%4a%4A%zz%4"), "JJ%zz%4");
    }

    type TestBody = BoxBody<Bytes, Infallible>;

    /// What the test server answers for each method.
    async fn serve(request: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
        let grpc_request = request.headers().get(header::CONTENT_TYPE)
            == Some(&HeaderValue::from_static("application/grpc"))
            && request.headers().get(header::TE) == Some(&HeaderValue::from_static("trailers"));
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let trailers = |status: &'static str, message: Option<&'static str>| {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", HeaderValue::from_static(status));
            if let Some(m) = message {
                map.insert("grpc-message", HeaderValue::from_static(m));
            }
            Frame::trailers(map)
        };
        let frames: Vec<Frame<Bytes>> = match path.as_str() {
            // Echoes the key back as the value, split over two DATA frames.
            "/test.Echo/Echo" if grpc_request => {
                let put = PutRequest::decode(unframe(&body).unwrap()).unwrap();
                let reply = frame(&PutRequest {
                    key: put.key.clone(),
                    value: put.key,
                })
                .unwrap();
                vec![
                    Frame::data(reply.slice(..3)),
                    Frame::data(reply.slice(3..)),
                    trailers("0", None),
                ]
            }
            "/test.Echo/Fail" => vec![trailers("9", Some("etcdserver:%20request is too large"))],
            "/test.Echo/NoTrailers" => vec![Frame::data(frame(&PutRequest::default()).unwrap())],
            "/test.Echo/Garbage" => vec![
                Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02\x0a\x05")),
                trailers("0", None),
            ],
            _ => {
                // Trailers-Only: the status in the headers and an empty body.
                let response = Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "12")
                    .header("grpc-message", "unknown method")
                    .body(BoxBody::new(Full::new(Bytes::new())))
                    .unwrap();
                return Ok(response);
            }
        };
        let stream = futures::stream::iter(frames.into_iter().map(Ok));
        Ok(Response::new(BoxBody::new(StreamBody::new(stream))))
    }

    /// Serves [`serve`] on a loopback port; returns its URL and a count of accepted connections.
    async fn test_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(serve)),
                );
            }
        });
        (format!("http://{addr}"), accepted)
    }

    #[tokio::test]
    async fn unary_calls_over_one_connection() {
        let (url, accepted) = test_server().await;
        let channel = Channel::connect(&url).await.unwrap();
        // Concurrent calls share the one connection.
        let calls = (0..20).map(|i| {
            let channel = channel.clone();
            async move {
                let request = PutRequest {
                    key: format!("key-{i}").into_bytes(),
                    value: Vec::new(),
                };
                let reply: PutRequest = channel.unary("/test.Echo/Echo", &request).await.unwrap();
                assert_eq!(reply.value, request.key);
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);

        let call = |rpc: &'static str| {
            let channel = channel.clone();
            async move {
                channel
                    .unary::<_, PutRequest>(rpc, &PutRequest::default())
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        assert_eq!(
            call("/test.Echo/Fail").await,
            "etcd /test.Echo/Fail failed with gRPC status 9 FAILED_PRECONDITION: \
             etcdserver: request is too large"
        );
        assert_eq!(
            call("/test.Echo/Missing").await,
            "etcd /test.Echo/Missing failed with gRPC status 12 UNIMPLEMENTED: unknown method"
        );
        let err = call("/test.Echo/NoTrailers").await;
        assert!(err.contains("without a grpc-status trailer"), "{err}");
        let err = call("/test.Echo/Garbage").await;
        assert!(
            err.starts_with("etcd /test.Echo/Garbage: decoding the response"),
            "{err}"
        );
        assert!(
            err.contains("malformed PutRequest at byte 0: truncated"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connect_errors_name_the_url() {
        let port = crate::free_port().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let err = Channel::connect(&url).await.err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("connecting to etcd at {url}: TCP connect")),
            "{err}"
        );
        let err = Channel::connect("https://127.0.0.1:1").await.err().unwrap();
        assert!(err.to_string().contains("only http://"), "{err}");
    }
}
