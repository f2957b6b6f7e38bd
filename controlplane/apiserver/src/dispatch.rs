//! Resource requests: the path is parsed once into a `RequestInfo`, its entry is found in the
//! resource table, and one generic handler serves every verb of every kind — built-ins and CRDs.
//! Subresources with behaviour of their own (pods/log, pods/binding, ...) are handed to their
//! modules; `status` and `scale` are generic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use strake_apimachinery::decode::{BodyFormat, FieldValidation, MAX_BODY, parse_json, parse_yaml};
use strake_apimachinery::patch::{self, PatchType};
use strake_apimachinery::registry::{Propagation, parse_rv};
use strake_apimachinery::request::{RequestInfo, Target, Verb};
use strake_apimachinery::selectors::{FieldSelector, LabelSelector};
use strake_apimachinery::watch::{WatchItem, WatchOptions};
use strake_apimachinery::{
    ApiError, DeleteOptions, Deleted, Filter, ListOptions, Part, ResourceDef, UserInfo,
    WriteOptions,
};

use crate::AppState;
use crate::render::{self, Render, error_response, json_response, with_warnings};

type Query = HashMap<String, String>;

/// Reads a bounded request body.
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::TooLarge { limit: MAX_BODY })
        }
        Err(e) => Err(ApiError::BadRequest(format!("reading request body: {e}"))),
    }
}

pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// A write body as JSON, with the duplicate fields it carried.
pub fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let ct = media_type(headers);
    match BodyFormat::from_media_type(&ct) {
        Some(BodyFormat::Json) => parse_json(body),
        Some(BodyFormat::Yaml) => Ok((parse_yaml(body)?, Vec::new())),
        Some(BodyFormat::Protobuf) => Ok((crate::protobuf::decode(body)?, Vec::new())),
        None => Err(ApiError::UnsupportedMediaType {
            got: ct,
            accepted: "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        }),
    }
}

fn query(req: &Request) -> Query {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (unescape(k), unescape(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(x) => {
                    out.push(x);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "dryRun must be \"All\", not {other:?}"
        ))),
    }
}

/// The options of a write request: `dryRun`, and the manager its changes are recorded for in
/// managedFields: `fieldManager`, or else the User-Agent's product name (`kubectl`,
/// `OpenAPI-Generator`), as upstream names it.
pub fn write_options(q: &Query, headers: &HeaderMap) -> Result<WriteOptions, ApiError> {
    let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => {
            if m.chars().count() > 128 || m.chars().any(char::is_control) {
                return Err(ApiError::BadRequest(format!(
                    "fieldManager {m:?} is invalid: it must be at most 128 printable characters"
                )));
            }
            m.clone()
        }
        None => headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .map(|p| {
                p.chars()
                    .filter(|c| !c.is_control())
                    .take(128)
                    .collect::<String>()
            })
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "unknown".into()),
    };
    Ok(WriteOptions {
        dry_run: dry_run(q)?,
        field_manager: Some(manager),
        user: crate::auth::caller(),
        warnings: Default::default(),
        subresource: None,
    })
}

fn filter(def: &ResourceDef, q: &Query) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        |f| {
            matches!(f, "metadata.name" | "metadata.namespace")
                || def.selectable_fields.iter().any(|s| s == f)
        },
    )?;
    Ok(Filter { labels, fields })
}

/// Entry point for every path under `/api` and `/apis`.
pub async fn handle(State(app): State<Arc<AppState>>, mut req: Request) -> Response {
    let q = query(&req);
    // Parsed once, by the authorization middleware.
    let Some(target) = req.extensions_mut().remove::<Target>() else {
        return error_response(ApiError::Internal(
            "the request reached its handler unparsed".into(),
        ));
    };
    match target {
        Target::Discovery {
            group,
            version,
            legacy_core,
        } => crate::discovery::serve(&app, req.headers(), group, version, legacy_core),
        Target::NonResource(_) => error_response(ApiError::NoRoute),
        Target::Resource(info) if crate::streams::is_stream(&info) => {
            let container = q.get("container").cloned();
            crate::streams::proxy(&app, &info, container, req)
                .await
                .unwrap_or_else(error_response)
        }
        Target::Resource(info) => {
            // Watches (`?watch=true` or the legacy `/watch/` paths) encode their own frames.
            let protobuf = render::wants_protobuf(req.headers()) && info.verb != Verb::Watch;
            let who = req
                .extensions()
                .get::<Arc<UserInfo>>()
                .cloned()
                .unwrap_or_else(|| Arc::new(UserInfo::anonymous()));
            let (parts, body) = req.into_parts();
            let resp = match resource(app, &who, info, q, parts.headers, body).await {
                Ok(r) => r,
                Err(e) => error_response(e),
            };
            if protobuf {
                render::as_protobuf(resp).await
            } else {
                resp
            }
        }
    }
}

