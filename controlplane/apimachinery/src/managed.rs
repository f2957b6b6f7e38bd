//! Field ownership (`metadata.managedFields`, fieldsV1): which manager set which field. Server-
//! side apply computes its own entries; every other write is tracked here as an `Update` by its
//! manager (the `fieldManager` parameter, or the client's User-Agent), as upstream does: the
//! fields a write changes become its manager's and stop being anyone else's.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::Part;
use crate::patch::{ListStrategy, list_strategy};

/// One owned path: field names and list-element keys, as fieldsV1 spells them.
pub type FieldPath = Vec<String>;

/// The leaf paths an applied configuration sets.
pub fn paths(
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
                            | "generation"
                            | "selfLink"
                            | "deletionTimestamp"
                            | "deletionGracePeriodSeconds"
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

pub fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
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

pub fn from_fields_v1(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
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
pub fn lookup<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
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
pub fn remove(obj: &mut Value, path: &[String]) {
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

pub fn lookup_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
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

pub fn managers(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn owned(entry: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    from_fields_v1(&entry["fieldsV1"], &mut Vec::new(), &mut out);
    out
}

pub fn entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    part: Part,
    fields: &BTreeSet<FieldPath>,
) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    });
    if part == Part::Status {
        e["subresource"] = "status".into();
    }
    e
}

/// Whether a path belongs to the part of the object a write may change: status for the status
/// subresource, everything else otherwise. Without a status subresource, a write changes all.
fn in_part(p: &FieldPath, part: Part, has_status: bool) -> bool {
    !has_status || (p.first().map(String::as_str) == Some("f:status")) == (part == Part::Status)
}

/// Records a non-apply write by `manager` in `new`'s managedFields. `old` is the stored object
/// (None on create). Fields the write changed or added become the manager's `Update` entry and
/// leave every other entry; fields it removed leave every entry; entries left empty go.
///
/// The write's own managedFields are kept when it sets some (a list with one empty entry
/// clears them, as upstream's reset); otherwise the stored ones are carried over.
/// `has_status`: whether the resource has a status subresource, whose fields main writes
/// cannot change.
#[allow(clippy::too_many_arguments)]
pub fn track(
    kind: &str,
    api_version: &str,
    has_status: bool,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    part: Part,
) {
    let given = new["metadata"]["managedFields"].as_array().cloned();
    let mut entries: Vec<Value> = match given {
        Some(list) if list.len() == 1 && list[0].as_object().is_some_and(|m| m.is_empty()) => {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            return;
        }
        Some(list) if !list.is_empty() => list,
        _ => old.map(managers).unwrap_or_default(),
    };
    let mut now = BTreeSet::new();
    paths(new, kind, "", &mut Vec::new(), &mut now);
    now.retain(|p| in_part(p, part, has_status));
    let mut before = BTreeSet::new();
    if let Some(old) = old {
        paths(old, kind, "", &mut Vec::new(), &mut before);
        before.retain(|p| in_part(p, part, has_status));
    }
    let changed: BTreeSet<FieldPath> = now
        .iter()
        .filter(|p| {
            let Some(old) = old else { return true };
            if p.last().map(String::as_str) == Some(".") {
                // A list element's marker changes only when the element is new.
                lookup(old, &p[..p.len() - 1]).is_none()
            } else {
                lookup(old, p) != lookup(new, p)
            }
        })
        .cloned()
        .collect();
    let removed: BTreeSet<FieldPath> = before.difference(&now).cloned().collect();
    if changed.is_empty() && removed.is_empty() && old.is_some() {
        if !entries.is_empty() {
            new["metadata"]["managedFields"] = Value::Array(entries);
        }
        return;
    }
    let same_entry = |e: &Value| {
        e["manager"] == manager
            && e["operation"] == "Update"
            && e["apiVersion"] == api_version
            && (e["subresource"].as_str() == Some("status")) == (part == Part::Status)
    };
    let mut mine: BTreeSet<FieldPath> = entries
        .iter()
        .find(|e| same_entry(e))
        .map(owned)
        .unwrap_or_default();
    entries.retain(|e| !same_entry(e));
    for e in entries.iter_mut() {
        let theirs = owned(e);
        let left: BTreeSet<FieldPath> = theirs
            .iter()
            .filter(|p| !changed.contains(*p) && !removed.contains(*p))
            .cloned()
            .collect();
        if left.len() != theirs.len() {
            e["fieldsV1"] = to_fields_v1(&left);
        }
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
    mine.retain(|p| !removed.contains(p));
    mine.extend(changed);
    // Parents of owned fields are implied, as fieldsV1 nests them.
    if !mine.is_empty() {
        entries.push(entry(manager, "Update", api_version, part, &mine));
    }
    if entries.is_empty() {
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        new["metadata"]["managedFields"] = Value::Array(entries);
    }
}

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

    fn fields_of(obj: &Value, manager: &str) -> Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn updates_take_the_fields_they_change_from_other_managers() {
        let mut created =
            json!({"metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}});
        track(
            "ConfigMap",
            "v1",
            false,
            None,
            &mut created,
            "kubectl-create",
            Part::Main,
        );
        assert_eq!(
            fields_of(&created, "kubectl-create"),
            json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
        );
        assert_eq!(
            created["metadata"]["managedFields"][0]["operation"],
            "Update"
        );

        // Another manager changes y, adds z and removes the label: it owns y and z; the creator
        // keeps x and loses what it no longer has.
        let mut edited = created.clone();
        edited["data"]["y"] = "3".into();
        edited["data"]["z"] = "4".into();
        edited["metadata"].as_object_mut().unwrap().remove("labels");
        edited["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        track(
            "ConfigMap",
            "v1",
            false,
            Some(&created),
            &mut edited,
            "kubectl-edit",
            Part::Main,
        );
        assert_eq!(
            fields_of(&edited, "kubectl-create"),
            json!({"f:data": {"f:x": {}}})
        );
        assert_eq!(
            fields_of(&edited, "kubectl-edit"),
            json!({"f:data": {"f:y": {}, "f:z": {}}})
        );

        // A write that changes nothing changes no entry.
        let mut same = edited.clone();
        track(
            "ConfigMap",
            "v1",
            false,
            Some(&edited),
            &mut same,
            "other",
            Part::Main,
        );
        assert_eq!(
            same["metadata"]["managedFields"],
            edited["metadata"]["managedFields"]
        );

        // Status writes are tracked apart, with their subresource.
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}});
        let old = pod.clone();
        pod["status"] = json!({"phase": "Running"});
        track(
            "Pod",
            "v1",
            true,
            Some(&old),
            &mut pod,
            "strake-agent",
            Part::Status,
        );
        let e = &pod["metadata"]["managedFields"][0];
        assert_eq!(
            (e["subresource"].as_str(), e["manager"].as_str()),
            (Some("status"), Some("strake-agent"))
        );
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:phase": {}}}));

        // A single empty entry clears the field.
        let mut reset = edited.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        track(
            "ConfigMap",
            "v1",
            false,
            Some(&edited),
            &mut reset,
            "x",
            Part::Main,
        );
        assert!(reset["metadata"].get("managedFields").is_none());
    }
}
