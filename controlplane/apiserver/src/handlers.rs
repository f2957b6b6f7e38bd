//! HTTP handlers for the typed resources: list/watch, create, get, replace, patch, delete, and
//! Table output. Generic over `ApiKind`; routing lives in `routes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::kinds::{ApiKind, Part};
use crate::registry::{Deleted, Filter};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::watch::{self, WatchParams};

/// Largest request body accepted (Kubernetes uses 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub type Params = Query<HashMap<String, String>>;

/// How the client wants objects rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    Json,
    Table { include: Include },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

pub fn render_mode(headers: &HeaderMap, q: &HashMap<String, String>) -> Render {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let table = accept.split(',').next().is_some_and(|first| {
        let f = first.replace(' ', "");
        f.contains("as=Table") && f.contains("g=meta.k8s.io")
    });
    if !table {
        return Render::Json;
    }
    let include = match q.get("includeObject").map(String::as_str) {
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        _ => Include::Metadata,
    };
    Render::Table { include }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(v).unwrap_or_default()).into_response()
}

fn to_json<K: ApiKind>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    v["apiVersion"] = K::API_VERSION.into();
    v["kind"] = K::KIND.into();
    v
}

fn table_row<K: ApiKind>(obj: &K, include: Include) -> Value {
    let object = match include {
        Include::None => Value::Null,
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": serde_json::to_value(obj.metadata()).unwrap_or_default(),
        }),
        Include::Object => to_json(obj),
    };
    json!({"cells": obj.cells(), "object": object})
}

fn table<K: ApiKind>(items: &[K], rv: Option<String>, cont: Option<String>, include: Include) -> Value {
    let cols: Vec<Value> = K::columns()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = rv.into();
    }
    if let Some(c) = cont {
        meta["continue"] = c.into();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": cols,
        "rows": items.iter().map(|o| table_row(o, include)).collect::<Vec<_>>(),
    })
}

/// Renders one object for the response.
fn render_one<K: ApiKind>(obj: &K, mode: Render) -> Value {
    match mode {
        Render::Json => to_json(obj),
        Render::Table { include } => table(std::slice::from_ref(obj), obj.metadata().resource_version.clone(), None, include),
    }
}

/// Reads a bounded request body.
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge { limit: MAX_BODY }),
        Err(e) => Err(ApiError::BadRequest(format!("reading request body: {e}"))),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Parses a JSON body (a missing Content-Type means JSON) into `K`, naming the bad field on error.
#[cfg(test)]
pub fn decode_body<K: ApiKind>(headers: &HeaderMap, body: &[u8]) -> Result<K, ApiError> {
    decode_value(body_value(headers, body)?)
}

/// How the client wants unknown fields handled (`fieldValidation`; the default is Warn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        match q.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::BadRequest(format!("fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"))),
        }
    }
}

/// Paths of fields present in `input` but dropped by decoding into the typed object (`typed`).
/// Nulls are not fields (kubectl sends `creationTimestamp: null`).
pub fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(t) => unknown_fields(v, t, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `value` into `K` and applies the field validation mode; returns warnings to send.
pub fn decode_checked<K: ApiKind>(value: Value, mode: FieldValidation) -> Result<(K, Vec<String>), ApiError> {
    let obj: K = decode_value(value.clone())?;
    let mut unknown = Vec::new();
    if mode != FieldValidation::Ignore {
        let mut typed = serde_json::to_value(&obj).unwrap_or_default();
        // Status is dropped on purpose by some writes; resourceVersion is ours to set.
        typed["apiVersion"] = K::API_VERSION.into();
        typed["kind"] = K::KIND.into();
        unknown_fields(&value, &typed, "", &mut unknown);
    }
    let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    if mode == FieldValidation::Strict && !warnings.is_empty() {
        return Err(ApiError::BadRequest(format!("strict decoding error: {}", warnings.join(", "))));
    }
    Ok((obj, warnings))
}

/// Adds `Warning` headers (RFC 7234 style, as Kubernetes sends them) to a response.
pub fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - {:?}", w);
        if let Ok(h) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    if !(ct.is_empty() || ct == "application/json" || ct == "*/*") {
        return Err(ApiError::UnsupportedMediaType { got: ct, accepted: "application/json" });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

pub fn decode_value<K: ApiKind>(value: Value) -> Result<K, ApiError> {
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != K::KIND {
            return Err(ApiError::BadRequest(format!("the body has kind {kind:?}, but this endpoint serves {:?}", K::KIND)));
        }
    if let Some(av) = value.get("apiVersion").and_then(Value::as_str)
        && av != K::API_VERSION {
            return Err(ApiError::BadRequest(format!("the body has apiVersion {av:?}, but this endpoint serves {:?}", K::API_VERSION)));
        }
    serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::BadRequest(format!("error decoding {} at {}: {}", K::KIND, if path == "." { "(root)".into() } else { path }, e.inner()))
    })
}

