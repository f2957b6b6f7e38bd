//! Subresources: `status` and `scale` for every kind that declares them, and the kind-specific
//! ones (pods/log, pods/binding, pods/eviction, pods/ephemeralcontainers, namespaces/finalize).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use strake_apimachinery::request::{RequestInfo, Verb};
use strake_apimachinery::{ApiError, Part, ResourceDef};

use crate::AppState;
use crate::dispatch::{
    decode_write, delete_options, dry_run, patch_object, read_body, write_options,
};
use crate::render::{json_response, with_warnings};

type Query = HashMap<String, String>;

/// A subresource's request body as JSON bytes, whatever it was sent as (kubectl's typed
/// commands, such as `create token`, send protobuf).
fn json_body(headers: &HeaderMap, bytes: bytes::Bytes) -> Result<bytes::Bytes, ApiError> {
    let ct = crate::dispatch::media_type(headers);
    if bytes.is_empty() || ct.is_empty() || ct == "application/json" {
        return Ok(bytes);
    }
    let (value, _) = crate::dispatch::body_value(headers, &bytes)?;
    serde_json::to_vec(&value)
        .map(bytes::Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

pub async fn serve(
    app: &Arc<AppState>,
    def: &Arc<ResourceDef>,
    info: &RequestInfo,
    sub: &str,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ns = info.namespace.as_deref();
    let name = info.name.as_deref().ok_or(ApiError::NoRoute)?;
    let verb = info.verb.as_str();
    let allowed = def
        .subresources
        .iter()
        .find(|s| s.name == sub)
        .is_some_and(|s| s.verbs.iter().any(|v| v == verb));
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    match (sub, def.group.as_str(), def.plural.as_str()) {
        ("status", ..) => status(app, def, ns, name, info.verb, q, headers, body).await,
        ("scale", ..) => scale(app, def, ns, name, info.verb, q, headers, body).await,
        ("token", "", "serviceaccounts") => {
            let bytes = json_body(headers, read_body(body).await?)?;
            crate::tokens::request(app, ns.unwrap_or_default(), name, &bytes, dry_run(q)?).await
        }
        ("log", "", "pods") => crate::pods::log(app, ns.unwrap_or_default(), name, q).await,
        ("binding", "", "pods") => {
            crate::pods::binding(
                app,
                ns.unwrap_or_default(),
                name,
                headers,
                &read_body(body).await?,
                dry_run(q)?,
            )
            .await
        }
        ("eviction", "", "pods") => {
            let bytes = json_body(headers, read_body(body).await?)?;
            let eviction: Value = if bytes.is_empty() {
                json!({})
            } else {
                strake_apimachinery::decode::parse_json(&bytes)?.0
            };
            let opts_bytes =
                serde_json::to_vec(&eviction.get("deleteOptions").cloned().unwrap_or(json!({})))
                    .unwrap_or_default();
            let mut opts = delete_options(&HeaderMap::new(), &opts_bytes, q)?;
            opts.dry_run |= dry_run(q)?;
            strake_kinds::pods::evict(&app.registry, ns.unwrap_or_default(), name, &opts).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("ephemeralcontainers", "", "pods") => {
            ephemeral(app, def, ns, name, info.verb, q, headers, body).await
        }
        ("approval", "certificates.k8s.io", "certificatesigningrequests") => {
            approval(app, def, name, info.verb, q, headers, body).await
        }
        ("finalize", "", "namespaces") => {
            let bytes = read_body(body).await?;
            let (obj, _) = decode_write(def, headers, &bytes, q)?;
            let fins = obj["spec"]["finalizers"].clone();
            let out = app
                .registry
                .update_with(
                    def,
                    None,
                    name,
                    Part::Main,
                    &write_options(q, headers)?,
                    |mut cur| {
                        cur["spec"]["finalizers"] = fins.clone();
                        Ok(cur)
                    },
                )
                .await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        _ => Err(ApiError::NoRoute),
    }
}

#[allow(clippy::too_many_arguments)]
async fn status(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    verb: Verb,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match verb {
        Verb::Get => Ok(json_response(
            StatusCode::OK,
            &app.registry.get(def, ns, name).await?,
        )),
        Verb::Update => {
            let bytes = read_body(body).await?;
            let (obj, warnings) = decode_write(def, headers, &bytes, q)?;
            let out = app
                .registry
                .update(
                    def,
                    ns,
                    name,
                    obj,
                    Part::Status,
                    &write_options(q, headers)?,
                )
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &out),
                &warnings,
            ))
        }
        Verb::Patch => {
            let bytes = read_body(body).await?;
            let (out, warnings, _) =
                patch_object(app, def, ns, name, headers, &bytes, q, Part::Status).await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &out),
                &warnings,
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `certificatesigningrequests/approval`: reads the request, or replaces its conditions (and
/// nothing else) with the body's, as `kubectl certificate approve|deny` sends them; the body's
/// resourceVersion is a precondition.
#[allow(clippy::too_many_arguments)]
async fn approval(
    app: &AppState,
    def: &ResourceDef,
    name: &str,
    verb: Verb,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match verb {
        Verb::Get => Ok(json_response(
            StatusCode::OK,
            &app.registry.get(def, None, name).await?,
        )),
        Verb::Update => {
            let bytes = read_body(body).await?;
            let (obj, warnings) = decode_write(def, headers, &bytes, q)?;
            let conditions = obj["status"]["conditions"].clone();
            let pinned = obj["metadata"]["resourceVersion"].clone();
            let mut opts = write_options(q, headers)?;
            opts.subresource = Some("approval");
            let out = app
                .registry
                .update_with(def, None, name, Part::Status, &opts, |mut cur| {
                    cur["status"]["conditions"] = conditions.clone();
                    if pinned.as_str().is_some_and(|rv| !rv.is_empty()) {
                        cur["metadata"]["resourceVersion"] = pinned.clone();
                    }
                    Ok(cur)
                })
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &out),
                &warnings,
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

use strake_kinds::scale::scale_of;

#[allow(clippy::too_many_arguments)]
async fn scale(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    verb: Verb,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let current = app.registry.get(def, ns, name).await?;
    if verb == Verb::Get {
        return Ok(json_response(StatusCode::OK, &scale_of(def, &current)));
    }
    let bytes = read_body(body).await?;
    let mut scale = scale_of(def, &current);
    match verb {
        Verb::Update => scale = crate::dispatch::body_value(headers, &bytes)?.0,
        Verb::Patch => {
            let ty = strake_apimachinery::patch::PatchType::from_media_type(
                &crate::dispatch::media_type(headers),
            )?;
            let ty = if ty == strake_apimachinery::patch::PatchType::Apply {
                strake_apimachinery::patch::PatchType::Merge
            } else {
                ty
            };
            let raw = if crate::dispatch::media_type(headers).starts_with("application/apply-patch")
            {
                serde_json::to_vec(&strake_apimachinery::decode::parse_yaml(&bytes)?)
                    .unwrap_or_default()
            } else {
                bytes.to_vec()
            };
            strake_apimachinery::patch::apply(&mut scale, "Scale", ty, &raw)?;
        }
        _ => return Err(ApiError::MethodNotAllowed),
    }
    let replicas = match scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => n.as_i64().unwrap_or(0),
        Some(other) => {
            return Err(ApiError::Invalid {
                kind: "Scale.autoscaling".into(),
                group: "autoscaling".into(),
                name: name.into(),
                causes: vec![strake_apimachinery::FieldError::invalid(
                    "spec.replicas",
                    format!("Invalid value: {other}: must be greater than or equal to 0"),
                )],
            });
        }
        None => 0,
    };
    let rv = scale["metadata"]["resourceVersion"]
        .as_str()
        .map(String::from);
    let out = strake_kinds::scale::set_replicas(
        &app.registry,
        def,
        ns,
        name,
        replicas,
        rv,
        &write_options(q, headers)?,
    )
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}

#[allow(clippy::too_many_arguments)]
async fn ephemeral(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    verb: Verb,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if verb == Verb::Get {
        return Ok(json_response(
            StatusCode::OK,
            &app.registry.get(def, ns, name).await?,
        ));
    }
    let bytes = read_body(body).await?;
    let opts = write_options(q, headers)?;
    let wanted = if verb == Verb::Update {
        Some(decode_write(def, headers, &bytes, q)?.0)
    } else {
        None
    };
    let ty = if verb == Verb::Patch {
        Some(strake_apimachinery::patch::PatchType::from_media_type(
            &crate::dispatch::media_type(headers),
        )?)
    } else {
        None
    };
    let out = app
        .registry
        .update_with(def, ns, name, Part::Main, &opts, |cur| {
            let mut new = match (&wanted, ty) {
                (Some(w), _) => w.clone(),
                (None, Some(ty)) => {
                    let mut c = cur.clone();
                    strake_apimachinery::patch::apply(&mut c, "Pod", ty, &bytes)?;
                    c
                }
                _ => cur.clone(),
            };
            let containers = new["spec"]["ephemeralContainers"].take();
            let old = cur["spec"]["ephemeralContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let kept = containers.as_array().cloned().unwrap_or_default();
            if old
                .iter()
                .any(|o| !kept.iter().any(|k| k["name"] == o["name"]))
            {
                return Err(ApiError::Forbidden(
                    "existing ephemeral containers may not be removed".into(),
                ));
            }
            let mut out = cur;
            out["spec"]["ephemeralContainers"] = containers;
            Ok(out)
        })
        .await?;
    Ok(json_response(StatusCode::OK, &out))
}
