//! Admission webhooks (admissionregistration.k8s.io/v1): the Mutating and Validating
//! WebhookConfigurations are followed into memory, and every write they match is sent to
//! their webhooks as an `admission.k8s.io/v1` AdmissionReview over HTTPS (the `caBundle`
//! trusted, or the cluster CA without one). Mutating webhooks run among the mutating plugins
//! and may answer with a JSONPatch (the result is validated again, and a webhook with
//! `reinvocationPolicy: IfNeeded` runs once more if a later one changed the object);
//! validating webhooks run after every mutation. A refusal is the webhook's status, in
//! upstream's words (`admission webhook "x" denied the request: ...`); a webhook that cannot
//! be reached or answers too late refuses the write under `failurePolicy: Fail` (the
//! default) and is skipped under `Ignore`. Writes to the webhook configurations themselves
//! never go to webhooks, so a broken webhook cannot lock them out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhookConfiguration, RuleWithOperations,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};
use strake_apimachinery::admission::{AdmissionPlugin, Attributes, Operation};
use strake_apimachinery::follow::{ByName, follow_by_name};
use strake_apimachinery::{ApiError, Part, Registry};

const GROUP: &str = "admissionregistration.k8s.io";

/// Where a webhook is reached.
#[derive(Clone, Debug)]
enum Target {
    Url(String),
    Service {
        namespace: String,
        name: String,
        port: i32,
        path: String,
    },
}

/// One webhook of a configuration, as it is called.
#[derive(Clone, Debug)]
struct Hook {
    name: String,
    target: Target,
    /// PEM of the roots its serving certificate chains to (the cluster CA when empty).
    ca: Option<String>,
    rules: Vec<RuleWithOperations>,
    fail: bool,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    /// `sideEffects` None or NoneOnDryRun: it may be called for a dry run.
    dry_run_safe: bool,
    timeout: Duration,
    reinvoke: bool,
    /// `matchConditions`: (name, CEL expression), all true for the webhook to be called.
    conditions: Vec<(String, String)>,
}

/// The webhooks of every configuration of one kind, by configuration name.
type Configs = Arc<ByName<Vec<Hook>>>;

/// The followed configurations and what calls them.
pub struct Webhooks {
    mutating: Configs,
    validating: Configs,
    cluster_ca: String,
}

#[allow(clippy::too_many_arguments)]
fn hook(
    name: String,
    client: WebhookClientConfig,
    rules: Option<Vec<RuleWithOperations>>,
    failure_policy: Option<String>,
    selectors: (Option<LabelSelector>, Option<LabelSelector>),
    side_effects: &str,
    timeout: Option<i32>,
    reinvoke: bool,
    conditions: Option<Vec<MatchCondition>>,
) -> Hook {
    let target = match (client.url, client.service) {
        (Some(url), _) => Target::Url(url),
        (None, Some(s)) => Target::Service {
            namespace: s.namespace,
            name: s.name,
            port: s.port.unwrap_or(443),
            path: s.path.unwrap_or_default(),
        },
        // Validation requires one of the two; an empty one can only fail.
        (None, None) => Target::Url(String::new()),
    };
    Hook {
        name,
        target,
        ca: client
            .ca_bundle
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .filter(|s| !s.trim().is_empty()),
        rules: rules.unwrap_or_default(),
        fail: failure_policy.as_deref() != Some("Ignore"),
        namespace_selector: selectors.0,
        object_selector: selectors.1,
        dry_run_safe: matches!(side_effects, "None" | "NoneOnDryRun"),
        timeout: Duration::from_secs(timeout.unwrap_or(10).clamp(1, 30) as u64),
        reinvoke,
        conditions: conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.expression))
            .collect(),
    }
}

