//! Pod subresources with behaviour of their own: `binding` (the scheduler), `log` (proxied to
//! the node agent that runs the pod, streamed through) and the lookup `exec` shares.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Binding, Node, Pod};
use serde_json::json;
use strake_apimachinery::ApiError;

use crate::AppState;
use crate::render::json_response;

pub async fn binding(
    app: &AppState,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    dry_run: bool,
) -> Result<Response, ApiError> {
    let (v, _) = crate::dispatch::body_value(headers, bytes)?;
    let b: Binding = strake_apimachinery::decode::typed("Binding", v)?;
    if b.target.kind.as_deref().is_some_and(|k| k != "Node") {
        return Err(ApiError::BadRequest(
            "a binding target must be a Node".into(),
        ));
    }
    let node = b
        .target
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("binding target.name is required".into()))?;
    strake_kinds::pods::bind(&app.registry, ns, name, &node, dry_run).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Where a node's agent API listens.
fn node_endpoint(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// Which container a request is about.
pub enum Pick<'a> {
    /// The `container` parameter, or else the pod's only container.
    Container(Option<&'a String>),
    /// The pod as a whole (port-forward).
    Pod,
}

/// Where a pod's container runs: its node's agent endpoint, the container (empty for
/// [`Pick::Pod`]) and the pod. `what` names the request in errors.
pub async fn locate(
    app: &AppState,
    ns: &str,
    name: &str,
    pick: Pick<'_>,
    what: &str,
) -> Result<(String, String, Pod), ApiError> {
    let table = app.registry.table().snapshot();
    let pods = table.lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let nodes = table.lookup("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let pod: Pod =
        strake_apimachinery::decode::typed("Pod", app.registry.get(pods, Some(ns), name).await?)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match pick {
        Pick::Pod => String::new(),
        Pick::Container(c) => pick_container(&spec, name, c)?,
    };
    let Some(node_name) = spec.node_name.filter(|n| !n.is_empty()) else {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned, so it has no {what}"
        )));
    };
    let node: Node = strake_apimachinery::decode::typed(
        "Node",
        app.registry.get(nodes, None, &node_name).await?,
    )?;
    let endpoint = node_endpoint(&node).ok_or_else(|| {
        ApiError::ServiceUnavailable(format!(
            "node {node_name} does not report an agent endpoint"
        ))
    })?;
    Ok((endpoint, container, pod))
}

pub async fn log(
    app: &AppState,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (endpoint, container, pod) =
        locate(app, ns, name, Pick::Container(q.get("container")), "logs").await?;
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let mut url = format!("https://{endpoint}/containerLogs/{ns}/{name}/{container}");
    let passthrough: Vec<String> = [
        "follow",
        "tailLines",
        "timestamps",
        "limitBytes",
        "sinceSeconds",
        "previous",
    ]
    .iter()
    .filter_map(|k| q.get(*k).map(|v| format!("{k}={}", urlencode(v))))
    .collect();
    if !passthrough.is_empty() {
        url.push('?');
        url.push_str(&passthrough.join("&"));
    }
    let resp = app.node_client.get(&url).send().await.map_err(|e| {
        ApiError::ServiceUnavailable(format!("cannot reach the agent on node {node_name}: {e}"))
    })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(match status.as_u16() {
            404 => ApiError::NotFound {
                resource: strake_apimachinery::GroupResource::new("", "pods/log"),
                name: text.trim().to_string(),
            },
            _ => ApiError::BadRequest(text.trim().to_string()),
        });
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The container a request names, or the pod's only one.
fn pick_container(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    name: &str,
    container: Option<&String>,
) -> Result<String, ApiError> {
    Ok(match container.filter(|c| !c.is_empty()) {
        Some(c) => {
            if !spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|x| &x.name == c)
            {
                return Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if spec.containers.len() == 1 => spec.containers[0].name.clone(),
        None => {
            let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    })
}