pub struct Target {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Namespace and name from the URL. Cluster-scoped kinds have no namespace; the namespace
/// object itself sits at `/api/v1/namespaces/{ns}` so that its segment name matches the others.
pub fn target<K: ApiKind>(path: &HashMap<String, String>) -> Target {
    if K::NAMESPACED {
        Target { namespace: path.get("ns").cloned(), name: path.get("name").cloned() }
    } else {
        Target { namespace: None, name: path.get("name").or_else(|| path.get("ns")).cloned() }
    }
}

fn filter_from<K: ApiKind>(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let probe: Option<K> = None;
    let _ = probe;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""), |f| {
        matches!(f, "metadata.name" | "metadata.namespace") || supported_field::<K>(f)
    })?;
    Ok(Filter { labels, fields })
}

fn supported_field<K: ApiKind>(f: &str) -> bool {
    match K::KIND {
        "Pod" => matches!(f, "spec.nodeName" | "spec.schedulerName" | "spec.restartPolicy" | "status.phase" | "status.podIP"),
        "Node" => f == "spec.unschedulable",
        "Namespace" => f == "status.phase",
        _ => false,
    }
}

// ---------------------------------------------------------------- handlers

pub async fn list<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap) -> Response {
    match list_inner::<K>(app, path, q, headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn list_inner<K: ApiKind>(app: Arc<AppState>, path: HashMap<String, String>, q: HashMap<String, String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let t = target::<K>(&path);
    let filter = filter_from::<K>(&q)?;
    let mode = render_mode(&headers, &q);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let timeout = match q.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {s:?}")))?),
            None => Duration::from_secs(1800),
        };
        let name = filter.fields.pinned("metadata.name").map(str::to_string);
        let params = WatchParams {
            namespace: t.namespace.clone(),
            filter,
            resource_version: q.get("resourceVersion").cloned(),
            timeout,
            bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
            name,
        };
        let stream = watch::watch::<K>(&app.registry, params).await?;
        let render = move |o: &K| render_one(o, mode);
        let body = stream.map(move |item| {
            let mut line = serde_json::to_vec(&watch::encode_item(item, &render)).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(Bytes::from(line))
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header("Transfer-Encoding", "chunked")
            .body(Body::from_stream(body))
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let limit = match q.get("limit") {
        Some(l) => l.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (items, rev, cont) = app.registry.list::<K>(t.namespace.as_deref(), &filter, limit, q.get("continue").map(String::as_str)).await?;
    let v = match mode {
        Render::Table { include } => table(&items, Some(rev.to_string()), cont, include),
        Render::Json => {
            let mut meta = json!({"resourceVersion": rev.to_string()});
            if let Some(c) = cont {
                meta["continue"] = c.into();
            }
            json!({
                "kind": K::LIST_KIND,
                "apiVersion": K::API_VERSION,
                "metadata": meta,
                "items": items.iter().map(to_json).collect::<Vec<_>>(),
            })
        }
    };
    Ok(json_response(StatusCode::OK, &v))
}

pub async fn get<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap) -> Response {
    let t = target::<K>(&path);
    let name = t.name.unwrap_or_default();
    match app.registry.get::<K>(t.namespace.as_deref(), &name).await {
        Ok(obj) => json_response(StatusCode::OK, &render_one(&obj, render_mode(&headers, &q))),
        Err(e) => e.into_response(),
    }
}

pub async fn create<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let bytes = read_body(body).await?;
        let (obj, warnings) = decode_checked::<K>(body_value(&headers, &bytes)?, FieldValidation::from_query(&q)?)?;
        let t = target::<K>(&path);
        if q.get("dryRun").is_some_and(|d| d == "All") {
            return Err(ApiError::BadRequest("dryRun is not supported yet".into()));
        }
        Ok::<_, ApiError>((app.registry.create(t.namespace.as_deref(), obj).await?, warnings))
    }
    .await;
    match res {
        Ok((obj, warnings)) => with_warnings(json_response(StatusCode::CREATED, &render_one(&obj, render_mode(&headers, &q))), &warnings),
        Err(e) => e.into_response(),
    }
}

pub async fn replace<K: ApiKind>(app: Arc<AppState>, path: HashMap<String, String>, q: HashMap<String, String>, headers: HeaderMap, body: Body, part: Part) -> Response {
    let res = async {
        let bytes = read_body(body).await?;
        let (obj, warnings) = decode_checked::<K>(body_value(&headers, &bytes)?, FieldValidation::from_query(&q)?)?;
        let t = target::<K>(&path);
        Ok::<_, ApiError>((app.registry.update(t.namespace.as_deref(), &t.name.unwrap_or_default(), obj, part).await?, warnings))
    }
    .await;
    match res {
        Ok((obj, warnings)) => with_warnings(json_response(StatusCode::OK, &to_json(&obj)), &warnings),
        Err(e) => e.into_response(),
    }
}

pub async fn replace_main<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    replace::<K>(app, path, q, headers, body, Part::Main).await
}

