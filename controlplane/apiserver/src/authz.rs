//! Keeps the authorizer's state current and the default policy in place:
//! - at start, the default ClusterRoles and ClusterRoleBindings are reconciled (missing ones
//!   created, missing rules, subjects and labels added; `autoupdate: "false"` left alone);
//! - Roles, ClusterRoles, both bindings and Pods (for the node authorizer's graph) are
//!   followed by watches that feed the in-memory [`Authorizer`]; [`start`] returns once each
//!   has delivered its initial state, so no request is judged on an empty policy;
//! - ClusterRoles with an aggregationRule get the union of the rules of the ClusterRoles
//!   their selectors pick, whenever any ClusterRole changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strake_apimachinery::watch::{WatchItem, WatchOptions};
use strake_apimachinery::{ApiError, ListOptions, Part, Registry, ResourceDef};
use strake_rbac::{Authorizer, bootstrap};
use tokio::sync::oneshot;

const RBAC: &str = bootstrap::GROUP;

fn def(reg: &Registry, group: &str, plural: &str) -> Result<Arc<ResourceDef>, ApiError> {
    reg.table()
        .snapshot()
        .lookup(group, "v1", plural)
        .cloned()
        .ok_or(ApiError::NoRoute)
}

fn to_value<T: Serialize>(def: &ResourceDef, obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    v["apiVersion"] = def.api_version().into();
    v["kind"] = def.kind.clone().into();
    v
}

