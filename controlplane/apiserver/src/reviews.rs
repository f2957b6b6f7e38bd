//! The create-only review kinds, answered from the caller's identity and today's authorizer
//! (system:masters and system:nodes may use the API; RBAC is the security issue's).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, ResourceDef};

use crate::AppState;
use crate::auth::Principal;
use crate::render::json_response;

/// Whether a user in `groups` may do anything, under today's authorizer.
fn allowed(groups: &[String]) -> bool {
    groups
        .iter()
        .any(|g| g == "system:masters" || g == "system:nodes")
}

pub async fn create(
    app: &AppState,
    who: &Principal,
    def: &ResourceDef,
    ns: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let (v, _) = crate::dispatch::body_value(headers, bytes)?;
    let (mut obj, _) = def.strategy.decode(def, v, Default::default())?;
    let user = who.name();
    let groups = who.groups();
    match def.kind.as_str() {
        "SelfSubjectAccessReview" => {
            let ok = allowed(&groups);
            obj["status"] = json!({"allowed": ok, "reason": if ok { "the caller's group may use the whole API" } else { "no rule allows this" }});
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec_groups: Vec<String> = obj["spec"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(String::from))
                .collect();
            if let (Some(ns), "LocalSubjectAccessReview") = (ns, def.kind.as_str())
                && obj["spec"]["resourceAttributes"]["namespace"]
                    .as_str()
                    .is_some_and(|n| n != ns)
            {
                return Err(ApiError::BadRequest(
                    "spec.resourceAttributes.namespace must match the namespace of the request"
                        .into(),
                ));
            }
            let ok = allowed(&spec_groups);
            obj["status"] = json!({"allowed": ok, "reason": if ok { "the subject's group may use the whole API" } else { "no rule allows this" }});
        }
        "SelfSubjectRulesReview" => {
            let rules = if allowed(&groups) {
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}])
            } else {
                json!([])
            };
            let non = if allowed(&groups) {
                json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}])
            } else {
                json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"]}])
            };
            obj["status"] =
                json!({"resourceRules": rules, "nonResourceRules": non, "incomplete": false});
        }
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": {"username": user, "groups": groups}});
        }
        "TokenReview" => {
            let token = obj["spec"]["token"].as_str().unwrap_or_default();
            let status = match Principal::from_token(app, token) {
                Some(p) => {
                    json!({"authenticated": true, "user": {"username": p.name(), "groups": p.groups()}})
                }
                None => json!({"authenticated": false, "error": "the token is not valid"}),
            };
            obj["status"] = status;
        }
        other => return Err(ApiError::Internal(format!("no review handler for {other}"))),
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    Ok(json_response(StatusCode::CREATED, &obj))
}
