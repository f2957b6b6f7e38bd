//! OpenAPI v3, one document per group-version, generated from the resource table (never
//! copied from upstream): paths and operations of every served resource — PATCH, POST and PUT
//! carry `fieldValidation`, so kubectl validates server-side — and component schemas: for
//! built-in kinds generated from their k8s-openapi types (so `kubectl explain` works), for CRDs
//! their own structural schema.

use serde_json::{Map, Value, json};
use strake_apimachinery::ResourceDef;
use strake_apimachinery::resource::Entries;

fn param(name: &str, location: &str, required: bool, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

/// The component schema name of a kind, as upstream builds it (`io.k8s.api.apps.v1.Deployment`).
pub fn schema_name(d: &ResourceDef) -> String {
    if d.crd.is_some() {
        let reversed: Vec<&str> = d.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), d.version, d.kind);
    }
    let group = match d.group.as_str() {
        "" => "core".to_string(),
        "apiextensions.k8s.io" => {
            return format!(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}",
                d.version, d.kind
            );
        }
        g => g
            .trim_end_matches(".k8s.io")
            .replace('.', "_")
            .replace("rbac_authorization", "rbac"),
    };
    format!("io.k8s.api.{group}.{}.{}", d.version, d.kind)
}

fn gvk(d: &ResourceDef) -> Value {
    json!({"group": d.group, "version": d.version, "kind": d.kind})
}

fn operation(d: &ResourceDef, id: &str, action: &str, params: Vec<Value>, body: bool) -> Value {
    let schema = json!({"$ref": format!("#/components/schemas/{}", schema_name(d))});
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(d),
    });
    if body {
        op["requestBody"] = json!({"content": {"*/*": {"schema": schema}}, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "query",
            false,
            "When present, indicates that modifications should not be persisted.",
        ),
        param(
            "fieldManager",
            "query",
            false,
            "A name associated with the actor or entity that is making these changes.",
        ),
        param(
            "fieldValidation",
            "query",
            false,
            "How the server handles unknown or duplicate fields: Ignore, Warn or Strict.",
        ),
    ]
}

fn paths_for(d: &ResourceDef, paths: &mut Map<String, Value>) {
    let base = if d.group.is_empty() {
        format!("/api/{}", d.version)
    } else {
        format!("/apis/{}/{}", d.group, d.version)
    };
    let (collection, item) = if d.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", d.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural),
        )
    } else {
        (
            format!("{base}/{}", d.plural),
            format!("{base}/{}/{{name}}", d.plural),
        )
    };
    let scope = if d.namespaced { "Namespaced" } else { "" };
    let kind = d.kind.as_str();
    let scoped = |mut params: Vec<Value>, with_name: bool| {
        if with_name {
            params.insert(
                0,
                param("name", "path", true, &format!("name of the {kind}")),
            );
        }
        if d.namespaced {
            params.insert(
                0,
                param("namespace", "path", true, "object name and auth scope"),
            );
        }
        params
    };
    if d.verbs == ["create"] {
        paths.insert(collection, json!({"post": operation(d, &format!("create{scope}{kind}"), "post", scoped(write_params(), false), true)}));
        return;
    }
    let list_params = scoped(
        vec![
            param("labelSelector", "query", false, ""),
            param("fieldSelector", "query", false, ""),
            param("watch", "query", false, ""),
            param("limit", "query", false, ""),
            param("continue", "query", false, ""),
        ],
        false,
    );
    let read_params = scoped(vec![], true);
    let mut patch_params = scoped(write_params(), true);
    patch_params.push(param(
        "force",
        "query",
        false,
        "Force is going to \"force\" Apply requests.",
    ));
    let replace_params = scoped(write_params(), true);
    let delete_params = scoped(
        vec![
            param("gracePeriodSeconds", "query", false, ""),
            param("propagationPolicy", "query", false, ""),
            param("dryRun", "query", false, ""),
        ],
        true,
    );
    paths.insert(
        collection,
        json!({
            "get": operation(d, &format!("list{scope}{kind}"), "list", list_params, false),
            "post": operation(d, &format!("create{scope}{kind}"), "post", scoped(write_params(), false), true),
            "delete": operation(d, &format!("deletecollection{scope}{kind}"), "deletecollection", scoped(vec![], false), false),
        }),
    );
    paths.insert(
        item.clone(),
        json!({
            "get": operation(d, &format!("read{scope}{kind}"), "get", read_params.clone(), false),
            "put": operation(d, &format!("replace{scope}{kind}"), "put", replace_params.clone(), true),
            "patch": operation(d, &format!("patch{scope}{kind}"), "patch", patch_params.clone(), true),
            "delete": operation(d, &format!("delete{scope}{kind}"), "delete", delete_params, false),
        }),
    );
    for s in &d.subresources {
        if !matches!(s.name.as_str(), "status" | "scale") {
            continue;
        }
        let suffix = if s.name == "status" {
            "Status"
        } else {
            "Scale"
        };
        paths.insert(
            format!("{item}/{}", s.name),
            json!({
                "get": operation(d, &format!("read{scope}{kind}{suffix}"), "get", read_params.clone(), false),
                "put": operation(d, &format!("replace{scope}{kind}{suffix}"), "put", replace_params.clone(), true),
                "patch": operation(d, &format!("patch{scope}{kind}{suffix}"), "patch", patch_params.clone(), true),
            }),
        );
    }
}

