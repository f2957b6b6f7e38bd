//! The built-in kinds Strake serves — core, apps, batch and the named groups — as entries of the
//! runtime resource table, each with its typed defaults, validation and Table columns, and the
//! CRD machinery that turns a CustomResourceDefinition into entries of the same table.
//! Owns no HTTP and no storage: the table and the registry live in `strake-apimachinery`.

pub mod apps;
pub mod batch;
pub mod cel;
pub mod certificates;
pub mod core;
pub mod crd;
pub mod cron;
pub mod others;
pub mod pods;
pub mod scale;
pub mod typed;
mod webhooks;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strake_apimachinery::{ResourceDef, ResourceTable};

/// Every built-in entry, groups in upstream's discovery order.
pub fn builtin() -> Vec<ResourceDef> {
    let mut all = core::entries();
    all.extend(apps::entries());
    all.extend(batch::entries());
    all.extend(others::entries());
    all
}

/// A table holding every built-in kind.
pub fn builtin_table() -> ResourceTable {
    let table = ResourceTable::new();
    for def in builtin() {
        table.register(def);
    }
    table
}

/// A label selector as kubectl prints it: `app=web,tier in (a,b),!x`.
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_has_one_entry_and_cells_for_each_column() {
        let table = builtin_table().snapshot();
        let mut seen = std::collections::HashSet::new();
        for d in table.all() {
            assert!(
                seen.insert((d.group.clone(), d.version.clone(), d.plural.clone())),
                "{d:?} twice"
            );
            let obj = serde_json::json!({"apiVersion": d.api_version(), "kind": d.kind, "metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
            if d.verbs.iter().any(|v| v == "list") {
                assert_eq!(
                    d.strategy.cells(&obj).len(),
                    d.columns.len(),
                    "{} cells",
                    d.kind
                );
            }
        }
        for (group, plural) in [
            ("", "pods"),
            ("apps", "deployments"),
            ("batch", "cronjobs"),
            ("rbac.authorization.k8s.io", "clusterrolebindings"),
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("coordination.k8s.io", "leases"),
        ] {
            assert!(
                table
                    .all()
                    .iter()
                    .any(|d| d.group == group && d.plural == plural),
                "{group}/{plural} is served"
            );
        }
        assert!(
            table
                .lookup("apps", "v1", "deployments")
                .unwrap()
                .has_subresource("scale")
        );
    }
}
