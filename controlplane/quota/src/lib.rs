//! Resource quota accounting, as pure functions: what one object uses of the resources a
//! ResourceQuota can name, whether a quota's scopes select a pod, and the quantities written
//! into `status.used`. The quota controller sums these over a namespace; quota admission
//! (checking a write against `hard - used`) uses the same functions, so the two never disagree.
//!
//! Amounts are integers in thousandths of a unit (millicores, millibytes, millipods), so that
//! cpu, memory and counts share one arithmetic without rounding.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, Pod, ResourceQuotaSpec, ScopedResourceSelectorRequirement,
    Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strake_scheduler::parse_cpu_millis;

/// Resource name to amount, in thousandths.
pub type Amounts = BTreeMap<String, i64>;

/// The scopes a quota may name (`spec.scopes`, or `scopeName` in its scope selector).
pub const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// The names that count objects of a core kind without the `count/` prefix, and the plural
/// they count.
const LEGACY_COUNTS: &[(&str, &str)] = &[
    ("pods", "pods"),
    ("services", "services"),
    ("replicationcontrollers", "replicationcontrollers"),
    ("resourcequotas", "resourcequotas"),
    ("secrets", "secrets"),
    ("configmaps", "configmaps"),
    ("persistentvolumeclaims", "persistentvolumeclaims"),
];

/// A quantity in thousandths, or None if it is not a quantity.
pub fn parse(q: &Quantity) -> Option<i64> {
    parse_cpu_millis(&q.0).ok()
}

/// Whether amounts of `resource` are bytes (and so printed with binary suffixes when exact).
fn is_bytes(resource: &str) -> bool {
    resource.ends_with("memory") || resource.ends_with("storage") || resource.contains("hugepages-")
}

/// An amount in thousandths as the canonical quantity upstream would print: `250m`, `2`,
/// `1536Mi` for bytes that are whole binary multiples, `1k` for a thousand of anything else.
pub fn format(resource: &str, milli: i64) -> Quantity {
    if milli % 1000 != 0 {
        return Quantity(format!("{milli}m"));
    }
    let v = milli / 1000;
    if v == 0 {
        return Quantity("0".into());
    }
    if is_bytes(resource) && v % 1024 == 0 {
        let mut n = v;
        let mut i = 0;
        while n % 1024 == 0 && i < 6 {
            n /= 1024;
            i += 1;
        }
        return Quantity(format!(
            "{n}{}",
            ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i]
        ));
    }
    let mut n = v;
    let mut i = 0;
    while n % 1000 == 0 && i < 6 {
        n /= 1000;
        i += 1;
    }
    Quantity(format!("{n}{}", ["", "k", "M", "G", "T", "P", "E"][i]))
}

/// The group and plural a quota resource name counts objects of: `count/deployments.apps`
/// is `("apps", "deployments")`, `count/widgets.example.com` `("example.com", "widgets")`,
/// `count/pods` and the legacy `pods` `("", "pods")`. None for anything that is not a count.
pub fn counted(name: &str) -> Option<(String, String)> {
    if let Some(rest) = name.strip_prefix("count/") {
        return match rest.split_once('.') {
            Some((plural, group)) if !plural.is_empty() && !group.is_empty() => {
                Some((group.to_string(), plural.to_string()))
            }
            Some(_) => None,
            None if !rest.is_empty() => Some((String::new(), rest.to_string())),
            None => None,
        };
    }
    LEGACY_COUNTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, plural)| (String::new(), plural.to_string()))
}

/// Resources a scoped quota (Terminating, BestEffort, PriorityClass…) can track: those pods
/// use. Any other resource under a scope is refused by validation.
pub fn is_pod_resource(name: &str) -> bool {
    matches!(
        name,
        "pods"
            | "count/pods"
            | "cpu"
            | "memory"
            | "ephemeral-storage"
            | "limits.cpu"
            | "limits.memory"
            | "limits.ephemeral-storage"
    ) || name.starts_with("requests.")
        || name.starts_with("hugepages-")
}

/// Whether a quota charges for the pod: it is neither finished nor past its deletion.
pub fn pod_is_charged(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    // A pod being deleted is charged until its grace period has run (the kubelet may still be
    // running it); one bound nowhere is gone at once.
    if pod.metadata.deletion_timestamp.is_some()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none()
    {
        return false;
    }
    true
}

