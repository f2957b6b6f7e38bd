//! Server-side apply (`application/apply-patch+yaml`): the applied configuration's fields are
//! owned by its field manager in `managedFields` (fieldsV1); applying a field another manager
//! owns with a different value is a 409 naming the managers unless `force=true`; fields the
//! manager applied before and dropped now are removed; the rest merges as a strategic patch.
//! Non-apply writes do not yet record their own managers.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};
use strake_apimachinery::decode::{FieldValidation, parse_yaml};
use strake_apimachinery::patch::{ListStrategy, list_strategy, strategic_merge};
use strake_apimachinery::{ApiError, Part, ResourceDef, WriteOptions};

use crate::AppState;

/// One owned path: field names and list-element keys, as fieldsV1 spells them.
type FieldPath = Vec<String>;

/// The leaf paths an applied configuration sets.
fn paths(
    v: &Value,
    kind: &str,
    dotted: &str,
    prefix: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if dotted.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if dotted == "metadata"
                    && matches!(
                        k.as_str(),
                        "name"
                            | "namespace"
                            | "resourceVersion"
                            | "managedFields"
                            | "uid"
                            | "creationTimestamp"
                    )
                {
                    continue;
                }
                let d = if dotted.is_empty() {
                    k.clone()
                } else {
                    format!("{dotted}.{k}")
                };
                prefix.push(format!("f:{k}"));
                match child {
                    Value::Array(items) => match list_strategy(kind, &d) {
                        ListStrategy::MergeKey(key)
                            if items.iter().all(|i| i.get(key).is_some()) =>
                        {
                            for item in items {
                                prefix.push(format!("k:{}", json!({key: item[key]})));
                                let mut sub = prefix.clone();
                                sub.push(".".into());
                                out.insert(sub);
                                paths(item, kind, &d, prefix, out);
                                prefix.pop();
                            }
                        }
                        ListStrategy::PrimitiveSet => {
                            for item in items {
                                let mut sub = prefix.clone();
                                sub.push(format!("v:{item}"));
                                out.insert(sub);
                            }
                        }
                        _ => {
                            out.insert(prefix.clone());
                        }
                    },
                    _ => paths(child, kind, &d, prefix, out),
                }
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for seg in p {
            cur = cur
                .entry(seg.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, child) in m {
        prefix.push(k.clone());
        from_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

/// The value at a field path in an object (list elements found by their key).
fn lookup<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        if seg == "." {
            return Some(cur);
        }
        if let Some(f) = seg.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))?;
        } else if let Some(v) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            return cur.as_array()?.iter().find(|e| **e == want);
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the field at `path` from `obj`.
fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if last == "." {
        // A list element the manager applied and dropped.
        if let (Some((elem, parents)), true) = (parents.split_last(), true)
            && let Some(k) = elem.strip_prefix("k:")
            && let Ok(key) = serde_json::from_str::<Map<String, Value>>(k)
            && let Some(Value::Array(list)) = lookup_mut(obj, parents)
        {
            list.retain(|e| !key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)));
        }
        return;
    }
    match lookup_mut(obj, parents) {
        Some(Value::Object(m)) => {
            if let Some(f) = last.strip_prefix("f:") {
                m.remove(f);
            }
        }
        Some(Value::Array(list)) => {
            if let Some(v) = last.strip_prefix("v:")
                && let Ok(want) = serde_json::from_str::<Value>(v)
            {
                list.retain(|e| *e != want);
            }
        }
        _ => {}
    }
}

fn lookup_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            cur = cur.get_mut(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array_mut()?
                .iter_mut()
                .find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))?;
        } else {
            return None;
        }
    }
    Some(cur)
}

fn managers(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn owned(entry: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    from_fields_v1(&entry["fieldsV1"], &mut Vec::new(), &mut out);
    out
}

fn entry(manager: &str, api_version: &str, part: Part, fields: &BTreeSet<FieldPath>) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    });
    if part == Part::Status {
        e["subresource"] = "status".into();
    }
    e
}

