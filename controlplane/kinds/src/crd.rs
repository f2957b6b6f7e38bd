//! CustomResourceDefinitions: validation and defaults of the CRD object itself, and the table
//! entries its served versions become, served by a JSON strategy that prunes unknown fields,
//! applies schema defaults and validates against the structural schema (types, required, enum,
//! bounds, lengths, patterns, items, `x-kubernetes-preserve-unknown-fields`, int-or-string).

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use strake_apimachinery::decode::FieldValidation;
use strake_apimachinery::resource::{ALL_VERBS, ScalePaths};
use strake_apimachinery::validation::{is_dns1123_label, is_dns1123_subdomain};
use strake_apimachinery::{
    ApiError, Column, FieldError, NameRule, ResourceDef, Strategy, Subresource,
};

use crate::typed::human_age;

/// Rules on the CRD object.
pub fn validate_crd(crd: &CustomResourceDefinition) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &crd.spec;
    let expected = format!("{}.{}", spec.names.plural, spec.group);
    if crd.metadata.name.as_deref() != Some(expected.as_str()) {
        errs.push(FieldError::invalid(
            "metadata.name",
            format!(
                "Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group",
                crd.metadata.name.clone().unwrap_or_default()
            ),
        ));
    }
    if !is_dns1123_subdomain(&spec.group) || !spec.group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            format!(
                "Invalid value: {:?}: should be a domain with at least one dot",
                spec.group
            ),
        ));
    }
    if !is_dns1123_label(&spec.names.plural) {
        errs.push(FieldError::invalid(
            "spec.names.plural",
            format!(
                "Invalid value: {:?}: a lowercase RFC 1123 label",
                spec.names.plural
            ),
        ));
    }
    if spec.names.kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind"));
    }
    if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
        errs.push(FieldError::not_supported(
            "spec.scope",
            &spec.scope,
            &["Cluster", "Namespaced"],
        ));
    }
    if spec.versions.is_empty() {
        errs.push(FieldError::required("spec.versions"));
    }
    if spec.versions.iter().filter(|v| v.storage).count() != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    if !spec.versions.iter().any(|v| v.served) {
        errs.push(FieldError::invalid(
            "spec.versions",
            "Invalid value: must have at least one version marked as served",
        ));
    }
    for (i, v) in spec.versions.iter().enumerate() {
        if !is_dns1123_label(&v.name) {
            errs.push(FieldError::invalid(
                format!("spec.versions[{i}].name"),
                format!("Invalid value: {:?}", v.name),
            ));
        }
        match v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        {
            None => errs.push(FieldError::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            ))),
            Some(s) if s.type_.as_deref() != Some("object") => errs.push(FieldError::invalid(
                format!("spec.versions[{i}].schema.openAPIV3Schema.type"),
                "Unsupported value: must be object at the root",
            )),
            Some(s) => {
                if let Ok(schema) = serde_json::to_value(s) {
                    crate::cel::check_rules(
                        &schema,
                        &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        &mut errs,
                    );
                }
            }
        }
    }
    errs
}

pub fn default_crd(crd: &mut CustomResourceDefinition) {
    let names = &mut crd.spec.names;
    if names.singular.as_deref().is_none_or(str::is_empty) {
        names.singular = Some(names.kind.to_ascii_lowercase());
    }
    if names.list_kind.as_deref().is_none_or(str::is_empty) {
        names.list_kind = Some(format!("{}List", names.kind));
    }
    crd.spec.conversion.get_or_insert_with(|| {
        serde_json::from_value(json!({"strategy": "None"})).expect("static conversion")
    });
}

