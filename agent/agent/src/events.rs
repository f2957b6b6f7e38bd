//! Events about pods, as kubelet records them: source `kubelet` on this node, one Event per
//! (pod, container, type, reason, message) whose count and lastTimestamp grow when it
//! happens again. Recording never blocks or fails the work it describes.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;

use crate::Shared;

/// Normal or Warning, as upstream's event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Records an event about `pod` (and the part at `field_path`, such as
/// `spec.containers{web}`, when it is about one) in the background.
pub fn record(
    shared: &Arc<Shared>,
    pod: &Pod,
    field_path: Option<&str>,
    ty: Type,
    reason: &str,
    message: &str,
) {
    let event = build(pod, field_path, ty, reason, message, &shared.cfg.node_name);
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = post(&shared, event).await {
            tracing::debug!(error = %e, "recording an event failed");
        }
    });
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The Event object, named `<pod>.<hash of what it says>` so a repeat finds it.
fn build(
    pod: &Pod,
    field_path: Option<&str>,
    ty: Type,
    reason: &str,
    message: &str,
    node: &str,
) -> serde_json::Value {
    let meta = &pod.metadata;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        meta.uid.as_deref(),
        field_path,
        ty == Type::Normal,
        reason,
        message,
    )
        .hash(&mut h);
    let pod_name = meta.name.as_deref().unwrap_or("pod");
    let stamp = now();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {
            "name": format!("{}.{:016x}", pod_name.chars().take(200).collect::<String>(), h.finish()),
            "namespace": meta.namespace.as_deref().unwrap_or("default"),
        },
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "name": pod_name,
            "namespace": meta.namespace, "uid": meta.uid,
            "resourceVersion": meta.resource_version,
            "fieldPath": field_path,
        },
        "type": if ty == Type::Normal { "Normal" } else { "Warning" },
        "reason": reason, "message": message,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    })
}

async fn post(
    shared: &Shared,
    event: serde_json::Value,
) -> Result<(), strake_kubeclient::ClientError> {
    let ns = event["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = event["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ev: Event = serde_json::from_value(event).unwrap_or_default();
    match shared.client.create(Some(&ns), &ev).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => {
            let mut old: Event = shared.client.get(Some(&ns), &name).await?;
            old.count = Some(old.count.unwrap_or(1) + 1);
            old.last_timestamp = ev.last_timestamp;
            shared
                .client
                .replace(Some(&ns), &name, &old)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_share_a_name_and_differences_do_not() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"}}))
        .unwrap();
        let a = build(
            &pod,
            Some("spec.containers{c}"),
            Type::Warning,
            "Unhealthy",
            "x",
            "n1",
        );
        let b = build(
            &pod,
            Some("spec.containers{c}"),
            Type::Warning,
            "Unhealthy",
            "x",
            "n1",
        );
        let c = build(
            &pod,
            Some("spec.containers{c}"),
            Type::Warning,
            "Unhealthy",
            "y",
            "n1",
        );
        assert_eq!(a["metadata"]["name"], b["metadata"]["name"]);
        assert_ne!(a["metadata"]["name"], c["metadata"]["name"]);
        assert_eq!(a["involvedObject"]["fieldPath"], "spec.containers{c}");
        assert_eq!(a["source"]["component"], "kubelet");
        let e: Event = serde_json::from_value(a).unwrap();
        assert_eq!(e.involved_object.name.as_deref(), Some("web"));
    }
}
