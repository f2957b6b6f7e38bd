//! The authorization decision, as every API request makes it: Strake's authorizer (the
//! system:masters check, the node authorizer, RBAC with bindings indexed by subject) over the
//! default policy plus N Roles and N RoleBindings spread over namespaces, for a mix of
//! allowed and refused requests by users in a few groups. Prints p50/p99/max per decision
//! against the target (p99 ≤ 20 µs), and the same requests decided the way upstream's
//! RBAC authorizer walks the policy (every ClusterRoleBinding, then the namespace's
//! RoleBindings, matching subjects one by one), on the same data in the same run, as a ratio.

use std::collections::HashMap;
use std::time::Instant;

use clap::Parser;
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strake_apimachinery::UserInfo;
use strake_rbac::rules::{self, Attributes, Resource};
use strake_rbac::{Authorizer, bootstrap};

#[derive(Parser)]
struct Args {
    /// Roles, and as many RoleBindings.
    #[arg(long, default_value_t = 1000)]
    roles: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Decisions measured.
    #[arg(long, default_value_t = 200_000)]
    decisions: usize,
}

const RESOURCES: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "services"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("batch", "jobs"),
    ("networking.k8s.io", "ingresses"),
];
const VERBS: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.next() % xs.len()]
    }
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(String::from),
        ..Default::default()
    }
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some(bootstrap::GROUP.into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

struct Data {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    crbs: Vec<ClusterRoleBinding>,
    rbs_by_ns: HashMap<String, Vec<RoleBinding>>,
}

fn build(args: &Args, rng: &mut Rng, authz: &Authorizer) -> Data {
    let mut data = Data {
        cluster_roles: HashMap::new(),
        roles: HashMap::new(),
        crbs: bootstrap::cluster_role_bindings(),
        rbs_by_ns: HashMap::new(),
    };
    let mut policy = authz.policy();
    for r in bootstrap::cluster_roles() {
        policy.set_cluster_role(&r);
        data.cluster_roles.insert(
            r.metadata.name.clone().unwrap_or_default(),
            r.rules.unwrap_or_default(),
        );
    }
    for b in &data.crbs {
        policy.set_cluster_role_binding(b);
    }
    for i in 0..args.roles {
        let ns = format!("ns-{}", i % args.namespaces);
        let rules: Vec<PolicyRule> = (0..3 + i % 3)
            .map(|_| {
                let (g, r) = rng.pick(RESOURCES);
                let verbs: Vec<&str> = (0..2).map(|_| *rng.pick(VERBS)).collect();
                rules::rule(&verbs, &[g], &[r])
            })
            .collect();
        let role = Role {
            metadata: meta(Some(&ns), &format!("role-{i}")),
            rules: Some(rules.clone()),
        };
        policy.set_role(&role);
        data.roles.insert((ns.clone(), format!("role-{i}")), rules);
        // Each binding names one user and one of 20 groups.
        let b = RoleBinding {
            metadata: meta(Some(&ns), &format!("binding-{i}")),
            role_ref: RoleRef {
                api_group: bootstrap::GROUP.into(),
                kind: "Role".into(),
                name: format!("role-{i}"),
            },
            subjects: Some(vec![
                subject("User", &format!("user-{}", i % 300)),
                subject("Group", &format!("team-{}", i % 20)),
            ]),
        };
        policy.set_role_binding(&b);
        data.rbs_by_ns.entry(ns).or_default().push(b);
    }
    data
}

fn matches(s: &Subject, u: &UserInfo, binding_ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == u.name,
        "Group" => u.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().unwrap_or(binding_ns);
            u.name == strake_apimachinery::user::service_account_user(ns, &s.name)
        }
        _ => false,
    }
}

/// Upstream's walk: every ClusterRoleBinding, then the namespace's RoleBindings.
fn linear(d: &Data, a: &Attributes<'_>) -> bool {
    let ns = a.namespace();
    for b in &d.crbs {
        if b.subjects.iter().flatten().any(|s| matches(s, a.user, ""))
            && let Some(rules) = d.cluster_roles.get(&b.role_ref.name)
            && rules.iter().any(|r| rules::allows(r, a))
        {
            return true;
        }
    }
    for b in d.rbs_by_ns.get(ns).into_iter().flatten() {
        if !b.subjects.iter().flatten().any(|s| matches(s, a.user, ns)) {
            continue;
        }
        let rules = match b.role_ref.kind.as_str() {
            "ClusterRole" => d.cluster_roles.get(&b.role_ref.name),
            _ => d.roles.get(&(ns.to_string(), b.role_ref.name.clone())),
        };
        if rules.is_some_and(|rs| rs.iter().any(|r| rules::allows(r, a))) {
            return true;
        }
    }
    false
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99), *ns.last().unwrap_or(&0) as f64 / 1000.0)
}

fn main() {
    let args = Args::parse();
    let mut rng = Rng(0x5eed_cafe_f00d);
    let authz = Authorizer::new();
    let data = build(&args, &mut rng, &authz);
    let users: Vec<UserInfo> = (0..300)
        .map(|i| {
            UserInfo::new(
                format!("user-{i}"),
                &[
                    &format!("team-{}", i % 20),
                    &format!("team-{}", (i + 7) % 20),
                    "system:authenticated",
                ],
            )
        })
        .collect();
    struct Req {
        user: usize,
        verb: &'static str,
        group: &'static str,
        resource: &'static str,
        ns: String,
    }
    let reqs: Vec<Req> = (0..args.decisions)
        .map(|_| {
            let (group, resource) = *rng.pick(RESOURCES);
            Req {
                user: rng.next() % users.len(),
                verb: VERBS[rng.next() % VERBS.len()],
                group,
                resource,
                ns: format!("ns-{}", rng.next() % args.namespaces),
            }
        })
        .collect();
    let attrs = |r: &Req| -> (usize, &'static str, &'static str, &'static str) {
        (r.user, r.verb, r.group, r.resource)
    };
    let run = |name: &str, decide: &mut dyn FnMut(&Attributes<'_>) -> bool| {
        let mut times = Vec::with_capacity(reqs.len());
        let mut allowed = 0;
        for r in &reqs {
            let (u, verb, group, resource) = attrs(r);
            let a = Attributes::resource(
                &users[u],
                verb,
                Resource {
                    group,
                    resource,
                    subresource: "",
                    namespace: &r.ns,
                    name: "",
                },
            );
            let t = Instant::now();
            let ok = decide(&a);
            times.push(t.elapsed().as_nanos() as u64);
            allowed += ok as usize;
        }
        let (p50, p99, max) = percentiles(times);
        println!(
            "{name:<28} p50 {p50:>7.2} µs   p99 {p99:>7.2} µs   max {max:>8.2} µs   allowed {allowed}/{}",
            reqs.len()
        );
        (p99, allowed)
    };
    println!(
        "{} Roles and {} RoleBindings in {} namespaces, plus the default policy; {} decisions",
        args.roles,
        args.roles,
        args.namespaces,
        reqs.len()
    );
    let (ours, a1) = run("strake (indexed by subject)", &mut |a| {
        authz.authorize(a).allowed()
    });
    let (theirs, a2) = run("upstream's walk, same data", &mut |a| linear(&data, a));
    assert_eq!(a1, a2, "the two ways disagree on what is allowed");
    println!(
        "p99 {ours:.2} µs against the 20 µs target: {}; upstream's walk / strake = {:.1}x",
        if ours <= 20.0 { "met" } else { "MISSED" },
        theirs / ours.max(0.001)
    );
}
