//! The horizontal pod autoscaler (autoscaling/v2), as upstream's: every [`SYNC`] each
//! HorizontalPodAutoscaler reads its target through the `scale` subresource's paths (any kind
//! with one, CRDs included), the usage of the pods its selector selects from a
//! [`MetricsSource`], and proposes a replica count per metric (Resource and ContainerResource,
//! as a utilization of requests or an average value) within a tolerance of 10%, treating pods
//! without metrics and unready pods as upstream does; the largest proposal is stabilized over
//! the behavior's windows, limited by its scaling policies and by min/maxReplicas, and written
//! to the target's scale. Status carries the current metrics and the AbleToScale,
//! ScalingActive and ScalingLimited conditions with upstream's reasons and messages;
//! `SuccessfulRescale` and `FailedGetResourceMetric` events are worded as upstream's.
//!
//! Pods, Object and External metrics need a custom or external metrics API, which nothing
//! serves yet: such a metric reports that, and the others still count.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus,
    MetricTarget, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use strake_apimachinery::events::EventType;
use strake_apimachinery::selectors::LabelSelector;
use strake_apimachinery::{ApiError, ListOptions, Part, Registry, WriteOptions};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "horizontal-pod-autoscaler";
/// How often each autoscaler is evaluated (upstream's --horizontal-pod-autoscaler-sync-period).
pub const SYNC: Duration = Duration::from_secs(15);
/// A usage ratio this close to 1 changes nothing.
const TOLERANCE: f64 = 0.1;

/// Per-pod usage of one resource, in thousandths (millicores, millibytes), by pod name.
pub type PodUsage = HashMap<String, i64>;

/// Where the autoscaler reads what pods use.
pub trait MetricsSource: Send + Sync {
    /// The usage of `resource` by each of `pods` (all in `ns`) that has a sample, of
    /// `container` only when given. An error says why there are no metrics at all.
    fn pod_usage<'a>(
        &'a self,
        ns: &'a str,
        pods: &'a [Arc<Pod>],
        resource: &'a str,
        container: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PodUsage, String>>;
}

/// The resource metrics API (`metrics.k8s.io/v1beta1` PodMetrics), read through the registry
/// when something serves it.
pub struct MetricsApi {
    reg: Registry,
}

impl MetricsApi {
    pub fn new(reg: Registry) -> Self {
        Self { reg }
    }
}

impl MetricsSource for MetricsApi {
    fn pod_usage<'a>(
        &'a self,
        ns: &'a str,
        pods: &'a [Arc<Pod>],
        resource: &'a str,
        container: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PodUsage, String>> {
        Box::pin(async move {
            let none = || {
                format!(
                    "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
                )
            };
            let table = self.reg.table().snapshot();
            let Some(def) = table.lookup("metrics.k8s.io", "v1beta1", "pods").cloned() else {
                return Err(none());
            };
            let list = self
                .reg
                .list(&def, Some(ns), &ListOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", none()))?;
            let wanted: std::collections::HashSet<&str> = pods
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            let mut out = PodUsage::new();
            for m in &list.items {
                let Some(name) = m.pointer("/metadata/name").and_then(Value::as_str) else {
                    continue;
                };
                if !wanted.contains(name) {
                    continue;
                }
                let mut total = 0;
                for c in m["containers"].as_array().into_iter().flatten() {
                    if container.is_some_and(|want| c["name"].as_str() != Some(want)) {
                        continue;
                    }
                    if let Some(q) = c["usage"][resource].as_str() {
                        total += strake_quota::parse(&Quantity(q.to_string())).unwrap_or(0);
                    }
                }
                out.insert(name.to_string(), total);
            }
            if out.is_empty() {
                return Err(none());
            }
            Ok(out)
        })
    }
}

/// Fixed usage, set by hand: for tests and simulated clusters (hollow nodes have no cgroups).
#[derive(Default)]
pub struct StaticMetrics {
    /// (namespace, pod, resource) to usage in thousandths; `*` as the pod stands for every pod
    /// of the namespace without its own entry.
    usage: Mutex<HashMap<(String, String, String), i64>>,
}

impl StaticMetrics {
    /// Sets what a pod (or `*`: every pod of the namespace) uses of a resource.
    pub fn set(&self, ns: &str, pod: &str, resource: &str, milli: i64) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((ns.into(), pod.into(), resource.into()), milli);
    }
}