async fn resource(
    app: Arc<AppState>,
    who: &UserInfo,
    info: RequestInfo,
    q: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let table = app.registry.table().snapshot();
    let def = table
        .lookup(&info.group, &info.version, &info.resource)
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    if info.namespace.is_some() && !def.namespaced {
        return Err(ApiError::NoRoute);
    }
    if let Some(sub) = info.subresource.as_deref() {
        if !def.has_subresource(sub) {
            return Err(ApiError::NoRoute);
        }
        return crate::subresources::serve(&app, &def, &info, sub, &q, &headers, body).await;
    }
    if !def.serves(info.verb.as_str()) {
        return Err(ApiError::MethodNotAllowed);
    }
    let ns = info.namespace.as_deref();
    let name = info.name.as_deref().unwrap_or_default();
    match info.verb {
        Verb::Get => {
            let obj = app.registry.get(&def, ns, name).await?;
            Ok(json_response(
                StatusCode::OK,
                &render::one(
                    &def,
                    &obj,
                    render::render_mode(&headers, q.get("includeObject").map(String::as_str))?,
                ),
            ))
        }
        Verb::List => list(&app, &def, ns, &q, &headers).await,
        Verb::Watch => watch(&app, def, &info, &q, &headers).await,
        Verb::Create => {
            let bytes = read_body(body).await?;
            if def.verbs == ["create"] {
                return crate::reviews::create(&app, who, &def, ns, &headers, &bytes).await;
            }
            let (obj, mut warnings) = decode_write(&def, &headers, &bytes, &q)?;
            let opts = write_options(&q, &headers)?;
            let created = app.registry.create(&def, ns, obj, &opts).await?;
            warnings.extend(opts.warnings.take());
            let mode = render::render_mode(&headers, None)?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &render::one(&def, &created, mode)),
                &warnings,
            ))
        }
        Verb::Update => {
            let bytes = read_body(body).await?;
            let (obj, mut warnings) = decode_write(&def, &headers, &bytes, &q)?;
            let opts = write_options(&q, &headers)?;
            let updated = app
                .registry
                .update(&def, ns, name, obj, Part::Main, &opts)
                .await?;
            warnings.extend(opts.warnings.take());
            Ok(with_warnings(
                json_response(StatusCode::OK, &updated),
                &warnings,
            ))
        }
        Verb::Patch => {
            let bytes = read_body(body).await?;
            let (obj, warnings, created) =
                patch_object(&app, &def, ns, name, &headers, &bytes, &q, Part::Main).await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_warnings(json_response(code, &obj), &warnings))
        }
        Verb::Delete => {
            let bytes = read_body(body).await?;
            let opts = delete_options(&headers, &bytes, &q)?;
            match app.registry.delete(&def, ns, name, &opts).await? {
                Deleted::Terminating(obj) => Ok(json_response(StatusCode::OK, &obj)),
                Deleted::Gone(obj) if def.delete_returns_object => {
                    Ok(json_response(StatusCode::OK, &obj))
                }
                Deleted::Gone(obj) => Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": obj["metadata"]["uid"]},
                    }),
                )),
            }
        }
        Verb::DeleteCollection => {
            let bytes = read_body(body).await?;
            let opts = delete_options(&headers, &bytes, &q)?;
            let items = app
                .registry
                .delete_collection(&def, ns, &filter(&def, &q)?, &opts)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": {}, "items": items}),
            ))
        }
    }
}

/// Decodes a create/update body: media type, syntax, kind and version, types and unknown fields.
pub fn decode_write(
    def: &ResourceDef,
    headers: &HeaderMap,
    bytes: &[u8],
    q: &Query,
) -> Result<(Value, Vec<String>), ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    let (v, dups) = body_value(headers, bytes)?;
    let mut warnings = mode.judge(dups)?;
    check_kind(def, &v)?;
    let (obj, unknown) = def.strategy.decode(def, v, mode)?;
    warnings.extend(unknown);
    Ok((obj, warnings))
}

