//! OpenAPI v3 discovery, generated from the kinds we serve (never copied from upstream). Today it
//! describes paths and operations — enough for kubectl to see that PATCH, POST and PUT take the
//! `fieldValidation` parameter and so to use server-side validation; component schemas come later.

use serde_json::{Map, Value, json};

use crate::discovery::{ResourceInfo, core_resources};

/// `/openapi/v3`: the group-versions there are documents for.
pub fn root() -> Value {
    json!({"paths": {"api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={}", hash())}}})
}

/// A stable hash of the core/v1 document, so clients may cache it.
fn hash() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    core_v1().to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

fn param(name: &str, location: &str, required: bool, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(id: &str, kind: &str, action: &str, params: Vec<Value>, body: bool) -> Value {
    let mut op = json!({
        "operationId": id,
        "tags": ["core_v1"],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/io.k8s.api.core.v1.{kind}")}}}}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
    });
    if body {
        op["requestBody"] = json!({"content": {"*/*": {"schema": {"$ref": format!("#/components/schemas/io.k8s.api.core.v1.{kind}")}}}, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "query", false, "When present, indicates that modifications should not be persisted."),
        param("fieldManager", "query", false, "A name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "query", false, "How the server handles unknown or duplicate fields: Ignore, Warn or Strict."),
    ]
}

fn paths_for(r: &ResourceInfo, paths: &mut Map<String, Value>) {
    let (collection, item) = if r.namespaced {
        (format!("/api/v1/namespaces/{{namespace}}/{}", r.plural), format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", r.plural))
    } else {
        (format!("/api/v1/{}", r.plural), format!("/api/v1/{}/{{name}}", r.plural))
    };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let kind = r.kind;
    let scoped = |mut params: Vec<Value>, with_name: bool| {
        if with_name {
            params.insert(0, param("name", "path", true, &format!("name of the {kind}")));
        }
        if r.namespaced {
            params.insert(0, param("namespace", "path", true, "object name and auth scope"));
        }
        params
    };
    let list_params = scoped(vec![param("labelSelector", "query", false, ""), param("fieldSelector", "query", false, ""), param("watch", "query", false, "")], false);
    let create_params = scoped(write_params(), false);
    let read_params = scoped(vec![], true);
    let mut patch_params = scoped(write_params(), true);
    patch_params.push(param("force", "query", false, "Force is going to \"force\" Apply requests."));
    let replace_params = scoped(write_params(), true);
    let delete_params = scoped(vec![param("gracePeriodSeconds", "query", false, ""), param("propagationPolicy", "query", false, "")], true);
    paths.insert(
        collection,
        json!({
            "get": operation(&format!("list{scope}{kind}"), kind, "list", list_params, false),
            "post": operation(&format!("create{scope}{kind}"), kind, "post", create_params, true),
        }),
    );
    paths.insert(
        item.clone(),
        json!({
            "get": operation(&format!("read{scope}{kind}"), kind, "get", read_params.clone(), false),
            "put": operation(&format!("replace{scope}{kind}"), kind, "put", replace_params.clone(), true),
            "patch": operation(&format!("patch{scope}{kind}"), kind, "patch", patch_params.clone(), true),
            "delete": operation(&format!("delete{scope}{kind}"), kind, "delete", delete_params, false),
        }),
    );
    paths.insert(
        format!("{item}/status"),
        json!({
            "get": operation(&format!("read{scope}{kind}Status"), kind, "get", read_params, false),
            "put": operation(&format!("replace{scope}{kind}Status"), kind, "put", replace_params, true),
            "patch": operation(&format!("patch{scope}{kind}Status"), kind, "patch", patch_params, true),
        }),
    );
}

/// `/openapi/v3/api/v1`.
pub fn core_v1() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in core_resources() {
        paths_for(&r, &mut paths);
        schemas.insert(
            format!("io.k8s.api.core.v1.{}", r.kind),
            json!({
                "type": "object",
                "description": format!("{} (schema details are not published by this server yet)", r.kind),
                "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": r.kind}],
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Strake", "version": format!("v1.{}.0", crate::discovery::MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_advertise_field_validation() {
        let doc = core_v1();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(doc["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        assert!(root()["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap().starts_with("/openapi/v3/api/v1?hash="));
    }
}
