//! The admission plugins that keep authorization honest:
//! - **escalation**: a Role or ClusterRole may only hold rules its writer holds (or the writer
//!   may `escalate` it), an aggregationRule needs every permission, and a binding may only
//!   grant a role whose rules its writer holds (or the writer may `bind` it), as upstream's
//!   RBAC storage refuses them;
//! - **NodeRestriction**: a node may create and change only its own Node object.
//!
//! The server's own writes (no user) and system:masters pass.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;
use strake_apimachinery::admission::{AdmissionPlugin, Attributes as Write, Operation};
use strake_apimachinery::{ApiError, Registry, UserInfo, user};

use crate::rules::{self, Attributes, Resource};
use crate::{Authorizer, bootstrap};

/// Refuses RBAC writes that would grant more than their writer holds.
pub struct Escalation {
    pub authz: Arc<Authorizer>,
}

fn rules_of(obj: &Value) -> Result<Vec<PolicyRule>, ApiError> {
    serde_json::from_value(obj["rules"].clone())
        .or_else(|_| {
            if obj["rules"].is_null() {
                Ok(Vec::new())
            } else {
                Err(())
            }
        })
        .map_err(|_| ApiError::BadRequest("rules: not a list of PolicyRules".into()))
}

/// The rules of the role `role` names, read from the store (None if there is no such role).
async fn stored_rules(
    reg: &Registry,
    ns: &str,
    role: &RoleRef,
) -> Result<Option<Vec<PolicyRule>>, ApiError> {
    let (plural, ns) = match role.kind.as_str() {
        "ClusterRole" => ("clusterroles", None),
        "Role" if !ns.is_empty() => ("roles", Some(ns)),
        _ => return Ok(None),
    };
    let Some(def) = reg
        .table()
        .snapshot()
        .lookup(bootstrap::GROUP, "v1", plural)
        .cloned()
    else {
        return Ok(None);
    };
    match reg.get(&def, ns, &role.name).await {
        Ok(v) => rules_of(&v).map(Some),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Upstream's wording: `user "bob" (groups=["devs" "system:authenticated"])`.
fn who(u: &UserInfo) -> String {
    let groups: Vec<String> = u.groups.iter().map(|g| format!("{g:?}")).collect();
    format!("user {:?} (groups=[{}])", u.name, groups.join(" "))
}

impl Escalation {
    /// Whether `u` may use `verb` (`escalate`, `bind`) on the role named.
    fn may(&self, u: &UserInfo, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
        self.authz
            .authorize(&Attributes::resource(
                u,
                verb,
                Resource {
                    group: bootstrap::GROUP,
                    resource,
                    subresource: "",
                    namespace,
                    name,
                },
            ))
            .allowed()
    }

    fn not_held(&self, w: &Write<'_>, u: &UserInfo, missing: &[PolicyRule]) -> ApiError {
        let list: Vec<String> = missing.iter().map(rules::describe).collect();
        ApiError::Forbidden(format!(
            "{}.{} {:?} is forbidden: {} is attempting to grant RBAC permissions not currently held:\n{}",
            w.def.plural,
            w.def.group,
            w.name,
            who(u),
            list.join("\n")
        ))
    }

    fn check_role(&self, w: &Write<'_>, u: &UserInfo, obj: &Value) -> Result<(), ApiError> {
        let ns = w.namespace.unwrap_or_default();
        let wanted = rules_of(obj)?;
        if let Some(old) = w.old
            && rules_of(old).ok().as_ref() == Some(&wanted)
            && old["aggregationRule"] == obj["aggregationRule"]
        {
            return Ok(());
        }
        if self.may(u, "escalate", w.def.plural.as_str(), ns, w.name) {
            return Ok(());
        }
        let held = self.authz.rules_for(u, ns);
        if !obj["aggregationRule"].is_null()
            && !rules::uncovered(&held, &[rules::rule(&["*"], &["*"], &["*"])]).is_empty()
        {
            return Err(ApiError::Forbidden(format!(
                "{}.{} {:?} is forbidden: {} must have cluster-admin privileges to use an aggregationRule",
                w.def.plural,
                w.def.group,
                w.name,
                who(u)
            )));
        }
        let missing = rules::uncovered(&held, &wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.not_held(w, u, &missing))
        }
    }

    async fn check_binding(
        &self,
        reg: &Registry,
        w: &Write<'_>,
        u: &UserInfo,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let ns = w.namespace.unwrap_or_default();
        if let Some(old) = w.old
            && old["roleRef"] == obj["roleRef"]
            && old["subjects"] == obj["subjects"]
        {
            return Ok(());
        }
        let role: RoleRef = serde_json::from_value(obj["roleRef"].clone())
            .map_err(|e| ApiError::BadRequest(format!("roleRef: {e}")))?;
        let resource = if role.kind == "ClusterRole" {
            "clusterroles"
        } else {
            "roles"
        };
        if self.may(u, "bind", resource, ns, &role.name) {
            return Ok(());
        }
        let wanted = match self.authz.referenced_rules(ns, &role) {
            Some(r) => Some(r),
            // The authorizer's watch may not have brought a role written moments ago.
            None => stored_rules(reg, ns, &role).await?,
        };
        let Some(wanted) = wanted else {
            return Err(ApiError::Forbidden(format!(
                "{}.{} {:?} is forbidden: {} cannot bind {} {:?}, which does not exist",
                w.def.plural,
                w.def.group,
                w.name,
                who(u),
                role.kind,
                role.name
            )));
        };
        let missing = rules::uncovered(&self.authz.rules_for(u, ns), &wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.not_held(w, u, &missing))
        }
    }
}