impl MetricsSource for StaticMetrics {
    fn pod_usage<'a>(
        &'a self,
        ns: &'a str,
        pods: &'a [Arc<Pod>],
        resource: &'a str,
        _container: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PodUsage, String>> {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let at = |pod: &str| usage.get(&(ns.to_string(), pod.to_string(), resource.to_string()));
        let out: PodUsage = pods
            .iter()
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let v = at(&name).or_else(|| at("*"))?;
                Some((name, *v))
            })
            .collect();
        let res = if out.is_empty() {
            Err(format!(
                "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
            ))
        } else {
            Ok(out)
        };
        Box::pin(async move { res })
    }
}

/// What one autoscaler remembers between passes, as upstream's controller does in memory.
#[derive(Default)]
struct History {
    /// Replica counts proposed (before stabilization), with when.
    recommendations: Vec<(Timestamp, i32)>,
    /// Scale changes made (positive up, negative down), with when.
    events: Vec<(Timestamp, i32)>,
}

pub struct Autoscalers {
    client: Client,
    hpas: Reader<HorizontalPodAutoscaler>,
    pods: Reader<Pod>,
    metrics: Arc<dyn MetricsSource>,
    history: Mutex<HashMap<ObjectRef, History>>,
    queue: Arc<Queue<ObjectRef>>,
}

/// A Resource or ContainerResource metric: the resource, the container if one, the target.
struct ResourceMetric<'a> {
    name: &'a str,
    container: Option<&'a str>,
    target: &'a MetricTarget,
}

/// One metric's proposal.
struct Proposal {
    replicas: i32,
    status: MetricStatus,
    /// How upstream names the metric in messages: "cpu resource utilization (percentage of
    /// request)".
    description: String,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// AbleToScale when the target's scale was read and nothing more is to be said.
fn got_scale() -> HorizontalPodAutoscalerCondition {
    condition(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
    )
}

/// Upstream's defaults for a behavior's rules.
fn rules(spec: Option<&HPAScalingRules>, up: bool) -> HPAScalingRules {
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: 15,
    };
    let default = if up {
        HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Pods", 4), policy("Percent", 100)]),
            tolerance: None,
        }
    } else {
        HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100)]),
            tolerance: None,
        }
    };
    let Some(s) = spec else {
        return default;
    };
    HPAScalingRules {
        stabilization_window_seconds: s
            .stabilization_window_seconds
            .or(default.stabilization_window_seconds),
        select_policy: s.select_policy.clone().or(default.select_policy),
        policies: s.policies.clone().or(default.policies),
        tolerance: s.tolerance.clone(),
    }
}

fn tolerance(r: &HPAScalingRules) -> f64 {
    r.tolerance
        .as_ref()
        .and_then(strake_quota::parse)
        .map_or(TOLERANCE, |m| m as f64 / 1000.0)
}

