//! The machine CA and the certificates of the machine API: machined's serving certificate, the
//! clients' certificates, and the self-signed certificate of maintenance mode.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use strake_machineconfig::MachineCa;
use strake_pki::{CertifiedKey, ClusterCa, PkiError};
use time::{Duration, OffsetDateTime};

use crate::Role;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("the machine CA: {0}")]
    Pki(#[from] PkiError),
    #[error("a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("`{0}` is not a PEM certificate")]
    NotPem(String),
}

/// A fresh machine CA for the cluster `cluster` (CN `<cluster>-machine-ca`).
pub fn generate_ca(cluster: &str) -> Result<MachineCa, SecretsError> {
    let ca = ClusterCa::generate(&format!("{cluster}-machine"))?;
    Ok(MachineCa {
        crt: ca.ca.cert_pem,
        key: ca.ca.key_pem,
    })
}

fn authority(ca: &MachineCa) -> ClusterCa {
    ClusterCa {
        ca: CertifiedKey {
            cert_pem: ca.crt.clone(),
            key_pem: ca.key.clone(),
        },
    }
}

/// A client certificate for `name` with `role`, valid for `days`.
pub fn issue_client(
    ca: &MachineCa,
    name: &str,
    role: Role,
    days: i64,
) -> Result<CertifiedKey, SecretsError> {
    Ok(authority(ca).issue_client(name, &[role.group()], Duration::days(days))?)
}

/// machined's serving certificate, for `localhost`, the loopback addresses, the hostname and
/// the node's addresses.
pub fn serving_cert(
    ca: &MachineCa,
    hostname: &str,
    addresses: &[IpAddr],
) -> Result<CertifiedKey, SecretsError> {
    Ok(authority(ca).issue_server("machined", &sans(hostname, addresses))?)
}

fn sans(hostname: &str, addresses: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !hostname.is_empty() {
        out.push(hostname.to_owned());
    }
    out.extend(addresses.iter().map(IpAddr::to_string));
    out.sort();
    out.dedup();
    out
}

/// Maintenance mode's self-signed serving certificate, valid for a year.
pub fn self_signed(hostname: &str, addresses: &[IpAddr]) -> Result<CertifiedKey, SecretsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = sans(hostname, addresses)
        .into_iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "machined (maintenance)");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `sha256:<hex>` of the first certificate's DER: what maintenance mode prints on the console
/// and `strakectl --insecure --fingerprint` checks.
pub fn fingerprint(cert_pem: &str) -> Result<String, SecretsError> {
    let der = rustls_der(cert_pem).ok_or_else(|| {
        SecretsError::NotPem(cert_pem.lines().next().unwrap_or_default().to_owned())
    })?;
    Ok(fingerprint_der(&der))
}

pub(crate) fn fingerprint_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn rustls_der(pem: &str) -> Option<Vec<u8>> {
    let first = rustls_pemfile::certs(&mut pem.as_bytes()).next()?;
    first.ok().map(|der| der.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_carries_its_role() {
        let ca = generate_ca("lab").unwrap();
        assert!(ca.crt.contains("BEGIN CERTIFICATE") && ca.key.contains("PRIVATE KEY"));
        let admin = issue_client(&ca, "alice", Role::Operator, 30).unwrap();
        let der = rustls_der(&admin.cert_pem).unwrap();
        let id = strake_pki::peer_identity(&der.into()).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(Role::from_groups(&id.groups), Some(Role::Operator));
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der() {
        let c = self_signed("node-1", &["10.0.2.15".parse().unwrap()]).unwrap();
        let f = fingerprint(&c.cert_pem).unwrap();
        assert!(f.starts_with("sha256:") && f.len() == 7 + 64, "{f}");
        assert_eq!(fingerprint(&c.cert_pem).unwrap(), f, "stable");
        let other = self_signed("node-1", &[]).unwrap();
        assert_ne!(fingerprint(&other.cert_pem).unwrap(), f);
        assert!(matches!(
            fingerprint("not a cert"),
            Err(SecretsError::NotPem(_))
        ));
    }

    #[test]
    fn sans_cover_loopback_the_hostname_and_every_address() {
        let s = sans("n1", &["10.0.0.2".parse().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(s, ["10.0.0.2", "127.0.0.1", "::1", "localhost", "n1"]);
    }
}