/// Serves an apply patch. Returns the object, warnings, and whether it was created.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    app: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    bytes: &[u8],
    q: &Query,
    part: Part,
    mode: FieldValidation,
    opts: &WriteOptions,
) -> Result<(Value, Vec<String>, bool), ApiError> {
    let manager = q.get("fieldManager").filter(|m| !m.is_empty()).cloned().ok_or_else(|| {
        ApiError::BadRequest("PATCH with an apply patch requires a fieldManager parameter (it names the owner of the applied fields)".into())
    })?;
    let force = q.get("force").is_some_and(|f| f == "true");
    let applied = parse_yaml(bytes)?;
    let Value::Object(applied_map) = &applied else {
        return Err(ApiError::BadRequest(
            "an apply patch must be an object".into(),
        ));
    };
    for (field, want) in [
        ("apiVersion", def.api_version()),
        ("kind", def.kind.clone()),
    ] {
        if applied_map.get(field).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "an apply patch must set {field} to {want:?}"
            )));
        }
    }
    if applied["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::BadRequest(format!(
            "the name in the apply patch ({}) does not match the name on the URL ({name})",
            applied["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    let mut fields = BTreeSet::new();
    paths(&applied, &def.kind, "", &mut Vec::new(), &mut fields);
    let api_version = def.api_version();
    let mut warnings = Vec::new();
    match app.registry.get(def, ns, name).await {
        Err(ApiError::NotFound { .. }) if part == Part::Main => {
            let mut obj = applied.clone();
            obj["metadata"]["name"] = name.into();
            obj["metadata"]["managedFields"] =
                json!([entry(&manager, &api_version, part, &fields)]);
            let (obj, w) = def.strategy.decode(def, obj, mode)?;
            let created = app.registry.create(def, ns, obj, opts).await?;
            Ok((created, w, true))
        }
        Err(e) => Err(e),
        Ok(_) => {
            let obj = app
                .registry
                .update_with(def, ns, name, part, opts, |live| {
                    let mut others: Vec<Value> = Vec::new();
                    let mut mine_before = BTreeSet::new();
                    for m in managers(&live) {
                        let same = m["manager"] == manager.as_str()
                            && m["operation"] == "Apply"
                            && (m["subresource"].as_str() == Some("status"))
                                == (part == Part::Status);
                        if same {
                            mine_before = owned(&m);
                        } else {
                            others.push(m);
                        }
                    }
                    // Conflicts: another manager owns a field we set to a different value.
                    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for m in &others {
                        let theirs = owned(m);
                        // A list element's own marker is presence, not a value to compare.
                        for p in fields
                            .intersection(&theirs)
                            .filter(|p| p.last().map(String::as_str) != Some("."))
                        {
                            if lookup(&live, p) != lookup(&applied, p) {
                                let who = m["manager"].as_str().unwrap_or("unknown").to_string();
                                conflicts.entry(who).or_default().push(
                                    p.iter()
                                        .map(|s| s.trim_start_matches("f:").to_string())
                                        .collect::<Vec<_>>()
                                        .join("."),
                                );
                            }
                        }
                    }
                    if !conflicts.is_empty() && !force {
                        let list: Vec<String> = conflicts
                            .iter()
                            .flat_map(|(m, ps)| {
                                ps.iter().map(move |p| format!("conflict with {m:?}: .{p}"))
                            })
                            .collect();
                        return Err(ApiError::Conflict {
                            resource: def.group_resource(),
                            name: name.into(),
                            message: format!(
                                "Apply failed with {} conflict{}: {}",
                                list.len(),
                                if list.len() == 1 { "" } else { "s" },
                                list.join(", ")
                            ),
                        });
                    }
                    let mut obj = live.clone();
                    // Fields this manager applied before, dropped now, and nobody else owns.
                    let others_own: BTreeSet<FieldPath> = others.iter().flat_map(owned).collect();
                    for p in mine_before.difference(&fields) {
                        if !others_own.contains(p) {
                            remove(&mut obj, p);
                        }
                    }
                    let mut patch = applied_map.clone();
                    patch.remove("apiVersion");
                    patch.remove("kind");
                    strategic_merge(&mut obj, &patch, &def.kind, "")?;
                    // Forced fields change owner.
                    for m in others.iter_mut() {
                        let theirs: BTreeSet<FieldPath> =
                            owned(m).difference(&fields).cloned().collect();
                        m["fieldsV1"] = to_fields_v1(&theirs);
                    }
                    others.retain(|m| m["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
                    others.push(entry(&manager, &api_version, part, &fields));
                    obj["metadata"]["managedFields"] = Value::Array(others);
                    let (obj, w) = def.strategy.decode(def, obj, mode)?;
                    warnings = w;
                    Ok(obj)
                })
                .await?;
            Ok((obj, warnings, false))
        }
    }
}

/// The query parameters, as the dispatcher parsed them.
pub type Query = std::collections::HashMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips_and_keys_list_elements() {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "x"}}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let mut set = BTreeSet::new();
        paths(&applied, "Deployment", "", &mut Vec::new(), &mut set);
        let v1 = to_fields_v1(&set);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"]
                .is_object(),
            "{v1}"
        );
        assert!(v1["f:metadata"]["f:labels"]["f:app"].is_object());
        let mut back = BTreeSet::new();
        from_fields_v1(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
        let image = set
            .iter()
            .find(|p| p.last().map(String::as_str) == Some("f:image"))
            .unwrap();
        assert_eq!(lookup(&applied, image), Some(&json!("i")));
        let mut obj = applied.clone();
        remove(&mut obj, image);
        assert!(
            obj["spec"]["template"]["spec"]["containers"][0]
                .get("image")
                .is_none()
        );
    }
}
