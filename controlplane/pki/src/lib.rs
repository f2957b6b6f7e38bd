//! Cluster PKI: the cluster CA, the certificates it issues, bootstrap tokens, and rustls configs.
//! Owns key material on disk (mode 0600) and the token-signed "cluster-info" discovery check.
//! Must not do network I/O; callers plug the returned rustls configs into their own sockets.

mod ca;
mod credentials;
mod csr;
mod tlsconf;
mod token;

pub use ca::{
    CA_CERT, CA_KEY, CertifiedKey, ClusterCa, Identity, ca_pin, peer_identity, write_private,
};
pub use credentials::Credentials;
pub use csr::{CsrInfo, parse_csr};
pub use tlsconf::{
    RotatingCert, client_config, discovery_client_config, probe_client_config,
    rotating_client_config, rotating_server_config, server_config,
};
pub use token::{BootstrapToken, ClusterInfo};

use std::path::PathBuf;

/// Errors from PKI operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER input could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Parse { what: &'static str, reason: String },
    /// Reading or writing key material failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bootstrap token does not have the form `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[error("invalid bootstrap token: expected <6 chars>.<16 chars> of [a-z0-9]")]
    BadToken,
    /// The cluster-info signature did not verify with the token.
    #[error(
        "cluster-info signature does not match the bootstrap token: the server is not the cluster you think it is"
    )]
    BadSignature,
    /// Building a TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Building the client certificate verifier failed.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}