pub async fn replace_status<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    replace::<K>(app, path, q, headers, body, Part::Status).await
}

/// Applies a JSON merge patch (RFC 7386). Strategic merge patches use the same rules for now,
/// which is exact for maps and replaces lists wholesale.
fn apply_patch(target: &mut Value, ct: &str, patch: &[u8]) -> Result<(), ApiError> {
    match ct {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::BadRequest("a merge patch must be a JSON object".into()));
            }
            if ct == "application/strategic-merge-patch+json" && contains_directive(&p) {
                return Err(ApiError::BadRequest("strategic merge patch directives ($patch, $retainKeys, $setElementOrder...) are not supported yet".into()));
            }
            json_patch::merge(target, &p);
            Ok(())
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| ApiError::BadRequest(format!("the JSON patch is invalid: {e}")))?;
            json_patch::patch(target, &p).map_err(|e| ApiError::BadRequest(format!("the JSON patch does not apply: {e}")))
        }
        other => Err(ApiError::UnsupportedMediaType {
            got: other.to_string(),
            accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
        }),
    }
}

fn contains_directive(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.keys().any(|k| k.starts_with("$setElementOrder") || k == "$patch" || k == "$retainKeys" || k == "$deleteFromPrimitiveList") || m.values().any(contains_directive),
        Value::Array(a) => a.iter().any(contains_directive),
        _ => false,
    }
}

pub async fn patch<K: ApiKind>(app: Arc<AppState>, path: HashMap<String, String>, q: HashMap<String, String>, headers: HeaderMap, body: Body, part: Part) -> Response {
    let res = async {
        let mode = FieldValidation::from_query(&q)?;
        let bytes = read_body(body).await?;
        let ct = content_type(&headers);
        let t = target::<K>(&path);
        let name = t.name.unwrap_or_default();
        for _ in 0..16 {
            let current: K = app.registry.get(t.namespace.as_deref(), &name).await?;
            let current_rv = current.metadata().resource_version.clone();
            let mut v = to_json(&current);
            apply_patch(&mut v, &ct, &bytes)?;
            let (mut obj, warnings) = decode_checked::<K>(v, mode)?;
            // A patch that does not set resourceVersion applies to whatever is current.
            let pinned = obj.metadata().resource_version != current_rv;
            if !pinned {
                obj.metadata_mut().resource_version = current_rv;
            }
            match app.registry.update(t.namespace.as_deref(), &name, obj, part).await {
                Err(ApiError::Conflict { .. }) if !pinned => continue,
                other => return other.map(|o| (o, warnings)),
            }
        }
        Err(ApiError::Conflict { resource: K::PLURAL.into(), name, message: "too many concurrent writers".into() })
    }
    .await;
    match res {
        Ok((obj, warnings)) => with_warnings(json_response(StatusCode::OK, &to_json(&obj)), &warnings),
        Err(e) => e.into_response(),
    }
}

