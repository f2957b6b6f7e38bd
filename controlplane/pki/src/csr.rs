//! Certificate signing requests (certificates.k8s.io): what a PEM request asks for, with its
//! signature checked, and the cluster CA's signature over it with the usages and lifetime a
//! signer grants.

use std::net::IpAddr;

use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};

use crate::{ClusterCa, PkiError};

/// What a request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

fn parse_err(reason: impl Into<String>) -> PkiError {
    PkiError::Parse {
        what: "certificate signing request",
        reason: reason.into(),
    }
}

/// The DER of the one `CERTIFICATE REQUEST` PEM block.
fn der(pem_text: &str) -> Result<Vec<u8>, PkiError> {
    let items = rustls_pemfile::read_all(&mut pem_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(format!("not PEM: {e}")))?;
    match items.as_slice() {
        [rustls_pemfile::Item::Csr(der)] => Ok(der.to_vec()),
        [_] => Err(parse_err("the PEM block is not a \"CERTIFICATE REQUEST\"")),
        [] => Err(parse_err("no PEM block")),
        _ => Err(parse_err("more than one PEM block")),
    }
}

/// Reads a PEM request and checks its signature (the requester holds the key).
pub fn parse_csr(pem_text: &str) -> Result<CsrInfo, PkiError> {
    let der = der(pem_text)?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| parse_err(e.to_string()))?;
    csr.verify_signature()
        .map_err(|_| parse_err("its signature does not verify"))?;
    let subject = &csr.certification_request_info.subject;
    let mut info = CsrInfo {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                    GeneralName::RFC822Name(e) => info.emails.push(e.to_string()),
                    GeneralName::URI(u) => info.uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => info
                            .ips
                            .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => info
                            .ips
                            .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => return Err(parse_err("an IP address SAN of a bad length")),
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(info)
}

/// The key usages upstream names (`digital signature`, `client auth`...), as rcgen's.
fn usages(
    names: &[String],
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), PkiError> {
    let (mut ku, mut eku) = (Vec::new(), Vec::new());
    for n in names {
        match n.as_str() {
            "digital signature" => ku.push(KeyUsagePurpose::DigitalSignature),
            "content commitment" => ku.push(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => ku.push(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => ku.push(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => ku.push(KeyUsagePurpose::DataEncipherment),
            "cert sign" => ku.push(KeyUsagePurpose::KeyCertSign),
            "crl sign" => ku.push(KeyUsagePurpose::CrlSign),
            "encipher only" => ku.push(KeyUsagePurpose::EncipherOnly),
            "decipher only" => ku.push(KeyUsagePurpose::DecipherOnly),
            "server auth" => eku.push(ExtendedKeyUsagePurpose::ServerAuth),
            "client auth" => eku.push(ExtendedKeyUsagePurpose::ClientAuth),
            "code signing" => eku.push(ExtendedKeyUsagePurpose::CodeSigning),
            "email protection" => eku.push(ExtendedKeyUsagePurpose::EmailProtection),
            "timestamping" => eku.push(ExtendedKeyUsagePurpose::TimeStamping),
            "ocsp signing" => eku.push(ExtendedKeyUsagePurpose::OcspSigning),
            "any" => eku.push(ExtendedKeyUsagePurpose::Any),
            "signing" => {}
            other => {
                return Err(parse_err(format!("unknown key usage {other:?}")));
            }
        }
    }
    Ok((ku, eku))
}

impl ClusterCa {
    /// Signs a request's subject and names for `valid`, with exactly the `usages` given (what
    /// the request itself asks of usages and constraints is ignored); never a CA. Returns the
    /// certificate as PEM.
    pub fn sign_csr(
        &self,
        pem_text: &str,
        usage_names: &[String],
        valid: Duration,
    ) -> Result<String, PkiError> {
        let der = der(pem_text)?;
        let mut csr = CertificateSigningRequestParams::from_der(
            &rustls_pki_types::CertificateSigningRequestDer::from(der),
        )?;
        let (ku, eku) = usages(usage_names)?;
        let now = OffsetDateTime::now_utc();
        let p = &mut csr.params;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = ku;
        p.extended_key_usages = eku;
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + valid;
        p.use_authority_key_identifier_extension = true;
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn requests_are_read_and_signed_with_the_usages_granted() {
        let pem = request("system:node:n1", &["system:nodes"], &["n1", "10.0.0.5"]);
        let info = parse_csr(&pem).unwrap();
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.dns_names, ["n1"]);
        assert_eq!(info.ips, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_generate(dir.path(), "t").unwrap();
        let cert = ca
            .sign_csr(
                &pem,
                &["digital signature".into(), "server auth".into()],
                Duration::hours(1),
            )
            .unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert_eq!(
            x.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "system:node:n1"
        );
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x.is_ca());
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 300);
        // Garbage and tampering are named.
        assert!(parse_csr("hello").is_err());
        let cert_not_csr = ca.ca.cert_pem.clone();
        assert!(
            parse_csr(&cert_not_csr)
                .unwrap_err()
                .to_string()
                .contains("not a \"CERTIFICATE REQUEST\""),
        );
        assert!(
            ca.sign_csr(&pem, &["teleport".into()], Duration::hours(1))
                .is_err()
        );
    }
}