/// The most (scaling up) or fewest (down) replicas the rules allow from `current`, given the
/// changes made within each policy's period.
pub fn rate_limit(
    current: i32,
    events: &[(Timestamp, i32)],
    rules: &HPAScalingRules,
    up: bool,
    now: Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut best: Option<i32> = None;
    for p in rules.policies.iter().flatten() {
        let since = now - SignedDuration::from_secs(p.period_seconds.into());
        let changed: i32 = events
            .iter()
            .filter(|(t, d)| *t > since && (*d > 0) == up)
            .map(|(_, d)| d.abs())
            .sum();
        let proposed = if up {
            let start = current - changed;
            match p.type_.as_str() {
                "Pods" => start + p.value,
                _ => (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32,
            }
        } else {
            let start = current + changed;
            match p.type_.as_str() {
                "Pods" => start - p.value,
                _ => (start as f64 * (1.0 - p.value as f64 / 100.0)).floor() as i32,
            }
        };
        // "Max" picks the policy allowing the most change, "Min" the least.
        let more = |a: i32, b: i32| if up { a.max(b) } else { a.min(b) };
        let less = |a: i32, b: i32| if up { a.min(b) } else { a.max(b) };
        best = Some(match best {
            None => proposed,
            Some(b) if select == "Min" => less(b, proposed),
            Some(b) => more(b, proposed),
        });
    }
    best.unwrap_or(current)
}

/// Replicas for a usage ratio over the pods with metrics, as upstream's replica calculator:
/// pods without metrics count as using their target when scaling down and nothing when
/// scaling up; unready pods count as using nothing, and only when scaling up.
fn replicas_for(
    current: i32,
    usage: &BTreeMap<String, i64>,
    target_per_pod: &BTreeMap<String, i64>,
    unready: &[String],
    missing: &[String],
    ratio_of: impl Fn(&BTreeMap<String, i64>, &BTreeMap<String, i64>) -> f64,
    tol: f64,
) -> i32 {
    let ratio = ratio_of(usage, target_per_pod);
    let ready = usage.len() as f64;
    let up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= tol {
            return current;
        }
        return (ratio * ready).ceil() as i32;
    }
    let mut usage = usage.clone();
    let mut targets = target_per_pod.clone();
    for m in missing {
        let t = targets.get(m).copied().unwrap_or(0);
        if ratio < 1.0 {
            usage.insert(m.clone(), t);
        } else if ratio > 1.0 {
            usage.insert(m.clone(), 0);
        }
    }
    if up_with_unready {
        for u in unready {
            usage.insert(u.clone(), 0);
        }
    }
    targets.retain(|k, _| usage.contains_key(k));
    let new_ratio = ratio_of(&usage, &targets);
    if (1.0 - new_ratio).abs() <= tol
        || (ratio > 1.0 && new_ratio < 1.0)
        || (ratio < 1.0 && new_ratio > 1.0)
    {
        return current;
    }
    let n = (new_ratio * usage.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return current;
    }
    n
}

fn requests_of(pod: &Pod, resource: &str, container: Option<&str>) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let mut total = 0;
    for c in &spec.containers {
        if container.is_some_and(|want| c.name != want) {
            continue;
        }
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get(resource))
            .or_else(|| {
                r.and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(resource))
            })?;
        total += strake_quota::parse(q)?;
    }
    Some(total)
}