pub async fn patch_main<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    patch::<K>(app, path, q, headers, body, Part::Main).await
}

pub async fn patch_status<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    patch::<K>(app, path, q, headers, body, Part::Status).await
}

pub async fn delete<K: ApiKind>(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let bytes = read_body(body).await?;
        let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            let ct = content_type(&headers);
            if !(ct.is_empty() || ct == "application/json") {
                return Err(ApiError::UnsupportedMediaType { got: ct, accepted: "application/json" });
            }
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("DeleteOptions is not valid JSON: {e}")))?
        };
        let grace = match q.get("gracePeriodSeconds") {
            Some(g) => Some(g.parse::<i64>().map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?),
            None => opts.get("gracePeriodSeconds").and_then(Value::as_i64),
        };
        if grace.is_some_and(|g| g < 0) {
            return Err(ApiError::BadRequest("gracePeriodSeconds must be >= 0".into()));
        }
        let uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
        let rv = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str);
        let t = target::<K>(&path);
        app.registry.delete::<K>(t.namespace.as_deref(), &t.name.unwrap_or_default(), grace, uid, rv).await
    }
    .await;
    match res {
        Ok(Deleted::Gone(obj)) => json_response(StatusCode::OK, &to_json(&obj)),
        Ok(Deleted::Terminating(obj)) => json_response(StatusCode::OK, &to_json(&obj)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn decode_names_the_bad_field() {
        let h = HeaderMap::new();
        let err = decode_body::<Pod>(&h, br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":"oops"}}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spec.containers"), "{msg}");
        let err = decode_body::<Pod>(&h, br#"{"kind":"Node"}"#).unwrap_err();
        assert!(err.to_string().contains("kind \"Node\""));
        let mut pb = HeaderMap::new();
        pb.insert(header::CONTENT_TYPE, "application/vnd.kubernetes.protobuf".parse().unwrap());
        assert!(matches!(decode_body::<Pod>(&pb, b"x"), Err(ApiError::UnsupportedMediaType { .. })));
    }

    #[test]
    fn strict_field_validation_names_unknown_fields() {
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": null}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Always"}], "bogus": 1}});
        let (_, warnings) = decode_checked::<Pod>(v.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, vec!["unknown field \"spec.bogus\"".to_string(), "unknown field \"spec.containers[0].imagePullPolcy\"".to_string()]);
        let err = decode_checked::<Pod>(v.clone(), FieldValidation::Strict).unwrap_err().to_string();
        assert!(err.contains("strict decoding error") && err.contains("spec.bogus"), "{err}");
        assert!(decode_checked::<Pod>(v, FieldValidation::Ignore).unwrap().1.is_empty());
    }

    #[test]
    fn merge_patch_applies_and_rejects_directives() {
        let mut v = json!({"metadata": {"labels": {"a": "1"}}});
        apply_patch(&mut v, "application/merge-patch+json", br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#).unwrap();
        assert_eq!(v, json!({"metadata": {"labels": {"b": "2"}}}));
        assert!(apply_patch(&mut v, "application/strategic-merge-patch+json", br#"{"$patch":"replace"}"#).is_err());
        assert!(apply_patch(&mut v, "application/apply-patch+yaml", b"{}").is_err());
    }

    #[test]
    fn table_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json".parse().unwrap());
        assert_eq!(render_mode(&h, &HashMap::new()), Render::Table { include: Include::Metadata });
        assert_eq!(render_mode(&HeaderMap::new(), &HashMap::new()), Render::Json);
    }
}
