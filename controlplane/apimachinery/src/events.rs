//! Events as components record them: one core/v1 Event per (object, type, reason, message,
//! component), whose count and lastTimestamp grow when it happens again (as client-go's event
//! recorder aggregates), and a sweep that deletes events not seen for their time to live (1 h
//! by default, as kube-apiserver's event TTL).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use crate::resource::Part;

/// How long an event lives after it was last seen.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A stable name for the (object, type, reason, message, component) key, as `<object>.<hash>`.
fn event_name(
    object: &Value,
    ty: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        object["metadata"]["uid"].as_str(),
        ty.as_str(),
        reason,
        message,
        component,
    )
        .hash(&mut h);
    let base = object["metadata"]["name"].as_str().unwrap_or("object");
    let base: String = base.chars().take(200).collect();
    format!("{base}.{:016x}", h.finish())
}

/// Records an event about `object` (any stored object, with apiVersion, kind and metadata).
pub async fn record(
    reg: &Registry,
    object: &Value,
    ty: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), ApiError> {
    let table = reg.table().snapshot();
    let Some(def) = table.lookup("", "v1", "events").cloned() else {
        return Ok(());
    };
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = event_name(object, ty, reason, message, component);
    let stamp = now();
    let fresh = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": object["apiVersion"], "kind": object["kind"], "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"], "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        },
        "type": ty.as_str(), "reason": reason, "message": message,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    });
    let (fresh, _) = def.strategy.decode(&def, fresh, Default::default())?;
    match reg
        .create(&def, Some(&ns), fresh, &WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(ApiError::AlreadyExists { .. }) => reg
            .update_with(
                &def,
                Some(&ns),
                &name,
                Part::Main,
                &WriteOptions::default(),
                |mut e| {
                    e["count"] = (e["count"].as_i64().unwrap_or(1) + 1).into();
                    e["lastTimestamp"] = now().into();
                    Ok(e)
                },
            )
            .await
            .map(|_| ()),
        // Events never fail the action they describe: a namespace being deleted refuses them.
        Err(ApiError::NotFound { .. } | ApiError::Forbidden(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// When an event was last seen: lastTimestamp, eventTime, or its creation.
fn last_seen(e: &Value) -> Option<Timestamp> {
    ["lastTimestamp", "eventTime", "series.lastObservedTime"]
        .iter()
        .find_map(|f| {
            let v = f.split('.').try_fold(e, |cur, part| cur.get(part))?;
            v.as_str()?.parse::<Timestamp>().ok()
        })
        .or_else(|| e["metadata"]["creationTimestamp"].as_str()?.parse().ok())
}

/// Deletes core and events.k8s.io events last seen more than `ttl` ago; returns how many.
pub async fn sweep(reg: &Registry, ttl: Duration) -> Result<usize, ApiError> {
    let table = reg.table().snapshot();
    let cutoff =
        Timestamp::now() - SignedDuration::try_from(ttl).unwrap_or(SignedDuration::from_secs(3600));
    let mut removed = 0;
    for (group, version) in [("", "v1"), ("events.k8s.io", "v1")] {
        let Some(def) = table.lookup(group, version, "events").cloned() else {
            continue;
        };
        for e in reg.list(&def, None, &ListOptions::default()).await?.items {
            if last_seen(&e).is_some_and(|t| t < cutoff) {
                let ns = e["metadata"]["namespace"].as_str();
                let name = e["metadata"]["name"].as_str().unwrap_or_default();
                match reg.delete(&def, ns, name, &DeleteOptions::default()).await {
                    Ok(_) => removed += 1,
                    Err(ApiError::NotFound { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    Ok(removed)
}
