//! The client half, as strakectl uses it: one HTTPS/1.1 request per call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use strake_pki::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::secrets::fingerprint_der;
use crate::{
    AddressView, ApplyMode, ApplyResult, ConfigView, DiskView, ErrorBody, KubeconfigView, LogLines,
    Message, PORT, RouteView, ServiceView, SocketView, StoreMembersView, StoreSnapshotView,
    VersionInfo,
};

/// Percent-encodes a query value (service names are plain words; anything else is escaped).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How the client trusts the node.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Mutual TLS: the node's certificate must be signed by the machine CA, and the client
    /// presents its own.
    Ca {
        ca_pem: String,
        client: CertifiedKey,
    },
    /// Maintenance mode: the node's certificate is self-signed. It is checked against the
    /// fingerprint the node printed on its console when one is given, and not at all otherwise.
    Insecure { fingerprint: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an endpoint (host, host:port or [v6]:port)")]
    Endpoint(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{endpoint} did not answer within {0:?}", .timeout)]
    Timeout { endpoint: String, timeout: Duration },
    #[error("talking to {endpoint}: {message}")]
    Http { endpoint: String, message: String },
    /// The node answered with an error.
    #[error("{body}")]
    Api { status: u16, body: ErrorBody },
    #[error("{endpoint} answered something that is not the machine API ({status}): {message}")]
    Decode {
        endpoint: String,
        status: u16,
        message: String,
    },
}

/// A machine API client for one node.
#[derive(Clone)]
pub struct Client {
    endpoint: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` (an `https://` prefix is allowed).
fn split_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let e = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let e = e.strip_suffix('/').unwrap_or(e);
    if e.is_empty() || e.contains('/') {
        return None;
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => PORT,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match e.split_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((e.to_owned(), PORT)),
    }
}

impl Client {
    pub fn new(endpoint: &str, trust: &Trust) -> Result<Client, ClientError> {
        let (host, port) =
            split_endpoint(endpoint).ok_or_else(|| ClientError::Endpoint(endpoint.into()))?;
        let mut tls = match trust {
            Trust::Ca { ca_pem, client } => strake_pki::client_config(ca_pem, Some(client))
                .map_err(|e| ClientError::Tls(e.to_string()))?,
            Trust::Insecure { fingerprint } => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ClientError::Tls(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        provider,
                        fingerprint: fingerprint.clone(),
                    }))
                    .with_no_client_auth()
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            endpoint: format!("{host}:{port}"),
            host,
            port,
            tls: Arc::new(tls),
            timeout: Duration::from_secs(180),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.call("GET", "/v1/version", Bytes::new()).await
    }

    /// Sends `yaml`; `dry_run` shows what would change without changing it.
    pub async fn apply_config(
        &self,
        yaml: &str,
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyResult, ClientError> {
        let path = format!(
            "/v1/apply-config?mode={}{}",
            mode.name(),
            if dry_run { "&dryRun=true" } else { "" }
        );
        self.call("POST", &path, Bytes::from(yaml.to_owned())).await
    }

    pub async fn machineconfig(&self) -> Result<ConfigView, ClientError> {
        self.call("GET", "/v1/machineconfig", Bytes::new()).await
    }

    pub async fn reboot(&self) -> Result<Message, ClientError> {
        self.call("POST", "/v1/reboot", Bytes::new()).await
    }

    pub async fn shutdown(&self) -> Result<Message, ClientError> {
        self.call("POST", "/v1/shutdown", Bytes::new()).await
    }

    /// The console log: one service's lines (or all), the last `tail`, after `since`.
    pub async fn logs(
        &self,
        service: Option<&str>,
        tail: Option<usize>,
        since: Option<f64>,
    ) -> Result<LogLines, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = service {
            q.push(format!("service={}", encode(s)));
        }
        if let Some(t) = tail {
            q.push(format!("tail={t}"));
        }
        if let Some(t) = since {
            q.push(format!("since={t}"));
        }
        self.call("GET", &format!("/v1/logs?{}", q.join("&")), Bytes::new())
            .await
    }

    /// The kernel's log, the last `tail` lines, after `since`.
    pub async fn dmesg(
        &self,
        tail: Option<usize>,
        since: Option<f64>,
    ) -> Result<LogLines, ClientError> {
        let mut q = Vec::new();
        if let Some(t) = tail {
            q.push(format!("tail={t}"));
        }
        if let Some(t) = since {
            q.push(format!("since={t}"));
        }
        self.call("GET", &format!("/v1/dmesg?{}", q.join("&")), Bytes::new())
            .await
    }

    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        self.call("GET", "/v1/services", Bytes::new()).await
    }

    pub async fn disks(&self) -> Result<Vec<DiskView>, ClientError> {
        self.call("GET", "/v1/disks", Bytes::new()).await
    }

    pub async fn addresses(&self) -> Result<Vec<AddressView>, ClientError> {
        self.call("GET", "/v1/addresses", Bytes::new()).await
    }

    pub async fn routes(&self) -> Result<Vec<RouteView>, ClientError> {
        self.call("GET", "/v1/routes", Bytes::new()).await
    }

    pub async fn netstat(&self) -> Result<Vec<SocketView>, ClientError> {
        self.call("GET", "/v1/netstat", Bytes::new()).await
    }

    /// Admin credentials for the cluster, from a control plane.
    pub async fn kubeconfig(&self) -> Result<KubeconfigView, ClientError> {
        self.call("GET", "/v1/kubeconfig", Bytes::new()).await
    }

    /// The cluster store's members, from a control plane.
    pub async fn store_members(&self) -> Result<StoreMembersView, ClientError> {
        self.call("GET", "/v1/store/members", Bytes::new()).await
    }

    /// Removes store member `id` through a control plane.
    pub async fn store_remove(&self, id: u64) -> Result<StoreMembersView, ClientError> {
        let path = format!("/v1/store/members/{id}/remove");
        self.call("POST", &path, Bytes::new()).await
    }

    /// A snapshot of the cluster store, from a control plane.
    pub async fn store_snapshot(&self) -> Result<StoreSnapshotView, ClientError> {
        self.call("GET", "/v1/store/snapshot", Bytes::new()).await
    }

    /// Sends a backup (a snapshot) to a fresh control plane, which starts a new one-member
    /// cluster from it.
    pub async fn store_restore(&self, backup: Vec<u8>) -> Result<Message, ClientError> {
        self.call("POST", "/v1/store/restore", Bytes::from(backup))
            .await
    }

    pub async fn restart_service(&self, name: &str) -> Result<Message, ClientError> {
        let path = format!("/v1/services/{}/restart", encode(name));
        self.call("POST", &path, Bytes::new()).await
    }

    /// Wipes the node's STATE at its next boot, and reboots it: it comes back in maintenance
    /// mode unless a boot source gives it a config.
    pub async fn reset(&self) -> Result<Message, ClientError> {
        self.call("POST", "/v1/reset", Bytes::new()).await
    }

    /// [`Client::reset`], a control plane leaving the cluster store first (refused, and
    /// nothing wiped, if that would cost the others their quorum).
    pub async fn reset_graceful(&self) -> Result<Message, ClientError> {
        self.call("POST", "/v1/reset?graceful=true", Bytes::new())
            .await
    }

    /// Sends a UKI to write into the other slot; the node reboots into it.
    pub async fn upgrade(&self, uki: Vec<u8>) -> Result<Message, ClientError> {
        self.call("POST", "/v1/upgrade", Bytes::from(uki)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout,
            }),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let http = |message: String| ClientError::Http {
            endpoint: self.endpoint.clone(),
            message,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| ClientError::Endpoint(self.endpoint.clone()))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| http(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.endpoint.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/yaml")
            .body(Full::new(body))
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        let decode = |message: String| ClientError::Decode {
            endpoint: self.endpoint.clone(),
            status,
            message,
        };
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))
        } else {
            let body: ErrorBody = serde_json::from_slice(&bytes).map_err(|_| {
                decode(String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned())
            })?;
            Err(ClientError::Api { status, body })
        }
    }
}

/// Accepts the server's certificate when its fingerprint matches, or any certificate when no
/// fingerprint is pinned. Handshake signatures are still verified, so the server must hold the
/// key of the certificate it shows.
#[derive(Debug)]
struct Pinned {
    provider: Arc<rustls::crypto::CryptoProvider>,
    fingerprint: Option<String>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.fingerprint {
            Some(want) => {
                let got = fingerprint_der(end_entity.as_ref());
                if got.eq_ignore_ascii_case(want.trim()) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "the node's certificate has fingerprint {got}, not {want}"
                    )))
                }
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_default_port() {
        let cases = [
            ("10.0.2.15", Some(("10.0.2.15", PORT))),
            ("node-1:50001", Some(("node-1", 50001))),
            ("https://127.0.0.1:1234/", Some(("127.0.0.1", 1234))),
            ("[fd00::1]", Some(("fd00::1", PORT))),
            ("[fd00::1]:9", Some(("fd00::1", 9))),
            ("", None),
            (":50000", None),
            ("a:b", None),
            ("a/b", None),
            ("[fd00::1]x", None),
        ];
        for (input, want) in cases {
            let got = split_endpoint(input);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{input}");
        }
    }
}
