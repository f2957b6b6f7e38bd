//! Pod subresources with behaviour of their own: `binding` (the scheduler) and `log` (proxied to
//! the node agent that runs the pod, streamed through).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Binding, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, Part, Registry, ResourceDef, WriteOptions};

use crate::AppState;
use crate::render::json_response;

/// Binds a pod to a node, once, and records PodScheduled.
pub async fn bind(
    reg: &Registry,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<Pod, ApiError> {
    let table = reg.table().snapshot();
    let def = table
        .lookup("", "v1", "pods")
        .ok_or(ApiError::NoRoute)?
        .clone();
    bind_def(reg, &def, namespace, name, node, false).await?;
    let v = reg.get(&def, Some(namespace), name).await?;
    serde_json::from_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

async fn bind_def(
    reg: &Registry,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    node: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let opts = WriteOptions {
        dry_run,
        ..Default::default()
    };
    reg.update_with(
        def,
        Some(namespace),
        name,
        Part::Binding,
        &opts,
        |mut pod| {
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                return Err(ApiError::Conflict {
                    resource: def.group_resource(),
                    name: name.into(),
                    message: "the pod is being deleted".into(),
                });
            }
            match pod["spec"]["nodeName"].as_str() {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::Conflict {
                        resource: def.group_resource(),
                        name: name.into(),
                        message: format!("pod {name} is already assigned to node \"{n}\""),
                    });
                }
                _ => pod["spec"]["nodeName"] = node.into(),
            }
            Ok(pod)
        },
    )
    .await?;
    if dry_run {
        return Ok(());
    }
    reg.update_with(
        def,
        Some(namespace),
        name,
        Part::Status,
        &opts,
        |mut pod| {
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mut conds: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conds.retain(|c| c["type"] != "PodScheduled");
            conds
                .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
            pod["status"]["conditions"] = Value::Array(conds);
            Ok(pod)
        },
    )
    .await?;
    Ok(())
}

pub async fn binding(
    app: &AppState,
    def: &ResourceDef,
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
    bind_def(&app.registry, def, ns, name, &node, dry_run).await?;
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

pub async fn log(
    app: &AppState,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let table = app.registry.table().snapshot();
    let pods = table.lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let nodes = table.lookup("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let pod: Pod =
        strake_apimachinery::decode::typed("Pod", app.registry.get(pods, Some(ns), name).await?)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match q.get("container") {
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
    };
    let Some(node_name) = spec.node_name.filter(|n| !n.is_empty()) else {
        return Err(ApiError::BadRequest(format!(
            "pod {name} is not scheduled to a node yet, it has no logs"
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
