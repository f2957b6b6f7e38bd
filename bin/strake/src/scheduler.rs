//! The scheduling loop: wakes on pod and node changes, binds pending pods with the pure
//! `strake_scheduler::schedule`, and records why a pod cannot be placed.

use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strake_apimachinery::Part;
use strake_apimachinery::events::EventType;
use strake_apiserver::{Filter, Registry, typed};
use strake_scheduler::{Decision, schedule};

const SCHEDULER_NAME: &str = "default-scheduler";

/// Records a scheduling event about a pod; a failure to record is logged, never fatal.
async fn event(reg: &Registry, pod: &Pod, ty: EventType, reason: &str, message: &str) {
    let mut v = serde_json::to_value(pod).unwrap_or_default();
    v["apiVersion"] = "v1".into();
    v["kind"] = "Pod".into();
    if let Err(e) =
        strake_apimachinery::events::record(reg, &v, ty, reason, message, SCHEDULER_NAME).await
    {
        tracing::debug!(error = %e, reason, "recording an event failed");
    }
}

pub async fn run(reg: Registry) {
    loop {
        let mut watch = match reg.store().watch(b"/registry/".to_vec(), 0) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler cannot watch the store");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            if let Err(e) = pass(&reg).await {
                tracing::warn!(error = %e, "scheduling pass failed");
            }
            // Wake on the next change, or retry unschedulable pods every few seconds.
            let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
            match next {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_))) | Ok(None) => break,
            }
        }
    }
}

async fn pass(reg: &Registry) -> Result<(), strake_apiserver::ApiError> {
    let pods: Vec<Pod> = typed::list(reg, None, &Filter::default()).await?;
    let pending: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            let spec = p.spec.as_ref();
            p.metadata.deletion_timestamp.is_none()
                && spec
                    .and_then(|s| s.node_name.as_deref())
                    .is_none_or(str::is_empty)
                && spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or(SCHEDULER_NAME)
                    == SCHEDULER_NAME
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let nodes: Vec<Node> = typed::list(reg, None, &Filter::default()).await?;
    let mut placed: Vec<Pod> = pods
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .cloned()
        .collect();
    for pod in pending {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        match schedule(pod, &nodes, &placed) {
            Decision::Bind(node) => match strake_apiserver::bind(reg, &ns, &name, &node).await {
                Ok(bound) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), %node, "scheduled");
                    let message = format!("Successfully assigned {ns}/{name} to {node}");
                    event(reg, &bound, EventType::Normal, "Scheduled", &message).await;
                    placed.push(bound);
                }
                Err(e) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), error = %e, "binding failed")
                }
            },
            Decision::Unschedulable(message) => {
                let already = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.message.as_deref() == Some(message.as_str())
                        })
                    });
                if already {
                    continue;
                }
                tracing::info!(pod = %format!("{ns}/{name}"), %message, "unschedulable");
                event(reg, pod, EventType::Warning, "FailedScheduling", &message).await;
                let res = typed::modify::<Pod>(reg, Some(&ns), &name, Part::Status, |p| {
                    let conds = p
                        .status
                        .get_or_insert_default()
                        .conditions
                        .get_or_insert_default();
                    conds.retain(|c| c.type_ != "PodScheduled");
                    conds.push(PodCondition {
                        type_: "PodScheduled".into(),
                        status: "False".into(),
                        reason: Some("Unschedulable".into()),
                        message: Some(message.clone()),
                        last_transition_time: Some(Time(jiff::Timestamp::now())),
                        ..Default::default()
                    });
                    Ok(())
                })
                .await;
                if let Err(e) = res {
                    tracing::info!(pod = %format!("{ns}/{name}"), error = %e, "recording unschedulable failed");
                }
            }
        }
    }
    Ok(())
}
