//! CertificateSigningRequests: the approver and the signer of the `kubernetes.io` signers.
//!
//! - **Approval**: a `kube-apiserver-client-kubelet` request is approved when a node asks for
//!   its own client certificate (`system:node:<name>` in `system:nodes`, asked by that node)
//!   or a bootstrapper asks for a node's first one, as upstream's csrapproving controller
//!   does; a `kubelet-serving` request when the node asks for names that are its own
//!   addresses (upstream leaves this to an external approver; Talos and k3s approve it).
//!   Anything else waits for `kubectl certificate approve`.
//! - **Signing**: an approved request of `kube-apiserver-client`, `kube-apiserver-client-kubelet`
//!   or `kubelet-serving` that meets its signer's rules (subject, names, usages) is signed by
//!   the cluster CA for its `expirationSeconds`, at most a year; one that does not is marked
//!   Failed with the reason.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strake_apimachinery::{ApiError, Part};
use strake_pki::{ClusterCa, CsrInfo};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "csrsigning-controller";
pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The longest certificate the signer issues (upstream's cluster-signing-duration).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct Certificates {
    client: Client,
    requests: Reader<CertificateSigningRequest>,
    nodes: Reader<Node>,
    ca: ClusterCa,
    queue: Arc<Queue<ObjectRef>>,
}

fn has(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty))
}

fn condition(ty: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The node a `system:node:<name>` subject in `system:nodes` names, with nothing else asked.
fn node_subject(info: &CsrInfo) -> Result<&str, String> {
    let name = info
        .common_name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            format!(
                "the subject {:?} is not system:node:<name>",
                info.common_name
            )
        })?;
    if info.organizations != ["system:nodes"] {
        return Err(format!(
            "the organizations {:?} are not [\"system:nodes\"]",
            info.organizations
        ));
    }
    Ok(name)
}

/// Why a signer may not sign this request, if it may not (upstream's signer rules).
fn signer_rules(signer: &str, info: &CsrInfo, usages: &[String]) -> Result<(), String> {
    let (required, allowed): (&str, &[&str]) = match signer {
        CLIENT => (
            "client auth",
            &["digital signature", "key encipherment", "client auth"],
        ),
        KUBELET_CLIENT => (
            "client auth",
            &["digital signature", "key encipherment", "client auth"],
        ),
        KUBELET_SERVING => (
            "server auth",
            &["digital signature", "key encipherment", "server auth"],
        ),
        _ => return Err(format!("{signer} is not a signer of this cluster")),
    };
    if !usages.iter().any(|u| u == required) {
        return Err(format!("{signer} requires the usage {required:?}"));
    }
    if let Some(u) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Err(format!("{signer} does not allow the usage {u:?}"));
    }
    match signer {
        KUBELET_CLIENT => {
            node_subject(info)?;
            if !(info.dns_names.is_empty()
                && info.ips.is_empty()
                && info.emails.is_empty()
                && info.uris.is_empty())
            {
                return Err("a kubelet client certificate names no DNS, IP, email or URI".into());
            }
        }
        KUBELET_SERVING => {
            node_subject(info)?;
            if info.dns_names.is_empty() && info.ips.is_empty() {
                return Err("a kubelet serving certificate names a DNS name or an IP".into());
            }
            if !(info.emails.is_empty() && info.uris.is_empty()) {
                return Err("a kubelet serving certificate names no email or URI".into());
            }
        }
        _ => {
            if info.common_name.is_empty() {
                return Err("a client certificate needs a common name (the user)".into());
            }
        }
    }
    Ok(())
}

