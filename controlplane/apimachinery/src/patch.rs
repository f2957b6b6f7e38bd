//! The patch engines: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch, with the list merge keys of the built-in kinds and the `$patch`, `$setElementOrder`,
//! `$retainKeys` and `$deleteFromPrimitiveList` directives. Lists without a merge key are
//! replaced whole, as upstream does for atomic lists.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The patch media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_media_type(ct: &str) -> Result<Self, ApiError> {
        match ct {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::UnsupportedMediaType {
                got: other.to_string(),
                accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
            }),
        }
    }
}

/// How a list at a field path merges: by a key of its elements, as a set of primitives, or
/// replaced whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    MergeKey(&'static str),
    PrimitiveSet,
    Replace,
}

/// The merge strategy of the list at `path` (field names joined by dots, no indices) in `kind`.
pub fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    let last = path.rsplit('.').next().unwrap_or(path);
    let parent = path.rsplit('.').nth(1).unwrap_or("");
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match (parent, last) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => {
            ListStrategy::MergeKey("name")
        }
        _ if in_container && last == "ports" => ListStrategy::MergeKey("containerPort"),
        _ if in_container && last == "env" => ListStrategy::MergeKey("name"),
        _ if in_container && last == "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        _ if in_container && last == "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        _ if in_container && last == "resizePolicy" => ListStrategy::MergeKey("resourceName"),
        ("spec", "ports") if kind == "Service" => ListStrategy::MergeKey("port"),
        ("spec", "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims") => {
            ListStrategy::MergeKey("name")
        }
        ("spec", "hostAliases") => ListStrategy::MergeKey("ip"),
        ("spec", "topologySpreadConstraints") => ListStrategy::MergeKey("topologyKey"),
        ("spec", "taints") if kind == "Node" => ListStrategy::MergeKey("key"),
        ("metadata", "ownerReferences") => ListStrategy::MergeKey("uid"),
        ("metadata", "finalizers") => ListStrategy::PrimitiveSet,
        ("status", "conditions") => ListStrategy::MergeKey("type"),
        ("status", "addresses") if kind == "Node" => ListStrategy::MergeKey("type"),
        ("status", "images") if kind == "Node" => ListStrategy::Replace,
        _ => ListStrategy::Replace,
    }
}

/// Applies a patch of `ty` (not Apply) to `target`.
pub fn apply(target: &mut Value, kind: &str, ty: PatchType, patch: &[u8]) -> Result<(), ApiError> {
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is invalid: {e}")))?;
            json_patch::patch(target, &p).map_err(|e| ApiError::Invalid {
                kind: kind.into(),
                group: String::new(),
                name: target["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                causes: vec![crate::FieldError::invalid(
                    "(patch)",
                    format!("the JSON patch does not apply: {e}"),
                )],
            })
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| {
                ApiError::BadRequest(format!("the merge patch is not valid JSON: {e}"))
            })?;
            if !p.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(target, &p);
            Ok(())
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| {
                ApiError::BadRequest(format!("the strategic merge patch is not valid JSON: {e}"))
            })?;
            let Value::Object(p) = p else {
                return Err(ApiError::BadRequest(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            };
            strategic_merge(target, &p, kind, "")
        }
        PatchType::Apply => Err(ApiError::Internal(
            "apply patches go through server-side apply".into(),
        )),
    }
}

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Merges a strategic merge patch map into `target` (which becomes a map if it is not one).
pub fn strategic_merge(
    target: &mut Value,
    patch: &Map<String, Value>,
    kind: &str,
    path: &str,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown $patch directive {other:?} at {}",
                if path.is_empty() { "(root)" } else { path }
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = match patch.get("$retainKeys") {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
        ),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "$retainKeys at {path} must be a list of strings"
            )));
        }
        None => None,
    };
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(drop) = pv else {
                return Err(ApiError::BadRequest(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !drop.contains(v));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::BadRequest(format!(
                "unknown strategic merge patch directive {k:?}"
            )));
        }
        let m = target.as_object_mut().expect("target is a map");
        let p = child(path, k);
        match pv {
            Value::Null => {
                m.remove(k);
            }
            Value::Object(pm) => {
                let cur = m.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(cur, pm, kind, &p)?;
                if cur.is_null() {
                    m.remove(k);
                }
            }
            Value::Array(items) => {
                let cur = m.remove(k).unwrap_or(Value::Null);
                let merged = merge_list(cur, items, list_strategy(kind, &p), kind, &p)?;
                m.insert(k.clone(), merged);
            }
            other => {
                m.insert(k.clone(), other.clone());
            }
        }
    }
    // Order directives run after the merge, over the merged lists.
    for (k, order) in patch {
        let Some(field) = k.strip_prefix("$setElementOrder/") else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(ApiError::BadRequest(format!("{k} must be a list")));
        };
        let strategy = list_strategy(kind, &child(path, field));
        if let Some(Value::Array(list)) = target.as_object_mut().and_then(|m| m.get_mut(field)) {
            reorder(list, order, strategy);
        }
    }
    if let Some(keep) = retain
        && let Some(m) = target.as_object_mut()
    {
        m.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    cur: Value,
    patch: &[Value],
    strategy: ListStrategy,
    kind: &str,
    path: &str,
) -> Result<Value, ApiError> {
    // A `{"$patch": "replace"}` element replaces the whole list with the other elements.
    if patch
        .iter()
        .any(|v| key_of(v, "$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(
            patch
                .iter()
                .filter(|v| key_of(v, "$patch").is_none())
                .cloned()
                .collect(),
        ));
    }
    let mut list = match cur {
        Value::Array(l) => l,
        _ => Vec::new(),
    };
    match strategy {
        ListStrategy::Replace => Ok(Value::Array(patch.to_vec())),
        ListStrategy::PrimitiveSet => {
            for v in patch {
                if !list.contains(v) {
                    list.push(v.clone());
                }
            }
            Ok(Value::Array(list))
        }
        ListStrategy::MergeKey(key) => {
            for item in patch {
                let Value::Object(pm) = item else {
                    return Err(ApiError::BadRequest(format!(
                        "the elements of {path} must be objects with a {key:?} field"
                    )));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(ApiError::BadRequest(format!(
                        "an element of {path} has no merge key {key:?}"
                    )));
                };
                let pos = list.iter().position(|e| key_of(e, key) == Some(kv));
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    list.retain(|e| key_of(e, key) != Some(kv));
                    continue;
                }
                match pos {
                    Some(i) => strategic_merge(&mut list[i], pm, kind, path)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_merge(&mut fresh, pm, kind, path)?;
                        list.push(fresh);
                    }
                }
            }
            Ok(Value::Array(list))
        }
    }
}