/// Creates the default object, or brings the stored one up to it with `reconcile`.
async fn ensure<T: Serialize + DeserializeOwned>(
    reg: &Registry,
    def: &ResourceDef,
    default: &T,
    name: &str,
    reconcile: impl Fn(&T, &T) -> Option<T>,
) -> Result<(), ApiError> {
    match reg.get(def, None, name).await {
        Ok(stored) => {
            let rv = stored["metadata"]["resourceVersion"].clone();
            let typed: T = serde_json::from_value(stored)
                .map_err(|e| ApiError::Internal(format!("stored {} {name}: {e}", def.kind)))?;
            if let Some(updated) = reconcile(&typed, default) {
                let mut v = to_value(def, &updated);
                v["metadata"]["resourceVersion"] = rv;
                reg.update(def, None, name, v, Part::Main, &Default::default())
                    .await?;
                tracing::info!(kind = %def.kind, name, "reconciled a default RBAC object");
            }
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => {
            let (v, _) = def
                .strategy
                .decode(def, to_value(def, default), Default::default())?;
            match reg.create(def, None, v, &Default::default()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Puts the default policy in place (what upstream's bootstrap-roles hook does at start).
pub async fn reconcile_defaults(reg: &Registry) -> Result<(), ApiError> {
    let roles = def(reg, RBAC, "clusterroles")?;
    for r in bootstrap::cluster_roles() {
        let name = r.metadata.name.clone().unwrap_or_default();
        ensure(reg, &roles, &r, &name, bootstrap::reconcile_role).await?;
    }
    let bindings = def(reg, RBAC, "clusterrolebindings")?;
    for b in bootstrap::cluster_role_bindings() {
        let name = b.metadata.name.clone().unwrap_or_default();
        ensure(reg, &bindings, &b, &name, bootstrap::reconcile_binding).await?;
    }
    // Aggregated roles chain (view feeds edit feeds admin): settle them before serving.
    for _ in 0..5 {
        if aggregate(reg).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// What a followed kind does to the authorizer.
trait Feed: DeserializeOwned + Send + 'static {
    fn set(&self, authz: &Authorizer);
    fn remove(ns: &str, name: &str, authz: &Authorizer);
}

impl Feed for ClusterRole {
    fn set(&self, authz: &Authorizer) {
        authz.policy().set_cluster_role(self);
    }
    fn remove(_: &str, name: &str, authz: &Authorizer) {
        authz.policy().remove_cluster_role(name);
    }
}

impl Feed for Role {
    fn set(&self, authz: &Authorizer) {
        authz.policy().set_role(self);
    }
    fn remove(ns: &str, name: &str, authz: &Authorizer) {
        authz.policy().remove_role(ns, name);
    }
}

impl Feed for ClusterRoleBinding {
    fn set(&self, authz: &Authorizer) {
        authz.policy().set_cluster_role_binding(self);
    }
    fn remove(_: &str, name: &str, authz: &Authorizer) {
        authz.policy().remove_cluster_role_binding(name);
    }
}

impl Feed for RoleBinding {
    fn set(&self, authz: &Authorizer) {
        authz.policy().set_role_binding(self);
    }
    fn remove(ns: &str, name: &str, authz: &Authorizer) {
        authz.policy().remove_role_binding(ns, name);
    }
}

impl Feed for Pod {
    fn set(&self, authz: &Authorizer) {
        authz.graph().set_pod(self);
    }
    fn remove(ns: &str, name: &str, authz: &Authorizer) {
        authz.graph().remove_pod(ns, name);
    }
}

fn key_of(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// Follows one kind into the authorizer for as long as the server runs; `synced` fires once
/// its initial state is in.
async fn follow<K: Feed>(
    reg: Registry,
    def: Arc<ResourceDef>,
    authz: Arc<Authorizer>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let mut known: HashSet<(String, String)> = HashSet::new();
    let mut resume: Option<u64> = None;
    loop {
        let opts = WatchOptions {
            resource_version: resume.map(|r| r.to_string()),
            send_initial_events: resume.is_none(),
            bookmarks: true,
            timeout: Duration::from_secs(3600),
            bookmark_interval: Duration::from_secs(5),
            ..Default::default()
        };
        let mut stream = match strake_apimachinery::watch::watch(&reg, def.clone(), opts).await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                if matches!(e, ApiError::Expired(_)) {
                    resume = None;
                }
                tracing::warn!(kind = %def.kind, error = %e, "the authorizer cannot watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut listing: Option<HashSet<(String, String)>> = resume.is_none().then(HashSet::new);
        while let Some(item) = stream.next().await {
            match item {
                WatchItem::Event { kind, object } => {
                    let v = object.value();
                    let key = key_of(v);
                    if let Some(rev) = v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                    {
                        resume = Some(resume.unwrap_or(0).max(rev));
                    }
                    if kind == "DELETED" {
                        K::remove(&key.0, &key.1, &authz);
                        known.remove(&key);
                        continue;
                    }
                    match serde_json::from_value::<K>(v.clone()) {
                        Ok(obj) => obj.set(&authz),
                        Err(e) => {
                            tracing::warn!(kind = %def.kind, name = %key.1, error = %e, "the authorizer cannot read an object");
                            continue;
                        }
                    }
                    if let Some(seen) = &mut listing {
                        seen.insert(key.clone());
                    }
                    known.insert(key);
                }
                WatchItem::Bookmark {
                    revision,
                    initial_events_end,
                } => {
                    resume = Some(revision);
                    if initial_events_end && let Some(seen) = listing.take() {
                        // Whatever was known and is not listed again went away meanwhile.
                        for gone in known.difference(&seen).cloned().collect::<Vec<_>>() {
                            K::remove(&gone.0, &gone.1, &authz);
                            known.remove(&gone);
                        }
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                WatchItem::Error(e) => {
                    if matches!(e, ApiError::Expired(_)) {
                        resume = None;
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts following the authorizer's kinds and the aggregation controller; returns once the
/// authorizer holds the stored policy.
pub async fn start(reg: &Registry, authz: &Arc<Authorizer>) -> Result<(), ApiError> {
    let mut waits = Vec::new();
    macro_rules! spawn_follow {
        ($k:ty, $group:expr, $plural:expr) => {{
            let (tx, rx) = oneshot::channel();
            tokio::spawn(follow::<$k>(
                reg.clone(),
                def(reg, $group, $plural)?,
                authz.clone(),
                tx,
            ));
            waits.push(rx);
        }};
    }
    spawn_follow!(ClusterRole, RBAC, "clusterroles");
    spawn_follow!(Role, RBAC, "roles");
    spawn_follow!(ClusterRoleBinding, RBAC, "clusterrolebindings");
    spawn_follow!(RoleBinding, RBAC, "rolebindings");
    spawn_follow!(Pod, "", "pods");
    for rx in waits {
        rx.await
            .map_err(|_| ApiError::Internal("an authorizer watch ended before it synced".into()))?;
    }
    tokio::spawn(crate::controllers::aggregation(reg.clone()));
    Ok(())
}

/// One pass of ClusterRole aggregation: every aggregated role's rules set to the union of
/// the rules of the roles its selectors pick. Returns how many roles changed.
pub async fn aggregate(reg: &Registry) -> Result<usize, ApiError> {
    let mut changed = 0;
    let def = def(reg, RBAC, "clusterroles")?;
    let page = reg.list(&def, None, &ListOptions::default()).await?;
    let all: Vec<ClusterRole> = page
        .items
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    for role in &all {
        let Some(rules) = bootstrap::aggregate(role, &all) else {
            continue;
        };
        if role.rules.as_ref() == Some(&rules) {
            continue;
        }
        let name = role.metadata.name.clone().unwrap_or_default();
        let now = serde_json::to_value(&rules).unwrap_or_default();
        let res = reg
            .update_with(
                &def,
                None,
                &name,
                Part::Main,
                &Default::default(),
                |mut v| {
                    v["rules"] = now.clone();
                    Ok(v)
                },
            )
            .await;
        match res {
            Ok(_) => changed += 1,
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}

/// Brings the node graph up to date for `node` from the store: the pods bound to it now. The
/// graph follows a watch, so a node that saw its new pod first (its own watch was quicker)
/// could be refused what the pod uses; a refusal of such a request is decided again after this.
pub async fn refresh_node(reg: &Registry, authz: &Authorizer, node: &str) -> Result<(), ApiError> {
    let def = def(reg, "", "pods")?;
    let fields = strake_apimachinery::selectors::FieldSelector::parse(
        &format!("spec.nodeName={node}"),
        |f| f == "spec.nodeName",
    )?;
    let page = reg
        .list(
            &def,
            None,
            &ListOptions {
                filter: strake_apimachinery::Filter {
                    fields,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let mut graph = authz.graph();
    for v in page.items {
        if let Ok(p) = serde_json::from_value::<Pod>(v) {
            graph.set_pod(&p);
        }
    }
    Ok(())
}