impl Certificates {
    pub fn new(
        client: &Client,
        requests: &mut Reflector<CertificateSigningRequest>,
        nodes: &mut Reflector<Node>,
        ca: ClusterCa,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        requests.on_change(runtime::enqueue_self(&queue));
        Arc::new(Self {
            client: client.named(NAME),
            requests: requests.reader(),
            nodes: nodes.reader(),
            ca,
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.requests.ready().await;
        self.nodes.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.requests);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    /// Why the request should be approved without a person, if it should.
    fn auto_approval(
        &self,
        csr: &CertificateSigningRequest,
        info: &CsrInfo,
    ) -> Option<&'static str> {
        let spec = &csr.spec;
        let usages = spec.usages.clone().unwrap_or_default();
        if signer_rules(&spec.signer_name, info, &usages).is_err() {
            return None;
        }
        let node = node_subject(info).ok()?;
        let requester = spec.username.as_deref().unwrap_or_default();
        let groups = spec.groups.clone().unwrap_or_default();
        let in_group = |g: &str| groups.iter().any(|x| x == g);
        let itself = requester == info.common_name && in_group("system:nodes");
        match spec.signer_name.as_str() {
            KUBELET_CLIENT if itself => {
                Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
            }
            KUBELET_CLIENT if in_group("system:bootstrappers") => {
                Some("Auto approving kubelet client certificate after SubjectAccessReview.")
            }
            KUBELET_SERVING if itself => {
                let n = self.nodes.get(&ObjectRef::new(None, node))?;
                let addresses: Vec<String> = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.address)
                    .chain(std::iter::once(node.to_string()))
                    .collect();
                let names_ok = info.dns_names.iter().all(|d| addresses.contains(d))
                    && info
                        .ips
                        .iter()
                        .all(|ip| addresses.contains(&ip.to_string()));
                names_ok.then_some(
                    "Auto approving kubelet serving certificate: the names asked for are the node's own.",
                )
            }
            _ => None,
        }
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(csr) = self.requests.get(&key) else {
            return Ok(Action::await_change());
        };
        let signer = csr.spec.signer_name.as_str();
        if ![CLIENT, KUBELET_CLIENT, KUBELET_SERVING].contains(&signer)
            || has(&csr, "Denied")
            || has(&csr, "Failed")
            || csr
                .status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .is_some_and(|c| !c.0.is_empty())
        {
            return Ok(Action::await_change());
        }
        let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
        let info = match strake_pki::parse_csr(&pem) {
            Ok(i) => i,
            // Validation refuses these; nothing to do with one stored before.
            Err(_) => return Ok(Action::await_change()),
        };
        if !has(&csr, "Approved") {
            let Some(message) = self.auto_approval(&csr, &info) else {
                return Ok(Action::await_change());
            };
            self.set_status(&key, |s| {
                s.conditions.get_or_insert_default().push(condition(
                    "Approved",
                    "AutoApproved",
                    message,
                ));
            })
            .await?;
            // The change comes back through the cache and signs it.
            return Ok(Action::await_change());
        }
        let usages = csr.spec.usages.clone().unwrap_or_default();
        if let Err(why) = signer_rules(signer, &info, &usages) {
            self.set_status(&key, |s| {
                s.conditions.get_or_insert_default().push(condition(
                    "Failed",
                    "SignerValidationFailure",
                    &why,
                ));
            })
            .await?;
            return Ok(Action::await_change());
        }
        let seconds = csr
            .spec
            .expiration_seconds
            .map_or(MAX_DURATION.as_secs(), |s| {
                (s.max(600) as u64).min(MAX_DURATION.as_secs())
            });
        let cert = match self
            .ca
            .sign_csr(&pem, &usages, time::Duration::seconds(seconds as i64))
        {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                self.set_status(&key, |s| {
                    s.conditions.get_or_insert_default().push(condition(
                        "Failed",
                        "SigningError",
                        &why,
                    ));
                })
                .await?;
                return Ok(Action::await_change());
            }
        };
        self.set_status(&key, |s| {
            s.certificate = Some(ByteString(cert.clone().into_bytes()));
        })
        .await?;
        Ok(Action::await_change())
    }

    async fn set_status(
        &self,
        key: &ObjectRef,
        f: impl Fn(&mut k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus),
    ) -> Result<(), ApiError> {
        match self
            .client
            .modify::<CertificateSigningRequest>(None, &key.name, Part::Status, |c| {
                f(c.status.get_or_insert_default());
                true
            })
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