/// The table entries of a CRD's served versions (storage version first, then the rest).
pub fn crd_defs(crd: &CustomResourceDefinition) -> Vec<ResourceDef> {
    let spec = &crd.spec;
    let storage = spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone())
        .unwrap_or_default();
    let mut versions: Vec<_> = spec.versions.iter().filter(|v| v.served).collect();
    versions.sort_by_key(|v| v.name != storage);
    versions
        .into_iter()
        .map(|v| {
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(json!({"type": "object"}));
            let mut subresources = Vec::new();
            let mut scale = None;
            if let Some(sub) = &v.subresources {
                if sub.status.is_some() {
                    subresources.push(Subresource::status(&spec.names.kind));
                }
                if let Some(s) = &sub.scale {
                    subresources.push(Subresource::scale());
                    let ptr = |p: &str| {
                        p.trim_start_matches('.')
                            .split('.')
                            .fold(String::new(), |acc, part| format!("{acc}/{part}"))
                    };
                    scale = Some(ScalePaths {
                        spec_replicas: ptr(&s.spec_replicas_path),
                        status_replicas: ptr(&s.status_replicas_path),
                        selector: s.label_selector_path.as_deref().map(ptr),
                    });
                }
            }
            let printer: Vec<(Column, String)> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| {
                    (
                        Column {
                            name: c.name.clone(),
                            ty: c.type_.clone(),
                            format: c.format.clone().unwrap_or_default(),
                            description: c.description.clone().unwrap_or_default(),
                            priority: c.priority.unwrap_or(0),
                        },
                        c.json_path.clone(),
                    )
                })
                .collect();
            let mut columns = vec![Column::new(
                "Name",
                "string",
                "Name must be unique within a namespace.",
                0,
            )];
            columns.extend(printer.iter().map(|(c, _)| c.clone()));
            let show_age = printer.is_empty();
            if show_age {
                columns.push(Column::new("Age", "date", "", 0));
            }
            ResourceDef {
                group: spec.group.clone(),
                version: v.name.clone(),
                kind: spec.names.kind.clone(),
                list_kind: spec
                    .names
                    .list_kind
                    .clone()
                    .unwrap_or_else(|| format!("{}List", spec.names.kind)),
                plural: spec.names.plural.clone(),
                singular: spec
                    .names
                    .singular
                    .clone()
                    .unwrap_or_else(|| spec.names.kind.to_ascii_lowercase()),
                short_names: spec.names.short_names.clone().unwrap_or_default(),
                categories: spec.names.categories.clone().unwrap_or_default(),
                namespaced: spec.scope == "Namespaced",
                verbs: ALL_VERBS.iter().map(|s| s.to_string()).collect(),
                generation: true,
                subresources,
                scale,
                selectable_fields: v
                    .selectable_fields
                    .iter()
                    .flatten()
                    .map(|f| f.json_path.trim_start_matches('.').to_string())
                    .collect(),
                columns,
                name_rule: NameRule::Subdomain,
                strategy: Arc::new(CustomResource {
                    schema,
                    printer: printer.into_iter().map(|(_, p)| p).collect(),
                    show_age,
                    status: v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                }),
                storage_version: (v.name != storage).then(|| storage.clone()),
                stored_as: None,
                crd: crd.metadata.name.clone(),
                delete_returns_object: true,
            }
        })
        .collect()
}

/// The strategy of a custom resource version: its structural schema.
pub struct CustomResource {
    schema: Value,
    printer: Vec<String>,
    show_age: bool,
    status: bool,
}

