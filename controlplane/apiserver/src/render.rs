//! Responses: JSON objects and lists, Table output (`as=Table;g=meta.k8s.io`), warnings, and
//! the one place API errors become HTTP responses.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, ResourceDef};

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

/// Reads the Accept header: Table when its first choice asks for it; 406 when it accepts
/// nothing we can send.
pub fn render_mode(headers: &HeaderMap, include_object: Option<&str>) -> Result<Render, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let choices: Vec<String> = accept
        .split(',')
        .map(|a| a.replace(' ', ""))
        .filter(|a| !a.is_empty())
        .collect();
    let table = choices
        .first()
        .is_some_and(|f| f.contains("as=Table") && f.contains("g=meta.k8s.io"));
    if !table
        && !choices.is_empty()
        && !choices.iter().any(|c| {
            let mt = c.split(';').next().unwrap_or("");
            matches!(
                mt,
                "application/json"
                    | "*/*"
                    | "application/*"
                    | "application/yaml"
                    | "application/vnd.kubernetes.protobuf"
                    | "application/json-seq"
            ) && !c.contains("as=PartialObjectMetadata")
        })
        && !choices.iter().any(|c| c.contains("as=Table"))
    {
        return Err(ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json, application/yaml (asked for {accept:?})"
        )));
    }
    if !table {
        return Ok(Render::Json);
    }
    let include = match include_object {
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        _ => Include::Metadata,
    };
    Ok(Render::Table { include })
}

/// Whether the client's first choice is protobuf (`application/vnd.kubernetes.protobuf`, as Go
/// clients built with protobuf ask). Responses then go out as protobuf where the kind has a
/// message, and as JSON otherwise, which such clients list as their fallback.
pub fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| {
            let mut parts = first.split(';').map(str::trim);
            parts.next() == Some(PROTOBUF) && !parts.any(|p| p.starts_with("as="))
        })
}

pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Re-encodes a JSON response as protobuf when its kind has a message (objects, lists and
/// Status of the built-in kinds); any other response is returned as it is.
pub async fn as_protobuf(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct == "application/json");
    // A streamed body (a watch) is never buffered here.
    let streamed = resp.headers().contains_key(header::TRANSFER_ENCODING);
    if !is_json || streamed {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return error_response(ApiError::Internal("the response body was lost".into()));
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|v| {
            crate::protobuf::encodes(
                v["apiVersion"].as_str().unwrap_or_default(),
                v["kind"].as_str().unwrap_or_default(),
            )
        })
        .map(|v| crate::protobuf::encode(&v));
    match encoded {
        Some(Ok(pb)) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(PROTOBUF),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(pb))
        }
        Some(Err(e)) => error_response(ApiError::Internal(format!(
            "the response cannot be encoded as protobuf: {e}"
        ))),
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The response for an error: its `Status`, mapped once in `ApiError::status`.
pub fn error_response(e: ApiError) -> Response {
    e.into_response()
}

fn row(def: &ResourceDef, obj: &Value, include: Include) -> Value {
    let object = match include {
        Include::None => Value::Null,
        Include::Metadata => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
        }
        Include::Object => obj.clone(),
    };
    json!({"cells": def.strategy.cells(obj), "object": object})
}

pub fn table(
    def: &ResourceDef,
    items: &[Value],
    rv: Option<String>,
    cont: Option<String>,
    include: Include,
) -> Value {
    let cols: Vec<Value> = def
        .columns
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
        "rows": items.iter().map(|o| row(def, o, include)).collect::<Vec<_>>(),
    })
}

/// One object, as the client asked.
pub fn one(def: &ResourceDef, obj: &Value, mode: Render) -> Value {
    match mode {
        Render::Json => obj.clone(),
        Render::Table { include } => table(
            def,
            std::slice::from_ref(obj),
            obj["metadata"]["resourceVersion"]
                .as_str()
                .map(String::from),
            None,
            include,
        ),
    }
}

/// Adds `Warning` headers (as Kubernetes sends them) to a response.
pub fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        // A quoted-string (RFC 9110), as upstream writes it and client-go reads it back.
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = text.parse() {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json".parse().unwrap());
        assert_eq!(
            render_mode(&h, None).unwrap(),
            Render::Table {
                include: Include::Metadata
            }
        );
        assert_eq!(render_mode(&HeaderMap::new(), None).unwrap(), Render::Json);
        let mut x = HeaderMap::new();
        x.insert(header::ACCEPT, "text/html".parse().unwrap());
        assert!(matches!(
            render_mode(&x, None),
            Err(ApiError::NotAcceptable(_))
        ));
    }
}
