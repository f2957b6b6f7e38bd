//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1): policies and their bindings
//! are followed into memory; a write that a binding's policy matches (its match constraints,
//! then the binding's own match resources, then the match conditions) is judged by the
//! policy's CEL validations over `object`, `oldObject`, `request`, `params` (the binding's
//! parameter object, of the policy's `paramKind`), `namespaceObject` and `variables`. A failed
//! validation refuses the write under the binding's `Deny` action (the validation's reason,
//! Invalid by default, and message or messageExpression, as upstream words it) and answers
//! with a warning under `Warn`. An expression that cannot be evaluated refuses under
//! `failurePolicy: Fail` and is skipped under `Ignore`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use serde_json::{Map, Value};
use strake_apimachinery::admission::{AdmissionPlugin, Attributes};
use strake_apimachinery::follow::{ByName, follow_by_name};
use strake_apimachinery::{ApiError, ListOptions, Registry};

use crate::webhooks::{
    labels, listed, names_resource, namespace_labels, operation_name, review, selects,
};

const GROUP: &str = "admissionregistration.k8s.io";

#[derive(Default)]
pub struct Policies {
    policies: Arc<ByName<ValidatingAdmissionPolicy>>,
    bindings: Arc<ByName<ValidatingAdmissionPolicyBinding>>,
}

fn read<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

fn rule_matches(r: &NamedRuleWithOperations, attrs: &Attributes<'_>) -> bool {
    let def = attrs.def;
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
        && r.resource_names
            .as_ref()
            .is_none_or(|n| n.is_empty() || n.iter().any(|n| n == attrs.name))
        && match r.scope.as_deref().unwrap_or("*") {
            "Cluster" => !def.namespaced,
            "Namespaced" => def.namespaced,
            _ => true,
        }
}

/// Whether match resources select the write (no rules: every resource, as a binding's).
fn resources_match(
    m: Option<&MatchResources>,
    attrs: &Attributes<'_>,
    ns_labels: &BTreeMap<String, String>,
    obj_labels: &BTreeMap<String, String>,
    rules_required: bool,
) -> bool {
    let Some(m) = m else {
        return !rules_required;
    };
    let rules = m.resource_rules.as_deref().unwrap_or_default();
    if (rules_required || !rules.is_empty()) && !rules.iter().any(|r| rule_matches(r, attrs)) {
        return false;
    }
    if m.exclude_resource_rules
        .iter()
        .flatten()
        .any(|r| rule_matches(r, attrs))
    {
        return false;
    }
    let cluster_scoped = !attrs.def.namespaced && attrs.def.plural != "namespaces";
    (cluster_scoped || selects(&m.namespace_selector, ns_labels))
        && selects(&m.object_selector, obj_labels)
}

impl Policies {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn plugin(self: &Arc<Self>) -> Plugin {
        Plugin {
            policies: self.clone(),
        }
    }

    /// Follows policies and bindings; returns once both are in memory.
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
            def("validatingadmissionpolicies")?,
            self.policies.clone(),
            read,
        )
        .await?;
        follow_by_name(
            reg,
            def("validatingadmissionpolicybindings")?,
            self.bindings.clone(),
            read,
        )
        .await
    }

    /// The bindings with their policies.
    fn bound(&self) -> Vec<(ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicy)> {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        self.bindings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|b| {
                let name = b.spec.as_ref()?.policy_name.as_deref()?;
                Some((b.clone(), policies.get(name)?.clone()))
            })
            .collect()
    }
}

