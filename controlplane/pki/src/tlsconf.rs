//! rustls configurations built from PEM material.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{CertifiedKey, PkiError};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Parse {
        what: "certificate PEM",
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(PkiError::Parse {
            what: "certificate PEM",
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PkiError::Parse {
            what: "private key PEM",
            reason: e.to_string(),
        })?
        .ok_or(PkiError::Parse {
            what: "private key PEM",
            reason: "no private key found".into(),
        })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// A server config builder that asks for (but does not require) a client certificate signed
/// by `ca_pem`.
fn verifying_clients(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, PkiError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier))
}

/// A server config presenting `serving`, which asks for (but does not require) a client
/// certificate signed by `ca_pem`; unauthenticated clients may still use bearer tokens.
pub fn server_config(
    serving: &CertifiedKey,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<ServerConfig, PkiError> {
    let mut cfg = verifying_clients(ca_pem)?
        .with_single_cert(certs(&serving.cert_pem)?, key(&serving.key_pem)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A serving certificate that can be replaced while the server runs: every new handshake
/// presents the current one, and connections already open keep theirs (a watch stays open
/// across a rotation).
#[derive(Debug)]
pub struct RotatingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

fn signing_key(c: &CertifiedKey) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    let key = provider().key_provider.load_private_key(key(&c.key_pem)?)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        certs(&c.cert_pem)?,
        key,
    )))
}

impl RotatingCert {
    pub fn new(c: &CertifiedKey) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(signing_key(c)?),
        }))
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Presents `c` from the next handshake on.
    pub fn set(&self, c: &CertifiedKey) -> Result<(), PkiError> {
        let next = signing_key(c)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for RotatingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// As [`client_config`], presenting whatever `client` holds at each handshake.
pub fn rotating_client_config(
    client: Arc<RotatingCert>,
    ca_pem: &str,
) -> Result<ClientConfig, PkiError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(client))
}

/// As [`server_config`], presenting whatever `serving` holds at each handshake.
pub fn rotating_server_config(
    serving: Arc<RotatingCert>,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<ServerConfig, PkiError> {
    let mut cfg = verifying_clients(ca_pem)?.with_cert_resolver(serving);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A client config trusting only `ca_pem`, optionally presenting a client certificate.
pub fn client_config(
    ca_pem: &str,
    client: Option<&CertifiedKey>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    Ok(match client {
        Some(c) => builder.with_client_auth_cert(certs(&c.cert_pem)?, key(&c.key_pem)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// A client config for the one unauthenticated discovery request (`/strake/v1/cluster-info`):
/// it accepts any server certificate, because the document it fetches is authenticated by the
/// bootstrap token's HMAC instead. Never use it for anything else.
pub fn discovery_client_config() -> Result<ClientConfig, PkiError> {
    let provider = provider();
    let verifier = Arc::new(AnyServerCert(provider.clone()));
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A client config for HTTPS container probes, which kubelet sends without verifying the
/// server (a pod's certificate names whatever its owner chose, signed by anyone).
pub fn probe_client_config() -> Result<ClientConfig, PkiError> {
    discovery_client_config()
}

#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
