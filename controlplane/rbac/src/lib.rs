//! Authorization: upstream's chain of the privileged group (`system:masters` may do
//! anything), the node authorizer, and RBAC over Roles, ClusterRoles and their bindings; the
//! default policy the API server reconciles at start; and the escalation check that keeps a
//! user from granting what they do not hold. Pure logic over in-memory state the API server
//! keeps current from its watches, so a decision never touches the store.

pub mod admission;
pub mod bootstrap;
pub mod node;
pub mod policy;
pub mod rules;

use std::sync::{OnceLock, RwLock};

use k8s_openapi::api::rbac::v1::PolicyRule;
use strake_apimachinery::user;

pub use node::NodeGraph;
pub use policy::Policy;
pub use rules::{Attributes, Resource};

/// The whole authorizer: the chain and the state it reads.
#[derive(Default)]
pub struct Authorizer {
    policy: RwLock<Policy>,
    graph: RwLock<NodeGraph>,
    /// Upstream's `--authorization-mode=AlwaysAllow`: every request is allowed. Only for
    /// measuring what authorization costs (api-bench); never set by the product.
    always_allow: std::sync::atomic::AtomicBool,
}

/// A decision and why: the reason of an allow names the grant, a denial's says what refused it
/// (empty when simply nothing allowed it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow(r) | Decision::Deny(r) => r,
        }
    }
}

fn node_rules() -> &'static [PolicyRule] {
    static RULES: OnceLock<Vec<PolicyRule>> = OnceLock::new();
    RULES.get_or_init(bootstrap::node_rules)
}

impl Authorizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes the RBAC state.
    pub fn policy(&self) -> std::sync::RwLockWriteGuard<'_, Policy> {
        self.policy.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the pods-by-node graph.
    pub fn graph(&self) -> std::sync::RwLockWriteGuard<'_, NodeGraph> {
        self.graph.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Allows everything (upstream's AlwaysAllow mode), or authorizes again.
    pub fn set_always_allow(&self, on: bool) {
        self.always_allow
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn authorize(&self, a: &Attributes<'_>) -> Decision {
        if self.always_allow.load(std::sync::atomic::Ordering::Relaxed) {
            return Decision::Allow("the authorization mode is AlwaysAllow".into());
        }
        if a.user.in_group(user::MASTERS) {
            return Decision::Allow(format!("the user is in {}", user::MASTERS));
        }
        let graph = self.graph.read().unwrap_or_else(|p| p.into_inner());
        let denied = match node::authorize(&graph, a) {
            node::Decision::Allow => {
                return Decision::Allow("the node authorizer allows it".into());
            }
            node::Decision::Deny(why) => Some(why),
            node::Decision::NoOpinion => None,
        };
        drop(graph);
        let policy = self.policy.read().unwrap_or_else(|p| p.into_inner());
        match policy.authorize(a) {
            // A node's graph refusal stands: RBAC may not widen it.
            Some(_) if denied.is_some() => Decision::Deny(denied.unwrap_or_default()),
            Some(grant) => Decision::Allow(grant.to_string()),
            None => Decision::Deny(denied.unwrap_or_default()),
        }
    }

    /// Every rule `u` holds in `namespace` (the cluster-wide ones with ""), as
    /// SelfSubjectRulesReview and the escalation check see them.
    pub fn rules_for(&self, u: &user::UserInfo, namespace: &str) -> Vec<PolicyRule> {
        if u.in_group(user::MASTERS) {
            return vec![
                rules::rule(&["*"], &["*"], &["*"]),
                rules::url_rule(&["*"], &["*"]),
            ];
        }
        let mut out = self
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules_for(u, namespace);
        if u.node_name().is_some() {
            for r in node_rules() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// The rules of the role a binding in `namespace` refers to.
    pub fn referenced_rules(
        &self,
        namespace: &str,
        role: &k8s_openapi::api::rbac::v1::RoleRef,
    ) -> Option<Vec<PolicyRule>> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .referenced_rules(namespace, role)
    }
}

/// Upstream's wording of a refusal: `User "u" cannot list resource "pods" in API group "" in
/// the namespace "web"`, with the authorizer's reason after a colon when it gave one.
pub fn forbidden_message(a: &Attributes<'_>, reason: &str) -> String {
    let name = &a.user.name;
    let mut msg = match &a.resource {
        None => format!("User {name:?} cannot {} path {:?}", a.verb, a.path),
        Some(r) => {
            let resource = if r.subresource.is_empty() {
                r.resource.to_string()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", r.namespace)
            };
            format!(
                "User {name:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                a.verb, r.group
            )
        }
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    msg
}