impl AdmissionPlugin for Escalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        w: &'a Write<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let Some(u) = w.user else { return Ok(()) };
            if w.def.group != bootstrap::GROUP
                || w.operation == Operation::Delete
                || w.subresource.is_some()
                || u.in_group(user::MASTERS)
            {
                return Ok(());
            }
            match w.def.plural.as_str() {
                "roles" | "clusterroles" => self.check_role(w, u, obj),
                "rolebindings" | "clusterrolebindings" => self.check_binding(reg, w, u, obj).await,
                _ => Ok(()),
            }
        })
    }
}

/// Keeps a node to its own Node object, and to lifting finalizers of the local-path volumes
/// provisioned on it.
pub struct NodeRestriction;

impl AdmissionPlugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn admit<'a>(
        &'a self,
        _reg: &'a Registry,
        w: &'a Write<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let Some(node) = w.user.and_then(UserInfo::node_name) else {
                return Ok(());
            };
            if w.def.group.is_empty() && w.def.plural == "persistentvolumes" {
                return own_volume(w, node, obj);
            }
            if !(w.def.group.is_empty() && w.def.plural == "nodes") {
                return Ok(());
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or(w.name);
            if name != node || w.name != node && !w.name.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "nodes {:?} is forbidden: node {node:?} is not allowed to modify node {name:?}",
                    w.name
                )));
            }
            Ok(())
        })
    }
}

/// A node's write to a PersistentVolume: only one provisioned on it, and only its finalizers
/// taken away.
fn own_volume(w: &Write<'_>, node: &str, obj: &Value) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::Forbidden(format!(
            "persistentvolumes {:?} is forbidden: node {node:?} {why}",
            w.name
        )))
    };
    let Some(old) = w.old else {
        return refuse("may not create persistent volumes");
    };
    let label = &old["metadata"]["labels"][strake_scheduler::volumes::LOCAL_PATH_NODE_LABEL];
    if label.as_str() != Some(node) {
        return refuse("may only modify the local-path volumes provisioned on it");
    }
    let finalizers = |v: &Value| -> Vec<String> {
        v["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(String::from))
            .collect()
    };
    let before = finalizers(old);
    let same = old["spec"] == obj["spec"]
        && old["metadata"]["labels"] == obj["metadata"]["labels"]
        && old["metadata"]["annotations"] == obj["metadata"]["annotations"]
        && finalizers(obj).iter().all(|f| before.contains(f));
    if same {
        Ok(())
    } else {
        refuse("may only remove finalizers of its volumes")
    }
}
