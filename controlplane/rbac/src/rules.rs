//! What a request asks to do, and whether one policy rule allows it, with upstream's matching:
//! `*` in verbs, groups and resources; `pods/log` naming a subresource and `*/scale` any
//! resource's; resourceNames limiting a rule to named objects; non-resource URLs matched
//! exactly or by a trailing `*` prefix.

use k8s_openapi::api::rbac::v1::PolicyRule;
use strake_apimachinery::UserInfo;

pub const ALL: &str = "*";

/// The verbs of reading and of writing, as upstream's roles group them.
pub const READ: &[&str] = &["get", "list", "watch"];
pub const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// A resource request's coordinates. Empty strings mean "none" (the core group, a
/// cluster-scoped request, a collection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resource<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Everything an authorizer is asked.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    /// A Kubernetes verb for resources (`get`, `list`, `impersonate`, `bind`, ...), the
    /// lowercase HTTP method for non-resource paths.
    pub verb: &'a str,
    /// None for a non-resource request.
    pub resource: Option<Resource<'a>>,
    /// The URL path of a non-resource request.
    pub path: &'a str,
}

impl<'a> Attributes<'a> {
    pub fn resource(user: &'a UserInfo, verb: &'a str, r: Resource<'a>) -> Self {
        Self {
            user,
            verb,
            resource: Some(r),
            path: "",
        }
    }

    pub fn non_resource(user: &'a UserInfo, verb: &'a str, path: &'a str) -> Self {
        Self {
            user,
            verb,
            resource: None,
            path,
        }
    }

    /// The namespace a request is in ("" for cluster-scoped and non-resource requests).
    pub fn namespace(&self) -> &'a str {
        self.resource.map(|r| r.namespace).unwrap_or("")
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == ALL || x == want)
}

/// Whether the rule's resources name `resource` (with `subresource`, if any).
pub fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    let Some(resources) = &rule.resources else {
        return false;
    };
    resources.iter().any(|r| {
        if r == ALL {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        match r.split_once('/') {
            Some((res, sub)) => (res == resource || res == ALL) && sub == subresource,
            None => false,
        }
    })
}

/// Whether a non-resource rule's URLs cover `path`.
pub fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|u| {
            u == ALL
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
}

/// Whether `rule` allows the request.
pub fn allows(rule: &PolicyRule, a: &Attributes<'_>) -> bool {
    if !has(&rule.verbs, a.verb) {
        return false;
    }
    match &a.resource {
        None => url_matches(rule, a.path),
        Some(r) => {
            has(rule.api_groups.as_deref().unwrap_or_default(), r.group)
                && resource_matches(rule, r.resource, r.subresource)
                && match rule.resource_names.as_deref() {
                    None | Some([]) => true,
                    Some(names) => !r.name.is_empty() && names.iter().any(|n| n == r.name),
                }
        }
    }
}

/// A rule from its parts (the bootstrap policy and tests build rules this way).
pub fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let own = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        verbs: own(verbs),
        api_groups: Some(own(groups)),
        resources: Some(own(resources)),
        ..Default::default()
    }
}

/// A non-resource rule.
pub fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    let own = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        verbs: own(verbs),
        non_resource_urls: Some(own(urls)),
        ..Default::default()
    }
}

/// The rules of `wanted` no rule of `held` covers, each broken down to one verb on one
/// resource (or URL) and one name: the escalation check. A `*` wanted is covered only by a
/// `*` held, as upstream compares them.
pub fn uncovered(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for w in wanted {
        let names: Vec<Option<&String>> = match w.resource_names.as_deref() {
            None | Some([]) => vec![None],
            Some(ns) => ns.iter().map(Some).collect(),
        };
        for verb in &w.verbs {
            for url in w.non_resource_urls.as_deref().unwrap_or_default() {
                let ok = held.iter().any(|h| {
                    h.verbs.iter().any(|v| v == ALL || v == verb)
                        && h.non_resource_urls
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .any(|u| {
                                u == ALL
                                    || u == url
                                    || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                            })
                });
                if !ok {
                    missing.push(url_rule(&[verb], &[url]));
                }
            }
            for group in w.api_groups.as_deref().unwrap_or_default() {
                for res in w.resources.as_deref().unwrap_or_default() {
                    for name in &names {
                        let ok = held.iter().any(|h| {
                            h.verbs.iter().any(|v| v == ALL || v == verb)
                                && h.api_groups
                                    .as_deref()
                                    .unwrap_or_default()
                                    .iter()
                                    .any(|g| g == ALL || g == group)
                                && h.resources.as_deref().unwrap_or_default().iter().any(|r| {
                                    r == ALL
                                        || r == res
                                        || (r.strip_prefix("*/").is_some_and(|sub| {
                                            res.split_once('/').is_some_and(|(_, s)| s == sub)
                                        }))
                                })
                                && match (h.resource_names.as_deref(), name) {
                                    (None | Some([]), _) => true,
                                    (Some(hn), Some(n)) => hn.contains(n),
                                    (Some(_), None) => false,
                                }
                        });
                        if !ok {
                            let mut r = rule(&[verb], &[group], &[res]);
                            r.resource_names = name.map(|n| vec![n.clone()]);
                            missing.push(r);
                        }
                    }
                }
            }
        }
    }
    missing
}

