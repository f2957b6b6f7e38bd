//! The default roles and bindings, as upstream bootstraps them: `cluster-admin`; the
//! user-facing `admin`, `edit` and `view`, aggregated from the `system:aggregate-to-*` roles
//! (so a CRD's own aggregated roles join them); the discovery, basic-user and public-info
//! roles every caller gets; and the `system:*` roles of the components. The API server
//! reconciles these at start: a missing one is created, a present one gains what it lacks
//! unless it is annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use strake_apimachinery::user;

use crate::rules::{READ, WRITE, rule, url_rule};

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
/// The role the cluster's bootstrap-token holders get: fetching node credentials only.
pub const NODE_BOOTSTRAPPER: &str = "system:node-bootstrapper";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const ADMIN_CREDENTIALS: &str = "system:strake:admin-credentials";
/// The group of the store's peer certificates (`strake-store-<id>`), which control planes
/// join the store with.
pub const STORE_PEERS: &str = "strake:store-peers";
pub const STORE_PEER: &str = "system:strake:store-peer";
/// The URLs anyone, signed in or not, may read.
pub const PUBLIC_URLS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

fn rw() -> Vec<&'static str> {
    READ.iter().chain(WRITE).copied().collect()
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> =
        [(BOOTSTRAPPING.to_string(), "rbac-defaults".to_string())].into();
    for (k, v) in labels {
        l.insert(k.to_string(), v.to_string());
    }
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(l),
        annotations: Some([(AUTOUPDATE.to_string(), "true".to_string())].into()),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregated(name: &str, labels: &[(&str, &str)], from: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(Vec::new()),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([(from.to_string(), "true".to_string())].into()),
                ..Default::default()
            }]),
        }),
    }
}

fn named(mut r: PolicyRule, names: &[&str]) -> PolicyRule {
    r.resource_names = Some(names.iter().map(|n| n.to_string()).collect());
    r
}

/// The resources a namespace's users work with, as upstream's aggregated roles list them.
fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
        rule(READ, &["events.k8s.io"], &["events"]),
    ]
}

fn edit_rules() -> Vec<PolicyRule> {
    let w = WRITE;
    vec![
        // Reading the resources that can escalate (a secret's contents, a shell in a pod).
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            w,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            w,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            w,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(w, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(w, &["batch"], &["jobs", "cronjobs"]),
        rule(w, &["policy"], &["poddisruptionbudgets"]),
        rule(w, &["networking.k8s.io"], &["networkpolicies", "ingresses"]),
        rule(w, &["discovery.k8s.io"], &["endpointslices"]),
        rule(w, &["events.k8s.io"], &["events"]),
    ]
}

fn admin_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(&rw(), &[GROUP], &["roles", "rolebindings"]),
    ]
}

/// What a node's agent needs beyond its own objects (the node authorizer adds those): the
/// cluster's services, endpoints, policies and namespaces for the proxy, DNS and policy roles
/// it plays, and events.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "nodes",
                "pods",
                "services",
                "endpoints",
                "namespaces",
                "persistentvolumes",
            ],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(READ, &["networking.k8s.io"], &["networkpolicies"]),
        rule(
            &["create", "update", "patch", "get"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
    ]
}

