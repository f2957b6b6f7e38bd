//! Version and discovery — legacy (`/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`) and
//! aggregated (apidiscovery.k8s.io/v2) — all read from the resource table.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strake_apimachinery::resource::Entries;
use strake_apimachinery::{ApiError, ResourceDef};

use crate::AppState;
use crate::render::{error_response, json_response};

/// The minor version we report: kubectl's dispatcher picks `kubectl.1.<minor>` from it.
pub const MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-strake.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust1.95",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// The Content-Type of aggregated discovery documents.
pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery first.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|a| {
        let a = a.replace(' ', "");
        a.contains("g=apidiscovery.k8s.io")
            && a.contains("v=v2")
            && !a.contains("v=v2beta1")
            && a.contains("as=APIGroupDiscoveryList")
    })
}

fn scope(d: &ResourceDef) -> &'static str {
    if d.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn resource_list(entries: &Entries, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for d in entries.in_group_version(group, version) {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind, "verbs": d.verbs,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        for s in &d.subresources {
            let mut sr = json!({"name": format!("{}/{}", d.plural, s.name), "singularName": "", "namespaced": d.namespaced, "kind": s.kind, "verbs": s.verbs});
            if let Some((g, v)) = &s.group_version {
                sr["group"] = g.clone().into();
                sr["version"] = v.clone().into();
            }
            resources.push(sr);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

fn aggregated(entries: &Entries, core: bool) -> Value {
    let items: Vec<Value> = entries
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = entries
                        .in_group_version(&g, v)
                        .map(|d| {
                            let mut r = json!({
                                "resource": d.plural,
                                "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
                                "scope": scope(d),
                                "singularResource": d.singular,
                                "verbs": d.verbs,
                                "subresources": d.subresources.iter().map(|s| {
                                    let (sg, sv) = s.group_version.clone().unwrap_or((d.group.clone(), d.version.clone()));
                                    json!({"subresource": s.name, "responseKind": {"group": sg, "version": sv, "kind": s.kind}, "verbs": s.verbs})
                                }).collect::<Vec<_>>(),
                            });
                            if !d.short_names.is_empty() {
                                r["shortNames"] = json!(d.short_names);
                            }
                            if !d.categories.is_empty() {
                                r["categories"] = json!(d.categories);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut meta = json!({"creationTimestamp": null});
            if !g.is_empty() {
                meta["name"] = g.clone().into();
            }
            json!({"metadata": meta, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Serves a discovery path.
pub fn serve(
    app: &AppState,
    headers: &HeaderMap,
    group: Option<String>,
    version: Option<String>,
    legacy_core: bool,
) -> Response {
    let entries = app.registry.table().snapshot();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match (group, version) {
        (None, _) if wants_aggregated(accept) => {
            let body = serde_json::to_vec(&aggregated(&entries, legacy_core)).unwrap_or_default();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, AGGREGATED_CT)],
                body,
            )
                .into_response()
        }
        (None, _) if legacy_core => json_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.advertise}]}),
        ),
        (None, _) => {
            let groups: Vec<Value> = entries
                .groups()
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| group_json(g, vs))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        (Some(g), None) => match entries
            .groups()
            .into_iter()
            .find(|(name, _)| *name == g && !g.is_empty())
        {
            Some((g, vs)) => {
                let mut v = group_json(&g, &vs);
                v["kind"] = "APIGroup".into();
                v["apiVersion"] = "v1".into();
                json_response(StatusCode::OK, &v)
            }
            None => error_response(ApiError::NoRoute),
        },
        (Some(g), Some(v)) => {
            if entries.in_group_version(&g, &v).next().is_none() {
                return error_response(ApiError::NoRoute);
            }
            json_response(StatusCode::OK, &resource_list(&entries, &g, &v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated(kubectl));
        assert!(!wants_aggregated("application/json"));
    }

    #[test]
    fn discovery_lists_every_table_entry() {
        let entries = strake_kinds::builtin_table().snapshot();
        let core = resource_list(&entries, "", "v1");
        let names: Vec<String> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        for n in [
            "pods",
            "pods/log",
            "pods/status",
            "configmaps",
            "secrets",
            "services",
            "namespaces/finalize",
            "replicationcontrollers/scale",
        ] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        let agg = aggregated(&entries, false);
        let groups: Vec<&str> = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        for g in [
            "apps",
            "batch",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "networking.k8s.io",
        ] {
            assert!(groups.contains(&g), "{g}");
        }
    }
}