/// A resource's component schemas: its root schema's name and every schema by name.
pub type Definitions = (String, Map<String, Value>);

/// The document of one group-version, or `None` if nothing is served there.
pub fn document(
    entries: &Entries,
    group: &str,
    version: &str,
    definitions: &dyn Fn(&ResourceDef) -> Option<Definitions>,
) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for d in entries.in_group_version(group, version) {
        paths_for(d, &mut paths);
        let (root, defs) = definitions(d).unwrap_or_else(|| {
            let name = schema_name(d);
            let schema = json!({"type": "object", "description": d.kind});
            (name.clone(), [(name, schema)].into_iter().collect())
        });
        schemas.extend(defs);
        if let Some(s) = schemas.get_mut(&root) {
            s["x-kubernetes-group-version-kind"] = json!([gvk(d)]);
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Strake", "version": format!("v1.{}.0", crate::discovery::MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash(v: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: the group-versions there are documents for, with a hash clients cache by.
/// The hash names what a document holds (its resources and their CRD schemas), so it changes
/// when they do without generating every document.
pub fn root(entries: &Entries, crd_schema: &dyn Fn(&ResourceDef) -> Option<Value>) -> Value {
    let mut paths = Map::new();
    for (g, versions) in entries.groups() {
        for v in versions {
            let key = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let summary: Vec<Value> = entries
                .in_group_version(&g, &v)
                .map(|d| {
                    json!([
                        d.plural,
                        d.kind,
                        d.verbs,
                        d.subresources.len(),
                        crd_schema(d)
                    ])
                })
                .collect();
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&json!(summary)))}),
            );
        }
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_with_field_validation() {
        let entries = strake_kinds::builtin_table().snapshot();
        let defs = |d: &ResourceDef| d.strategy.definitions();
        let doc = document(&entries, "", "v1", &defs).unwrap();
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(
            pod["properties"]["spec"].is_object(),
            "full schemas for kubectl explain"
        );
        assert!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                .is_object()
        );
        assert!(
            serde_json::to_string(&doc)
                .unwrap()
                .contains("#/components/schemas/io.k8s.api.core.v1.PodSpec")
        );
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let apps = document(&entries, "apps", "v1", &defs).unwrap();
        assert!(
            apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"]
                .is_object()
        );
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        let r = root(&entries, &|_: &ResourceDef| None);
        assert!(
            r["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        assert!(document(&entries, "nope", "v1", &defs).is_none());
    }
}
