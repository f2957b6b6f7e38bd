//! Keeps the authorizer's state current and the default policy in place:
//! - at start, the default ClusterRoles and ClusterRoleBindings are reconciled (missing ones
//!   created, missing rules, subjects and labels added; `autoupdate: "false"` left alone);
//! - Roles, ClusterRoles, both bindings and Pods (for the node authorizer's graph) are
//!   followed by watches that feed the in-memory [`Authorizer`]; [`start`] returns once each
//!   has delivered its initial state, so no request is judged on an empty policy;
//! - ClusterRoles with an aggregationRule get the union of the rules of the ClusterRoles
//!   their selectors pick, whenever any ClusterRole changes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strake_apimachinery::follow::{Followed, key_of};
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

/// Follows one kind into the authorizer for as long as the server runs; `synced` fires once
/// its initial state is in.
async fn follow<K: Feed>(
    reg: Registry,
    def: Arc<ResourceDef>,
    authz: Arc<Authorizer>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let kind = def.kind.clone();
    strake_apimachinery::follow::follow(reg, def, move |f| match f {
        Followed::Applied(v) => match serde_json::from_value::<K>(v.clone()) {
            Ok(obj) => obj.set(&authz),
            Err(e) => {
                tracing::warn!(%kind, name = %key_of(v).1, error = %e, "the authorizer cannot read an object");
            }
        },
        Followed::Deleted { namespace, name } => K::remove(namespace, name, &authz),
        Followed::Synced => {
            if let Some(tx) = synced.take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
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
