//! Pod subresources with behaviour of their own: `binding` (scheduler) and `log` (proxied to the
//! node agent that runs the pod, streamed through).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Binding, Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::handlers::{json_response, read_body, target};
use crate::kinds::Part;
use crate::registry::Registry;

/// Binds a pod to a node, once.
pub async fn bind(reg: &Registry, namespace: &str, name: &str, node: &str) -> Result<Pod, ApiError> {
    reg
        .modify::<Pod>(Some(namespace), name, Part::Binding, |pod| {
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::Conflict { resource: "pods".into(), name: name.into(), message: "the pod is being deleted".into() });
            }
            let spec = pod.spec.get_or_insert_default();
            match spec.node_name.as_deref() {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::Conflict {
                        resource: "pods/binding".into(),
                        name: name.into(),
                        message: format!("pod {name} is already assigned to node \"{n}\""),
                    });
                }
                _ => spec.node_name = Some(node.to_string()),
            }
            Ok(())
        })
        .await?;
    // The PodScheduled condition lives in status: a second write through the status part.
    reg
        .modify::<Pod>(Some(namespace), name, Part::Status, |pod| {
            let status = pod.status.get_or_insert_default();
            let conds = status.conditions.get_or_insert_default();
            conds.retain(|c| c.type_ != "PodScheduled");
            conds.push(PodCondition { type_: "PodScheduled".into(), status: "True".into(), last_transition_time: Some(Time(Timestamp::now())), ..Default::default() });
            Ok(())
        })
        .await
}

pub async fn binding(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let bytes = read_body(body).await?;
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !(ct.is_empty() || ct.starts_with("application/json")) {
            return Err(ApiError::UnsupportedMediaType { got: ct.into(), accepted: "application/json" });
        }
        let b: Binding = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid Binding: {e}")))?;
        if b.target.kind.as_deref().is_some_and(|k| k != "Node") {
            return Err(ApiError::BadRequest("a binding target must be a Node".into()));
        }
        let node = b.target.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| ApiError::BadRequest("binding target.name is required".into()))?;
        let t = target::<Pod>(&path);
        bind(&app.registry, &t.namespace.unwrap_or_default(), &t.name.unwrap_or_default(), &node).await
    }
    .await;
    match res {
        Ok(_) => json_response(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})),
        Err(e) => e.into_response(),
    }
}

/// Where a node's agent API listens.
fn node_endpoint(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    let ip = status.addresses.iter().flatten().find(|a| a.type_ == "InternalIP")?.address.clone();
    let port = status.daemon_endpoints.as_ref()?.kubelet_endpoint.as_ref()?.port;
    Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") })
}

pub async fn log(State(app): State<Arc<AppState>>, Path(path): Path<HashMap<String, String>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let res = async {
        let t = target::<Pod>(&path);
        let ns = t.namespace.unwrap_or_default();
        let name = t.name.unwrap_or_default();
        let pod: Pod = app.registry.get(Some(&ns), &name).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        let container = match q.get("container") {
            Some(c) => {
                if !spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|x| &x.name == c) {
                    return Err(ApiError::BadRequest(format!("container {c} is not valid for pod {name}")));
                }
                c.clone()
            }
            None if spec.containers.len() == 1 => spec.containers[0].name.clone(),
            None => {
                let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                return Err(ApiError::BadRequest(format!("a container name must be specified for pod {name}, choose one of: [{}]", names.join(" "))));
            }
        };
        let Some(node_name) = spec.node_name.filter(|n| !n.is_empty()) else {
            return Err(ApiError::BadRequest(format!("pod {name} is not scheduled to a node yet, it has no logs")));
        };
        let node: Node = app.registry.get(None, &node_name).await?;
        let endpoint = node_endpoint(&node).ok_or_else(|| ApiError::ServiceUnavailable(format!("node {node_name} does not report an agent endpoint")))?;
        let mut url = format!("https://{endpoint}/containerLogs/{ns}/{name}/{container}");
        let passthrough: Vec<String> = ["follow", "tailLines", "timestamps", "limitBytes", "sinceSeconds", "previous"]
            .iter()
            .filter_map(|k| q.get(*k).map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        if !passthrough.is_empty() {
            url.push('?');
            url.push_str(&passthrough.join("&"));
        }
        let resp = app
            .node_client
            .get(&url)
            .send()
            .await
            .map_err(|e| ApiError::ServiceUnavailable(format!("cannot reach the agent on node {node_name}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok(json_response(code, &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": text.trim(), "reason": if code == StatusCode::NOT_FOUND { "NotFound" } else { "BadRequest" }, "code": code.as_u16(),
            })));
        }
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from_stream(resp.bytes_stream()))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

