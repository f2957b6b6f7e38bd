//! Running a controller: workers take keys from its [`Queue`], call `reconcile(key)`, and act
//! on the [`Action`] it returns (requeue after a while, or wait for the next change); a failed
//! reconcile is retried with the key's back-off. Helpers map cache changes to keys (the object
//! itself, or its controlling owner), and [`Expectations`] keep a controller from acting twice
//! on writes its cache has not seen yet.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use strake_apimachinery::ApiError;
use tokio::time::Instant;

use crate::api::Object;
use crate::cache::{Change, ObjectRef, Reader};
use crate::queue::Queue;

/// What to do with a key after reconciling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, even if nothing changes.
    Requeue(Duration),
    /// Reconcile again only when something the controller watches changes.
    AwaitChange,
}

impl Action {
    pub fn requeue(after: Duration) -> Self {
        Self::Requeue(after)
    }

    pub fn await_change() -> Self {
        Self::AwaitChange
    }

    /// The sooner of two actions.
    pub fn min(self, other: Action) -> Action {
        match (self, other) {
            (Action::Requeue(a), Action::Requeue(b)) => Action::Requeue(a.min(b)),
            (Action::Requeue(a), _) | (_, Action::Requeue(a)) => Action::Requeue(a),
            _ => Action::AwaitChange,
        }
    }
}

/// Runs `workers` concurrent reconcilers over `queue` until the task is dropped.
pub async fn run<F, Fut>(
    name: &'static str,
    queue: Arc<Queue<ObjectRef>>,
    workers: usize,
    reconcile: F,
) where
    F: Fn(ObjectRef) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ApiError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.next().await;
                let outcome = reconcile(key.clone()).await;
                match outcome {
                    Ok(Action::Requeue(after)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), after);
                    }
                    Ok(Action::AwaitChange) => queue.forget(&key),
                    Err(e) => {
                        let level = queue.failures(&key);
                        if matches!(e, ApiError::Conflict { .. }) && level < 3 {
                            tracing::debug!(controller = name, %key, error = %e, "reconcile conflicted; retrying");
                        } else {
                            tracing::warn!(controller = name, %key, error = %e, "reconcile failed; retrying");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// A handler that queues the changed object itself.
pub fn enqueue_self<K: Object>(
    queue: &Arc<Queue<ObjectRef>>,
) -> impl Fn(&Change<K>) + Send + Sync + 'static {
    let queue = queue.clone();
    move |c: &Change<K>| queue.add(ObjectRef::of(c.latest().as_ref()))
}

/// The ownerReference that marks the object's controller, if it is of `kind`.
pub fn controller_of<'a, K: Object>(obj: &'a K, kind: &str) -> Option<&'a OwnerReference> {
    obj.metadata()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == kind)
}

/// A handler that queues the controlling owner (of kind `O`) of the changed object, before and
/// after the change, so an owner hears of dependents it gains and loses.
pub fn enqueue_controller<K: Object, O: Object>(
    queue: &Arc<Queue<ObjectRef>>,
) -> impl Fn(&Change<K>) + Send + Sync + 'static {
    let queue = queue.clone();
    move |c: &Change<K>| {
        for obj in c.old.iter().chain(c.new.iter()) {
            if let Some(r) = controller_of(obj.as_ref(), O::KIND) {
                queue.add(ObjectRef::new(obj.metadata().namespace.as_deref(), &r.name));
            }
        }
    }
}

/// Queues every object the reader holds (after becoming leader, or for a periodic resync).
pub fn enqueue_all<K: Object>(queue: &Queue<ObjectRef>, reader: &Reader<K>) {
    for o in reader.list() {
        queue.add(ObjectRef::of(o.as_ref()));
    }
}

/// How long an expectation lasts before the controller acts regardless (upstream's 5 min).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Expected {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// Writes a controller made and waits to see in its cache: names it created (seen once the
/// cache holds them) and names it deleted (seen once the cache has them gone or terminating).
/// Until they are all seen, the cache would lead the controller to repeat them.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<ObjectRef, Expected>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Expected>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn expect_create(&self, owner: &ObjectRef, name: &str) {
        let mut m = self.lock();
        let e = m.entry(owner.clone()).or_default();
        e.creates.insert(name.to_string());
        e.since.get_or_insert_with(Instant::now);
    }

    pub fn expect_delete(&self, owner: &ObjectRef, name: &str) {
        let mut m = self.lock();
        let e = m.entry(owner.clone()).or_default();
        e.deletes.insert(name.to_string());
        e.since.get_or_insert_with(Instant::now);
    }

    /// A write that failed will never be seen.
    pub fn lower_create(&self, owner: &ObjectRef, name: &str) {
        if let Some(e) = self.lock().get_mut(owner) {
            e.creates.remove(name);
        }
    }

    /// Whether everything expected for `owner` is in `cache` (objects in `owner`'s namespace);
    /// expectations older than [`EXPECTATIONS_TIMEOUT`] are dropped.
    pub fn satisfied<K: Object>(&self, owner: &ObjectRef, cache: &Reader<K>) -> bool {
        let mut m = self.lock();
        let Some(e) = m.get_mut(owner) else {
            return true;
        };
        e.creates
            .retain(|n| cache.get(&ObjectRef::new(owner.ns(), n)).is_none());
        e.deletes.retain(|n| {
            cache
                .get(&ObjectRef::new(owner.ns(), n))
                .is_some_and(|o| o.metadata().deletion_timestamp.is_none())
        });
        let expired = e.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TIMEOUT);
        if e.creates.is_empty() && e.deletes.is_empty() || expired {
            if expired {
                tracing::warn!(%owner, "expected writes never reached the cache; acting anyway");
            }
            m.remove(owner);
            return true;
        }
        false
    }

    pub fn forget(&self, owner: &ObjectRef) {
        self.lock().remove(owner);
    }
}