impl Autoscalers {
    pub fn new(
        client: &Client,
        hpas: &mut Reflector<HorizontalPodAutoscaler>,
        pods: &mut Reflector<Pod>,
        metrics: Arc<dyn MetricsSource>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        // A new autoscaler, or a changed spec, is evaluated at once; its own status writes
        // are not (every autoscaler comes back each sync period anyway).
        let q = queue.clone();
        hpas.on_change(move |c| {
            let generation = |h: &Option<Arc<HorizontalPodAutoscaler>>| {
                h.as_ref().map(|h| h.metadata.generation)
            };
            if c.new.is_some() && generation(&c.old) != generation(&c.new) {
                q.add(ObjectRef::of(c.latest().as_ref()));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            hpas: hpas.reader(),
            pods: pods.reader(),
            metrics,
            history: Mutex::default(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.hpas.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.hpas);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    /// The proposal of one Resource or ContainerResource metric.
    async fn resource_metric(
        &self,
        ns: &str,
        pods: &[Arc<Pod>],
        current: i32,
        metric: ResourceMetric<'_>,
        tol: f64,
    ) -> Result<Proposal, (String, String)> {
        let ResourceMetric {
            name,
            container,
            target,
        } = metric;
        let fail = |reason: &str, msg: String| (reason.to_string(), msg);
        // Pods going away or failed are not counted at all.
        let live: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pods::phase(p) != "Failed")
            .cloned()
            .collect();
        if live.is_empty() {
            return Err(fail(
                "FailedGetResourceMetric",
                format!("unable to get metrics for resource {name}: no pods to get metrics for"),
            ));
        }
        let samples = self
            .metrics
            .pod_usage(ns, &live, name, container)
            .await
            .map_err(|e| fail("FailedGetResourceMetric", e))?;
        let mut usage = BTreeMap::new();
        let mut requests = BTreeMap::new();
        let (mut unready, mut missing) = (Vec::new(), Vec::new());
        for p in &live {
            let pname = p.metadata.name.clone().unwrap_or_default();
            let request = requests_of(p, name, container);
            let utilization = target.type_ == "Utilization";
            let req = match request {
                Some(r) if r > 0 || !utilization => r,
                _ if utilization => {
                    let c = container
                        .map(|c| format!(" in container {c}"))
                        .unwrap_or_default();
                    return Err(fail(
                        "FailedGetResourceMetric",
                        format!(
                            "failed to get {name} utilization: missing request for {name}{c} of Pod {pname}"
                        ),
                    ));
                }
                _ => 0,
            };
            requests.insert(pname.clone(), req);
            let Some(v) = samples.get(&pname) else {
                missing.push(pname);
                continue;
            };
            // cpu of a pod not yet ready is not to be trusted (start-up spikes).
            let not_ready = pods::phase(p) == "Pending" || (name == "cpu" && !pods::is_ready(p));
            if not_ready {
                unready.push(pname);
                continue;
            }
            usage.insert(pname, *v);
        }
        if usage.is_empty() && unready.is_empty() {
            return Err(fail(
                "FailedGetResourceMetric",
                format!(
                    "unable to get metrics for resource {name}: no metrics returned from resource metrics API"
                ),
            ));
        }
        let total = |m: &BTreeMap<String, i64>| m.values().sum::<i64>();
        let replicas;
        let current_status;
        let description;
        if target.type_ == "Utilization" {
            let want = target.average_utilization.unwrap_or(80).max(1) as f64;
            let util = |u: &BTreeMap<String, i64>, r: &BTreeMap<String, i64>| {
                let req: i64 = u.keys().filter_map(|k| r.get(k)).sum();
                if req == 0 { 0 } else { total(u) * 100 / req }
            };
            let ratio =
                |u: &BTreeMap<String, i64>, r: &BTreeMap<String, i64>| util(u, r) as f64 / want;
            replicas = replicas_for(current, &usage, &requests, &unready, &missing, ratio, tol);
            let n = usage.len().max(1) as i64;
            current_status = MetricValueStatus {
                average_utilization: Some(util(&usage, &requests) as i32),
                average_value: Some(strake_quota::format(name, total(&usage) / n)),
                value: None,
            };
            description = format!("{name} resource utilization (percentage of request)");
        } else {
            let Some(want) = target
                .average_value
                .as_ref()
                .or(target.value.as_ref())
                .and_then(strake_quota::parse)
                .filter(|v| *v > 0)
            else {
                return Err(fail(
                    "InvalidMetricSourceType",
                    format!("invalid target for resource metric {name}: averageValue is required"),
                ));
            };
            let targets: BTreeMap<String, i64> =
                requests.keys().map(|k| (k.clone(), want)).collect();
            let ratio = |u: &BTreeMap<String, i64>, _: &BTreeMap<String, i64>| {
                if u.is_empty() {
                    0.0
                } else {
                    (total(u) / u.len() as i64) as f64 / want as f64
                }
            };
            replicas = replicas_for(current, &usage, &targets, &unready, &missing, ratio, tol);
            let n = usage.len().max(1) as i64;
            current_status = MetricValueStatus {
                average_utilization: None,
                average_value: Some(strake_quota::format(name, total(&usage) / n)),
                value: None,
            };
            description = format!("{name} resource");
        }
        let status = match container {
            Some(c) => MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    container: c.into(),
                    name: name.into(),
                    current: current_status,
                }),
                ..Default::default()
            },
            None => MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: name.into(),
                    current: current_status,
                }),
                ..Default::default()
            },
        };
        Ok(Proposal {
            replicas,
            status,
            description,
        })
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(hpa) = self.hpas.get(&key) else {
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            return Ok(Action::await_change());
        };
        if hpa.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = key.namespace.clone().unwrap_or_default();
        let spec = hpa.spec.clone().unwrap_or_default();
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let target = &spec.scale_target_ref;
        let api_version = target.api_version.clone().unwrap_or_default();
        let reg = self.client.registry();
        let now = Timestamp::now();
        let mut status = HorizontalPodAutoscalerStatus {
            current_replicas: hpa.status.as_ref().and_then(|s| s.current_replicas),
            desired_replicas: hpa.status.as_ref().map_or(0, |s| s.desired_replicas),
            last_scale_time: hpa.status.as_ref().and_then(|s| s.last_scale_time.clone()),
            observed_generation: hpa.metadata.generation,
            current_metrics: hpa.status.as_ref().and_then(|s| s.current_metrics.clone()),
            conditions: None,
        };
        let mut conditions = Vec::new();

        // The target's scale.
        let table = reg.table().snapshot();
        let def = table
            .by_gvk(&api_version, &target.kind)
            .filter(|d| d.scale.is_some())
            .cloned();
        let found = match def {
            Some(def) => match reg.get(&def, Some(&ns), &target.name).await {
                Ok(object) => Ok((def, object)),
                Err(e) => Err(e.to_string()),
            },
            None => {
                let (group, _) = api_version.split_once('/').unwrap_or(("", &api_version));
                Err(format!(
                    "no matches for kind \"{}\" in group \"{group}\"",
                    target.kind
                ))
            }
        };
        let (def, object) = match found {
            Ok(found) => found,
            Err(e) => {
                let message =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                self.client
                    .event(hpa.as_ref(), EventType::Warning, "FailedGetScale", &message)
                    .await;
                conditions.push(condition("AbleToScale", false, "FailedGetScale", message));
                return self.write_status(&key, &hpa, status, conditions).await;
            }
        };
        let scale = strake_kinds::scale::scale_of(&def, &object);
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        let selector = scale["status"]["selector"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        status.current_replicas = Some(current);

        let mut desired;
        let rescale_reason;
        let mut scaled_by_metrics = false;
        if current == 0 && min != 0 {
            // Scaled to zero by hand: autoscaling is off until the target is scaled up.
            status.desired_replicas = 0;
            conditions.push(got_scale());
            conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            ));
            return self.write_status(&key, &hpa, status, conditions).await;
        } else if current > max {
            desired = max;
            rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
        } else if current < min {
            desired = min;
            rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
        } else {
            let pods: Vec<Arc<Pod>> = match LabelSelector::parse(&selector) {
                Ok(sel) if !selector.is_empty() => self
                    .pods
                    .in_namespace(&ns)
                    .into_iter()
                    .filter(|p| sel.matches(p.metadata.labels.as_ref()))
                    .collect(),
                _ => {
                    let message = format!(
                        "the HPA target's scale is missing a selector: {selector:?} cannot be used"
                    );
                    conditions.push(got_scale());
                    conditions.push(condition(
                        "ScalingActive",
                        false,
                        "InvalidSelector",
                        message,
                    ));
                    return self.write_status(&key, &hpa, status, conditions).await;
                }
            };
            let behavior = spec.behavior.clone().unwrap_or_default();
            let up = rules(behavior.scale_up.as_ref(), true);
            let down = rules(behavior.scale_down.as_ref(), false);
            let mut best: Option<Proposal> = None;
            let mut metric_statuses = Vec::new();
            let mut errors: Vec<(String, String)> = Vec::new();
            for m in spec.metrics.iter().flatten() {
                let res = self
                    .metric(&ns, &pods, current, m, tolerance(&up).min(tolerance(&down)))
                    .await;
                match res {
                    Ok(p) => {
                        metric_statuses.push(p.status.clone());
                        if best.as_ref().is_none_or(|b| p.replicas > b.replicas) {
                            best = Some(p);
                        }
                    }
                    Err(e) => {
                        metric_statuses.push(MetricStatus {
                            type_: m.type_.clone(),
                            ..Default::default()
                        });
                        errors.push(e);
                    }
                }
            }
            for (reason, message) in &errors {
                self.client
                    .event(hpa.as_ref(), EventType::Warning, reason, message)
                    .await;
            }
            status.current_metrics = (!metric_statuses.is_empty()).then_some(metric_statuses);
            let Some(best) = best else {
                let (reason, message) = errors.into_iter().next().unwrap_or((
                    "FailedGetResourceMetric".into(),
                    "no metrics to scale on".into(),
                ));
                conditions.push(got_scale());
                conditions.push(condition(
                    "ScalingActive",
                    false,
                    &reason,
                    format!("the HPA was unable to compute the replica count: {message}"),
                ));
                status.desired_replicas = current;
                return self.write_status(&key, &hpa, status, conditions).await;
            };
            // A metric that failed may have wanted more: never scale down on partial data.
            let proposed = if !errors.is_empty() && best.replicas < current {
                current
            } else {
                best.replicas
            };
            scaled_by_metrics = true;
            conditions.push(condition(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {}",
                    best.description
                ),
            ));
            let above = proposed > current;
            rescale_reason = format!(
                "{} {} target",
                best.description,
                if above { "above" } else { "below" }
            );
            // Stabilization: the lowest recent proposal when going up, the highest going down.
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            let h = history.entry(key.clone()).or_default();
            let window = |r: &HPAScalingRules| {
                SignedDuration::from_secs(r.stabilization_window_seconds.unwrap_or(0).max(0).into())
            };
            let (up_since, down_since) = (now - window(&up), now - window(&down));
            let (mut up_rec, mut down_rec) = (proposed, proposed);
            for (t, r) in &h.recommendations {
                if *t > up_since {
                    up_rec = up_rec.min(*r);
                }
                if *t > down_since {
                    down_rec = down_rec.max(*r);
                }
            }
            let keep = window(&up).max(window(&down));
            h.recommendations.retain(|(t, _)| *t > now - keep);
            h.recommendations.push((now, proposed));
            let stabilized = current.max(up_rec).min(down_rec);
            let able = if stabilized != proposed && stabilized > proposed {
                condition("AbleToScale", true, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation".into())
            } else if stabilized != proposed {
                condition("AbleToScale", true, "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation".into())
            } else {
                condition(
                    "AbleToScale",
                    true,
                    "ReadyForNewScale",
                    "recommended size matches current size".into(),
                )
            };
            conditions.insert(0, able);
            // Rate and range limits.
            h.events
                .retain(|(t, _)| *t > now - SignedDuration::from_secs(1800));
            desired = stabilized;
            let (limit, reason, message) = if desired > current {
                let rate = rate_limit(current, &h.events, &up, true, now).max(current);
                if max > rate {
                    (
                        rate,
                        "ScaleUpLimit",
                        "the desired replica count is increasing faster than the maximum scale rate",
                    )
                } else {
                    (
                        max,
                        "TooManyReplicas",
                        "the desired replica count is more than the maximum replica count",
                    )
                }
            } else if desired < current {
                let rate = rate_limit(current, &h.events, &down, false, now).min(current);
                if min < rate {
                    (
                        rate,
                        "ScaleDownLimit",
                        "the desired replica count is decreasing faster than the maximum scale rate",
                    )
                } else {
                    (
                        min,
                        "TooFewReplicas",
                        "the desired replica count is less than the minimum replica count",
                    )
                }
            } else {
                (desired, "", "")
            };
            let limited =
                (desired > current && desired > limit) || (desired < current && desired < limit);
            if limited {
                desired = limit;
                conditions.push(condition("ScalingLimited", true, reason, message.into()));
            } else {
                conditions.push(condition(
                    "ScalingLimited",
                    false,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range".into(),
                ));
            }
        }
        if !scaled_by_metrics {
            conditions.push(got_scale());
            let (reason, message) = if desired > current {
                (
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            } else {
                (
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            conditions.push(condition("ScalingLimited", true, reason, message.into()));
        }
        status.desired_replicas = desired;
        if desired != current {
            let rv = scale["metadata"]["resourceVersion"]
                .as_str()
                .map(String::from);
            let opts = WriteOptions {
                dry_run: false,
                field_manager: Some(NAME.into()),
                user: None,
                warnings: Default::default(),
                subresource: None,
            };
            match strake_kinds::scale::set_replicas(
                reg,
                &def,
                Some(&ns),
                &target.name,
                desired.into(),
                rv,
                &opts,
            )
            .await
            {
                Ok(_) => {
                    self.history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(key.clone())
                        .or_default()
                        .events
                        .push((now, desired - current));
                    status.last_scale_time = Some(Time(now));
                    let message = format!("New size: {desired}; reason: {rescale_reason}");
                    self.client
                        .event(
                            hpa.as_ref(),
                            EventType::Normal,
                            "SuccessfulRescale",
                            &message,
                        )
                        .await;
                    for c in conditions.iter_mut().filter(|c| c.type_ == "AbleToScale") {
                        *c = condition(
                            "AbleToScale",
                            true,
                            "SucceededRescale",
                            format!(
                                "the HPA controller was able to update the target scale to {desired}"
                            ),
                        );
                    }
                }
                Err(e) => {
                    let message =
                        format!("the HPA controller was unable to update the target scale: {e}");
                    self.client
                        .event(hpa.as_ref(), EventType::Warning, "FailedRescale", &message)
                        .await;
                    for c in conditions.iter_mut().filter(|c| c.type_ == "AbleToScale") {
                        *c = condition("AbleToScale", false, "FailedUpdateScale", message.clone());
                    }
                    status.desired_replicas = current;
                }
            }
        }
        self.write_status(&key, &hpa, status, conditions).await
    }

    async fn metric(
        &self,
        ns: &str,
        pods: &[Arc<Pod>],
        current: i32,
        m: &MetricSpec,
        tol: f64,
    ) -> Result<Proposal, (String, String)> {
        match m.type_.as_str() {
            "Resource" => {
                let Some(r) = &m.resource else {
                    return Err(("InvalidMetricSourceType".into(), "a Resource metric names no resource".into()));
                };
                let metric = ResourceMetric {
                    name: &r.name,
                    container: None,
                    target: &r.target,
                };
                self.resource_metric(ns, pods, current, metric, tol).await
            }
            "ContainerResource" => {
                let Some(r) = &m.container_resource else {
                    return Err(("InvalidMetricSourceType".into(), "a ContainerResource metric names no resource".into()));
                };
                let metric = ResourceMetric {
                    name: &r.name,
                    container: Some(&r.container),
                    target: &r.target,
                };
                self.resource_metric(ns, pods, current, metric, tol).await
            }
            "Pods" | "Object" => Err((
                format!("FailedGet{}Metric", if m.type_ == "Pods" { "Pods" } else { "Object" }),
                "unable to get metric: no custom metrics API (custom.metrics.k8s.io) registered".into(),
            )),
            "External" => Err((
                "FailedGetExternalMetric".into(),
                "unable to get external metric: no external metrics API (external.metrics.k8s.io) registered".into(),
            )),
            other => Err((
                "InvalidMetricSourceType".into(),
                format!("unknown metric source type {other:?}"),
            )),
        }
    }

    /// Writes the status (keeping each condition's transition time while its status holds),
    /// and comes back after the sync period.
    async fn write_status(
        &self,
        key: &ObjectRef,
        hpa: &HorizontalPodAutoscaler,
        mut status: HorizontalPodAutoscalerStatus,
        mut conditions: Vec<HorizontalPodAutoscalerCondition>,
    ) -> Result<Action, ApiError> {
        let now = Time(Timestamp::now());
        let old = hpa.status.as_ref().and_then(|s| s.conditions.as_ref());
        for c in &mut conditions {
            c.last_transition_time = old
                .and_then(|o| {
                    o.iter()
                        .find(|o| o.type_ == c.type_ && o.status == c.status)
                })
                .and_then(|o| o.last_transition_time.clone())
                .or_else(|| Some(now.clone()));
        }
        status.conditions = Some(conditions);
        if hpa.status.as_ref() != Some(&status) {
            let res = self
                .client
                .modify::<HorizontalPodAutoscaler>(key.ns(), &key.name, Part::Status, |cur| {
                    cur.status = Some(status.clone());
                    true
                })
                .await;
            match res {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Action::requeue(SYNC))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn scale_up_is_limited_by_the_faster_default_policy() {
        let up = rules(None, true);
        // From 2: 4 pods or 100% (4): at most 6; from 10: 100% (20) beats 4 pods (14).
        assert_eq!(rate_limit(2, &[], &up, true, ts(0)), 6);
        assert_eq!(rate_limit(10, &[], &up, true, ts(0)), 20);
        // 6 added within the last 15 s start the period at 4: at most 8.
        assert_eq!(rate_limit(10, &[(ts(-5), 6)], &up, true, ts(0)), 8);
        // Older changes no longer count.
        assert_eq!(rate_limit(10, &[(ts(-20), 6)], &up, true, ts(0)), 20);
    }

    #[test]
    fn scale_down_policies_and_select_policy() {
        let mut down = rules(None, false);
        assert_eq!(rate_limit(10, &[], &down, false, ts(0)), 0);
        down.policies = Some(vec![
            HPAScalingPolicy {
                type_: "Pods".into(),
                value: 2,
                period_seconds: 60,
            },
            HPAScalingPolicy {
                type_: "Percent".into(),
                value: 50,
                period_seconds: 60,
            },
        ]);
        // Max: the policy allowing the most change (50% of 10 leaves 5).
        assert_eq!(rate_limit(10, &[], &down, false, ts(0)), 5);
        down.select_policy = Some("Min".into());
        assert_eq!(rate_limit(10, &[], &down, false, ts(0)), 8);
        down.select_policy = Some("Disabled".into());
        assert_eq!(rate_limit(10, &[], &down, false, ts(0)), 10);
    }

    fn m(v: &[(&str, i64)]) -> BTreeMap<String, i64> {
        v.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn util(target: f64) -> impl Fn(&BTreeMap<String, i64>, &BTreeMap<String, i64>) -> f64 {
        move |u, r| {
            let req: i64 = u.keys().filter_map(|k| r.get(k)).sum();
            (u.values().sum::<i64>() * 100 / req) as f64 / target
        }
    }

    #[test]
    fn replica_calculation_as_upstream() {
        let req = m(&[("a", 1000), ("b", 1000), ("c", 1000)]);
        let calc = |current: i32, usage: &[(&str, i64)], unready: &[&str], missing: &[&str]| {
            let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let (unready, missing) = (names(unready), names(missing));
            replicas_for(
                current,
                &m(usage),
                &req,
                &unready,
                &missing,
                util(50.0),
                0.1,
            )
        };
        // 90% against 50%: ceil(1.8 × 2) = 4.
        assert_eq!(calc(2, &[("a", 900), ("b", 900)], &[], &[]), 4);
        // Within the tolerance: unchanged.
        assert_eq!(calc(2, &[("a", 520), ("b", 530)], &[], &[]), 2);
        // 20% of a 50% target leaves one pod of two...
        assert_eq!(calc(2, &[("a", 100), ("b", 100)], &[], &[]), 1);
        // ...but a pod missing metrics counts as using all it requests on the way down,
        // which holds the scale-down back.
        assert_eq!(calc(3, &[("a", 100), ("b", 100)], &[], &["c"]), 3);
        // Scaling up with an unready pod: it counts as using nothing.
        assert_eq!(calc(3, &[("a", 1000), ("b", 1000)], &["c"], &[]), 4);
    }
}
