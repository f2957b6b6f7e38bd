//! Who a request acts as, once it is authenticated and any impersonation is applied. The
//! authorizer, admission and the review kinds all read this one value.

use std::collections::BTreeMap;

/// The group every member of which may do anything (upstream's privileged group).
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
pub const NODES: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated user: name, uid, groups and extra attributes, as upstream's `user.Info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        Self {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The caller with no credentials.
    pub fn anonymous() -> Self {
        Self::new(ANONYMOUS, &[UNAUTHENTICATED])
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name, for a node's credentials (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group(NODES) {
            return None;
        }
        self.name
            .strip_prefix(NODE_PREFIX)
            .filter(|n| !n.is_empty())
    }

    /// (namespace, name) of a service account's user (`system:serviceaccount:<ns>:<name>`).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'))
    }
}

/// The user name of a service account.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The groups every service account of `namespace` is in.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        SERVICE_ACCOUNTS.to_string(),
        format!("{SERVICE_ACCOUNTS}:{namespace}"),
        AUTHENTICATED.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_service_accounts_are_recognised_by_name_and_group() {
        assert_eq!(
            UserInfo::new("system:node:w1", &[NODES]).node_name(),
            Some("w1")
        );
        assert_eq!(UserInfo::new("system:node:w1", &[]).node_name(), None);
        assert_eq!(UserInfo::new("system:node:", &[NODES]).node_name(), None);
        let sa = UserInfo::new(service_account_user("web", "robot"), &[]);
        assert_eq!(sa.service_account(), Some(("web", "robot")));
        assert_eq!(
            UserInfo::new("system:serviceaccount:web", &[]).service_account(),
            None
        );
    }
}
