//! Upstream's PodSecurity admission, over the checks of `strake_podsecurity`: a namespace's
//! `pod-security.kubernetes.io/enforce` level refuses pods that fail it, its `warn` level
//! answers with `Warning` headers (for pods, and for the pod templates of workloads, which
//! are never refused), and bad label values are refused when the namespace is written. A
//! namespace made stricter warns about the pods already in it that the new level would
//! refuse.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use strake_podsecurity::{self as pss, Level, NamespacePolicy, Policy};

use super::{AdmissionPlugin, Attributes, Operation};
use crate::error::ApiError;
use crate::registry::{ListOptions, Registry};

/// How many pods a namespace made stricter names in its warnings.
const MAX_NAMED_PODS: usize = 10;

/// The plugin, with the policy of namespaces without labels and the namespaces it leaves
/// alone (upstream's AdmissionConfiguration `defaults` and `exemptions.namespaces`).
#[derive(Default)]
pub struct PodSecurity {
    pub defaults: NamespacePolicy,
    pub exempt_namespaces: Vec<String>,
}

/// Where a kind keeps its pod template, for the workloads PodSecurity warns about.
fn template_path(group: &str, plural: &str) -> Option<&'static [&'static str]> {
    match (group, plural) {
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs")
        | ("", "replicationcontrollers") => Some(&["spec", "template"]),
        ("batch", "cronjobs") => Some(&["spec", "jobTemplate", "spec", "template"]),
        ("", "podtemplates") => Some(&["template"]),
        _ => None,
    }
}

