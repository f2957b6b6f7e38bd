//! Namespace teardown, as upstream's namespace controller does it: a namespace being deleted
//! turns Terminating, every namespaced kind in the resource table (CRDs included) is emptied
//! through the registry, the deletion conditions report what remains (content, finalizers,
//! failures), and once empty the `kubernetes` finalizer goes so the deletion finishes. It
//! reacts to the namespace changing and to its pods going (the slowest content, with their
//! grace periods), and looks again every second while content remains.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::registry::Propagation;
use strake_apimachinery::{ApiError, DeleteOptions, ListOptions, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "namespace-controller";
/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content is still going is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Namespaces {
    client: Client,
    namespaces: Reader<Namespace>,
    queue: Arc<Queue<ObjectRef>>,
}

/// What one teardown pass found.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Remaining {
    /// Objects left, by group/resource.
    pub content: BTreeMap<String, usize>,
    /// Objects held by each finalizer.
    pub finalizers: BTreeMap<String, usize>,
    /// Deletions that failed.
    pub errors: Vec<String>,
}

fn condition(ty: &str, on: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: ty.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(Timestamp::now())),
    }
}

/// Upstream's five deletion conditions for what a pass found.
pub fn conditions(r: &Remaining) -> Vec<NamespaceCondition> {
    let content = if r.content.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let parts: Vec<String> = r
            .content
            .iter()
            .map(|(gr, n)| format!("{gr} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
        )
    };
    let finalizers = if r.finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let parts: Vec<String> = r
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
        )
    };
    let failure = if r.errors.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                r.errors.len(),
                r.errors.join(", ")
            ),
        )
    };
    vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        failure,
        content,
        finalizers,
    ]
}

impl Namespaces {
    pub fn new(
        client: &Client,
        namespaces: &mut Reflector<Namespace>,
        pods: &mut Reflector<Pod>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        namespaces.on_change(runtime::enqueue_self(&queue));
        let (q, reader) = (queue.clone(), namespaces.reader());
        pods.on_change(move |c| {
            if c.new.is_some() {
                return;
            }
            let ns = c.latest().metadata.namespace.clone().unwrap_or_default();
            let key = ObjectRef::new(None, &ns);
            if reader
                .get(&key)
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
            {
                q.add(key);
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            namespaces: namespaces.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.namespaces.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.namespaces);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    /// Deletes what is left in `ns` and reports what remains.
    async fn empty(&self, ns: &str) -> Result<Remaining, ApiError> {
        let reg = self.client.registry();
        let table = reg.table().snapshot();
        let mut r = Remaining::default();
        let opts = DeleteOptions {
            propagation: Some(Propagation::Background),
            ..Default::default()
        };
        for def in table.namespaced_resources() {
            if !def.serves("delete") || !def.serves("list") {
                continue;
            }
            let items = reg
                .list(&def, Some(ns), &ListOptions::default())
                .await?
                .items;
            if items.is_empty() {
                continue;
            }
            r.content
                .insert(def.group_resource().to_string(), items.len());
            for obj in &items {
                for f in obj["metadata"]["finalizers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(f) = f.as_str() {
                        *r.finalizers.entry(f.to_string()).or_default() += 1;
                    }
                }
                if !obj["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                match reg.delete(&def, Some(ns), name, &opts).await {
                    Ok(_) | Err(ApiError::NotFound { .. }) | Err(ApiError::Conflict { .. }) => {}
                    Err(e) => r.errors.push(format!("{}: {e}", def.group_resource())),
                }
            }
        }
        r.errors.sort();
        r.errors.dedup();
        Ok(r)
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(ns) = self.namespaces.get(&key) else {
            return Ok(Action::await_change());
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::await_change());
        }
        let name = key.name.clone();
        let holds = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
        let remaining = self.empty(&name).await?;
        let wanted = conditions(&remaining);
        let res = self
            .client
            .modify::<Namespace>(None, &name, Part::Status, |n| {
                let status = n.status.get_or_insert_default();
                let mut changed = status.phase.as_deref() != Some("Terminating");
                status.phase = Some("Terminating".into());
                let conds = status.conditions.get_or_insert_default();
                for w in &wanted {
                    match conds.iter_mut().find(|c| c.type_ == w.type_) {
                        Some(c)
                            if c.status == w.status
                                && c.reason == w.reason
                                && c.message == w.message => {}
                        Some(c) => {
                            let keep_time = c.status == w.status;
                            let t = c.last_transition_time.clone();
                            *c = w.clone();
                            if keep_time {
                                c.last_transition_time = t;
                            }
                            changed = true;
                        }
                        None => {
                            conds.push(w.clone());
                            changed = true;
                        }
                    }
                }
                changed
            })
            .await;
        match res {
            Ok(_) => {}
            Err(ApiError::NotFound { .. }) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
        if !remaining.content.is_empty() || !remaining.errors.is_empty() {
            return Ok(Action::requeue(RECHECK));
        }
        if holds {
            let res = self
                .client
                .modify::<Namespace>(None, &name, Part::Main, |n| {
                    let Some(f) = n.spec.as_mut().and_then(|s| s.finalizers.as_mut()) else {
                        return false;
                    };
                    let before = f.len();
                    f.retain(|f| f != FINALIZER);
                    f.len() != before
                })
                .await;
            match res {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            tracing::info!(namespace = %name, "namespace emptied");
        }
        Ok(Action::await_change())
    }
}

/// The namespace controller alone, with its own caches and no election (for an API server
/// run without the controller manager, as in its tests).
pub fn start_standalone(reg: strake_apimachinery::Registry) {
    let client = Client::new(reg.clone(), NAME);
    let mut namespaces = Reflector::<Namespace>::new(reg.clone());
    let mut pods = Reflector::<Pod>::new(reg);
    let nc = Namespaces::new(&client, &mut namespaces, &mut pods);
    tokio::spawn(namespaces.run());
    tokio::spawn(pods.run());
    tokio::spawn(nc.run(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_remains() {
        let r = Remaining {
            content: [
                ("pods".to_string(), 2),
                ("widgets.example.com".to_string(), 1),
            ]
            .into(),
            finalizers: [("example.com/hold".to_string(), 1)].into(),
            errors: vec![],
        };
        let c = conditions(&r);
        let by = |t: &str| c.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(
            by("NamespaceContentRemaining").message.as_deref(),
            Some(
                "Some resources are remaining: pods has 2 resource instances, widgets.example.com has 1 resource instances"
            )
        );
        assert_eq!(by("NamespaceFinalizersRemaining").status, "True");
        assert_eq!(
            by("NamespaceFinalizersRemaining").message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
            )
        );
        assert_eq!(by("NamespaceDeletionContentFailure").status, "False");
        let done = conditions(&Remaining::default());
        assert!(done.iter().all(|c| c.status == "False"));
    }
}
