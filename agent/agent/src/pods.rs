//! Watches the pods bound to this node and hands each to its own worker task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use strake_kubeclient::WatchEvent;
use tokio::sync::watch;

use crate::worker::PodWorker;
use crate::{AgentError, Shared};

struct Handle {
    updates: watch::Sender<Option<Pod>>,
}

/// Runs forever: list+watch with re-list on errors, one worker per pod uid.
pub async fn run(shared: Arc<Shared>) -> Result<(), AgentError> {
    let selector = format!("spec.nodeName={}", shared.cfg.node_name);
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut rv = String::new();
    loop {
        let stream = shared
            .client
            .watch::<Pod>(None, Some(&selector), &rv, Duration::from_secs(300))
            .await;
        let mut stream = match stream {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed, retrying");
                rv.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                    rv = p.metadata.resource_version.clone().unwrap_or_default();
                    dispatch(&shared, &mut workers, p, false);
                }
                Ok(WatchEvent::Deleted(p)) => {
                    rv = p.metadata.resource_version.clone().unwrap_or_default();
                    dispatch(&shared, &mut workers, p, true);
                }
                Ok(WatchEvent::Bookmark(b)) => rv = b,
                Err(e) => {
                    tracing::info!(error = %e, "pod watch ended, re-listing");
                    rv.clear();
                    break;
                }
            }
        }
        workers.retain(|_, h| !h.updates.is_closed());
    }
}

fn dispatch(shared: &Arc<Shared>, workers: &mut HashMap<String, Handle>, pod: Pod, deleted: bool) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(h) = workers.get(&uid) {
        if h.updates
            .send(if deleted { None } else { Some(pod) })
            .is_err()
        {
            workers.remove(&uid);
        }
        return;
    }
    if deleted {
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let worker = PodWorker::new(shared.clone(), pod, rx);
    tokio::spawn(worker.run());
    workers.insert(uid, Handle { updates: tx });
}
