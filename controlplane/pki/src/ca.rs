//! The cluster certificate authority and the leaf certificates it issues.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::PkiError;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs serving certificates and client certificates.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    pub ca: CertifiedKey,
}

/// The pin of a CA certificate (PEM), as `cluster.caPin` carries it: `sha256:` and the hex
/// SHA-256 of its SubjectPublicKeyInfo (as kubeadm's `--discovery-token-ca-cert-hash`).
pub fn ca_pin(cert_pem: &str) -> Result<String, PkiError> {
    use sha2::Digest as _;
    let bad = |reason: String| PkiError::Parse {
        what: "CA certificate",
        reason,
    };
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .ok_or_else(|| bad("no PEM CERTIFICATE block".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(spki))
    ))
}

/// Who a client certificate says it is: CN is the user, O entries are groups (as in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The CA certificate's file in a PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file in a PKI directory.
pub const CA_KEY: &str = "ca.key";

impl ClusterCa {
    /// Creates a fresh CA named after the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cluster_name}-ca"));
        dn.push(DnType::OrganizationName, "strake");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca: CertifiedKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    /// Loads the CA from `dir`; `None` when `dir` holds neither file (a node that is not a
    /// control plane).
    pub fn load(dir: &Path) -> Result<Option<Self>, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => Ok(None),
            (true, true) => {
                let ca = Self {
                    ca: CertifiedKey {
                        cert_pem: read(&cert_path)?,
                        key_pem: read(&key_path)?,
                    },
                };
                ca.issuer()?; // validate now, not at first use
                Ok(Some(ca))
            }
            _ => Err(PkiError::Parse {
                what: "cluster CA directory",
                reason: format!("{} holds only one of {CA_CERT} and {CA_KEY}", dir.display()),
            }),
        }
    }

    /// Loads the CA from `dir`, or generates and persists one if `dir` holds none.
    /// A directory holding only one of the two files is an error, never silently replaced.
    pub fn load_or_generate(dir: &Path, cluster_name: &str) -> Result<Self, PkiError> {
        if let Some(ca) = Self::load(dir)? {
            return Ok(ca);
        }
        let ca = Self::generate(cluster_name)?;
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.into(),
            source,
        })?;
        write_private(&dir.join(CA_KEY), &ca.ca.key_pem)?;
        write_private(&dir.join(CA_CERT), &ca.ca.cert_pem)?;
        Ok(ca)
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.ca.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca.cert_pem, key)?)
    }

    /// Issues a TLS serving certificate for the given DNS names and IP addresses, for a year.
    pub fn issue_server(
        &self,
        common_name: &str,
        sans: &[String],
    ) -> Result<CertifiedKey, PkiError> {
        self.issue_server_for(common_name, sans, Duration::days(365))
    }

    /// Issues a TLS serving certificate valid for `valid` from now.
    pub fn issue_server_for(
        &self,
        common_name: &str,
        sans: &[String],
        valid: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params, valid)
    }

    /// Issues a client certificate: `user` becomes the CN, `groups` the O entries.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        valid: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params, valid)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        valid: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + valid;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = self.issuer()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Reads the identity (CN = user, O = groups) out of a verified peer certificate.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| PkiError::Parse {
            what: "peer certificate",
            reason: e.to_string(),
        })?;
    let subject = x509.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(PkiError::Parse {
            what: "peer certificate",
            reason: "no common name (the user)".into(),
        })?
        .to_string();
    // An empty organization names no group.
    let groups = subject
        .iter_organization()
        .filter_map(|o| {
            o.as_str()
                .ok()
                .filter(|g| !g.is_empty())
                .map(str::to_string)
        })
        .collect();
    Ok(Identity { user, groups })
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Writes a file readable only by its owner, atomically (temp file, synced, renamed).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_ref()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterCa::load_or_generate(dir.path(), "t").unwrap();
        let b = ClusterCa::load_or_generate(dir.path(), "t").unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_generate(dir.path(), "t").unwrap();
        fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = ClusterCa::load_or_generate(dir.path(), "t").unwrap_err();
        assert!(err.to_string().contains("only one of"), "{err}");
    }

    #[test]
    fn a_ca_pin_is_the_hash_of_its_public_key() {
        let ca = ClusterCa::generate("t").unwrap();
        let pin = ca_pin(&ca.ca.cert_pem).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        // The same key in a re-issued certificate keeps the pin; another key changes it.
        assert_eq!(ca_pin(&ca.ca.cert_pem).unwrap(), pin);
        let other = ClusterCa::generate("t").unwrap();
        assert_ne!(ca_pin(&other.ca.cert_pem).unwrap(), pin);
        assert!(ca_pin("not pem").is_err());
    }

    #[test]
    fn client_identity_round_trips() {
        let ca = ClusterCa::generate("t").unwrap();
        let c = ca
            .issue_client("admin", &["system:masters"], Duration::days(1))
            .unwrap();
        let der = rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let id = peer_identity(&der).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "admin".into(),
                groups: vec!["system:masters".into()]
            }
        );
        // An empty organization is no group (the fuzzer's find); an empty name is no user.
        let der_of = |c: CertifiedKey| {
            rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let c = ca
            .issue_client("u", &["", "devs"], Duration::days(1))
            .unwrap();
        assert_eq!(peer_identity(&der_of(c)).unwrap().groups, vec!["devs"]);
        let c = ca.issue_client("", &["devs"], Duration::days(1)).unwrap();
        assert!(peer_identity(&der_of(c)).is_err());
    }
}