fn typed<T: serde::de::DeserializeOwned + Default>(v: &Value) -> T {
    if v.is_null() {
        return T::default();
    }
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// A pod spec with its images blanked: an update that changes only images is not checked
/// again, as upstream.
fn without_images(spec: &Value) -> Value {
    let mut s = spec.clone();
    for f in ["containers", "initContainers", "ephemeralContainers"] {
        for c in s[f].as_array_mut().into_iter().flatten() {
            if let Some(m) = c.as_object_mut() {
                m.remove("image");
            }
        }
    }
    s
}

impl PodSecurity {
    /// The policy of a namespace, from its labels over the defaults. A namespace whose stored
    /// labels do not parse is held to restricted (failing closed, as upstream).
    fn policy(&self, labels: &BTreeMap<String, String>) -> NamespacePolicy {
        let mut merged: BTreeMap<String, String> = BTreeMap::new();
        for (label, p) in [
            (pss::ENFORCE_LABEL, &self.defaults.enforce),
            (pss::AUDIT_LABEL, &self.defaults.audit),
            (pss::WARN_LABEL, &self.defaults.warn),
        ] {
            if p.level != Level::Privileged {
                merged.insert(label.into(), p.level.as_str().into());
            }
        }
        merged.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        pss::namespace_policy(&merged).unwrap_or_else(|_| NamespacePolicy {
            enforce: Policy::new(Level::Restricted),
            audit: Policy::new(Level::Restricted),
            warn: Policy::new(Level::Restricted),
        })
    }

    async fn namespace_policy(
        &self,
        reg: &Registry,
        ns: &str,
    ) -> Result<NamespacePolicy, ApiError> {
        let table = reg.table().snapshot();
        let Some(def) = table.lookup("", "v1", "namespaces") else {
            return Ok(self.defaults.clone());
        };
        let labels = match reg.get(def, None, ns).await {
            Ok(v) => typed::<BTreeMap<String, String>>(&v["metadata"]["labels"]),
            // NamespaceLifecycle has refused a write into a missing namespace already.
            Err(ApiError::NotFound { .. }) => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(self.policy(&labels))
    }

    /// A namespace's labels are checked, and a stricter enforce level is compared with the
    /// pods already running there.
    async fn namespace(
        &self,
        reg: &Registry,
        attrs: &Attributes<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let labels: BTreeMap<String, String> = typed(&obj["metadata"]["labels"]);
        pss::namespace_policy(&labels).map_err(|e| {
            ApiError::Forbidden(format!("namespaces \"{}\" is forbidden: {e}", attrs.name))
        })?;
        let Some(old) = attrs.old else {
            return Ok(());
        };
        let before = self.policy(&typed(&old["metadata"]["labels"]));
        let after = self.policy(&labels);
        if after.enforce == before.enforce
            || after.enforce.level == Level::Privileged
            || self.exempt_namespaces.iter().any(|n| n == attrs.name)
        {
            return Ok(());
        }
        let table = reg.table().snapshot();
        let Some(pods) = table.lookup("", "v1", "pods") else {
            return Ok(());
        };
        let list = reg
            .list(pods, Some(attrs.name), &ListOptions::default())
            .await?;
        let mut failing = Vec::new();
        for p in &list.items {
            let v = pss::check(
                after.enforce.level,
                &typed(&p["metadata"]),
                &typed(&p["spec"]),
            );
            if !v.is_empty() {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                failing.push(format!("{name}: {}", pss::reasons(&v)));
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        attrs.warnings.push(format!(
            "existing pods in namespace \"{}\" violate the new PodSecurity enforce level \"{}\"",
            attrs.name,
            after.enforce.label()
        ));
        let more = failing.len().saturating_sub(MAX_NAMED_PODS);
        for f in failing.into_iter().take(MAX_NAMED_PODS) {
            attrs.warnings.push(f);
        }
        if more > 0 {
            attrs
                .warnings
                .push(format!("{more} more pods violate the new level"));
        }
        Ok(())
    }
}

impl AdmissionPlugin for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let (group, plural) = (attrs.def.group.as_str(), attrs.def.plural.as_str());
            if !matches!(attrs.operation, Operation::Create | Operation::Update) {
                return Ok(());
            }
            if (group, plural, attrs.subresource) == ("", "namespaces", None) {
                return self.namespace(reg, attrs, obj).await;
            }
            let Some(ns) = attrs.namespace else {
                return Ok(());
            };
            if self.exempt_namespaces.iter().any(|n| n == ns) {
                return Ok(());
            }
            if (group, plural) == ("", "pods") {
                match attrs.subresource {
                    None | Some("ephemeralcontainers") => {}
                    Some(_) => return Ok(()),
                }
                if let Some(old) = attrs.old
                    && without_images(&old["spec"]) == without_images(&obj["spec"])
                    && old["metadata"]["annotations"] == obj["metadata"]["annotations"]
                {
                    return Ok(());
                }
                let policy = self.namespace_policy(reg, ns).await?;
                let meta: ObjectMeta = typed(&obj["metadata"]);
                let spec: PodSpec = typed(&obj["spec"]);
                let refused = pss::check(policy.enforce.level, &meta, &spec);
                if !refused.is_empty() {
                    return Err(ApiError::Forbidden(format!(
                        "pods \"{}\" is forbidden: {}",
                        attrs.name,
                        pss::message(&policy.enforce.label(), &refused)
                    )));
                }
                let warned = pss::check(policy.warn.level, &meta, &spec);
                if !warned.is_empty() {
                    attrs
                        .warnings
                        .push(pss::warning(&policy.warn.label(), &warned));
                }
                return Ok(());
            }
            let Some(path) = template_path(group, plural) else {
                return Ok(());
            };
            if attrs.subresource.is_some() {
                return Ok(());
            }
            let template = path.iter().fold(&*obj, |v, f| &v[*f]);
            if let Some(old) = attrs.old {
                let before = path.iter().fold(old, |v, f| &v[*f]);
                if before == template {
                    return Ok(());
                }
            }
            let policy = self.namespace_policy(reg, ns).await?;
            let warned = pss::check(
                policy.warn.level,
                &typed(&template["metadata"]),
                &typed(&template["spec"]),
            );
            if !warned.is_empty() {
                attrs
                    .warnings
                    .push(pss::warning(&policy.warn.label(), &warned));
            }
            Ok(())
        })
    }
}
