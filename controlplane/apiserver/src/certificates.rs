//! Admission for CertificateSigningRequests, as upstream's CertificateApproval,
//! CertificateSigning and the request strategy: a new request records who made it
//! (`spec.username`, `uid`, `groups`, `extra`, whatever the body said); approving or denying it
//! needs the `approve` verb on the `signers` resource named by its signer (or `<domain>/*`),
//! and issuing a certificate the `sign` verb. The server's own approver and signer are trusted.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use strake_apimachinery::admission::{AdmissionPlugin, Attributes, Operation};
use strake_apimachinery::{ApiError, Registry};
use strake_rbac::{Authorizer, Resource};

const GROUP: &str = "certificates.k8s.io";

pub struct Certificates {
    pub authz: Arc<Authorizer>,
}

fn condition_types(obj: &Value) -> Vec<String> {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect()
}

impl Certificates {
    /// Whether the user may `verb` the signer: by its name or its domain's wildcard.
    fn may(&self, user: &strake_apimachinery::UserInfo, verb: &str, signer: &str) -> bool {
        let wildcard = signer
            .split_once('/')
            .map(|(domain, _)| format!("{domain}/*"))
            .unwrap_or_default();
        [signer, wildcard.as_str()].iter().any(|name| {
            self.authz
                .authorize(&strake_rbac::Attributes::resource(
                    user,
                    verb,
                    Resource {
                        group: GROUP,
                        resource: "signers",
                        subresource: "",
                        namespace: "",
                        name,
                    },
                ))
                .allowed()
        })
    }
}

impl AdmissionPlugin for Certificates {
    fn name(&self) -> &'static str {
        "CertificateApproval"
    }

    fn admit<'a>(
        &'a self,
        _reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.def.group != GROUP || attrs.def.plural != "certificatesigningrequests" {
                return Ok(());
            }
            let Some(user) = attrs.user else {
                return Ok(());
            };
            let signer = obj["spec"]["signerName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let refuse = |verb: &str| {
                ApiError::Forbidden(format!(
                    "certificatesigningrequests.certificates.k8s.io {:?} is forbidden: user not permitted to {verb} requests with signerName {signer:?}",
                    attrs.name
                ))
            };
            match (attrs.operation, attrs.subresource) {
                (Operation::Create, None) => {
                    let spec = &mut obj["spec"];
                    spec["username"] = user.name.clone().into();
                    spec["uid"] = user.uid.clone().into();
                    spec["groups"] = json!(user.groups);
                    if user.extra.is_empty() {
                        if let Some(m) = spec.as_object_mut() {
                            m.remove("extra");
                        }
                    } else {
                        spec["extra"] = json!(user.extra);
                    }
                }
                (Operation::Update, Some("approval")) => {
                    let before = attrs.old.map(condition_types).unwrap_or_default();
                    let decided = condition_types(obj).into_iter().any(|t| {
                        matches!(t.as_str(), "Approved" | "Denied") && !before.contains(&t)
                    });
                    if decided && !self.may(user, "approve", &signer) {
                        return Err(refuse("approve"));
                    }
                }
                (Operation::Update, Some("status")) => {
                    let cert = |v: &Value| v["status"]["certificate"].as_str().map(str::to_string);
                    let issued = cert(obj).is_some_and(|c| !c.is_empty())
                        && attrs.old.and_then(&cert) != cert(obj);
                    if issued && !self.may(user, "sign", &signer) {
                        return Err(refuse("sign"));
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }
}
