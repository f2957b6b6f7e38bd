//! The create-only review kinds, answered by the authorizer the requests themselves go
//! through: SelfSubjectAccessReview and SubjectAccessReview / LocalSubjectAccessReview
//! (`kubectl auth can-i`, webhooks' delegated checks), SelfSubjectRulesReview (`can-i
//! --list`), SelfSubjectReview (`kubectl auth whoami`) and TokenReview.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, ResourceDef, UserInfo};
use strake_rbac::{Attributes, Resource};

use crate::AppState;
use crate::render::json_response;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(String::from))
        .collect()
}

/// The subject a SubjectAccessReview's spec names.
fn spec_user(spec: &Value) -> Result<UserInfo, ApiError> {
    let name = spec["user"].as_str().unwrap_or_default().to_string();
    let groups = strings(&spec["groups"]);
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::BadRequest(
            "spec.user or spec.groups must be given".into(),
        ));
    }
    let extra: BTreeMap<String, Vec<String>> = spec["extra"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), strings(v)))
        .collect();
    Ok(UserInfo {
        name,
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups,
        extra,
    })
}

/// Answers the access question in `spec` for `u`: the status of an access review.
fn access(app: &AppState, u: &UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let decision = if ra.is_object() {
        let (verb, group, resource, sub, ns, name) = (
            s(ra, "verb"),
            s(ra, "group"),
            s(ra, "resource"),
            s(ra, "subresource"),
            s(ra, "namespace"),
            s(ra, "name"),
        );
        let a = Attributes::resource(
            u,
            &verb,
            Resource {
                group: &group,
                resource: &resource,
                subresource: &sub,
                namespace: &ns,
                name: &name,
            },
        );
        app.authz.authorize(&a)
    } else if nra.is_object() {
        let (verb, path) = (s(nra, "verb"), s(nra, "path"));
        app.authz
            .authorize(&Attributes::non_resource(u, &verb, &path))
    } else {
        return Err(ApiError::BadRequest(
            "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be given"
                .into(),
        ));
    };
    Ok(if decision.allowed() {
        json!({"allowed": true, "reason": decision.reason()})
    } else if decision.reason().is_empty() {
        json!({"allowed": false})
    } else {
        json!({"allowed": false, "reason": decision.reason()})
    })
}

/// A rule as the rules review reports it.
fn resource_rule(r: &PolicyRule) -> Value {
    let mut v = json!({
        "verbs": r.verbs,
        "apiGroups": r.api_groups.clone().unwrap_or_default(),
        "resources": r.resources.clone().unwrap_or_default(),
    });
    if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
        v["resourceNames"] = json!(names);
    }
    v
}

pub async fn create(
    app: &AppState,
    who: &UserInfo,
    def: &ResourceDef,
    ns: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let (v, _) = crate::dispatch::body_value(headers, bytes)?;
    let (mut obj, _) = def.strategy.decode(def, v, Default::default())?;
    let spec = obj["spec"].clone();
    match def.kind.as_str() {
        "SelfSubjectAccessReview" => {
            obj["status"] = access(app, who, &spec)?;
        }
        "SubjectAccessReview" => {
            obj["status"] = access(app, &spec_user(&spec)?, &spec)?;
        }
        "LocalSubjectAccessReview" => {
            let ns = ns.unwrap_or_default();
            if spec["resourceAttributes"]["namespace"].as_str() != Some(ns) {
                return Err(ApiError::BadRequest(format!(
                    "spec.resourceAttributes.namespace must be {ns:?}, the namespace of the request"
                )));
            }
            obj["status"] = access(app, &spec_user(&spec)?, &spec)?;
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            let rules = app.authz.rules_for(who, namespace);
            let (urls, resources): (Vec<&PolicyRule>, Vec<&PolicyRule>) = rules
                .iter()
                .partition(|r| r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()));
            obj["status"] = json!({
                "resourceRules": resources.into_iter().map(resource_rule).collect::<Vec<_>>(),
                "nonResourceRules": urls.into_iter().map(|r| json!({
                    "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls,
                })).collect::<Vec<_>>(),
                "incomplete": false,
            });
        }
        "SelfSubjectReview" => {
            let mut info = json!({"username": who.name, "groups": who.groups});
            if !who.uid.is_empty() {
                info["uid"] = json!(who.uid);
            }
            if !who.extra.is_empty() {
                info["extra"] = json!(who.extra);
            }
            obj["status"] = json!({"userInfo": info});
        }
        "TokenReview" => {
            obj["status"] = crate::tokens::review(app, &spec).await;
        }
        other => return Err(ApiError::Internal(format!("no review handler for {other}"))),
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    Ok(json_response(StatusCode::CREATED, &obj))
}
