//! Upstream's LimitRanger: the LimitRanges of a namespace give a new pod's containers the
//! requests and limits they leave out (`default`, `defaultRequest`), and refuse a pod or claim
//! outside their `min`, `max` and `maxLimitRequestRatio`, in upstream's words. Pods are
//! checked when created (their resources cannot change after), claims when created or resized.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Operation};
use crate::error::ApiError;
use crate::registry::{ListOptions, Registry};

/// The annotation naming what the plugin set on a pod.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

type Resources = BTreeMap<String, Quantity>;

pub struct LimitRanger;

impl AdmissionPlugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let (Some(ns), None, true) = (
                attrs.namespace,
                attrs.subresource,
                attrs.def.group.is_empty(),
            ) else {
                return Ok(());
            };
            let pods = match (attrs.def.plural.as_str(), attrs.operation) {
                ("pods", Operation::Create) => true,
                ("persistentvolumeclaims", Operation::Create | Operation::Update) => false,
                _ => return Ok(()),
            };
            let ranges = ranges(reg, ns).await?;
            if ranges.is_empty() {
                return Ok(());
            }
            let errors = if pods {
                default_pod(obj, &ranges);
                check_pod(obj, &ranges)
            } else {
                check_claim(obj, &ranges)
            };
            match errors.len() {
                0 => Ok(()),
                1 => Err(forbidden(attrs, &errors[0])),
                _ => Err(forbidden(attrs, &format!("[{}]", errors.join(", ")))),
            }
        })
    }
}

fn forbidden(attrs: &Attributes<'_>, why: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "{} \"{}\" is forbidden: {why}",
        attrs.def.group_resource(),
        attrs.name
    ))
}

