//! Following the pods of one namespace from a watch: when each was first seen bound and first
//! seen Running, and on which node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use strake_kubeclient::{Client, WatchEvent};

#[derive(Default)]
pub struct Seen {
    pub bound: HashMap<String, (Instant, String)>,
    pub running: HashMap<String, Instant>,
    pub gone: HashMap<String, Instant>,
}

#[derive(Clone)]
pub struct Tracker {
    pub seen: Arc<Mutex<Seen>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Tracker {
    pub fn start(client: Client, ns: &str) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (s, ns) = (seen.clone(), ns.to_string());
        let task = tokio::spawn(async move {
            let mut rv = String::new();
            loop {
                let Ok(stream) = client
                    .watch::<Pod>(Some(&ns), None, &rv, Duration::from_secs(600))
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut stream = Box::pin(stream);
                while let Some(Ok(ev)) = stream.next().await {
                    let now = Instant::now();
                    let (pod, deleted) = match ev {
                        WatchEvent::Added(p) | WatchEvent::Modified(p) => (p, false),
                        WatchEvent::Deleted(p) => (p, true),
                        WatchEvent::Bookmark(v) => {
                            rv = v;
                            continue;
                        }
                    };
                    if let Some(v) = &pod.metadata.resource_version {
                        rv = v.clone();
                    }
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                    if deleted {
                        s.gone.entry(uid).or_insert(now);
                        continue;
                    }
                    if let Some(node) = pod.spec.as_ref().and_then(|sp| sp.node_name.clone()) {
                        s.bound.entry(uid.clone()).or_insert((now, node));
                    }
                    if pod.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running") {
                        s.running.entry(uid).or_insert(now);
                    }
                }
            }
        });
        Self {
            seen,
            task: Arc::new(task),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn bound(&self) -> usize {
        self.with(|s| s.bound.len())
    }

    pub fn running(&self) -> usize {
        self.with(|s| s.running.len())
    }

    /// Pods Running, not deleted, and not on `node`.
    pub fn running_off(&self, node: &str) -> usize {
        self.with(|s| {
            s.running
                .keys()
                .filter(|u| !s.gone.contains_key(*u))
                .filter(|u| s.bound.get(*u).is_some_and(|(_, n)| n != node))
                .count()
        })
    }
}
