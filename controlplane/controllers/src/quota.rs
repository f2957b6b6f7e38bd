//! The resource quota controller: each ResourceQuota's `status.hard` (its spec's) and
//! `status.used`, summed over its namespace with the evaluators of `strake_quota`. Pods,
//! Services, claims and ConfigMaps come from the shared caches, and a change to any of them
//! recomputes the quotas of its namespace at once; other counted kinds (`secrets`,
//! `count/deployments.apps`, a CRD's `count/widgets.example.com`) are counted through the
//! registry, kept for [`RESYNC`] (so pod churn does not list them again on every pass) and
//! recounted after it, as upstream's full resync does, or at once when a quota of their
//! namespace is edited.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaSpec, ResourceQuotaStatus,
    Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strake_apimachinery::{ApiError, Filter, ListOptions, Part};
use strake_quota::{self as quota, Amounts};

use crate::api::{Client, Object};
use crate::cache::{Change, ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "resourcequota-controller";
/// How often a quota that counts kinds without a cache here is recounted.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Object counts made through the registry: (namespace, group, plural) to when and how many.
type Counts = HashMap<(String, String, String), (Instant, i64)>;

pub struct Quotas {
    client: Client,
    quotas: Reader<ResourceQuota>,
    pods: Reader<Pod>,
    services: Reader<Service>,
    claims: Reader<PersistentVolumeClaim>,
    configmaps: Reader<ConfigMap>,
    /// Counts made through the registry, by (namespace, group, plural), with when.
    counts: Arc<Mutex<Counts>>,
    queue: Arc<Queue<ObjectRef>>,
}

/// A handler that queues every quota in the namespace of the changed object.
fn enqueue_namespace<K: Object>(
    queue: &Arc<Queue<ObjectRef>>,
    quotas: &Reader<ResourceQuota>,
) -> impl Fn(&Change<K>) + Send + Sync + 'static {
    let (queue, quotas) = (queue.clone(), quotas.clone());
    move |c: &Change<K>| {
        let ns = c.latest().metadata().namespace.clone().unwrap_or_default();
        for q in quotas.in_namespace(&ns) {
            queue.add(ObjectRef::of(q.as_ref()));
        }
    }
}