/// Every default ClusterRole.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let everything = vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])];
    vec![
        role("cluster-admin", &[], everything),
        role(
            "system:discovery",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:monitoring",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![url_rule(&["get"], PUBLIC_URLS)],
        ),
        aggregated("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            admin_rules(),
        ),
        role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            edit_rules(),
        ),
        role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            view_rules(),
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role("system:node", &[], node_rules()),
        role(
            "system:node-proxier",
            &[],
            vec![
                rule(READ, &[""], &["services", "endpoints", "nodes"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
            ],
        ),
        role(
            NODE_BOOTSTRAPPER,
            &[],
            vec![
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                // Strake's join: a bootstrap token buys a node's credentials, nothing more.
                url_rule(&["post"], &["/strake/v1/node-credentials"]),
            ],
        ),
        // Until the machine API hands out admin credentials, the bootstrap token buys them too
        // (the command that boots a cluster prints how to reach it with kubectl this way).
        role(
            ADMIN_CREDENTIALS,
            &[],
            vec![url_rule(&["post"], &["/strake/v1/kubeconfig"])],
        ),
        // Control planes join the store (and leave it) with their peer certificates.
        role(
            STORE_PEER,
            &[],
            vec![
                url_rule(&["get", "post"], &["/strake/v1/store/members"]),
                url_rule(&["delete"], &["/strake/v1/store/members/*"]),
            ],
        ),
        role(
            "system:strake:cluster-info-viewer",
            &[],
            vec![url_rule(&["get"], &["/strake/v1/cluster-info"])],
        ),
        role(
            "system:kube-dns",
            &[],
            vec![rule(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        role(
            "system:kube-scheduler",
            &[],
            vec![
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                named(
                    rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                    &["kube-scheduler"],
                ),
                rule(&["delete", "get", "list", "watch"], &[""], &["nodes"]),
                rule(READ, &[""], &["pods"]),
                rule(&["create"], &[""], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(
                    READ,
                    &["", "apps"],
                    &[
                        "replicationcontrollers",
                        "services",
                        "replicasets",
                        "statefulsets",
                    ],
                ),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    READ,
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes", "namespaces"],
                ),
                rule(
                    READ,
                    &["storage.k8s.io"],
                    &[
                        "storageclasses",
                        "csinodes",
                        "csidrivers",
                        "csistoragecapacities",
                    ],
                ),
            ],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            vec![
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                named(
                    rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                    &["kube-controller-manager"],
                ),
                rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
                rule(&["delete"], &[""], &["secrets"]),
                rule(
                    &["get"],
                    &[""],
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    }
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: (kind != "ServiceAccount").then(|| GROUP.to_string()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

/// Every default ClusterRoleBinding.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let group = |n: &str| subject("Group", n);
    let usr = |n: &str| subject("User", n);
    vec![
        binding("cluster-admin", "cluster-admin", vec![group(user::MASTERS)]),
        binding(
            "system:discovery",
            "system:discovery",
            vec![group(user::AUTHENTICATED)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![group(user::AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![group(user::AUTHENTICATED), group(user::UNAUTHENTICATED)],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            vec![group("system:monitoring")],
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            vec![usr("system:kube-proxy")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![usr("system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![usr("system:kube-controller-manager")],
        ),
        binding(
            "system:kube-dns",
            "system:kube-dns",
            vec![Subject {
                namespace: Some("kube-system".into()),
                ..subject("ServiceAccount", "kube-dns")
            }],
        ),
        binding(
            "system:node-bootstrapper",
            NODE_BOOTSTRAPPER,
            vec![group(BOOTSTRAPPERS)],
        ),
        binding(
            ADMIN_CREDENTIALS,
            ADMIN_CREDENTIALS,
            vec![group(BOOTSTRAPPERS)],
        ),
        binding(STORE_PEER, STORE_PEER, vec![group(STORE_PEERS)]),
        binding(
            "system:strake:cluster-info-viewer",
            "system:strake:cluster-info-viewer",
            vec![group(user::AUTHENTICATED), group(user::UNAUTHENTICATED)],
        ),
    ]
}

/// The rules an aggregated ClusterRole holds: those of every other ClusterRole one of its
/// selectors picks, in name order, each rule once. None for a role without an aggregation rule.
pub fn aggregate(role: &ClusterRole, all: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .clone()?;
    let mut sources: Vec<&ClusterRole> = all
        .iter()
        .filter(|r| r.metadata.name != role.metadata.name)
        .filter(|r| {
            selectors
                .iter()
                .any(|s| strake_scheduler::labels::selects(s, &r.metadata.labels))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: Vec<PolicyRule> = Vec::new();
    for r in sources {
        for rule in r.rules.iter().flatten() {
            if !out.contains(rule) {
                out.push(rule.clone());
            }
        }
    }
    Some(out)
}

/// What reconciling a default object against the stored one should write, if anything: the
/// stored object with what it lacks added (rules, subjects, labels and annotations), or None
/// when it is complete or its owner turned auto-update off.
pub fn reconcile_role(stored: &ClusterRole, default: &ClusterRole) -> Option<ClusterRole> {
    if auto_update_off(&stored.metadata) {
        return None;
    }
    let mut next = stored.clone();
    let mut changed = merge_meta(&mut next.metadata, &default.metadata);
    if default.aggregation_rule.is_some() {
        if next.aggregation_rule != default.aggregation_rule {
            next.aggregation_rule = default.aggregation_rule.clone();
            changed = true;
        }
    } else {
        let rules = next.rules.get_or_insert_default();
        for r in default.rules.iter().flatten() {
            if !rules.contains(r) {
                rules.push(r.clone());
                changed = true;
            }
        }
    }
    changed.then_some(next)
}

/// The binding counterpart of [`reconcile_role`]: missing subjects are added.
pub fn reconcile_binding(
    stored: &ClusterRoleBinding,
    default: &ClusterRoleBinding,
) -> Option<ClusterRoleBinding> {
    if auto_update_off(&stored.metadata) || stored.role_ref != default.role_ref {
        return None;
    }
    let mut next = stored.clone();
    let mut changed = merge_meta(&mut next.metadata, &default.metadata);
    let subjects = next.subjects.get_or_insert_default();
    for s in default.subjects.iter().flatten() {
        if !subjects.contains(s) {
            subjects.push(s.clone());
            changed = true;
        }
    }
    changed.then_some(next)
}

fn auto_update_off(m: &ObjectMeta) -> bool {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(AUTOUPDATE))
        .is_some_and(|v| v == "false")
}

fn merge_meta(into: &mut ObjectMeta, from: &ObjectMeta) -> bool {
    let mut changed = false;
    for (dst, src) in [
        (&mut into.labels, &from.labels),
        (&mut into.annotations, &from.annotations),
    ] {
        let dst = dst.get_or_insert_default();
        for (k, v) in src.iter().flatten() {
            if !dst.contains_key(k) {
                dst.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_edit_holds_view_by_aggregation() {
        let all = cluster_roles();
        let get = |n: &str| {
            all.iter()
                .find(|r| r.metadata.name.as_deref() == Some(n))
                .unwrap()
        };
        // The aggregated roles feed each other by label: view into edit into admin.
        let mut resolved = all.clone();
        for _ in 0..3 {
            let snapshot = resolved.clone();
            for r in resolved.iter_mut() {
                if let Some(rules) = aggregate(r, &snapshot) {
                    r.rules = Some(rules);
                }
            }
        }
        let rules = |n: &str| {
            resolved
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(n))
                .unwrap()
                .rules
                .clone()
                .unwrap()
        };
        let (view, edit, admin) = (rules("view"), rules("edit"), rules("admin"));
        assert!(crate::rules::uncovered(&edit, &view).is_empty());
        assert!(crate::rules::uncovered(&admin, &edit).is_empty());
        assert!(!crate::rules::uncovered(&view, &edit).is_empty());
        assert!(
            get("admin").rules.as_ref().unwrap().is_empty(),
            "the defaults carry no rules of their own"
        );
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_respects_autoupdate_off() {
        let default = cluster_roles()
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some("system:basic-user"))
            .unwrap();
        let mut stored = default.clone();
        stored.rules.as_mut().unwrap().truncate(1);
        stored
            .rules
            .as_mut()
            .unwrap()
            .push(rule(&["get"], &[""], &["pods"]));
        let next = reconcile_role(&stored, &default).expect("a rule was missing");
        assert_eq!(
            next.rules.as_ref().unwrap().len(),
            3,
            "the user's extra rule stays"
        );
        assert!(reconcile_role(&next, &default).is_none());
        stored.metadata.annotations = Some([(AUTOUPDATE.to_string(), "false".to_string())].into());
        assert!(reconcile_role(&stored, &default).is_none());
    }
}