/// A rule in upstream's compact text (`{APIGroups:["apps"], Resources:["deployments"],
/// Verbs:["create"]}`), for error messages.
pub fn describe(r: &PolicyRule) -> String {
    let list = |xs: &[String]| {
        xs.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if let Some(g) = r.api_groups.as_deref().filter(|g| !g.is_empty()) {
        parts.push(format!("APIGroups:[{}]", list(g)));
    }
    if let Some(x) = r.resources.as_deref().filter(|x| !x.is_empty()) {
        parts.push(format!("Resources:[{}]", list(x)));
    }
    if let Some(x) = r.resource_names.as_deref().filter(|x| !x.is_empty()) {
        parts.push(format!("ResourceNames:[{}]", list(x)));
    }
    if let Some(x) = r.non_resource_urls.as_deref().filter(|x| !x.is_empty()) {
        parts.push(format!("NonResourceURLs:[{}]", list(x)));
    }
    parts.push(format!("Verbs:[{}]", list(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        u: &'a UserInfo,
        verb: &'a str,
        group: &'a str,
        res: &'a str,
        sub: &'a str,
    ) -> Attributes<'a> {
        Attributes::resource(
            u,
            verb,
            Resource {
                group,
                resource: res,
                subresource: sub,
                namespace: "web",
                name: "x",
            },
        )
    }

    #[test]
    fn resources_subresources_and_wildcards() {
        let u = UserInfo::default();
        let pods = rule(&["get"], &[""], &["pods"]);
        assert!(allows(&pods, &req(&u, "get", "", "pods", "")));
        assert!(
            !allows(&pods, &req(&u, "get", "", "pods", "log")),
            "a subresource is named on its own"
        );
        assert!(!allows(&pods, &req(&u, "list", "", "pods", "")));
        assert!(!allows(&pods, &req(&u, "get", "apps", "pods", "")));
        let log = rule(&["get"], &[""], &["pods/log"]);
        assert!(allows(&log, &req(&u, "get", "", "pods", "log")));
        assert!(!allows(&log, &req(&u, "get", "", "pods", "")));
        let scale = rule(&["update"], &["*"], &["*/scale"]);
        assert!(allows(
            &scale,
            &req(&u, "update", "apps", "deployments", "scale")
        ));
        assert!(!allows(
            &scale,
            &req(&u, "update", "apps", "deployments", "")
        ));
        let all = rule(&["*"], &["*"], &["*"]);
        assert!(allows(
            &all,
            &req(&u, "escalate", "rbac.authorization.k8s.io", "roles", "")
        ));
    }

    #[test]
    fn resource_names_limit_to_named_objects() {
        let u = UserInfo::default();
        let mut r = rule(&["get", "list"], &[""], &["configmaps"]);
        r.resource_names = Some(vec!["x".into()]);
        assert!(allows(&r, &req(&u, "get", "", "configmaps", "")));
        let mut other = req(&u, "get", "", "configmaps", "");
        other.resource.as_mut().unwrap().name = "y";
        assert!(!allows(&r, &other));
        let mut list = req(&u, "list", "", "configmaps", "");
        list.resource.as_mut().unwrap().name = "";
        assert!(!allows(&r, &list), "a collection is not a named object");
    }

    #[test]
    fn urls_exact_or_by_prefix() {
        let u = UserInfo::default();
        let r = url_rule(&["get"], &["/healthz", "/apis/*"]);
        assert!(allows(&r, &Attributes::non_resource(&u, "get", "/healthz")));
        assert!(allows(
            &r,
            &Attributes::non_resource(&u, "get", "/apis/apps/v1")
        ));
        assert!(!allows(
            &r,
            &Attributes::non_resource(&u, "get", "/healthz/etcd")
        ));
        assert!(!allows(
            &r,
            &Attributes::non_resource(&u, "post", "/healthz")
        ));
        assert!(!allows(
            &rule(&["get"], &["*"], &["*"]),
            &Attributes::non_resource(&u, "get", "/healthz")
        ));
    }

    #[test]
    fn escalation_breaks_rules_down() {
        let held = vec![
            rule(&["get", "list"], &[""], &["pods", "configmaps"]),
            rule(&["*"], &["apps"], &["deployments"]),
        ];
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        assert!(uncovered(&held, &[rule(&["delete"], &["apps"], &["deployments"])]).is_empty());
        let missing = uncovered(
            &held,
            &[rule(&["get", "delete"], &[""], &["pods", "secrets"])],
        );
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(
            !uncovered(&held, &[rule(&["*"], &[""], &["pods"])]).is_empty(),
            "a * is not covered by a list"
        );
        let mut named = rule(&["get"], &[""], &["secrets"]);
        named.resource_names = Some(vec!["a".into()]);
        let mut held_named = named.clone();
        assert!(uncovered(&[held_named.clone()], &[named.clone()]).is_empty());
        held_named.resource_names = Some(vec!["b".into()]);
        assert_eq!(uncovered(&[held_named], &[named]).len(), 1);
        assert_eq!(
            describe(&rule(&["create"], &["apps"], &["deployments"])),
            r#"{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}"#
        );
    }
}
