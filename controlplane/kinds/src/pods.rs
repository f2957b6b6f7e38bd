//! Binding a pod to a node (`pods/binding`), shared by the API's binding subresource and the
//! scheduler: the pod must be unbound and not terminating; its PodScheduled condition turns
//! True.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, Part, Registry, WriteOptions};

pub async fn bind(
    reg: &Registry,
    namespace: &str,
    name: &str,
    node: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let def = reg
        .table()
        .snapshot()
        .lookup("", "v1", "pods")
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    let opts = WriteOptions {
        dry_run,
        ..Default::default()
    };
    reg.update_with(
        &def,
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
        &def,
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