fn add_list(into: &mut Amounts, list: Option<&BTreeMap<String, Quantity>>) {
    for (k, q) in list.into_iter().flatten() {
        if let Some(v) = parse(q) {
            let e = into.entry(k.clone()).or_default();
            *e = e.saturating_add(v);
        }
    }
}

fn max_into(into: &mut Amounts, other: &Amounts) {
    for (k, v) in other {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

fn sum(a: &Amounts, b: &Amounts) -> Amounts {
    let mut out = a.clone();
    for (k, v) in b {
        let e = out.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
    out
}

/// What a pod holds of each resource, requests or limits, as upstream computes it: its
/// containers and sidecars together, or an init container (with the sidecars started before
/// it) when that is more, plus the pod's overhead. A container's requests fall back to its
/// limits, as defaulting does.
fn pod_totals(pod: &Pod, requests: bool) -> Amounts {
    let Some(spec) = &pod.spec else {
        return Amounts::new();
    };
    let of = |c: &Container| {
        let mut a = Amounts::new();
        let r = c.resources.as_ref();
        if requests {
            let mut merged = r.and_then(|r| r.limits.clone()).unwrap_or_default();
            merged.extend(r.and_then(|r| r.requests.clone()).unwrap_or_default());
            add_list(&mut a, Some(&merged));
        } else {
            add_list(&mut a, r.and_then(|r| r.limits.as_ref()));
        }
        a
    };
    let sidecar = |c: &Container| c.restart_policy.as_deref() == Some("Always");
    let mut total = Amounts::new();
    for c in &spec.containers {
        total = sum(&total, &of(c));
    }
    let (mut sidecars, mut init_peak) = (Amounts::new(), Amounts::new());
    for ic in spec.init_containers.iter().flatten() {
        if sidecar(ic) {
            sidecars = sum(&sidecars, &of(ic));
            max_into(&mut init_peak, &sidecars);
        } else {
            max_into(&mut init_peak, &sum(&sidecars, &of(ic)));
        }
    }
    let mut total = sum(&total, &sidecars);
    max_into(&mut total, &init_peak);
    add_list(&mut total, spec.overhead.as_ref());
    total
}

/// What a pod uses of every resource a quota can name.
pub fn pod_usage(pod: &Pod) -> Amounts {
    let mut u = Amounts::new();
    u.insert("pods".into(), 1000);
    u.insert("count/pods".into(), 1000);
    for (name, v) in pod_totals(pod, true) {
        if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            u.insert(name.clone(), v);
        }
        if name.starts_with("hugepages-") {
            u.insert(name.clone(), v);
        }
        u.insert(format!("requests.{name}"), v);
    }
    for (name, v) in pod_totals(pod, false) {
        if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            u.insert(format!("limits.{name}"), v);
        }
    }
    u
}

/// What a Service uses: itself, a load balancer, and its node ports.
pub fn service_usage(svc: &Service) -> Amounts {
    let mut u = Amounts::new();
    u.insert("services".into(), 1000);
    u.insert("count/services".into(), 1000);
    let spec = svc.spec.as_ref();
    let ty = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len) as i64;
    let (lbs, node_ports) = match ty {
        "LoadBalancer" => {
            // A load balancer without node ports allocates none.
            let allocates = spec
                .and_then(|s| s.allocate_load_balancer_node_ports)
                .unwrap_or(true);
            (1, if allocates { ports } else { 0 })
        }
        "NodePort" => (0, ports),
        _ => (0, 0),
    };
    u.insert("services.loadbalancers".into(), lbs * 1000);
    u.insert("services.nodeports".into(), node_ports * 1000);
    u
}

