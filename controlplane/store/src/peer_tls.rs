//! Peer TLS material: how a store node is named on the wire (`strake-store-<id>`), issuing
//! peer certificates from the cluster CA, and the rustls configs of the peer transport.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use strake_pki::{CertifiedKey, ClusterCa, RotatingCert, peer_identity};

use crate::error::StoreError;
use crate::raft_types::NodeId;

/// The organization every store peer certificate carries; certificates without it are refused.
pub const PEER_GROUP: &str = "strake:store-peers";
/// ALPN protocol of the peer transport.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// How long issued peer certificates are valid.
const PEER_CERT_DAYS: i64 = 365;
/// [`PEER_CERT_DAYS`], for those who renew them (see [`crate::Store::rotate_peer_tls`]).
pub const PEER_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(PEER_CERT_DAYS as u64 * 24 * 3600);

/// The certificate name (CN and DNS SAN) of store node `id`.
pub fn peer_name(id: NodeId) -> String {
    format!("strake-store-{id}")
}

/// The node id a peer certificate names, if it is a store peer certificate
/// (CN `strake-store-<id>`, O [`PEER_GROUP`]).
pub(crate) fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, String> {
    let identity = peer_identity(cert).map_err(|e| e.to_string())?;
    if !identity.groups.iter().any(|g| g == PEER_GROUP) {
        return Err(format!(
            "certificate {:?} is not a store peer certificate (organization {PEER_GROUP:?} missing)",
            identity.user
        ));
    }
    identity
        .user
        .strip_prefix("strake-store-")
        .and_then(|id| id.parse::<NodeId>().ok())
        .ok_or_else(|| {
            format!(
                "certificate common name {:?} is not of the form strake-store-<node id>",
                identity.user
            )
        })
}

/// A running store's peer certificate, and the client and server configs presenting it.
pub(crate) type RotatingConfigs = (Arc<RotatingCert>, Arc<ClientConfig>, Arc<ServerConfig>);

/// The mutual-TLS material of one store node: the cluster CA it trusts, and its own peer
/// certificate (CN `strake-store-<node id>`, usable as server and client) and key, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn tls_error(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::PeerTls {
        problem: format!("{what}: {err}"),
    }
}

impl PeerTls {
    /// Issues a peer certificate for node `node_id` from the cluster CA: CN and DNS name
    /// `strake-store-<node_id>`, organization [`PEER_GROUP`], server and client auth.
    pub fn issue(ca: &ClusterCa, node_id: NodeId) -> Result<PeerTls, StoreError> {
        let ca_key = KeyPair::from_pem(&ca.ca.key_pem).map_err(|e| tls_error("CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca.ca.cert_pem, ca_key)
            .map_err(|e| tls_error("CA certificate", e))?;
        let name = peer_name(node_id);
        let mut params = CertificateParams::new(vec![name.clone()])
            .map_err(|e| tls_error("peer certificate name", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, PEER_GROUP);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(PEER_CERT_DAYS);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| tls_error("generating a peer key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_error("signing the peer certificate", e))?;
        Ok(PeerTls {
            ca_pem: ca.ca.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Checks that the material parses and that the certificate names node `node_id`.
    pub(crate) fn validate(&self, node_id: NodeId) -> Result<(), StoreError> {
        let invalid = |field: &str, problem: String| StoreError::InvalidConfig {
            field: format!("tls.{field}"),
            problem,
        };
        let cert = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .next()
            .ok_or_else(|| invalid("cert_pem", "no certificate in the PEM".into()))?
            .map_err(|e| invalid("cert_pem", e.to_string()))?;
        let named = node_id_of(&cert).map_err(|e| invalid("cert_pem", e))?;
        if named != node_id {
            return Err(invalid(
                "cert_pem",
                format!("the certificate is for node {named}, but this node is {node_id}"),
            ));
        }
        if rustls_pemfile::certs(&mut self.ca_pem.as_bytes())
            .next()
            .is_none()
        {
            return Err(invalid("ca_pem", "no certificate in the PEM".into()));
        }
        match rustls_pemfile::private_key(&mut self.key_pem.as_bytes()) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(invalid("key_pem", "no private key in the PEM".into())),
            Err(e) => return Err(invalid("key_pem", e.to_string())),
        }
        self.client_config()?;
        self.server_config()?;
        Ok(())
    }

    /// The configs of a running store: both sides present whatever the returned certificate
    /// holds at each handshake, so [`crate::Store::rotate_peer_tls`] can replace it.
    pub(crate) fn rotating(&self) -> Result<RotatingConfigs, StoreError> {
        let cert = RotatingCert::new(&self.certified_key())
            .map_err(|e| tls_error("loading the peer certificate", e))?;
        let mut client = strake_pki::rotating_client_config(cert.clone(), &self.ca_pem)
            .map_err(|e| tls_error("building the client config", e))?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        let server = strake_pki::rotating_server_config(cert.clone(), &self.ca_pem, &[ALPN_H2])
            .map_err(|e| tls_error("building the server config", e))?;
        Ok((cert, Arc::new(client), Arc::new(server)))
    }

    pub(crate) fn certified_key(&self) -> CertifiedKey {
        CertifiedKey {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// Client side: trusts only the cluster CA and presents this node's certificate.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, StoreError> {
        let mut cfg = strake_pki::client_config(&self.ca_pem, Some(&self.certified_key()))
            .map_err(|e| tls_error("building the client config", e))?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Server side: asks for a client certificate from the cluster CA. Connections without
    /// one are dropped by the peer server, which requires a store peer certificate.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, StoreError> {
        let cfg = strake_pki::server_config(&self.certified_key(), &self.ca_pem, &[ALPN_H2])
            .map_err(|e| tls_error("building the server config", e))?;
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_node() {
        let ca = ClusterCa::generate("t").unwrap();
        let tls = PeerTls::issue(&ca, 7).unwrap();
        tls.validate(7).unwrap();
        let err = tls.validate(8).unwrap_err().to_string();
        assert!(
            err.contains("tls.cert_pem") && err.contains("node 7") && err.contains("is 8"),
            "{err}"
        );
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn client_certificates_are_not_peer_certificates() {
        let ca = ClusterCa::generate("t").unwrap();
        let admin = ca
            .issue_client(
                "strake-store-1",
                &["system:masters"],
                time::Duration::days(1),
            )
            .unwrap();
        let der = rustls_pemfile::certs(&mut admin.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let err = node_id_of(&der).unwrap_err();
        assert!(err.contains(PEER_GROUP), "{err}");
    }
}
