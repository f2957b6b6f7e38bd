//! The RBAC policy in memory: every Role, ClusterRole and binding, with the bindings indexed
//! by subject, so a decision looks at the caller's own bindings only (a user and a few
//! groups), never at all of them. The API server feeds it from its watches; a change to one
//! object touches that object's index entries only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use strake_apimachinery::UserInfo;
use strake_apimachinery::user::service_account_user;

use crate::rules::{self, Attributes};

/// Who a binding names, as a request's user is matched against it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Who {
    User(String),
    Group(String),
}

/// A binding: a RoleBinding (namespace set) or a ClusterRoleBinding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BindingKey {
    namespace: Option<String>,
    name: String,
}

#[derive(Clone, Debug)]
struct Binding {
    role: RoleRef,
    subjects: Vec<Who>,
}

/// The RBAC objects, indexed for decisions.
#[derive(Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    bindings: HashMap<BindingKey, Binding>,
    by_subject: HashMap<Who, BTreeSet<BindingKey>>,
}

/// Why a request was allowed: the binding, its role, and the subject that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub binding: String,
    pub role: String,
    pub subject: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RBAC: allowed by {} of {} to {}",
            self.binding, self.role, self.subject
        )
    }
}

fn subjects(subjects: Option<&Vec<Subject>>, binding_ns: Option<&str>) -> Vec<Who> {
    subjects
        .into_iter()
        .flatten()
        .filter_map(|s| match s.kind.as_str() {
            "User" => Some(Who::User(s.name.clone())),
            "Group" => Some(Who::Group(s.name.clone())),
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .or(binding_ns)?;
                Some(Who::User(service_account_user(ns, &s.name)))
            }
            _ => None,
        })
        .collect()
}

impl Policy {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_cluster_role(&mut self, r: &ClusterRole) {
        let name = r.metadata.name.clone().unwrap_or_default();
        self.cluster_roles
            .insert(name, Arc::new(r.rules.clone().unwrap_or_default()));
    }

    pub fn remove_cluster_role(&mut self, name: &str) {
        self.cluster_roles.remove(name);
    }

    pub fn set_role(&mut self, r: &Role) {
        let key = (
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default(),
        );
        self.roles
            .insert(key, Arc::new(r.rules.clone().unwrap_or_default()));
    }

    pub fn remove_role(&mut self, namespace: &str, name: &str) {
        self.roles
            .remove(&(namespace.to_string(), name.to_string()));
    }

    fn set_binding(&mut self, key: BindingKey, binding: Binding) {
        self.remove_binding_key(&key);
        for s in &binding.subjects {
            self.by_subject
                .entry(s.clone())
                .or_default()
                .insert(key.clone());
        }
        self.bindings.insert(key, binding);
    }

    fn remove_binding_key(&mut self, key: &BindingKey) {
        if let Some(old) = self.bindings.remove(key) {
            for s in &old.subjects {
                if let Some(set) = self.by_subject.get_mut(s) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_subject.remove(s);
                    }
                }
            }
        }
    }

    pub fn set_cluster_role_binding(&mut self, b: &ClusterRoleBinding) {
        let key = BindingKey {
            namespace: None,
            name: b.metadata.name.clone().unwrap_or_default(),
        };
        let binding = Binding {
            role: b.role_ref.clone(),
            subjects: subjects(b.subjects.as_ref(), None),
        };
        self.set_binding(key, binding);
    }

    pub fn remove_cluster_role_binding(&mut self, name: &str) {
        self.remove_binding_key(&BindingKey {
            namespace: None,
            name: name.into(),
        });
    }

    pub fn set_role_binding(&mut self, b: &RoleBinding) {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        let binding = Binding {
            role: b.role_ref.clone(),
            subjects: subjects(b.subjects.as_ref(), Some(&ns)),
        };
        let key = BindingKey {
            namespace: Some(ns),
            name: b.metadata.name.clone().unwrap_or_default(),
        };
        self.set_binding(key, binding);
    }

    pub fn remove_role_binding(&mut self, namespace: &str, name: &str) {
        self.remove_binding_key(&BindingKey {
            namespace: Some(namespace.into()),
            name: name.into(),
        });
    }

    /// The rules a binding's role holds (none if the role does not exist yet).
    fn role_rules(&self, key: &BindingKey, role: &RoleRef) -> Option<&Arc<Vec<PolicyRule>>> {
        match (role.kind.as_str(), &key.namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&role.name),
            ("Role", Some(ns)) => self.roles.get(&(ns.clone(), role.name.clone())),
            _ => None,
        }
    }

    /// Every binding that applies to `user` in `namespace` ("" for cluster scope), with the
    /// subject it matched.
    fn applicable<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a BindingKey, &'a Binding, Who)> + 'a {
        std::iter::once(Who::User(user.name.clone()))
            .chain(user.groups.iter().map(|g| Who::Group(g.clone())))
            .flat_map(move |who| {
                self.by_subject
                    .get(&who)
                    .into_iter()
                    .flatten()
                    .filter(move |k| match &k.namespace {
                        None => true,
                        Some(ns) => !namespace.is_empty() && ns == namespace,
                    })
                    .filter_map(move |k| self.bindings.get(k).map(|b| (k, b, who.clone())))
            })
    }

    /// The grant that allows the request, if one does.
    pub fn authorize(&self, a: &Attributes<'_>) -> Option<Grant> {
        for (key, binding, who) in self.applicable(a.user, a.namespace()) {
            let Some(rules) = self.role_rules(key, &binding.role) else {
                continue;
            };
            if rules.iter().any(|r| rules::allows(r, a)) {
                let role = format!("{} {:?}", binding.role.kind, binding.role.name);
                let binding = match &key.namespace {
                    None => format!("ClusterRoleBinding {:?}", key.name),
                    Some(ns) => format!("RoleBinding \"{ns}/{}\"", key.name),
                };
                let subject = match who {
                    Who::User(u) => format!("User {u:?}"),
                    Who::Group(g) => format!("Group {g:?}"),
                };
                return Some(Grant {
                    binding,
                    role,
                    subject,
                });
            }
        }
        None
    }

    /// Every rule `user` holds in `namespace` ("" for only the cluster-wide ones).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        let mut seen: BTreeSet<&BindingKey> = BTreeSet::new();
        for (key, binding, _) in self.applicable(user, namespace) {
            if !seen.insert(key) {
                continue;
            }
            if let Some(rules) = self.role_rules(key, &binding.role) {
                for r in rules.iter() {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
            }
        }
        out
    }

    /// The rules of a role a binding in `namespace` ("" for a ClusterRoleBinding) refers to.
    pub fn referenced_rules(&self, namespace: &str, role: &RoleRef) -> Option<Vec<PolicyRule>> {
        let key = BindingKey {
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            name: String::new(),
        };
        self.role_rules(&key, role).map(|r| r.as_ref().clone())
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.roles.len() + self.cluster_roles.len(),
            self.bindings.len(),
        )
    }
}
