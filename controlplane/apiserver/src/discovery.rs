//! Version, legacy discovery (`/api`, `/api/v1`, `/apis`) and aggregated discovery (apidiscovery v2).

use serde_json::{Value, json};

use crate::kinds::ApiKind;

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

/// One served resource, as discovery describes it.
pub struct ResourceInfo {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [(&'static str, &'static str, &'static [&'static str])],
    pub categories: &'static [&'static str],
}

const RW: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

fn info<K: ApiKind>(subresources: &'static [(&'static str, &'static str, &'static [&'static str])], categories: &'static [&'static str]) -> ResourceInfo {
    ResourceInfo {
        plural: K::PLURAL,
        singular: K::SINGULAR,
        kind: K::KIND,
        namespaced: K::NAMESPACED,
        short_names: K::SHORT_NAMES,
        verbs: RW,
        subresources,
        categories,
    }
}

/// Everything in the core group, v1.
pub fn core_resources() -> Vec<ResourceInfo> {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    vec![
        info::<Namespace>(&[("status", "Namespace", &["get", "patch", "update"])], &[]),
        info::<Node>(&[("status", "Node", &["get", "patch", "update"])], &[]),
        info::<Pod>(
            &[
                ("status", "Pod", &["get", "patch", "update"]),
                ("log", "Pod", &["get"]),
                ("binding", "Binding", &["create"]),
            ],
            &["all"],
        ),
    ]
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

pub fn core_v1_resource_list() -> Value {
    let mut resources = Vec::new();
    for r in core_resources() {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for (sub, kind, verbs) in r.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources})
}

/// The Content-Type of aggregated discovery documents.
pub const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| {
        let a = a.replace(' ', "");
        a.contains("g=apidiscovery.k8s.io") && a.contains("v=v2;") && a.contains("as=APIGroupDiscoveryList")
            || a.ends_with("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    })
}

/// Aggregated discovery for `/api` (core) or `/apis` (named groups: none yet).
pub fn aggregated(core: bool) -> Value {
    let items = if core {
        let resources: Vec<Value> = core_resources()
            .iter()
            .map(|r| {
                json!({
                    "resource": r.plural,
                    "responseKind": {"group": "", "version": "v1", "kind": r.kind},
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": r.verbs,
                    "shortNames": r.short_names,
                    "categories": r.categories,
                    "subresources": r.subresources.iter().map(|(sub, kind, verbs)| json!({
                        "subresource": sub,
                        "responseKind": {"group": "", "version": "v1", "kind": kind},
                        "verbs": verbs,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        vec![json!({"metadata": {"creationTimestamp": null}, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})]
    } else {
        vec![]
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
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
    fn pods_have_log_subresource() {
        let list = core_v1_resource_list();
        let names: Vec<_> = list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
        assert!(names.contains(&"pods/log".to_string()));
        let agg = aggregated(true);
        assert_eq!(agg["items"][0]["versions"][0]["resources"][2]["resource"], "pods");
    }
}
