//! Controllers that live with the API server until the controller manager has its own crate.
//! Namespace lifecycle: a namespace with a deletionTimestamp turns Terminating, its pods are
//! deleted, and once it is empty the namespace itself is removed.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::kinds::Part;
use crate::registry::{Filter, Registry};

pub async fn namespaces(reg: Registry) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Err(e) = reconcile(&reg).await {
            tracing::warn!(error = %e, "namespace controller");
        }
    }
}

async fn reconcile(reg: &Registry) -> Result<(), crate::error::ApiError> {
    let (all, _, _) = reg.list::<Namespace>(None, &Filter::default(), 0, None).await?;
    for ns in all.into_iter().filter(|n| n.metadata.deletion_timestamp.is_some()) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating") {
            reg.modify::<Namespace>(None, &name, Part::Status, |n| {
                n.status.get_or_insert_default().phase = Some("Terminating".into());
                Ok(())
            })
            .await?;
        }
        let (pods, _, _) = reg.list::<Pod>(Some(&name), &Filter::default(), 0, None).await?;
        if pods.is_empty() {
            // Empty: drop the finalizer and finish the deletion.
            reg.modify::<Namespace>(None, &name, Part::Main, |n| {
                n.spec.get_or_insert_default().finalizers = None;
                n.metadata.finalizers = None;
                Ok(())
            })
            .await?;
            reg.remove::<Namespace>(None, &name).await?;
            tracing::info!(namespace = %name, "namespace deleted");
            continue;
        }
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match reg.delete::<Pod>(Some(&name), &pod_name, None, None, None).await {
                Ok(_) | Err(crate::error::ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