impl Quotas {
    pub fn new(
        client: &Client,
        quotas: &mut Reflector<ResourceQuota>,
        pods: &mut Reflector<Pod>,
        services: &mut Reflector<Service>,
        claims: &mut Reflector<PersistentVolumeClaim>,
        configmaps: &mut Reflector<ConfigMap>,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        quotas.on_change(runtime::enqueue_self(&queue));
        // A quota edited by hand (not a status write) recounts its namespace at once.
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let stale = counts.clone();
        quotas.on_change(move |c: &Change<ResourceQuota>| {
            let status = |q: &Option<Arc<ResourceQuota>>| q.as_ref().map(|q| q.status.clone());
            if c.old.is_none() || status(&c.old) == status(&c.new) {
                let ns = c.latest().metadata.namespace.clone().unwrap_or_default();
                stale
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(n, _, _), _| *n != ns);
            }
        });
        let reader = quotas.reader();
        pods.on_change(enqueue_namespace(&queue, &reader));
        services.on_change(enqueue_namespace(&queue, &reader));
        claims.on_change(enqueue_namespace(&queue, &reader));
        configmaps.on_change(enqueue_namespace(&queue, &reader));
        Arc::new(Self {
            client: client.named(NAME),
            quotas: reader,
            pods: pods.reader(),
            services: services.reader(),
            claims: claims.reader(),
            configmaps: configmaps.reader(),
            counts,
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.quotas.ready().await;
        self.pods.ready().await;
        self.services.ready().await;
        self.claims.ready().await;
        self.configmaps.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.quotas);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    /// How many objects of `group`/`plural` the namespace holds, through the registry (or as
    /// counted within the last [`RESYNC`]).
    async fn count(&self, ns: &str, group: &str, plural: &str) -> Result<Option<i64>, ApiError> {
        let key = (ns.to_string(), group.to_string(), plural.to_string());
        let cached = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(at, _)| at.elapsed() < RESYNC)
            .map(|(_, n)| *n);
        if cached.is_some() {
            return Ok(cached);
        }
        let reg = self.client.registry();
        let table = reg.table().snapshot();
        let Some(def) = table
            .all()
            .iter()
            .find(|d| d.group == group && d.plural == plural && d.namespaced)
        else {
            // Not served (yet): a CRD not created, or a typo upstream also accepts.
            return Ok(None);
        };
        let n = reg
            .list(def, Some(ns), &ListOptions::default())
            .await?
            .items
            .len() as i64;
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), n));
        Ok(Some(n))
    }

    /// Sums what the namespace's objects use of the quota's hard resources. `fresh` counts the
    /// kinds without a cache here through the registry now rather than from the kept counts.
    /// Returns the amounts and whether a kept count was used (so the quota is recounted later).
    async fn usage(
        &self,
        ns: &str,
        spec: &ResourceQuotaSpec,
        objects: &Objects,
        fresh: bool,
    ) -> Result<(Amounts, bool), ApiError> {
        let hard: BTreeMap<String, Quantity> = spec.hard.clone().unwrap_or_default();
        let mut used = Amounts::new();
        for p in &objects.pods {
            if quota::pod_is_charged(p) && quota::selects_pod(spec, p) {
                quota::charge(&mut used, &hard, &quota::pod_usage(p));
            }
        }
        // Scopes select pods only: a scoped quota tracks nothing else.
        let mut resync = false;
        if quota::is_scoped(spec) {
            return Ok((used, resync));
        }
        for s in &objects.services {
            quota::charge(&mut used, &hard, &quota::service_usage(s));
        }
        for c in &objects.claims {
            quota::charge(&mut used, &hard, &quota::pvc_usage(c));
        }
        for name in hard.keys() {
            let Some((group, plural)) = quota::counted(name) else {
                continue;
            };
            let n = match (group.as_str(), plural.as_str()) {
                ("", "pods" | "services" | "persistentvolumeclaims") => continue,
                ("", "configmaps") => objects.configmaps as i64,
                _ => {
                    if fresh {
                        self.counts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(ns.to_string(), group.clone(), plural.clone()));
                    }
                    resync = true;
                    self.count(ns, &group, &plural).await?.unwrap_or(0)
                }
            };
            used.insert(name.clone(), n * 1000);
        }
        Ok((used, resync))
    }

    /// The namespace's objects as the caches hold them.
    fn cached(&self, ns: &str) -> Objects {
        Objects {
            pods: self.pods.in_namespace(ns),
            services: self.services.in_namespace(ns),
            claims: self.claims.in_namespace(ns),
            configmaps: self.configmaps.in_namespace(ns).len(),
        }
    }

    /// The namespace's objects read through the registry now.
    async fn listed(&self, ns: &str) -> Result<Objects, ApiError> {
        let all = Filter::default();
        fn arcs<T>(v: Vec<T>) -> Vec<Arc<T>> {
            v.into_iter().map(Arc::new).collect()
        }
        Ok(Objects {
            pods: arcs(self.client.list::<Pod>(Some(ns), &all).await?.0),
            services: arcs(self.client.list::<Service>(Some(ns), &all).await?.0),
            claims: arcs(
                self.client
                    .list::<PersistentVolumeClaim>(Some(ns), &all)
                    .await?
                    .0,
            ),
            configmaps: self.client.list::<ConfigMap>(Some(ns), &all).await?.0.len(),
        })
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(q) = self.quotas.get(&key) else {
            return Ok(Action::await_change());
        };
        if q.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = key.namespace.clone().unwrap_or_default();
        let spec = q.spec.clone().unwrap_or_default();
        let (used, resync) = self.usage(&ns, &spec, &self.cached(&ns), false).await?;
        let mut status = status_of(&spec, &used);
        let again = if resync {
            Action::requeue(RESYNC)
        } else {
            Action::await_change()
        };
        if q.status.as_ref() == Some(&status) {
            return Ok(again);
        }
        // Admission raises `used` in the same transaction as each object it charges, before
        // the caches here see the object. Lowering it from the caches could undo a charge and
        // let a later write past the limit, so a lower count is made again from a read of the
        // objects that follows a read of the quota, and written only if the quota is still
        // that one.
        let live = match self.client.get::<ResourceQuota>(key.ns(), &key.name).await {
            Ok(live) => live,
            Err(ApiError::NotFound { .. }) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        };
        if lowers(live.status.as_ref(), &status) {
            let (used, _) = self
                .usage(&ns, &spec, &self.listed(&ns).await?, true)
                .await?;
            status = status_of(&spec, &used);
        }
        if live.status.as_ref() == Some(&status) {
            return Ok(again);
        }
        let mut next = live;
        next.status = Some(status);
        match self.client.replace(&next, Part::Status).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(again),
            // Charged (or edited) meanwhile: count again.
            Err(ApiError::Conflict { .. }) => Ok(Action::requeue(Duration::ZERO)),
            Err(e) => Err(e),
        }
    }
}

/// A namespace's objects a quota counts through caches.
struct Objects {
    pods: Vec<Arc<Pod>>,
    services: Vec<Arc<Service>>,
    claims: Vec<Arc<PersistentVolumeClaim>>,
    configmaps: usize,
}

/// The status a quota gets for `used`: its hard limits, and what is used of each.
fn status_of(spec: &ResourceQuotaSpec, used: &Amounts) -> ResourceQuotaStatus {
    let hard: BTreeMap<String, Quantity> = spec.hard.clone().unwrap_or_default();
    ResourceQuotaStatus {
        used: Some(
            hard.keys()
                .map(|k| {
                    let v = used.get(k).copied().unwrap_or(0);
                    (k.clone(), quota::format(k, v))
                })
                .collect(),
        ),
        hard: Some(hard),
    }
}

/// Whether `next` has less of anything used than `current`.
fn lowers(current: Option<&ResourceQuotaStatus>, next: &ResourceQuotaStatus) -> bool {
    let used = |s: Option<&ResourceQuotaStatus>, k: &str| {
        s.and_then(|s| s.used.as_ref())
            .and_then(|u| u.get(k))
            .and_then(quota::parse)
    };
    next.used.iter().flatten().any(|(k, _)| {
        matches!((used(current, k), used(Some(next), k)), (Some(now), Some(then)) if then < now)
    })
}