/// The parameter objects a binding names for a policy (none when the policy takes none).
async fn params(
    reg: &Registry,
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
    namespace: Option<&str>,
) -> Result<Option<Vec<Value>>, String> {
    let Some(kind) = policy.spec.as_ref().and_then(|s| s.param_kind.as_ref()) else {
        return Ok(None);
    };
    let Some(pref) = binding.spec.as_ref().and_then(|s| s.param_ref.as_ref()) else {
        return Err("the policy takes parameters and the binding names none".into());
    };
    let table = reg.table().snapshot();
    let def = table
        .by_gvk(
            kind.api_version.as_deref().unwrap_or_default(),
            kind.kind.as_deref().unwrap_or_default(),
        )
        .cloned()
        .ok_or_else(|| format!("the paramKind {:?} is not served", kind.kind))?;
    let ns = if def.namespaced {
        pref.namespace.as_deref().or(namespace)
    } else {
        None
    };
    let found: Vec<Value> = match &pref.name {
        Some(name) => match reg.get(&def, ns, name).await {
            Ok(v) => vec![v],
            Err(ApiError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        },
        None => {
            let all = reg
                .list(&def, ns, &ListOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            all.items
                .into_iter()
                .filter(|p| selects(&pref.selector, &labels(Some(p))))
                .collect()
        }
    };
    if found.is_empty() && pref.parameter_not_found_action.as_deref() != Some("Allow") {
        return Err(
            "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
        );
    }
    Ok(Some(found))
}

pub struct Plugin {
    policies: Arc<Policies>,
}

impl AdmissionPlugin for Plugin {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionPolicy"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.def.group == GROUP && attrs.def.plural.starts_with("validatingadmissionpolic")
            {
                return Ok(());
            }
            let bound = self.policies.bound();
            if bound.is_empty() {
                return Ok(());
            }
            let ns_labels = namespace_labels(reg, attrs, obj).await?;
            let obj_labels = {
                let new = labels(Some(&*obj));
                if new.is_empty() {
                    labels(attrs.old)
                } else {
                    new
                }
            };
            let rv = review(attrs, obj);
            let request = &rv["request"];
            let namespace_object = match attrs.namespace {
                Some(ns) => {
                    let table = reg.table().snapshot();
                    match table.lookup("", "v1", "namespaces") {
                        Some(d) => reg.get(d, None, ns).await.unwrap_or(Value::Null),
                        None => Value::Null,
                    }
                }
                None => Value::Null,
            };
            for (binding, policy) in bound {
                let (Some(bspec), Some(pspec)) = (&binding.spec, &policy.spec) else {
                    continue;
                };
                if !resources_match(
                    pspec.match_constraints.as_ref(),
                    attrs,
                    &ns_labels,
                    &obj_labels,
                    true,
                ) || !resources_match(
                    bspec.match_resources.as_ref(),
                    attrs,
                    &ns_labels,
                    &obj_labels,
                    false,
                ) {
                    continue;
                }
                let fail = pspec.failure_policy.as_deref() != Some("Ignore");
                let pname = policy.metadata.name.clone().unwrap_or_default();
                let bname = binding.metadata.name.clone().unwrap_or_default();
                let error = |what: String| -> Result<(), ApiError> {
                    if fail {
                        Err(ApiError::Forbidden(format!(
                            "policy '{pname}' with binding '{bname}' denied request: {what}"
                        )))
                    } else {
                        tracing::warn!(policy = %pname, binding = %bname, error = %what, "a policy that cannot be evaluated is skipped (failurePolicy: Ignore)");
                        Ok(())
                    }
                };
                let param_sets = match params(reg, &policy, &binding, attrs.namespace).await {
                    Ok(None) => vec![Value::Null],
                    Ok(Some(list)) if list.is_empty() => continue,
                    Ok(Some(list)) => list,
                    Err(e) => {
                        error(e)?;
                        continue;
                    }
                };
                let actions = bspec.validation_actions.clone().unwrap_or_default();
                for params in param_sets {
                    let mut vars: Vec<(&str, &Value)> = vec![
                        ("object", &request["object"]),
                        ("oldObject", &request["oldObject"]),
                        ("request", request),
                        ("params", &params),
                        ("namespaceObject", &namespace_object),
                    ];
                    // Variables in order, each seeing those before it.
                    let mut variables = Map::new();
                    let mut var_error = None;
                    for v in pspec.variables.iter().flatten() {
                        let bound = Value::Object(variables.clone());
                        let mut with = vars.clone();
                        with.push(("variables", &bound));
                        match strake_kinds::cel::evaluate_json(&v.expression, &with) {
                            Ok(x) => {
                                variables.insert(v.name.clone(), x);
                            }
                            Err(e) => {
                                var_error = Some(format!("variable {:?}: {e}", v.name));
                                break;
                            }
                        }
                    }
                    if let Some(e) = var_error {
                        error(e)?;
                        continue;
                    }
                    let variables = Value::Object(variables);
                    vars.push(("variables", &variables));
                    let mut matched = true;
                    for c in pspec.match_conditions.iter().flatten() {
                        match strake_kinds::cel::evaluate_bool(&c.expression, &vars) {
                            Ok(true) => {}
                            Ok(false) => {
                                matched = false;
                                break;
                            }
                            Err(e) => {
                                error(format!("matchCondition {:?}: {e}", c.name))?;
                                matched = false;
                                break;
                            }
                        }
                    }
                    if !matched {
                        continue;
                    }
                    for v in pspec.validations.iter().flatten() {
                        let ok = match strake_kinds::cel::evaluate_bool(&v.expression, &vars) {
                            Ok(ok) => ok,
                            Err(e) => {
                                error(format!(
                                    "expression '{}' resulted in error: {e}",
                                    v.expression
                                ))?;
                                continue;
                            }
                        };
                        if ok {
                            continue;
                        }
                        let message = v
                            .message_expression
                            .as_deref()
                            .and_then(|m| strake_kinds::cel::evaluate_json(m, &vars).ok())
                            .and_then(|m| m.as_str().map(str::to_string))
                            .filter(|m| !m.trim().is_empty())
                            .or_else(|| v.message.clone())
                            .unwrap_or_else(|| format!("failed expression: {}", v.expression));
                        let text = format!(
                            "ValidatingAdmissionPolicy '{pname}' with binding '{bname}' denied request: {message}"
                        );
                        if actions.iter().any(|a| a == "Warn") {
                            attrs.warnings.push(format!(
                                "Validation failed for ValidatingAdmissionPolicy '{pname}' with binding '{bname}': {message}"
                            ));
                        }
                        if actions.iter().any(|a| a == "Deny") {
                            let reason = v.reason.clone().unwrap_or_else(|| "Invalid".into());
                            let code = match reason.as_str() {
                                "Unauthorized" => 401,
                                "Forbidden" => 403,
                                "RequestEntityTooLarge" => 413,
                                _ => 422,
                            };
                            return Err(ApiError::Refused {
                                code,
                                reason,
                                message: text,
                            });
                        }
                    }
                }
            }
            Ok(())
        })
    }
}