fn check_kind(def: &ResourceDef, v: &Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the request body must be a {} object",
            def.kind
        )));
    }
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != def.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the body is a {k:?}, but this URL serves kind {:?}",
            def.kind
        )));
    }
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
        && av != def.api_version()
    {
        return Err(ApiError::BadRequest(format!(
            "the body has apiVersion {av:?}, but this URL serves {:?}",
            def.api_version()
        )));
    }
    Ok(())
}

async fn list(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mode = render::render_mode(headers, q.get("includeObject").map(String::as_str))?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let revision = match (
        q.get("resourceVersion").map(String::as_str),
        q.get("resourceVersionMatch").map(String::as_str),
    ) {
        (None | Some("") | Some("0"), None | Some("") | Some("NotOlderThan")) => 0,
        (None | Some(""), Some("Exact")) => {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch=Exact needs a resourceVersion".into(),
            ));
        }
        (Some(rv), Some("Exact")) => parse_rv(rv)?,
        (Some(rv), None | Some("") | Some("NotOlderThan")) => {
            let want = parse_rv(rv)?;
            let current = app.registry.store().revision().await?;
            if want > current {
                return Err(ApiError::Timeout(format!(
                    "Too large resource version: {want}, current: {current}"
                )));
            }
            0
        }
        (_, Some(other)) => {
            return Err(ApiError::BadRequest(format!(
                "resourceVersionMatch must be Exact or NotOlderThan, not {other:?}"
            )));
        }
    };
    let opts = ListOptions {
        filter: filter(def, q)?,
        limit,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        revision,
    };
    let page = app.registry.list(def, ns, &opts).await?;
    let v = match mode {
        Render::Table { include } => render::table(
            def,
            &page.items,
            Some(page.revision.to_string()),
            page.continue_token,
            include,
        ),
        Render::Json => {
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let Some(c) = page.continue_token {
                meta["continue"] = c.into();
            }
            json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": meta, "items": page.items})
        }
    };
    Ok(json_response(StatusCode::OK, &v))
}