fn mutating_hooks(c: MutatingWebhookConfiguration) -> Vec<Hook> {
    c.webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            hook(
                w.name,
                w.client_config,
                w.rules,
                w.failure_policy,
                (w.namespace_selector, w.object_selector),
                &w.side_effects,
                w.timeout_seconds,
                w.reinvocation_policy.as_deref() == Some("IfNeeded"),
                w.match_conditions,
            )
        })
        .collect()
}

fn validating_hooks(c: ValidatingWebhookConfiguration) -> Vec<Hook> {
    c.webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            hook(
                w.name,
                w.client_config,
                w.rules,
                w.failure_policy,
                (w.namespace_selector, w.object_selector),
                &w.side_effects,
                w.timeout_seconds,
                false,
                w.match_conditions,
            )
        })
        .collect()
}

/// Whether a rule list entry names a value (`*` names every one).
pub(crate) fn listed(list: &Option<Vec<String>>, value: &str) -> bool {
    list.iter().flatten().any(|v| v == "*" || v == value)
}

/// Whether a rule's `resources` entry names a resource and subresource (`*`, `*/*`,
/// `pods`, `pods/*`, `*/status`, `pods/status`).
pub(crate) fn names_resource(entry: &str, plural: &str, sub: Option<&str>) -> bool {
    let (res, want_sub) = match entry.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (entry, None),
    };
    (res == "*" || res == plural)
        && match (want_sub, sub) {
            (None, None) => true,
            (Some(w), Some(s)) => w == "*" || w == s,
            _ => false,
        }
}

pub(crate) fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

impl Hook {
    fn matches_rules(&self, attrs: &Attributes<'_>) -> bool {
        let def = attrs.def;
        self.rules.iter().any(|r| {
            r.operations
                .iter()
                .flatten()
                .any(|o| o == "*" || o == operation_name(attrs.operation))
                && listed(&r.api_groups, &def.group)
                && listed(&r.api_versions, &def.version)
                && r.resources
                    .iter()
                    .flatten()
                    .any(|e| names_resource(e, &def.plural, attrs.subresource))
                && match r.scope.as_deref().unwrap_or("*") {
                    "Cluster" => !def.namespaced,
                    "Namespaced" => def.namespaced,
                    _ => true,
                }
        })
    }
}

pub(crate) fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|v| serde_json::from_value(v["metadata"]["labels"].clone()).ok())
        .unwrap_or_default()
}

pub(crate) fn selects(sel: &Option<LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    sel.as_ref()
        .is_none_or(|s| strake_kinds::apps::selector_matches(s, labels))
}

impl Webhooks {
    pub fn new(cluster_ca: String) -> Arc<Self> {
        Arc::new(Self {
            mutating: Configs::default(),
            validating: Configs::default(),
            cluster_ca,
        })
    }

    /// The plugin calling the mutating webhooks.
    pub fn mutating(self: &Arc<Self>) -> Plugin {
        Plugin {
            hooks: self.clone(),
            mutating: true,
        }
    }

    /// The plugin calling the validating webhooks.
    pub fn validating(self: &Arc<Self>) -> Plugin {
        Plugin {
            hooks: self.clone(),
            mutating: false,
        }
    }

