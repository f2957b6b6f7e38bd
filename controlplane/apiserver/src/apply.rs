//! Server-side apply (`application/apply-patch+yaml`): the applied configuration's fields are
//! owned by its field manager in `managedFields` (fieldsV1); applying a field another manager
//! owns with a different value is a 409 naming the managers unless `force=true`; fields the
//! manager applied before and dropped now are removed; the rest merges as a strategic patch.
//! Other writes record their managers through `strake_apimachinery::managed::track`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use strake_apimachinery::decode::{FieldValidation, parse_yaml};
use strake_apimachinery::managed::{
    FieldPath, entry, lookup, managers, owned, paths, remove, to_fields_v1,
};
use strake_apimachinery::patch::strategic_merge;
use strake_apimachinery::{ApiError, Part, ResourceDef, WriteOptions};

use crate::AppState;

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
                json!([entry(&manager, "Apply", &api_version, part, &fields)]);
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
                    // Per other manager, the fields in conflict: forced, they change owner. Fields
                    // set to the value another manager set are shared by both, as upstream.
                    let mut taken: Vec<BTreeSet<FieldPath>> = vec![BTreeSet::new(); others.len()];
                    for (i, m) in others.iter().enumerate() {
                        let theirs = owned(m);
                        // A list element's own marker is presence, not a value to compare.
                        for p in fields
                            .intersection(&theirs)
                            .filter(|p| p.last().map(String::as_str) != Some("."))
                        {
                            if lookup(&live, p) != lookup(&applied, p) {
                                taken[i].insert(p.clone());
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
                    for (m, lost) in others.iter_mut().zip(&taken) {
                        if !lost.is_empty() {
                            let theirs: BTreeSet<FieldPath> =
                                owned(m).difference(lost).cloned().collect();
                            m["fieldsV1"] = to_fields_v1(&theirs);
                        }
                    }
                    others.retain(|m| m["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
                    others.push(entry(&manager, "Apply", &api_version, part, &fields));
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