/// What a claim uses: itself and the storage it requests, overall and in its class.
pub fn pvc_usage(pvc: &PersistentVolumeClaim) -> Amounts {
    let mut u = Amounts::new();
    u.insert("persistentvolumeclaims".into(), 1000);
    u.insert("count/persistentvolumeclaims".into(), 1000);
    let spec = pvc.spec.as_ref();
    let storage = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(parse)
        .unwrap_or(0);
    u.insert("requests.storage".into(), storage);
    if let Some(class) = spec
        .and_then(|s| s.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
    {
        let prefix = format!("{class}.storageclass.storage.k8s.io/");
        u.insert(format!("{prefix}requests.storage"), storage);
        u.insert(format!("{prefix}persistentvolumeclaims"), 1000);
    }
    u
}

/// Whether the quota has any scope: then it tracks pods only.
pub fn is_scoped(spec: &ResourceQuotaSpec) -> bool {
    spec.scopes.as_ref().is_some_and(|s| !s.is_empty())
        || spec
            .scope_selector
            .as_ref()
            .and_then(|s| s.match_expressions.as_ref())
            .is_some_and(|e| !e.is_empty())
}

fn best_effort(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return true;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .all(|c| {
            let r = c.resources.as_ref();
            [
                r.and_then(|r| r.requests.as_ref()),
                r.and_then(|r| r.limits.as_ref()),
            ]
            .into_iter()
            .flatten()
            .all(|l| !l.contains_key("cpu") && !l.contains_key("memory"))
        })
}

fn cross_namespace_affinity(pod: &Pod) -> bool {
    let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return false;
    };
    let mut terms = Vec::new();
    for t in [
        a.pod_affinity.as_ref().map(|p| {
            (
                &p.required_during_scheduling_ignored_during_execution,
                &p.preferred_during_scheduling_ignored_during_execution,
            )
        }),
        a.pod_anti_affinity.as_ref().map(|p| {
            (
                &p.required_during_scheduling_ignored_during_execution,
                &p.preferred_during_scheduling_ignored_during_execution,
            )
        }),
    ]
    .into_iter()
    .flatten()
    {
        terms.extend(t.0.iter().flatten().cloned());
        terms.extend(t.1.iter().flatten().map(|w| w.pod_affinity_term.clone()));
    }
    terms.iter().any(|t| {
        t.namespaces.as_ref().is_some_and(|n| !n.is_empty()) || t.namespace_selector.is_some()
    })
}

