//! The node's half of the local-path provisioner: volumes provisioned on this node (labelled
//! `strake.dev/local-path-node=<node>`) that are being deleted get their directory removed
//! (for the Delete policy; Retain keeps the data) and their cleanup finalizer lifted. Only
//! directories under the node's local-path root are ever removed, whatever a volume says.

use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::{Value, json};

use crate::Shared;

use strake_scheduler::volumes::{
    LOCAL_PATH_CLEANUP as CLEANUP_FINALIZER, LOCAL_PATH_NODE_LABEL as NODE_LABEL,
};
const EVERY: Duration = Duration::from_secs(3);

/// Runs forever: looks for this node's deleted local-path volumes every few seconds.
pub async fn run(shared: Arc<Shared>) {
    loop {
        if let Err(e) = sweep(&shared).await {
            tracing::debug!(error = %e, "local-path cleanup pass failed");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Whether `path` is a directory strictly inside `root`, reached without `..`.
pub fn removable(root: &Path, path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        && path.starts_with(root)
        && path != root
}

async fn sweep(shared: &Shared) -> Result<(), String> {
    let path = format!(
        "/api/v1/persistentvolumes?labelSelector={NODE_LABEL}%3D{}",
        shared.cfg.node_name
    );
    let list: Value = shared
        .client
        .get_json(&path)
        .await
        .map_err(|e| e.to_string())?;
    for item in list["items"].as_array().into_iter().flatten() {
        let Ok(pv) = serde_json::from_value::<PersistentVolume>(item.clone()) else {
            continue;
        };
        let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
        if pv.metadata.deletion_timestamp.is_none()
            || !finalizers.iter().any(|f| f == CLEANUP_FINALIZER)
        {
            continue;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let spec = pv.spec.clone().unwrap_or_default();
        let policy = spec
            .persistent_volume_reclaim_policy
            .as_deref()
            .unwrap_or("Retain");
        if policy == "Delete"
            && let Some(h) = &spec.host_path
        {
            let dir = Path::new(&h.path);
            if !removable(&shared.cfg.local_path_root, dir) {
                tracing::warn!(volume = %name, path = %h.path, root = %shared.cfg.local_path_root.display(), "not removing a local-path volume outside this node's root");
                continue;
            }
            match tokio::fs::remove_dir_all(dir).await {
                Ok(()) => {
                    tracing::info!(volume = %name, path = %h.path, "local-path volume removed")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "removing a local-path volume failed");
                    continue;
                }
            }
        }
        let rest: Vec<&String> = finalizers
            .iter()
            .filter(|f| *f != CLEANUP_FINALIZER)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": pv.metadata.resource_version,
        }});
        if let Err(e) = shared
            .client
            .patch::<PersistentVolume>(None, &name, &patch)
            .await
        {
            tracing::debug!(volume = %name, error = %e, "lifting the cleanup finalizer failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_root_are_removable() {
        let root = Path::new("/var/lib/strake/local-path");
        assert!(removable(
            root,
            Path::new("/var/lib/strake/local-path/pvc-1_ns_data")
        ));
        assert!(!removable(root, root));
        assert!(!removable(
            root,
            Path::new("/var/lib/strake/local-path/../agent")
        ));
        assert!(!removable(root, Path::new("/etc")));
        assert!(!removable(root, Path::new("/var/lib/strake/local-pathX/y")));
        assert!(!removable(root, Path::new("pvc-1")));
    }
}