/// The namespace's limit items, with upstream's defaulting of container items: a missing
/// default limit is the max, a missing default request the default limit, else the min.
async fn ranges(reg: &Registry, ns: &str) -> Result<Vec<LimitRangeItem>, ApiError> {
    let table = reg.table().snapshot();
    let Some(def) = table.lookup("", "v1", "limitranges") else {
        return Ok(Vec::new());
    };
    let list = reg.list(def, Some(ns), &ListOptions::default()).await?;
    let mut items = Vec::new();
    for v in list.items {
        let lr: LimitRange = serde_json::from_value(v)
            .map_err(|e| ApiError::Internal(format!("a stored LimitRange is unreadable: {e}")))?;
        for mut item in lr.spec.map(|s| s.limits).unwrap_or_default() {
            if item.type_ == "Container" {
                let default = item.default.get_or_insert_with(Default::default);
                for (k, v) in item.max.iter().flatten() {
                    default.entry(k.clone()).or_insert_with(|| v.clone());
                }
                let default = default.clone();
                let request = item.default_request.get_or_insert_with(Default::default);
                for (k, v) in default.iter().chain(item.min.iter().flatten()) {
                    request.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            items.push(item);
        }
    }
    Ok(items)
}

/// Gives each container the defaults of the Container items for what it leaves out, and
/// records what was set in the pod's annotation.
fn default_pod(pod: &mut Value, ranges: &[LimitRangeItem]) {
    let (mut limits, mut requests) = (Resources::new(), Resources::new());
    for item in ranges.iter().filter(|i| i.type_ == "Container") {
        limits.extend(item.default.clone().unwrap_or_default());
        requests.extend(item.default_request.clone().unwrap_or_default());
    }
    if limits.is_empty() && requests.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    let Some(spec) = pod["spec"].as_object_mut() else {
        return;
    };
    let (mut init, mut main) = (Vec::new(), Vec::new());
    for (k, v) in spec.iter_mut() {
        let list = v.as_array_mut().into_iter().flatten();
        match k.as_str() {
            "initContainers" => init.extend(list),
            "containers" => main.extend(list),
            _ => {}
        }
    }
    for c in init.into_iter().chain(main) {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        if !c["resources"].is_object() {
            c["resources"] = Value::Object(Default::default());
        }
        let r = &mut c["resources"];
        let mut set = |field: &str, defaults: &Resources, fallback: Option<&str>| {
            let mut named = Vec::new();
            for (k, v) in defaults {
                if r[field].get(k).is_some() {
                    continue;
                }
                // A request left out follows the container's own limit, as API defaulting
                // makes it, before any default request.
                let value = fallback
                    .and_then(|f| r[f].get(k).cloned())
                    .unwrap_or_else(|| Value::String(v.0.clone()));
                if !r[field].is_object() {
                    r[field] = Value::Object(Default::default());
                }
                r[field][k] = value;
                named.push(k.clone());
            }
            named
        };
        // Requests first: one left out follows the container's own limit, not a default one.
        let set_requests = set("requests", &requests, Some("limits"));
        let set_limits = set("limits", &limits, None);
        let mut parts = Vec::new();
        if !set_requests.is_empty() {
            parts.push(format!("{} request", set_requests.join(", ")));
        }
        if !set_limits.is_empty() {
            parts.push(format!("{} limit", set_limits.join(", ")));
        }
        if !parts.is_empty() {
            notes.push(format!("{} for container {name}", parts.join("; ")));
        }
    }
    if notes.is_empty() {
        return;
    }
    let meta = &mut pod["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = Value::Object(Default::default());
    }
    meta["annotations"][ANNOTATION] =
        format!("LimitRanger plugin set: {}", notes.join("; ")).into();
}

/// A resource list of a container or claim, as JSON, typed.
fn resources(v: &Value) -> Resources {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn milli(q: &Quantity) -> Option<i64> {
    strake_quota::parse(q)
}

/// One subject's requests and limits against one item, in upstream's words.
fn check(
    kind: &str,
    item: &LimitRangeItem,
    req: &Resources,
    lim: &Resources,
    out: &mut Vec<String>,
) {
    for (k, min) in item.min.iter().flatten() {
        let m = milli(min).unwrap_or(0);
        match (req.get(k), lim.get(k)) {
            (None, _) => out.push(format!(
                "minimum {k} usage per {kind} is {}.  No request is specified",
                min.0
            )),
            (Some(r), _) if milli(r).unwrap_or(0) < m => out.push(format!(
                "minimum {k} usage per {kind} is {}, but request is {}",
                min.0, r.0
            )),
            (_, Some(l)) if milli(l).unwrap_or(0) < m => out.push(format!(
                "minimum {k} usage per {kind} is {}, but limit is {}",
                min.0, l.0
            )),
            _ => {}
        }
    }
    for (k, max) in item.max.iter().flatten() {
        let m = milli(max).unwrap_or(0);
        // A claim has requests only: its max bounds the request.
        let bounded = if kind == "PersistentVolumeClaim" {
            req
        } else {
            lim
        };
        match (bounded.get(k), req.get(k)) {
            (None, _) => out.push(format!(
                "maximum {k} usage per {kind} is {}.  No {} is specified",
                max.0,
                if kind == "PersistentVolumeClaim" {
                    "request"
                } else {
                    "limit"
                }
            )),
            (Some(l), _) if milli(l).unwrap_or(0) > m => out.push(format!(
                "maximum {k} usage per {kind} is {}, but {} is {}",
                max.0,
                if kind == "PersistentVolumeClaim" {
                    "request"
                } else {
                    "limit"
                },
                l.0
            )),
            (_, Some(r)) if milli(r).unwrap_or(0) > m => out.push(format!(
                "maximum {k} usage per {kind} is {}, but request is {}",
                max.0, r.0
            )),
            _ => {}
        }
    }
    for (k, ratio) in item.max_limit_request_ratio.iter().flatten() {
        let r = req.get(k).and_then(milli).unwrap_or(0);
        let l = lim.get(k).and_then(milli).unwrap_or(0);
        if r == 0 {
            out.push(format!(
                "{k} max limit to request ratio per {kind} is {}, but no request is specified or request is 0",
                ratio.0
            ));
        } else if l == 0 {
            out.push(format!(
                "{k} max limit to request ratio per {kind} is {}, but no limit is specified or limit is 0",
                ratio.0
            ));
        } else {
            let observed = l as f64 / r as f64;
            if observed * 1000.0 > milli(ratio).unwrap_or(0) as f64 {
                out.push(format!(
                    "{k} max limit to request ratio per {kind} is {}, but provided ratio is {observed:.6}",
                    ratio.0
                ));
            }
        }
    }
}

/// A pod's containers against the Container items, and its totals against the Pod items.
fn check_pod(pod: &Value, ranges: &[LimitRangeItem]) -> Vec<String> {
    let mut out = Vec::new();
    let spec = &pod["spec"];
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten())
        .collect();
    let (mut pod_req, mut pod_lim) = (
        BTreeMap::<String, i64>::new(),
        BTreeMap::<String, i64>::new(),
    );
    for c in &all {
        let req = resources(&c["resources"]["requests"]);
        let lim = resources(&c["resources"]["limits"]);
        for item in ranges.iter().filter(|i| i.type_ == "Container") {
            check("Container", item, &req, &lim, &mut out);
        }
        for (into, list) in [(&mut pod_req, &req), (&mut pod_lim, &lim)] {
            for (k, v) in list {
                *into.entry(k.clone()).or_default() += milli(v).unwrap_or(0);
            }
        }
    }
    let as_list = |m: &BTreeMap<String, i64>| -> Resources {
        m.iter()
            .map(|(k, v)| (k.clone(), strake_quota::format(k, *v)))
            .collect()
    };
    for item in ranges.iter().filter(|i| i.type_ == "Pod") {
        check(
            "Pod",
            item,
            &as_list(&pod_req),
            &as_list(&pod_lim),
            &mut out,
        );
    }
    out
}

/// A claim's storage request against the PersistentVolumeClaim items.
fn check_claim(claim: &Value, ranges: &[LimitRangeItem]) -> Vec<String> {
    let mut out = Vec::new();
    let req = resources(&claim["spec"]["resources"]["requests"]);
    let lim = resources(&claim["spec"]["resources"]["limits"]);
    for item in ranges.iter().filter(|i| i.type_ == "PersistentVolumeClaim") {
        check("PersistentVolumeClaim", item, &req, &lim, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn items(v: Value) -> Vec<LimitRangeItem> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn containers_get_the_defaults_they_leave_out() {
        let ranges = items(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "init"}],
        "containers": [
            {"name": "app"},
            {"name": "own", "resources": {"limits": {"cpu": "2"}}},
        ]}});
        default_pod(&mut pod, &ranges);
        let c = &pod["spec"]["containers"];
        assert_eq!(
            c[0]["resources"]["limits"],
            json!({"cpu": "500m", "memory": "256Mi"})
        );
        assert_eq!(c[0]["resources"]["requests"], json!({"cpu": "100m"}));
        // Its own limit stays, and its request follows it rather than the default.
        assert_eq!(
            c[1]["resources"]["limits"],
            json!({"cpu": "2", "memory": "256Mi"})
        );
        assert_eq!(c[1]["resources"]["requests"], json!({"cpu": "2"}));
        assert_eq!(
            pod["spec"]["initContainers"][0]["resources"]["requests"],
            json!({"cpu": "100m"})
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu request; cpu, memory limit for container init; \
             cpu request; cpu, memory limit for container app; cpu request; memory limit for container own"
        );
    }

    #[test]
    fn bounds_are_refused_in_upstreams_words() {
        let ranges = items(json!([
            {"type": "Container", "min": {"cpu": "100m"}, "max": {"memory": "1Gi"},
             "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "Pod", "max": {"cpu": "3"}},
        ]));
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "1", "memory": "2Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "3"}}},
        ]}});
        assert_eq!(
            check_pod(&pod, &ranges),
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 20.000000",
                "maximum memory usage per Container is 1Gi.  No limit is specified",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000",
                "maximum cpu usage per Pod is 3, but limit is 4",
            ]
        );
        let ok = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
        ]}});
        assert!(check_pod(&ok, &ranges).is_empty());
    }

    #[test]
    fn claims_are_bounded_by_their_request() {
        let ranges = items(json!([{"type": "PersistentVolumeClaim",
            "min": {"storage": "1Gi"}, "max": {"storage": "5Gi"}}]));
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert_eq!(
            check_claim(&claim("10Gi"), &ranges),
            ["maximum storage usage per PersistentVolumeClaim is 5Gi, but request is 10Gi"]
        );
        assert_eq!(
            check_claim(&claim("500Mi"), &ranges),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert!(check_claim(&claim("2Gi"), &ranges).is_empty());
    }
}