/// Orders `list` as `order` lists its elements (by merge key or value); the rest keep their
/// relative order after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let id = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeKey(k) => key_of(v, k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let rank = |v: &Value| {
        let key = id(v);
        order.iter().position(|o| match strategy {
            ListStrategy::MergeKey(k) => key.as_ref() == key_of(o, k),
            _ => key.as_ref() == Some(o),
        })
    };
    let mut ranked: Vec<(usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (rank(&v).unwrap_or(order.len() + i), v))
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, v)| v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value, kind: &str) -> Value {
        let mut t = target;
        apply(
            &mut t,
            kind,
            PatchType::Strategic,
            &serde_json::to_vec(&patch).unwrap(),
        )
        .unwrap();
        t
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let out = smp(
            live,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}]}]}}}}),
            "Deployment",
        );
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2, "b is kept");
        assert_eq!(c[0]["image"], "a:2");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}])
        );
    }

    #[test]
    fn directives() {
        let live = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}, "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "j"}], "tolerations": [{"key": "t"}]}});
        let out = smp(
            live.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
            "Pod",
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "j"}])
        );
        let out = smp(live.clone(), json!({"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "k"}]}).as_object().map(|m| json!({"spec": m})).unwrap(), "Pod");
        assert_eq!(out["spec"]["containers"][0]["name"], "b");
        assert_eq!(out["spec"]["containers"][1]["image"], "k");
        let out = smp(
            live.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}}),
            "Pod",
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        let out = smp(
            live.clone(),
            json!({"metadata": {"labels": {"$patch": "replace", "z": "3"}}}),
            "Pod",
        );
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
        let out = smp(
            live.clone(),
            json!({"spec": {"$retainKeys": ["containers"], "containers": [{"name": "a"}]}}),
            "Pod",
        );
        assert!(out["spec"].get("tolerations").is_none());
        let out = smp(
            live.clone(),
            json!({"spec": {"tolerations": [{"key": "u"}]}}),
            "Pod",
        );
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "u"}]),
            "lists without a merge key are replaced"
        );
        let out = smp(live, json!({"metadata": {"labels": {"x": null}}}), "Pod");
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let out = smp(
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
            "Service",
        );
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_patches_are_refused() {
        let mut t = json!({});
        assert!(apply(&mut t, "Pod", PatchType::Strategic, b"[1]").is_err());
        assert!(apply(&mut t, "Pod", PatchType::Strategic, br#"{"$bogus": 1}"#).is_err());
        assert!(apply(&mut t, "Pod", PatchType::Merge, b"not json").is_err());
        assert!(PatchType::from_media_type("text/plain").is_err());
    }
}