async fn watch(
    app: &AppState,
    def: Arc<ResourceDef>,
    info: &RequestInfo,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mode = render::render_mode(headers, q.get("includeObject").map(String::as_str))?;
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let f = filter(&def, q)?;
    let mut name = f.fields.pinned("metadata.name").map(str::to_string);
    if let Some(n) = &info.name {
        name = Some(n.clone());
    }
    let opts = WatchOptions {
        namespace: info.namespace.clone(),
        filter: f,
        resource_version: q.get("resourceVersion").cloned(),
        timeout,
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        send_initial_events: q.get("sendInitialEvents").is_some_and(|b| b == "true"),
        name,
        ..Default::default()
    };
    let stream = strake_apimachinery::watch::watch(&app.registry, def.clone(), opts).await?;
    let api_version = def.api_version();
    if mode == Render::Json
        && render::wants_protobuf(headers)
        && crate::protobuf::encodes(&api_version, &def.kind)
    {
        return protobuf_watch(def, stream);
    }
    let body = stream.map(move |item| {
        let v = match item {
            // The common case shares the object's JSON, encoded once for every watcher.
            WatchItem::Event { kind, object } if mode == Render::Json => {
                let mut line = Vec::with_capacity(object.json().len() + 32);
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(kind.as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                line.extend_from_slice(object.json());
                line.extend_from_slice(b"}\n");
                return Ok::<_, std::convert::Infallible>(Bytes::from(line));
            }
            WatchItem::Event { kind, object } => json!({"type": kind, "object": render::one(&def, object.value(), mode)}),
            WatchItem::Bookmark { revision, initial_events_end } => {
                let mut meta = json!({"resourceVersion": revision.to_string()});
                if initial_events_end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                json!({"type": "BOOKMARK", "object": {"kind": def.kind, "apiVersion": api_version, "metadata": meta}})
            }
            WatchItem::Error(e) => json!({"type": "ERROR", "object": e.status()}),
        };
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A watch as protobuf frames (`;stream=watch`). An event that cannot be encoded is sent as an
/// ERROR event naming why, on which clients relist.
fn protobuf_watch(
    def: Arc<ResourceDef>,
    stream: impl futures::Stream<Item = WatchItem> + Send + 'static,
) -> Result<Response, ApiError> {
    let api_version = def.api_version();
    let body = stream.map(move |item| {
        let (kind, obj) = match item {
            WatchItem::Event { kind, object } => {
                (kind.to_string(), crate::protobuf::encode(object.value()))
            }
            WatchItem::Bookmark {
                revision,
                initial_events_end,
            } => {
                let mut meta = json!({"resourceVersion": revision.to_string()});
                if initial_events_end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                let v = json!({"kind": def.kind, "apiVersion": api_version, "metadata": meta});
                ("BOOKMARK".to_string(), crate::protobuf::encode(&v))
            }
            WatchItem::Error(e) => ("ERROR".to_string(), crate::protobuf::encode(&e.status())),
        };
        let frame = match obj {
            Ok(bytes) => strake_protobuf::watch_frame(&kind, &bytes),
            Err(e) => {
                let status =
                    ApiError::Internal(format!("a watch event cannot be encoded as protobuf: {e}"))
                        .status();
                strake_protobuf::watch_frame(
                    "ERROR",
                    &crate::protobuf::encode(&status).unwrap_or_default(),
                )
            }
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/vnd.kubernetes.protobuf;stream=watch",
        )
        .header("Transfer-Encoding", "chunked")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Applies a patch of any type to an object (or its status); server-side apply may create it.
#[allow(clippy::too_many_arguments)]
pub async fn patch_object(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    q: &Query,
    part: Part,
) -> Result<(Value, Vec<String>, bool), ApiError> {
    let mode = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    let ty = PatchType::from_media_type(&media_type(headers))?;
    let opts = write_options(q, headers)?;
    if ty == PatchType::Apply {
        // Apply records its own manager's fields.
        let opts = WriteOptions {
            field_manager: None,
            ..opts
        };
        let (obj, mut warnings, created) =
            crate::apply::apply(app, def, ns, name, bytes, q, part, mode, &opts).await?;
        warnings.extend(opts.warnings.take());
        return Ok((obj, warnings, created));
    }
    let mut warnings = Vec::new();
    let obj = app
        .registry
        .update_with(def, ns, name, part, &opts, |mut current| {
            // A patch that sets resourceVersion makes it a precondition; otherwise it applies
            // to whatever is current.
            patch::apply(&mut current, &def.kind, ty, bytes)?;
            let (obj, w) = def.strategy.decode(def, current, mode)?;
            warnings = w;
            Ok(obj)
        })
        .await?;
    warnings.extend(opts.warnings.take());
    Ok((obj, warnings, false))
}

pub fn delete_options(
    headers: &HeaderMap,
    bytes: &[u8],
    q: &Query,
) -> Result<DeleteOptions, ApiError> {
    let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        let ct = media_type(headers);
        if !(ct.is_empty()
            || ct == "application/json"
            || ct == "application/vnd.kubernetes.protobuf")
        {
            return Err(ApiError::UnsupportedMediaType {
                got: ct,
                accepted: "application/json",
            });
        }
        if ct == "application/vnd.kubernetes.protobuf" {
            crate::protobuf::decode(bytes)?
        } else {
            parse_json(bytes)?.0
        }
    };
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => opts.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    if grace.is_some_and(|g| g < 0) {
        return Err(ApiError::BadRequest(
            "gracePeriodSeconds must be >= 0".into(),
        ));
    }
    let propagation = match q
        .get("propagationPolicy")
        .map(String::as_str)
        .or(opts.get("propagationPolicy").and_then(Value::as_str))
    {
        Some(p) => Some(Propagation::parse(p)?),
        None => match opts
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or(q.get("orphanDependents").map(|v| v == "true"))
        {
            Some(true) => Some(Propagation::Orphan),
            Some(false) => Some(Propagation::Background),
            None => None,
        },
    };
    let dry = match opts.get("dryRun").and_then(Value::as_array) {
        Some(d) if d.iter().any(|x| x == "All") => true,
        _ => dry_run(q)?,
    };
    Ok(DeleteOptions {
        grace_period: grace,
        precondition_uid: opts
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        precondition_rv: opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        propagation,
        dry_run: dry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_unescaping() {
        assert_eq!(unescape("a%3Db%2Cc"), "a=b,c");
        assert_eq!(unescape("x+y"), "x y");
        assert_eq!(unescape("bad%zz"), "bad%zz");
        assert_eq!(unescape("end%4"), "end%4");
    }
}