/// Removes fields the schema does not know (recording them), and fills schema defaults.
fn prune(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && schema.get("properties").is_none()
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if let Some(props) = props {
                for (k, s) in props {
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                // apiVersion, kind and metadata are the machinery's at the root.
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(&k))
                    .or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) => prune(m.get_mut(&k).expect("key exists"), s, &p, unknown),
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                        unknown.push(p);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, s, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `v` against a structural schema, collecting every violation with its path.
pub fn check(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let at = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    };
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            errs.push(FieldError::invalid(
                at,
                format!(
                    "Invalid value: \"null\": {} must be of type {}",
                    path,
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            errs.push(FieldError::invalid(
                at,
                format!(
                    "Invalid value: {:?}: must be an integer or a string",
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errs.push(FieldError {
                field: at,
                message: format!(
                    "Invalid value: {:?}: {} in body must be of type {t}: {actual:?}",
                    short(v),
                    if path.is_empty() { "body" } else { path }
                ),
                reason: "FieldValueTypeInvalid",
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errs.push(FieldError {
            field: at.clone(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                v,
                list.join(", ")
            ),
            reason: "FieldValueNotSupported",
        });
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
                if x < min || (excl && x == min) {
                    errs.push(FieldError::invalid(at.clone(), format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}")));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMaximum") == Some(&Value::Bool(true));
                if x > max || (excl && x == max) {
                    errs.push(FieldError::invalid(at.clone(), format!("Invalid value: {n}: {path} in body should be less than or equal to {max}")));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as i64;
            if schema
                .get("minLength")
                .and_then(Value::as_i64)
                .is_some_and(|m| len < m)
            {
                errs.push(FieldError::invalid(
                    at.clone(),
                    format!(
                        "Invalid value: {s:?}: {path} in body should be at least {} chars long",
                        schema["minLength"]
                    ),
                ));
            }
            if schema
                .get("maxLength")
                .and_then(Value::as_i64)
                .is_some_and(|m| len > m)
            {
                errs.push(FieldError {
                    field: at.clone(),
                    message: format!(
                        "Too long: may not be more than {} bytes",
                        schema["maxLength"]
                    ),
                    reason: "FieldValueTooLong",
                });
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => errs.push(FieldError::invalid(
                        at.clone(),
                        format!("Invalid value: {s:?}: {path} in body should match '{p}'"),
                    )),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if schema
                .get("minItems")
                .and_then(Value::as_i64)
                .is_some_and(|m| (items.len() as i64) < m)
            {
                errs.push(FieldError::invalid(
                    at.clone(),
                    format!(
                        "Invalid value: {} items: {path} in body should have at least {} items",
                        items.len(),
                        schema["minItems"]
                    ),
                ));
            }
            if schema
                .get("maxItems")
                .and_then(Value::as_i64)
                .is_some_and(|m| (items.len() as i64) > m)
            {
                errs.push(FieldError {
                    field: at.clone(),
                    message: format!(
                        "Too many: {}: must have at most {} items",
                        items.len(),
                        schema["maxItems"]
                    ),
                    reason: "FieldValueTooMany",
                });
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item, s, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(m) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    let p = if path.is_empty() {
                        r.to_string()
                    } else {
                        format!("{path}.{r}")
                    };
                    errs.push(FieldError::required(p));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, item) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(s) = props
                    .and_then(|p| p.get(k))
                    .or(schema.get("additionalProperties").filter(|a| a.is_object()))
                {
                    check(item, s, &p, errs);
                }
            }
        }
        _ => {}
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => type_name(other).to_string(),
    }
}

/// Reads a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`) as a cell.
fn json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for part in path.trim_start_matches('.').split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = match cur.get(name) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(i) = index {
            cur = match cur.get(i) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    cur.clone()
}

impl CustomResource {
    /// The structural schema's checks (metadata is the registry's), then its CEL rules, with
    /// the stored object on an update.
    fn judge(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("metadata");
        }
        check(&body, &self.schema, "", &mut errs);
        crate::cel::evaluate(obj, old, &self.schema, "", &mut errs);
        errs
    }
}

impl Strategy for CustomResource {
    fn decode(
        &self,
        def: &ResourceDef,
        mut obj: Value,
        mode: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!(
                "{} in the request body must be a JSON object",
                def.kind
            )));
        }
        if !obj["metadata"].is_null() && !obj["metadata"].is_object() {
            return Err(ApiError::BadRequest("metadata must be an object".into()));
        }
        let mut unknown = Vec::new();
        prune(&mut obj, &self.schema, "", &mut unknown);
        obj["apiVersion"] = def.api_version().into();
        obj["kind"] = def.kind.clone().into();
        let warnings = mode.judge(
            unknown
                .into_iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect(),
        )?;
        Ok((obj, warnings))
    }

    fn prepare_create(&self, obj: &mut Value) {
        if self.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        self.judge(obj, None)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        self.judge(new, Some(old))
    }

    fn schema(&self) -> Option<Value> {
        Some(self.schema.clone())
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![obj["metadata"]["name"].clone()];
        for p in &self.printer {
            cells.push(json_path(obj, p));
        }
        if self.show_age {
            let created = serde_json::from_value(obj["metadata"]["creationTimestamp"].clone()).ok();
            cells.push(json!(human_age(created.as_ref())));
        }
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
        }})
    }

    #[test]
    fn pruning_defaults_and_every_violation() {
        let mut obj = json!({"apiVersion": "x.io/v1", "kind": "W", "metadata": {"name": "a"}, "spec": {"size": 0, "bogus": 1, "name": "ABCDEFG", "tags": ["a", 1, "c"], "port": true, "extra": {"anything": {"goes": 1}}}});
        let mut unknown = Vec::new();
        prune(&mut obj, &schema(), "", &mut unknown);
        assert_eq!(unknown, ["spec.bogus"]);
        assert_eq!(obj["spec"]["mode"], "fast", "defaults fill missing fields");
        assert_eq!(
            obj["spec"]["extra"]["anything"]["goes"], 1,
            "preserve-unknown keeps fields"
        );
        let mut errs = Vec::new();
        check(&obj, &schema(), "", &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.name",
                "spec.name",
                "spec.port",
                "spec.size",
                "spec.tags",
                "spec.tags[1]"
            ],
            "{errs:?}"
        );
        let mut missing = Vec::new();
        check(
            &json!({"spec": {"mode": "other"}}),
            &schema(),
            "",
            &mut missing,
        );
        let fields: Vec<&str> = missing.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.size", "spec.mode"]);
    }
}