    /// Follows both configuration kinds; returns once both are in memory.
    pub async fn start(self: &Arc<Self>, reg: &Registry) -> Result<(), ApiError> {
        let table = reg.table().snapshot();
        let def = |plural: &str| {
            table
                .lookup(GROUP, "v1", plural)
                .cloned()
                .ok_or_else(|| ApiError::Internal(format!("{plural}.{GROUP} is not served")))
        };
        follow_by_name(
            reg,
            def("mutatingwebhookconfigurations")?,
            self.mutating.clone(),
            |v| {
                serde_json::from_value(v.clone())
                    .map(mutating_hooks)
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        follow_by_name(
            reg,
            def("validatingwebhookconfigurations")?,
            self.validating.clone(),
            |v| {
                serde_json::from_value(v.clone())
                    .map(validating_hooks)
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    fn hooks(&self, mutating: bool) -> Vec<Hook> {
        let configs = if mutating {
            &self.mutating
        } else {
            &self.validating
        };
        configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect()
    }
}

/// The namespace's labels, for namespace selectors (a Namespace's own, for a Namespace).
pub(crate) async fn namespace_labels(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
) -> Result<BTreeMap<String, String>, ApiError> {
    if attrs.def.group.is_empty() && attrs.def.plural == "namespaces" {
        let now = labels(Some(obj));
        return Ok(if now.is_empty() {
            labels(attrs.old)
        } else {
            now
        });
    }
    let Some(ns) = attrs.namespace else {
        return Ok(BTreeMap::new());
    };
    let table = reg.table().snapshot();
    let Some(def) = table.lookup("", "v1", "namespaces") else {
        return Ok(BTreeMap::new());
    };
    match reg.get(def, None, ns).await {
        Ok(v) => Ok(labels(Some(&v))),
        Err(ApiError::NotFound { .. }) => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Why a call failed, in the words upstream's client gives (`context deadline exceeded`).
fn call_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "context deadline exceeded".into();
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text = format!("{text}: {s}");
        src = s.source();
    }
    text
}

/// The address and port a Service-backed webhook is reached at: a ready endpoint of the
/// Service's port (the API server needs no route to Service addresses), else its cluster IP.
async fn service_address(
    reg: &Registry,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<(String, u16), String> {
    let table = reg.table().snapshot();
    let get = |plural: &str| table.lookup("", "v1", plural).cloned();
    let (Some(sdef), Some(edef)) = (get("services"), get("endpoints")) else {
        return Err("services are not served".into());
    };
    let svc: Service = match reg.get(&sdef, Some(namespace), name).await {
        Ok(v) => serde_json::from_value(v).map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("service \"{namespace}/{name}\": {e}")),
    };
    let spec = svc.spec.unwrap_or_default();
    let sport = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == port)
        .ok_or_else(|| format!("service \"{namespace}/{name}\" has no port {port}"))?;
    if let Ok(v) = reg.get(&edef, Some(namespace), name).await
        && let Ok(eps) = serde_json::from_value::<Endpoints>(v)
    {
        for subset in eps.subsets.iter().flatten() {
            let Some(addr) = subset.addresses.iter().flatten().next() else {
                continue;
            };
            let p = subset.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or_default() == sport.name.as_deref().unwrap_or_default()
            });
            if let Some(p) = p {
                return Ok((addr.ip.clone(), p.port as u16));
            }
        }
    }
    match spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") {
        Some(ip) => Ok((ip, port as u16)),
        None => Err(format!(
            "service \"{namespace}/{name}\" has no ready endpoint"
        )),
    }
}

/// What a webhook answered: allowed (with a patch and warnings) or refused.
struct Answer {
    allowed: bool,
    status: Value,
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
}

impl Webhooks {
    async fn call(&self, reg: &Registry, hook: &Hook, review: &Value) -> Result<Answer, String> {
        let ca = hook.ca.as_deref().unwrap_or(&self.cluster_ca);
        let tls = strake_pki::client_config(ca, None).map_err(|e| format!("bad caBundle: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(hook.timeout)
            .redirect(reqwest::redirect::Policy::none());
        let url = match &hook.target {
            Target::Url(u) => u.clone(),
            Target::Service {
                namespace,
                name,
                port,
                path,
            } => {
                // Verified as the Service's DNS name, reached at its endpoint.
                let host = format!("{name}.{namespace}.svc");
                let (ip, p) = service_address(reg, namespace, name, *port).await?;
                let ip: std::net::IpAddr = ip
                    .parse()
                    .map_err(|_| format!("bad endpoint address {ip}"))?;
                builder = builder.resolve(&host, std::net::SocketAddr::new(ip, p));
                format!("https://{host}:{p}{path}")
            }
        };
        let client = builder.build().map_err(|e| e.to_string())?;
        let resp =
            client.post(&url).json(review).send().await.map_err(|e| {
                format!("failed to call webhook: Post \"{url}\": {}", call_error(&e))
            })?;
        let code = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("received invalid webhook response: {}", call_error(&e)))?;
        if !code.is_success() {
            return Err(format!("received invalid webhook response: status {code}"));
        }
        let r = &body["response"];
        let uid = &review["request"]["uid"];
        if &r["uid"] != uid {
            return Err(format!("expected response.uid={uid}, got {}", r["uid"]));
        }
        let patch = match r["patch"].as_str() {
            None => None,
            Some(p) => {
                if r["patchType"].as_str() != Some("JSONPatch") {
                    return Err(format!(
                        "expected patchType \"JSONPatch\", got {}",
                        r["patchType"]
                    ));
                }
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(p)
                        .map_err(|e| format!("the patch is not base64: {e}"))?,
                )
            }
        };
        Ok(Answer {
            allowed: r["allowed"].as_bool().unwrap_or(false),
            status: r["status"].clone(),
            patch,
            warnings: r["warnings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect(),
        })
    }
}

/// The AdmissionReview for a write.
pub(crate) fn review(attrs: &Attributes<'_>, obj: &Value) -> Value {
    let def = attrs.def;
    let kind = json!({"group": def.group, "version": def.version, "kind": def.kind});
    let resource = json!({"group": def.group, "version": def.version, "resource": def.plural});
    let user = attrs.user.map_or_else(
        || json!({"username": "system:apiserver", "groups": ["system:masters"]}),
        |u| json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra}),
    );
    let (object, options) = match attrs.operation {
        Operation::Create => (obj.clone(), "CreateOptions"),
        Operation::Update => (obj.clone(), "UpdateOptions"),
        Operation::Delete => (Value::Null, "DeleteOptions"),
    };
    let mut request = json!({
        "uid": uuid::Uuid::new_v4().to_string(),
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "name": attrs.name,
        "operation": operation_name(attrs.operation),
        "userInfo": user,
        "object": object,
        "oldObject": attrs.old.cloned().unwrap_or(Value::Null),
        "dryRun": attrs.dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options},
    });
    if let Some(ns) = attrs.namespace {
        request["namespace"] = ns.into();
    }
    if let Some(sub) = attrs.subresource {
        request["subResource"] = sub.into();
        request["requestSubResource"] = sub.into();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// A refusal as upstream words it: the webhook's status, at least a 400.
fn denied(name: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook \"{name}\" denied the request");
    let code = status["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    let message = match (status["message"].as_str(), status["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{by}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    ApiError::Refused {
        code,
        reason: status["reason"].as_str().unwrap_or_default().to_string(),
        message,
    }
}

/// One of the two webhook admission plugins.
pub struct Plugin {
    hooks: Arc<Webhooks>,
    mutating: bool,
}

impl Plugin {
    /// Whether every match condition of the webhook holds for the request. One that cannot be
    /// evaluated refuses the write under failurePolicy Fail and skips the webhook under Ignore.
    fn conditions_hold(&self, hook: &Hook, review: &Value) -> Result<bool, ApiError> {
        let r = &review["request"];
        let vars = [
            ("object", &r["object"]),
            ("oldObject", &r["oldObject"]),
            ("request", r),
        ];
        for (name, expr) in &hook.conditions {
            match strake_kinds::cel::evaluate_bool(expr, &vars) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) if hook.fail => {
                    return Err(ApiError::Internal(format!(
                        "failed calling webhook \"{}\": matchCondition {name:?} cannot be evaluated: {e}",
                        hook.name
                    )));
                }
                Err(e) => {
                    tracing::warn!(webhook = %hook.name, condition = %name, error = %e, "a match condition that cannot be evaluated skips its webhook (failurePolicy: Ignore)");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Calls one webhook; Ok(true) when it changed the object.
    async fn run(
        &self,
        reg: &Registry,
        attrs: &Attributes<'_>,
        hook: &Hook,
        obj: &mut Value,
    ) -> Result<bool, ApiError> {
        if attrs.dry_run && !hook.dry_run_safe {
            return Err(ApiError::BadRequest(format!(
                "admission webhook \"{}\" has side effects and does not support dry run",
                hook.name
            )));
        }
        let review = review(attrs, obj);
        if !self.conditions_hold(hook, &review)? {
            return Ok(false);
        }
        let answer = match self.hooks.call(reg, hook, &review).await {
            Ok(a) => a,
            Err(e) if hook.fail => {
                return Err(ApiError::Internal(format!(
                    "failed calling webhook \"{}\": {e}",
                    hook.name
                )));
            }
            Err(e) => {
                tracing::warn!(webhook = %hook.name, error = %e, "a failing webhook is ignored (failurePolicy: Ignore)");
                return Ok(false);
            }
        };
        for w in answer.warnings {
            attrs.warnings.push(w);
        }
        if !answer.allowed {
            return Err(denied(&hook.name, &answer.status));
        }
        let Some(patch) = answer.patch else {
            return Ok(false);
        };
        if !self.mutating {
            return Err(ApiError::Internal(format!(
                "validating webhook \"{}\" answered with a patch",
                hook.name
            )));
        }
        let mut patched = obj.clone();
        strake_apimachinery::patch::apply(
            &mut patched,
            &attrs.def.kind,
            strake_apimachinery::patch::PatchType::Json,
            &patch,
        )
        .map_err(|e| {
            ApiError::Internal(format!(
                "the patch of webhook \"{}\" does not apply: {e}",
                hook.name
            ))
        })?;
        // What a webhook made must still be a valid object.
        let part = if attrs.subresource == Some("status") {
            Part::Status
        } else {
            Part::Main
        };
        let causes = strake_apimachinery::registry::validate(attrs.def, &patched, attrs.old, part);
        if !causes.is_empty() {
            return Err(attrs.def.invalid(attrs.name, causes));
        }
        let changed = patched != *obj;
        *obj = patched;
        Ok(changed)
    }
}

impl AdmissionPlugin for Plugin {
    fn name(&self) -> &'static str {
        if self.mutating {
            "MutatingAdmissionWebhook"
        } else {
            "ValidatingAdmissionWebhook"
        }
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.def.group == GROUP
                && matches!(
                    attrs.def.plural.as_str(),
                    "mutatingwebhookconfigurations" | "validatingwebhookconfigurations"
                )
            {
                return Ok(());
            }
            let hooks: Vec<Hook> = self
                .hooks
                .hooks(self.mutating)
                .into_iter()
                .filter(|h| h.matches_rules(attrs))
                .collect();
            if hooks.is_empty() {
                return Ok(());
            }
            let ns_labels = namespace_labels(reg, attrs, obj).await?;
            // The object's labels, or the old object's (a delete has only those).
            let (new, old) = (labels(Some(&*obj)), labels(attrs.old));
            let cluster_scoped = !attrs.def.namespaced && attrs.def.plural != "namespaces";
            let hooks: Vec<Hook> = hooks
                .into_iter()
                .filter(|h| {
                    (cluster_scoped || selects(&h.namespace_selector, &ns_labels))
                        && (selects(&h.object_selector, &new)
                            || (attrs.old.is_some() && selects(&h.object_selector, &old)))
                })
                .collect();
            let mut changed_at: Option<usize> = None;
            for (i, h) in hooks.iter().enumerate() {
                if self.run(reg, attrs, h, obj).await? {
                    changed_at = Some(i);
                }
            }
            // Reinvocation: a webhook that asked for it runs once more when a later one
            // changed the object after it.
            if let Some(last) = changed_at {
                for h in hooks[..last].iter().filter(|h| h.reinvoke) {
                    self.run(reg, attrs, h, obj).await?;
                }
            }
            Ok(())
        })
    }
}
