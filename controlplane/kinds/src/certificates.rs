//! certificates.k8s.io/v1 CertificateSigningRequest: validation of the request (a PEM CSR whose
//! signature verifies), the signer name, usages and lifetime, the rules for conditions
//! (Approved and Denied exclusive, never removed) and the issued certificate (never
//! changed), and kubectl's columns.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use serde_json::{Value, json};
use strake_apimachinery::{Column, FieldError};

use crate::typed::{Kind, age_cell, age_column, col, name_cell, name_column};

/// The usages upstream accepts.
pub const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn conditions(c: &CertificateSigningRequest) -> &[CertificateSigningRequestCondition] {
    c.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn has(c: &CertificateSigningRequest, ty: &str) -> bool {
    conditions(c).iter().any(|x| x.type_ == ty)
}

/// `example.com/name`: a DNS subdomain, a slash, and a path.
fn valid_signer(s: &str) -> bool {
    match s.split_once('/') {
        Some((domain, path)) => {
            strake_apimachinery::validation::is_dns1123_subdomain(domain)
                && domain.contains('.')
                && !path.is_empty()
                && path.len() + domain.len() < 571
        }
        None => false,
    }
}

impl Kind for CertificateSigningRequest {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = &self.spec;
        match std::str::from_utf8(&spec.request.0) {
            Ok(pem) => {
                if let Err(e) = strake_pki::parse_csr(pem) {
                    errs.push(FieldError::invalid(
                        "spec.request",
                        format!("Invalid value: \"<request>\": {e}"),
                    ));
                }
            }
            Err(_) => errs.push(FieldError::invalid(
                "spec.request",
                "Invalid value: \"<binary>\": the request is not PEM text",
            )),
        }
        if spec.signer_name.is_empty() {
            errs.push(FieldError::required("spec.signerName"));
        } else if !valid_signer(&spec.signer_name) {
            errs.push(FieldError::invalid(
                "spec.signerName",
                format!(
                    "Invalid value: {:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'",
                    spec.signer_name
                ),
            ));
        }
        for (i, u) in spec.usages.iter().flatten().enumerate() {
            if !USAGES.contains(&u.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("spec.usages[{i}]"),
                    u,
                    USAGES,
                ));
            }
        }
        if let Some(e) = spec.expiration_seconds
            && e < 600
        {
            errs.push(FieldError::invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {e}: may not specify a duration less than 600 seconds (10 minutes)"),
            ));
        }
        let list = conditions(self);
        for (i, c) in list.iter().enumerate() {
            if c.type_.is_empty() {
                errs.push(FieldError::required(format!("status.conditions[{i}].type")));
            }
            if list[..i].iter().any(|o| o.type_ == c.type_) {
                errs.push(FieldError::duplicate(
                    format!("status.conditions[{i}].type"),
                    format!("Duplicate value: {:?}", c.type_),
                ));
            }
            if matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed") && c.status != "True" {
                errs.push(FieldError::not_supported(
                    format!("status.conditions[{i}].status"),
                    &c.status,
                    &["True"],
                ));
            }
        }
        if has(self, "Approved") && has(self, "Denied") {
            errs.push(FieldError::invalid(
                "status.conditions",
                "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive",
            ));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.spec != old.spec {
            errs.push(FieldError::invalid(
                "spec",
                "Invalid value: \"<spec>\": field is immutable",
            ));
        }
        for ty in ["Approved", "Denied"] {
            if has(old, ty) && !has(self, ty) {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    format!("Forbidden: updates may not remove a condition of type {ty:?}"),
                ));
            }
        }
        let cert =
            |c: &CertificateSigningRequest| c.status.as_ref().and_then(|s| s.certificate.clone());
        if let Some(before) = cert(old)
            && !before.0.is_empty()
            && cert(self).as_ref() != Some(&before)
        {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "Forbidden: updates may not modify existing certificate content",
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            age_column(),
            col("SignerName", "The signer the request is for"),
            col("Requestor", "Who made the request"),
            col("RequestedDuration", "The lifetime asked for"),
            col(
                "Condition",
                "Approved, Denied or Pending, and whether it was issued",
            ),
        ]
    }

    fn cells(&self) -> Vec<Value> {
        let mut state: Vec<&str> = conditions(self)
            .iter()
            .map(|c| c.type_.as_str())
            .filter(|t| matches!(*t, "Approved" | "Denied" | "Failed"))
            .collect();
        if state.is_empty() {
            state.push("Pending");
        }
        if self
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty())
        {
            state.push("Issued");
        }
        let duration = self
            .spec
            .expiration_seconds
            .map_or("<none>".to_string(), |s| {
                if s % 3600 == 0 {
                    format!("{}h", s / 3600)
                } else if s % 60 == 0 {
                    format!("{}m", s / 60)
                } else {
                    format!("{s}s")
                }
            });
        vec![
            name_cell(&self.metadata),
            age_cell(&self.metadata),
            json!(self.spec.signer_name),
            json!(self.spec.username.clone().unwrap_or_default()),
            json!(duration),
            json!(state.join(",")),
        ]
    }
}
