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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    User,
    Group,
}

/// A binding: a RoleBinding (namespace set) or a ClusterRoleBinding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BindingKey {
    namespace: Option<String>,
    name: String,
}

#[derive(Debug)]
struct Binding {
    key: BindingKey,
    role: RoleRef,
    subjects: Vec<(Kind, String)>,
}

/// The bindings naming one subject: the cluster-wide ones, and the RoleBindings by namespace.
#[derive(Default)]
struct Bound {
    cluster: Vec<Arc<Binding>>,
    by_namespace: HashMap<String, Vec<Arc<Binding>>>,
}

impl Bound {
    fn list(&mut self, ns: &Option<String>) -> &mut Vec<Arc<Binding>> {
        match ns {
            None => &mut self.cluster,
            Some(ns) => self.by_namespace.entry(ns.clone()).or_default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.by_namespace.is_empty()
    }
}

/// The RBAC objects, indexed for decisions: a request looks up its user and each of its
/// groups (by `&str`, no allocation), and reads only the bindings naming them that apply in
/// the request's namespace.
#[derive(Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    /// Roles by namespace, then name.
    roles: HashMap<String, HashMap<String, Arc<Vec<PolicyRule>>>>,
    bindings: HashMap<BindingKey, Arc<Binding>>,
    users: HashMap<String, Bound>,
    groups: HashMap<String, Bound>,
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

fn subjects(subjects: Option<&Vec<Subject>>, binding_ns: Option<&str>) -> Vec<(Kind, String)> {
    subjects
        .into_iter()
        .flatten()
        .filter_map(|s| match s.kind.as_str() {
            "User" => Some((Kind::User, s.name.clone())),
            "Group" => Some((Kind::Group, s.name.clone())),
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .or(binding_ns)?;
                Some((Kind::User, service_account_user(ns, &s.name)))
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
        self.roles
            .entry(r.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .insert(
                r.metadata.name.clone().unwrap_or_default(),
                Arc::new(r.rules.clone().unwrap_or_default()),
            );
    }

    pub fn remove_role(&mut self, namespace: &str, name: &str) {
        if let Some(in_ns) = self.roles.get_mut(namespace) {
            in_ns.remove(name);
            if in_ns.is_empty() {
                self.roles.remove(namespace);
            }
        }
    }

    fn index(&mut self, kind: Kind) -> &mut HashMap<String, Bound> {
        match kind {
            Kind::User => &mut self.users,
            Kind::Group => &mut self.groups,
        }
    }

    fn set_binding(&mut self, binding: Binding) {
        self.remove_binding_key(&binding.key.clone());
        let b = Arc::new(binding);
        for (kind, name) in &b.subjects {
            let list = self
                .index(*kind)
                .entry(name.clone())
                .or_default()
                .list(&b.key.namespace);
            // A binding that names a subject twice is listed once.
            if !list.iter().any(|x| Arc::ptr_eq(x, &b)) {
                list.push(b.clone());
            }
        }
        self.bindings.insert(b.key.clone(), b);
    }

    fn remove_binding_key(&mut self, key: &BindingKey) {
        let Some(old) = self.bindings.remove(key) else {
            return;
        };
        for (kind, name) in &old.subjects {
            let index = self.index(*kind);
            let Some(bound) = index.get_mut(name) else {
                continue;
            };
            match &key.namespace {
                None => bound.cluster.retain(|b| b.key != *key),
                Some(ns) => {
                    if let Some(list) = bound.by_namespace.get_mut(ns) {
                        list.retain(|b| b.key != *key);
                        if list.is_empty() {
                            bound.by_namespace.remove(ns);
                        }
                    }
                }
            }
            if bound.is_empty() {
                index.remove(name);
            }
        }
    }

    pub fn set_cluster_role_binding(&mut self, b: &ClusterRoleBinding) {
        self.set_binding(Binding {
            key: BindingKey {
                namespace: None,
                name: b.metadata.name.clone().unwrap_or_default(),
            },
            role: b.role_ref.clone(),
            subjects: subjects(b.subjects.as_ref(), None),
        });
    }

    pub fn remove_cluster_role_binding(&mut self, name: &str) {
        self.remove_binding_key(&BindingKey {
            namespace: None,
            name: name.into(),
        });
    }

    pub fn set_role_binding(&mut self, b: &RoleBinding) {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        self.set_binding(Binding {
            role: b.role_ref.clone(),
            subjects: subjects(b.subjects.as_ref(), Some(&ns)),
            key: BindingKey {
                namespace: Some(ns),
                name: b.metadata.name.clone().unwrap_or_default(),
            },
        });
    }

    pub fn remove_role_binding(&mut self, namespace: &str, name: &str) {
        self.remove_binding_key(&BindingKey {
            namespace: Some(namespace.into()),
            name: name.into(),
        });
    }

    /// The rules of the role a binding in `namespace` (None: a ClusterRoleBinding) refers to
    /// (none if the role does not exist yet).
    fn role_rules(&self, namespace: Option<&str>, role: &RoleRef) -> Option<&Arc<Vec<PolicyRule>>> {
        match (role.kind.as_str(), namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&role.name),
            ("Role", Some(ns)) => self.roles.get(ns)?.get(&role.name),
            _ => None,
        }
    }

    /// Every binding that applies to `user` in `namespace` ("" for cluster scope), with the
    /// kind of subject it matched and the subject's name.
    fn applicable<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<Binding>, Kind, &'a str)> + 'a {
        let user_bound = self
            .users
            .get(&user.name)
            .map(|b| (b, Kind::User, user.name.as_str()));
        let group_bound = user
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g).map(|b| (b, Kind::Group, g.as_str())));
        user_bound
            .into_iter()
            .chain(group_bound)
            .flat_map(move |(bound, kind, name)| {
                let local = (!namespace.is_empty())
                    .then(|| bound.by_namespace.get(namespace))
                    .flatten();
                bound
                    .cluster
                    .iter()
                    .chain(local.into_iter().flatten())
                    .map(move |b| (b, kind, name))
            })
    }

