//! ResourceQuota admission, the last step of every namespaced write: what the object adds to
//! each quota of its namespace is checked against `status.hard`, and the quotas' new
//! `status.used` is written **in the same store transaction as the object** (each quota
//! guarded by its revision). Two concurrent creates that both read `used = hard - 1` cannot
//! both commit: the second one's guard fails, it reads the quotas again and is refused. The
//! resource quota controller later recounts `used` from the objects (releasing deletes).
//!
//! As upstream, a quota takes part once its controller has written `status.hard`; before
//! that it limits nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use strake_quota::{self as quota, Amounts};

use crate::error::ApiError;
use crate::registry::Registry;
use crate::resource::ResourceDef;
use crate::storage::Guard;

/// What an object uses of the resources a quota can name (empty for a pod that is finished).
fn usage(def: &ResourceDef, obj: &Value) -> Result<Amounts, ApiError> {
    fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<T, ApiError> {
        serde_json::from_value(obj.clone())
            .map_err(|e| ApiError::Internal(format!("quota: the object does not decode: {e}")))
    }
    let mut u = match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => {
            let pod: Pod = typed(obj)?;
            if !quota::pod_is_charged(&pod) {
                return Ok(Amounts::new());
            }
            quota::pod_usage(&pod)
        }
        ("", "services") => quota::service_usage(&typed::<Service>(obj)?),
        ("", "persistentvolumeclaims") => quota::pvc_usage(&typed::<PersistentVolumeClaim>(obj)?),
        _ => Amounts::new(),
    };
    u.extend(quota::object_counts(&def.group, &def.plural));
    Ok(u)
}

/// `a=1,b=2`, names sorted, as upstream prints resource lists in quota errors.
fn pretty(list: &BTreeMap<&str, Quantity>) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={}", v.0))
        .collect::<Vec<_>>()
        .join(",")
}

impl Registry {
    /// The quota writes that go with writing `obj` (replacing `old`): each quota of the
    /// namespace the object is charged to, with `status.used` raised by what the write adds,
    /// guarded by the quota's revision. A write that would pass a quota's hard limit, or that
    /// a quota cannot yet account for, is refused as upstream refuses it.
    pub(crate) async fn quota_charges(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Vec<Guard>, ApiError> {
        let Some(ns) = ns.filter(|_| def.namespaced) else {
            return Ok(Vec::new());
        };
        // An update changes what an object uses only for the kinds with more than a count.
        let measured = def.group.is_empty()
            && matches!(
                def.plural.as_str(),
                "pods" | "services" | "persistentvolumeclaims"
            );
        if old.is_some() && !measured {
            return Ok(Vec::new());
        }
        // What a quota counts of an object is in its spec, and for a pod also in its phase,
        // node and deletion: most updates (status reports) change none of it, and are not
        // decoded to find that out.
        if let Some(old) = old {
            let same = |a: &Value, b: &Value| {
                a["spec"] == b["spec"]
                    && a["status"]["phase"] == b["status"]["phase"]
                    && a["metadata"]["deletionTimestamp"] == b["metadata"]["deletionTimestamp"]
            };
            if same(obj, old) {
                return Ok(Vec::new());
            }
        }
        let mut delta = usage(def, obj)?;
        if let Some(old) = old {
            let before = usage(def, old)?;
            for (k, v) in &mut delta {
                *v -= before.get(k).copied().unwrap_or(0);
            }
        }
        // Only what grows is checked; what shrinks is released by the controller's recount.
        delta.retain(|_, v| *v > 0);
        if delta.is_empty() {
            return Ok(Vec::new());
        }
        let table = self.table().snapshot();
        let Some(qdef) = table.lookup("", "v1", "resourcequotas") else {
            return Ok(Vec::new());
        };
        let page = self
            .store()
            .list(qdef.key_prefix(Some(ns)).as_bytes(), None, 0, 0)
            .await?;
        if page.items.is_empty() {
            return Ok(Vec::new());
        }
        let pod: Option<Pod> = (def.group.is_empty() && def.plural == "pods")
            .then(|| serde_json::from_value(obj.clone()))
            .transpose()
            .map_err(|e| ApiError::Internal(format!("quota: the pod does not decode: {e}")))?;
        let forbidden = |why: String| {
            ApiError::Forbidden(format!(
                "{} \"{name}\" is forbidden: {why}",
                def.group_resource()
            ))
        };
        let mut guards = Vec::new();
        for stored in page.items {
            let unreadable = |e: serde_json::Error| {
                ApiError::Internal(format!(
                    "stored quota {} is unreadable: {e}",
                    String::from_utf8_lossy(&stored.key)
                ))
            };
            let mut raw: Value = serde_json::from_slice(&stored.value).map_err(unreadable)?;
            let mut q: ResourceQuota = serde_json::from_value(raw.clone()).map_err(unreadable)?;
            let qname = q.metadata.name.clone().unwrap_or_default();
            let spec = q.spec.clone().unwrap_or_default();
            let selected = match &pod {
                Some(p) => quota::selects_pod(&spec, p),
                None => !quota::is_scoped(&spec),
            };
            let status = q.status.get_or_insert_with(Default::default);
            let hard = status.hard.clone().unwrap_or_default();
            let restricted: Vec<&String> = hard
                .keys()
                .filter(|r| quota::matches(&def.group, &def.plural, r))
                .collect();
            if !selected || restricted.is_empty() {
                continue;
            }
            if let Some(p) = &pod
                && let Some(missing) = quota::missing_constraints(p, &hard)
            {
                return Err(forbidden(format!("failed quota: {qname}: {missing}")));
            }
            let used = status.used.get_or_insert_with(Default::default);
            let unknown: Vec<&str> = restricted
                .iter()
                .filter(|r| !used.contains_key(r.as_str()))
                .map(|r| r.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(forbidden(format!(
                    "status unknown for quota: {qname}, resources: {}",
                    unknown.join(",")
                )));
            }
            let mut exceeded = Vec::new();
            let mut charged = false;
            for r in &restricted {
                let Some(&add) = delta.get(r.as_str()) else {
                    continue;
                };
                let now = used.get(r.as_str()).and_then(quota::parse).unwrap_or(0);
                let limit = hard.get(r.as_str()).and_then(quota::parse).unwrap_or(0);
                let after = now.saturating_add(add);
                if after > limit {
                    exceeded.push((r.as_str(), add, now, limit));
                }
                used.insert((*r).clone(), quota::format(r, after));
                charged = true;
            }
            if !exceeded.is_empty() {
                let list = |f: fn(&(&str, i64, i64, i64)) -> i64| {
                    pretty(
                        &exceeded
                            .iter()
                            .map(|e| (e.0, quota::format(e.0, f(e))))
                            .collect(),
                    )
                };
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    list(|e| e.1),
                    list(|e| e.2),
                    list(|e| e.3),
                )));
            }
            if charged {
                // The stored quota as it is, with only its used amounts raised.
                raw["status"]["used"] = serde_json::to_value(&*used)
                    .map_err(|e| ApiError::Internal(format!("quota: {e}")))?;
                guards.push(Guard {
                    key: stored.key,
                    value: serde_json::to_vec(&raw)
                        .map_err(|e| ApiError::Internal(format!("quota: {e}")))?,
                    expected: stored.revision,
                });
            }
        }
        Ok(guards)
    }
}