/// Whether one scope requirement selects the pod.
fn scope_matches(req: &ScopedResourceSelectorRequirement, pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let plain = |selected: bool| match req.operator.as_str() {
        "Exists" | "In" => selected,
        "DoesNotExist" | "NotIn" => !selected,
        _ => false,
    };
    match req.scope_name.as_str() {
        "Terminating" => plain(spec.and_then(|s| s.active_deadline_seconds).is_some()),
        "NotTerminating" => plain(spec.and_then(|s| s.active_deadline_seconds).is_none()),
        "BestEffort" => plain(best_effort(pod)),
        "NotBestEffort" => plain(!best_effort(pod)),
        "CrossNamespacePodAffinity" => plain(cross_namespace_affinity(pod)),
        "PriorityClass" => {
            let class = spec
                .and_then(|s| s.priority_class_name.as_deref())
                .filter(|c| !c.is_empty());
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                "In" => class.is_some_and(|c| values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !values.iter().any(|v| v == c)),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether the quota's scopes (all of them, `spec.scopes` and its scope selector) select the
/// pod. An unscoped quota selects every pod.
pub fn selects_pod(spec: &ResourceQuotaSpec, pod: &Pod) -> bool {
    let named = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| ScopedResourceSelectorRequirement {
            scope_name: s.clone(),
            operator: "Exists".into(),
            values: None,
        });
    let selected = spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten().cloned());
    named.chain(selected).all(|r| scope_matches(&r, pod))
}

/// What one object of `group`/`plural` counts as: `count/<plural>` (core) or
/// `count/<plural>.<group>`, and the bare legacy name for the core kinds that have one.
pub fn object_counts(group: &str, plural: &str) -> Amounts {
    let mut u = Amounts::new();
    if group.is_empty() {
        u.insert(format!("count/{plural}"), 1000);
        if let Some((name, _)) = LEGACY_COUNTS.iter().find(|(_, p)| *p == plural) {
            u.insert((*name).to_string(), 1000);
        }
    } else {
        u.insert(format!("count/{plural}.{group}"), 1000);
    }
    u
}

/// Whether a quota resource is one objects of `group`/`plural` are charged for (upstream's
/// evaluator MatchingResources): their counts, and what a pod, Service or claim uses.
pub fn matches(group: &str, plural: &str, resource: &str) -> bool {
    if object_counts(group, plural).contains_key(resource) {
        return true;
    }
    match (group, plural) {
        ("", "pods") => is_pod_resource(resource),
        ("", "services") => matches!(resource, "services.loadbalancers" | "services.nodeports"),
        ("", "persistentvolumeclaims") => {
            resource == "requests.storage"
                || resource
                    .split_once(".storageclass.storage.k8s.io/")
                    .is_some_and(|(_, r)| {
                        matches!(r, "requests.storage" | "persistentvolumeclaims")
                    })
        }
        _ => false,
    }
}

/// What a quota limiting cpu or memory requires of every container, as upstream (kept from
/// before QoS existed): each container states the request or limit the quota names. Returns
/// upstream's `must specify limits.cpu for: a,b; requests.memory for: a`, or None.
pub fn missing_constraints(pod: &Pod, hard: &BTreeMap<String, Quantity>) -> Option<String> {
    const CHECKED: &[&str] = &[
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    let spec = pod.spec.as_ref()?;
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        let has = |list: Option<&BTreeMap<String, Quantity>>, name: &str| {
            list.is_some_and(|l| l.contains_key(name))
        };
        for &name in CHECKED.iter().filter(|n| hard.contains_key(**n)) {
            let stated = match name.split_once('.') {
                Some(("limits", res)) => has(r.and_then(|r| r.limits.as_ref()), res),
                Some((_, res)) => has(r.and_then(|r| r.requests.as_ref()), res),
                None => has(r.and_then(|r| r.requests.as_ref()), name),
            };
            if !stated {
                missing.entry(name).or_default().push(&c.name);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(res, mut names)| {
            names.sort_unstable();
            names.dedup();
            format!("{res} for: {}", names.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// Adds `usage` into `used`, for the resources the quota limits only.
pub fn charge(used: &mut Amounts, hard: &BTreeMap<String, Quantity>, usage: &Amounts) {
    for (name, v) in usage {
        if hard.contains_key(name) {
            let e = used.entry(name.clone()).or_default();
            *e = e.saturating_add(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn objects_count_under_their_names_and_match_their_resources() {
        let names = |g, p| object_counts(g, p).into_keys().collect::<Vec<_>>();
        assert_eq!(names("", "secrets"), ["count/secrets", "secrets"]);
        assert_eq!(names("", "events"), ["count/events"]);
        assert_eq!(names("apps", "deployments"), ["count/deployments.apps"]);
        assert!(matches("", "pods", "requests.cpu"));
        assert!(matches("", "pods", "pods"));
        assert!(!matches("", "pods", "services"));
        assert!(matches("", "services", "services.nodeports"));
        assert!(matches(
            "",
            "persistentvolumeclaims",
            "gold.storageclass.storage.k8s.io/requests.storage"
        ));
        assert!(matches("apps", "deployments", "count/deployments.apps"));
        assert!(!matches("apps", "deployments", "count/pods"));
    }

    #[test]
    fn quotas_on_cpu_or_memory_need_every_container_to_state_them() {
        let hard: BTreeMap<String, Quantity> = [
            ("limits.cpu".to_string(), Quantity("2".into())),
            ("requests.memory".to_string(), Quantity("1Gi".into())),
            ("pods".to_string(), Quantity("3".into())),
        ]
        .into();
        let p = pod(json!({"spec": {
        "initContainers": [{"name": "init", "resources": {"limits": {"cpu": "1", "memory": "1Mi"}}}],
        "containers": [
            {"name": "b", "resources": {"requests": {"memory": "1Mi"}}},
            {"name": "a"},
        ]}}));
        assert_eq!(
            missing_constraints(&p, &hard).as_deref(),
            Some("must specify limits.cpu for: a,b; requests.memory for: a,init")
        );
        let ok = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Mi"}}},
        ]}}));
        assert_eq!(missing_constraints(&ok, &hard), None);
    }

    #[test]
    fn quantities_print_as_upstream_prints_them() {
        assert_eq!(format("requests.cpu", 250).0, "250m");
        assert_eq!(format("requests.cpu", 2000).0, "2");
        assert_eq!(
            format("requests.memory", 1536 * 1024 * 1024 * 1000).0,
            "1536Mi"
        );
        assert_eq!(
            format("requests.memory", 1024 * 1024 * 1024 * 1000).0,
            "1Gi"
        );
        assert_eq!(format("requests.storage", 5_000_000_000_000).0, "5G");
        assert_eq!(format("pods", 3000).0, "3");
        assert_eq!(format("pods", 1_000_000).0, "1k");
        assert_eq!(format("pods", 0).0, "0");
        assert_eq!(
            parse(&Quantity("128Mi".into())),
            Some(128 * 1024 * 1024 * 1000)
        );
        assert_eq!(parse(&Quantity("bogus".into())), None);
    }

    #[test]
    fn counted_names() {
        assert_eq!(counted("pods"), Some((String::new(), "pods".into())));
        assert_eq!(counted("count/pods"), Some((String::new(), "pods".into())));
        assert_eq!(
            counted("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            counted("count/widgets.example.com"),
            Some(("example.com".into(), "widgets".into()))
        );
        assert_eq!(counted("requests.cpu"), None);
        assert_eq!(counted("count/"), None);
    }

    #[test]
    fn pods_use_their_effective_requests_and_limits() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}},
                {"name": "b", "image": "x", "resources": {"limits": {"cpu": "200m", "example.com/gpu": "1"}}}
            ],
            "initContainers": [
                {"name": "big", "image": "x", "resources": {"requests": {"cpu": "2"}}},
                {"name": "side", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"memory": "32Mi"}}}
            ],
            "overhead": {"cpu": "10m"}
        }}));
        let u = pod_usage(&p);
        // cpu: the init container's 2 outweighs 100m + 200m; plus 10m overhead.
        assert_eq!(u["requests.cpu"], 2010);
        assert_eq!(u["cpu"], 2010);
        // memory: 64Mi + the sidecar's 32Mi.
        assert_eq!(u["requests.memory"], 96 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 1200 + 10);
        assert_eq!(u["requests.example.com/gpu"], 1000);
        assert_eq!(u["pods"], 1000);
        assert!(!u.contains_key("limits.example.com/gpu"));
    }

    #[test]
    fn scopes_select_pods() {
        let spec =
            |v: serde_json::Value| -> ResourceQuotaSpec { serde_json::from_value(v).unwrap() };
        let be = pod(json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}));
        let burst = pod(
            json!({"spec": {"activeDeadlineSeconds": 30, "priorityClassName": "high",
            "containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}}),
        );
        let best = spec(json!({"scopes": ["BestEffort"]}));
        assert!(selects_pod(&best, &be) && !selects_pod(&best, &burst));
        let term = spec(json!({"scopes": ["Terminating", "NotBestEffort"]}));
        assert!(!selects_pod(&term, &be) && selects_pod(&term, &burst));
        let high = spec(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}));
        assert!(selects_pod(&high, &burst) && !selects_pod(&high, &be));
        let not_high = spec(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}}));
        assert!(!selects_pod(&not_high, &burst) && selects_pod(&not_high, &be));
        assert!(selects_pod(&spec(json!({})), &be));
        assert!(is_scoped(&best) && !is_scoped(&spec(json!({"hard": {"pods": "1"}}))));
    }

    #[test]
    fn services_and_claims() {
        let svc: Service = serde_json::from_value(json!({"spec": {"type": "NodePort",
            "ports": [{"port": 80}, {"port": 443}]}}))
        .unwrap();
        let u = service_usage(&svc);
        assert_eq!(
            (
                u["services"],
                u["services.nodeports"],
                u["services.loadbalancers"]
            ),
            (1000, 2000, 0)
        );
        let lb: Service = serde_json::from_value(json!({"spec": {"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}}))
        .unwrap();
        let u = service_usage(&lb);
        assert_eq!(
            (u["services.loadbalancers"], u["services.nodeports"]),
            (1000, 0)
        );
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({"spec": {
            "storageClassName": "local-path", "resources": {"requests": {"storage": "2Gi"}}}}))
        .unwrap();
        let u = pvc_usage(&pvc);
        assert_eq!(u["requests.storage"], 2 * 1024 * 1024 * 1024 * 1000);
        assert_eq!(
            u["local-path.storageclass.storage.k8s.io/persistentvolumeclaims"],
            1000
        );
    }

    #[test]
    fn finished_and_unbound_deleted_pods_are_not_charged() {
        assert!(pod_is_charged(&pod(json!({"spec": {"containers": []}}))));
        assert!(!pod_is_charged(&pod(
            json!({"status": {"phase": "Succeeded"}})
        )));
        assert!(!pod_is_charged(&pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": []}})
        )));
        assert!(pod_is_charged(&pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}})
        )));
    }
}