    /// The grant that allows the request, if one does.
    pub fn authorize(&self, a: &Attributes<'_>) -> Option<Grant> {
        for (binding, kind, name) in self.applicable(a.user, a.namespace()) {
            let ns = binding.key.namespace.as_deref();
            let Some(rules) = self.role_rules(ns, &binding.role) else {
                continue;
            };
            if rules.iter().any(|r| rules::allows(r, a)) {
                return Some(Grant {
                    binding: match ns {
                        None => format!("ClusterRoleBinding {:?}", binding.key.name),
                        Some(ns) => format!("RoleBinding \"{ns}/{}\"", binding.key.name),
                    },
                    role: format!("{} {:?}", binding.role.kind, binding.role.name),
                    subject: match kind {
                        Kind::User => format!("User {name:?}"),
                        Kind::Group => format!("Group {name:?}"),
                    },
                });
            }
        }
        None
    }

    /// Every rule `user` holds in `namespace` ("" for only the cluster-wide ones).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        let mut seen: BTreeSet<&BindingKey> = BTreeSet::new();
        for (binding, _, _) in self.applicable(user, namespace) {
            if !seen.insert(&binding.key) {
                continue;
            }
            if let Some(rules) = self.role_rules(binding.key.namespace.as_deref(), &binding.role) {
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
        let ns = (!namespace.is_empty()).then_some(namespace);
        self.role_rules(ns, role).map(|r| r.as_ref().clone())
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.roles.values().map(HashMap::len).sum::<usize>() + self.cluster_roles.len(),
            self.bindings.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;
    use crate::rules::{Resource, rule};

    fn can(p: &Policy, u: &UserInfo, verb: &str, resource: &str, namespace: &str) -> bool {
        let a = Attributes::resource(
            u,
            verb,
            Resource {
                group: "",
                resource,
                subresource: "",
                namespace,
                name: "",
            },
        );
        p.authorize(&a).is_some()
    }

    #[test]
    fn bindings_apply_in_their_namespace_and_go_away_with_their_objects() {
        let mut p = Policy::new();
        p.set_role(&Role {
            metadata: ObjectMeta {
                name: Some("reader".into()),
                namespace: Some("team".into()),
                ..Default::default()
            },
            rules: Some(vec![rule(&["get", "list"], &[""], &["pods"])]),
        });
        let b: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                {"kind": "ServiceAccount", "name": "robot"}]
        }))
        .unwrap();
        p.set_role_binding(&b);
        let alice = UserInfo::new("alice", &[]);
        let dev = UserInfo::new("bob", &["devs"]);
        let robot = UserInfo::new("system:serviceaccount:team:robot", &[]);
        for u in [&alice, &dev, &robot] {
            assert!(can(&p, u, "list", "pods", "team"), "{u:?}");
            assert!(!can(&p, u, "list", "pods", "other"), "{u:?}");
            assert!(!can(&p, u, "list", "pods", ""), "{u:?}");
            assert!(!can(&p, u, "delete", "pods", "team"), "{u:?}");
        }
        let grant = p
            .authorize(&Attributes::resource(
                &dev,
                "get",
                Resource {
                    group: "",
                    resource: "pods",
                    subresource: "",
                    namespace: "team",
                    name: "x",
                },
            ))
            .unwrap();
        assert_eq!(
            grant.to_string(),
            r#"RBAC: allowed by RoleBinding "team/b" of Role "reader" to Group "devs""#
        );
        // A binding changed to drop a subject drops it from the index.
        let mut fewer = b.clone();
        fewer.subjects.as_mut().unwrap().remove(0);
        p.set_role_binding(&fewer);
        assert!(!can(&p, &alice, "list", "pods", "team"));
        assert!(can(&p, &dev, "list", "pods", "team"));
        // The role gone, nothing is granted; the binding gone, nothing is left behind.
        p.remove_role("team", "reader");
        assert!(!can(&p, &dev, "list", "pods", "team"));
        p.remove_role_binding("team", "b");
        assert_eq!(p.counts(), (0, 0));
        assert!(p.users.is_empty() && p.groups.is_empty());
    }
}
