//! Authorization over HTTPS, as users meet it: a denial matrix generated from the resource
//! table for users bound to the default `view` and `edit` roles, a node under the node
//! authorizer and NodeRestriction, anonymous callers, impersonation, the escalation checks on
//! roles and bindings, ClusterRole aggregation, and the review kinds (kubectl's `auth can-i`
//! and `auth whoami` among them).

use crate::common;

use std::time::Duration;

use common::Loopback;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};
use strake_pki::{CertifiedKey, ClusterCa};
use strake_rbac::rules::{self, Attributes, Resource};

struct Caller {
    http: reqwest::Client,
    base: String,
}

impl Caller {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(method, path, body, &[]).await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            r = r.header("Content-Type", ct).body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        if code == 200 && path.contains("watch=true") {
            // A watch that was let through: its stream is not read.
            return (code, Value::Null);
        }
        let text = resp.text().await.unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
        )
    }
}

fn tls_client(ca_pem: &str, key: Option<&CertifiedKey>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(strake_pki::client_config(ca_pem, key).unwrap())
        .build()
        .unwrap()
}

/// A caller with a client certificate for `user` in `groups`, signed by the cluster CA.
fn user(c: &Loopback, name: &str, groups: &[&str]) -> Caller {
    let ca = ClusterCa::load_or_generate(&c.dir.path().join("pki"), "t").unwrap();
    let key = ca
        .issue_client(name, groups, time::Duration::hours(1))
        .unwrap();
    Caller {
        http: tls_client(&c.creds.ca_pem, Some(&key)),
        base: c.base.clone(),
    }
}

fn admin(c: &Loopback) -> Caller {
    Caller {
        http: c.http.clone(),
        base: c.base.clone(),
    }
}

/// Whether a response is an authorization refusal of `verb` (admission may also answer 403,
/// with other words).
fn denied(code: u16, body: &Value, verb: &str) -> bool {
    code == 403
        && body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("cannot {verb} ")))
}

async fn ok(c: &Caller, method: &str, path: &str, body: Value) -> Value {
    let (code, v) = c.call(method, path, Some(body)).await;
    assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
    v
}

/// Binds `role` in `ns` to the user `who`, and waits until the authorizer (fed by a watch)
/// allows `who` what `probe` (resourceAttributes) asks.
async fn bind(c: &Loopback, ns: &str, name: &str, kind: &str, role: &str, who: &str, probe: Value) {
    let admin = admin(c);
    ok(
        &admin,
        "POST",
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [user_subject(who)]}),
    )
    .await;
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": who, "resourceAttributes": probe}});
    eventually(&format!("{who} bound to {role}"), || async {
        let (_, r) = admin
            .call(
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(sar.clone()),
            )
            .await;
        r["status"]["allowed"] == true
    })
    .await;
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn probe(ns: &str, verb: &str, group: &str, resource: &str) -> Value {
    json!({"namespace": ns, "verb": verb, "group": group, "resource": resource})
}

fn user_subject(name: &str) -> Value {
    json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name})
}

async fn namespace(c: &Loopback, name: &str) {
    ok(
        &admin(c),
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": name}}),
    )
    .await;
}

fn collection(group: &str, version: &str, ns: Option<&str>, plural: &str) -> String {
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

/// The rules the aggregated default role `name` ends up with (view feeds edit feeds admin).
fn default_rules(name: &str) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    let mut all = strake_rbac::bootstrap::cluster_roles();
    for _ in 0..3 {
        let now = all.clone();
        for r in &mut all {
            if let Some(rules) = strake_rbac::bootstrap::aggregate(r, &now) {
                r.rules = Some(rules);
            }
        }
    }
    let role = all
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .unwrap();
    role.rules.clone().unwrap_or_default()
}

/// Who the matrix asks as, and what it expects them to hold.
enum Expect {
    /// Rules granted by a RoleBinding in `team` only.
    InTeam(Vec<PolicyRule>),
    /// Rules granted everywhere (a ClusterRoleBinding, or the node's own role).
    Everywhere(Vec<PolicyRule>),
    Nothing,
}

/// A name, how it calls, the headers it adds (impersonation), what it should hold.
type Persona<'a> = (&'a str, Caller, Vec<(&'a str, &'a str)>, Expect);

/// The kinds the node authorizer judges itself (by its graph, its name, or NodeRestriction
/// behind it); the node test covers them.
const GRAPH_KINDS: &[&str] = &[
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "persistentvolumes",
    "pods",
    "nodes",
    "leases",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_matrix_over_every_served_kind() {
    let c = common::start().await;
    namespace(&c, "team").await;
    namespace(&c, "other").await;
    let team = |verb: &str| probe("team", verb, "", "configmaps");
    bind(
        &c,
        "team",
        "alice-view",
        "ClusterRole",
        "view",
        "alice",
        team("list"),
    )
    .await;
    // edit's and admin's own rules arrive by aggregation.
    bind(
        &c,
        "team",
        "bob-edit",
        "ClusterRole",
        "edit",
        "bob",
        team("create"),
    )
    .await;
    bind(
        &c,
        "team",
        "ann-admin",
        "ClusterRole",
        "admin",
        "ann",
        probe(
            "team",
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
        ),
    )
    .await;
    ok(
        &admin(&c),
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({"metadata": {"name": "root-cluster-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [user_subject("root")]}),
    )
    .await;
    // A service account and a group, bound to view; the matrix reaches them by impersonation.
    ok(
        &admin(&c),
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
        json!({"metadata": {"name": "robot-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "team"},
                {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "auditors"}]}),
    )
    .await;
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "root", "resourceAttributes": {"verb": "delete", "resource": "nodes"}}});
    let sa = "system:serviceaccount:team:robot";
    let sar_sa = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": sa, "groups": ["system:serviceaccounts"], "resourceAttributes": team("list")}});
    for body in [sar, sar_sa] {
        eventually("the cluster and service-account bindings", || async {
            let (_, r) = admin(&c)
                .call(
                    "POST",
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                    Some(body.clone()),
                )
                .await;
            r["status"]["allowed"] == true
        })
        .await;
    }
    let anon = Caller {
        http: tls_client(&c.creds.ca_pem, None),
        base: c.base.clone(),
    };
    let personas: Vec<Persona<'_>> = vec![
        (
            "cluster-admin",
            user(&c, "root", &[]),
            vec![],
            Expect::Everywhere(default_rules("cluster-admin")),
        ),
        (
            "admin",
            user(&c, "ann", &[]),
            vec![],
            Expect::InTeam(default_rules("admin")),
        ),
        (
            "edit",
            user(&c, "bob", &[]),
            vec![],
            Expect::InTeam(default_rules("edit")),
        ),
        (
            "view",
            user(&c, "alice", &[]),
            vec![],
            Expect::InTeam(default_rules("view")),
        ),
        (
            "node",
            user(&c, "system:node:w1", &["system:nodes"]),
            vec![],
            Expect::Everywhere(strake_rbac::bootstrap::node_rules()),
        ),
        (
            "service account",
            admin(&c),
            vec![("Impersonate-User", sa)],
            Expect::InTeam(default_rules("view")),
        ),
        (
            "impersonated user",
            admin(&c),
            vec![
                ("Impersonate-User", "ivy"),
                ("Impersonate-Group", "auditors"),
            ],
            Expect::InTeam(default_rules("view")),
        ),
        ("anonymous", anon, vec![], Expect::Nothing),
    ];
    let table = c.registry.table().snapshot();
    let u = strake_apimachinery::UserInfo::new("matrix", &[]);
    let mut checked = 0;
    let mut refused = 0;
    for (persona, caller, headers, expect) in &personas {
        for def in table.all() {
            let plural = def.plural.as_str();
            // Create-only kinds (the reviews) have tests of their own.
            if def.verbs.iter().all(|v| v == "create")
                || (*persona == "node" && GRAPH_KINDS.contains(&plural))
            {
                continue;
            }
            let scopes: &[Option<&str>] = if def.namespaced {
                &[Some("team"), Some("other")]
            } else {
                &[None]
            };
            for &ns in scopes {
                let path = collection(&def.group, &def.version, ns, plural);
                for verb in &def.verbs {
                    let ns_name = ns.unwrap_or_default();
                    let may = |rules: &[PolicyRule]| {
                        let a = Attributes::resource(
                            &u,
                            verb,
                            Resource {
                                group: &def.group,
                                resource: plural,
                                subresource: "",
                                namespace: ns_name,
                                name: "matrix-x",
                            },
                        );
                        rules.iter().any(|r| rules::allows(r, &a))
                    };
                    let want = match expect {
                        Expect::InTeam(rules) => ns == Some("team") && may(rules),
                        Expect::Everywhere(rules) => may(rules),
                        Expect::Nothing => false,
                    };
                    let body = json!({"apiVersion": def.api_version(), "kind": def.kind,
                        "metadata": {"name": "matrix-x"}});
                    let one = format!("{path}/matrix-x?dryRun=All");
                    let (method, target, body) = match verb.as_str() {
                        "get" => ("GET", format!("{path}/matrix-x"), None),
                        "list" => ("GET", path.clone(), None),
                        "watch" => ("GET", format!("{path}?watch=true&timeoutSeconds=1"), None),
                        "create" => ("POST", format!("{path}?dryRun=All"), Some(body)),
                        "update" => ("PUT", one, Some(body)),
                        "patch" => ("PATCH", one, Some(json!({}))),
                        "delete" => ("DELETE", one, None),
                        "deletecollection" => (
                            "DELETE",
                            format!("{path}?dryRun=All&labelSelector=matrix%3Dnone"),
                            None,
                        ),
                        _ => continue,
                    };
                    let (code, got) = caller.call_as(method, &target, body, headers).await;
                    let refusal = denied(code, &got, verb);
                    assert_eq!(!refusal, want, "{persona} {verb} {target}: {code} {got}");
                    checked += 1;
                    refused += refusal as usize;
                }
            }
        }
    }
    eprintln!(
        "denial matrix: {checked} requests across {} personas, {refused} refused",
        personas.len()
    );
    assert!(
        checked > 2000 && refused > 500 && checked - refused > 500,
        "{checked} checks, {refused} refused"
    );
    let alice = user(&c, "alice", &[]);
    let bob = user(&c, "bob", &[]);

    // Spot checks that do not lean on the policy's own rules.
    let secrets = "/api/v1/namespaces/team/secrets";
    let (code, body) = alice.call("GET", secrets, None).await;
    assert!(denied(code, &body, "list"), "view must not read secrets");
    assert_eq!(
        body["message"],
        r#"secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "team""#
    );
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(bob.call("GET", secrets, None).await.0, 200);
    let (code, body) = bob
        .call(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings?dryRun=All",
            Some(json!({"metadata": {"name": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [user_subject("eve")]})),
        )
        .await;
    assert!(
        denied(code, &body, "create"),
        "edit must not bind roles: {body}"
    );
    // A namespace is readable where a RoleBinding grants it, by its own name.
    assert_eq!(
        alice.call("GET", "/api/v1/namespaces/team", None).await.0,
        200
    );
    let (code, body) = alice.call("GET", "/api/v1/namespaces/other", None).await;
    assert!(denied(code, &body, "get"), "{body}");
    // Everyone signed in may discover the API; no one unknown may read it.
    assert_eq!(alice.call("GET", "/apis", None).await.0, 200);
    assert_eq!(alice.call("GET", "/openapi/v3", None).await.0, 200);
    let anon = Caller {
        http: tls_client(&c.creds.ca_pem, None),
        base: c.base.clone(),
    };
    assert_eq!(anon.call("GET", "/healthz", None).await.0, 200);
    let (code, body) = anon.call("GET", "/apis", None).await;
    assert_eq!(
        (code, body["message"].as_str().unwrap_or_default()),
        (
            403,
            r#"forbidden: User "system:anonymous" cannot get path "/apis""#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_and_the_reviews_answer_for_the_user_asked_about() {
    let c = common::start().await;
    namespace(&c, "team").await;
    bind(
        &c,
        "team",
        "alice-view",
        "ClusterRole",
        "view",
        "alice",
        probe("team", "list", "", "pods"),
    )
    .await;
    let admin = admin(&c);
    let alice = user(&c, "alice", &["devs"]);
    // An admin acting as alice gets alice's rights, and whoami says so.
    let as_alice = [("Impersonate-User", "alice"), ("Impersonate-Group", "devs")];
    let (code, _) = admin
        .call_as("GET", "/api/v1/namespaces/team/pods", None, &as_alice)
        .await;
    assert_eq!(code, 200);
    let (code, body) = admin
        .call_as("GET", "/api/v1/namespaces/team/secrets", None, &as_alice)
        .await;
    assert!(denied(code, &body, "list"), "{body}");
    let (_, who) = admin
        .call_as(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
            &as_alice,
        )
        .await;
    assert_eq!(who["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!(["devs", "system:authenticated"])
    );
    // alice may not impersonate anyone.
    let (code, body) = alice
        .call_as(
            "GET",
            "/api/v1/namespaces/team/pods",
            None,
            &[("Impersonate-User", "bob")],
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    // Impersonating a service account gives its groups.
    let (_, who) = admin
        .call_as(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
            &[("Impersonate-User", "system:serviceaccount:team:robot")],
        )
        .await;
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated"
        ])
    );

    // SelfSubjectAccessReview, as `kubectl auth can-i` sends it.
    let ssar = |verb: &str, resource: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "team", "verb": verb, "resource": resource}}})
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (_, r) = alice.call("POST", path, Some(ssar("list", "pods"))).await;
    assert_eq!(r["status"]["allowed"], true, "{r}");
    assert!(
        r["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("RoleBinding \"team/alice-view\"")
    );
    let (_, r) = alice
        .call("POST", path, Some(ssar("list", "secrets")))
        .await;
    assert_eq!(r["status"]["allowed"], false, "{r}");
    // SubjectAccessReview: an admin asks about alice.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["devs"],
            "resourceAttributes": {"namespace": "team", "verb": "get", "resource": "configmaps"}}});
    let (_, r) = admin
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(sar.clone()),
        )
        .await;
    assert_eq!(r["status"]["allowed"], true, "{r}");
    // ... which alice herself may not ask.
    let (code, body) = alice
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(sar),
        )
        .await;
    assert!(denied(code, &body, "create"), "{body}");
    // SelfSubjectRulesReview lists what view grants in team.
    let (_, r) = alice
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            Some(
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": "team"}}),
            ),
        )
        .await;
    let rules = r["status"]["resourceRules"].as_array().unwrap();
    assert!(
        rules.iter().any(
            |x| x["resources"].as_array().unwrap().contains(&json!("pods"))
                && x["verbs"].as_array().unwrap().contains(&json!("list"))
        ),
        "{r}"
    );
    assert!(
        !r["status"]["nonResourceRules"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // kubectl, unchanged.
    let kubectl = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";
    let kc = c.kubeconfig.to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(kubectl)
            .args(["--kubeconfig", &kc])
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let out = run(&[
        "auth", "can-i", "list", "pods", "-n", "team", "--as", "alice",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes",
        "{out:?}"
    );
    let out = run(&[
        "auth", "can-i", "create", "secrets", "-n", "team", "--as", "alice",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{out:?}");
    assert!(!out.status.success());
    let out = run(&[
        "auth",
        "whoami",
        "--as",
        "alice",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice",
        "{out:?}"
    );
    let out = run(&["get", "secrets", "-n", "team", "--as", "alice"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            r#"User "alice" cannot list resource "secrets" in API group "" in the namespace "team""#
        ),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_grants_what_they_do_not_hold() {
    let c = common::start().await;
    namespace(&c, "team").await;
    let admin = admin(&c);
    // carol may manage roles and bindings in team, and read pods there.
    ok(
        &admin,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles",
        json!({"metadata": {"name": "rbac-manager"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
                "verbs": ["create", "get", "list", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await;
    bind(
        &c,
        "team",
        "carol",
        "Role",
        "rbac-manager",
        "carol",
        probe("team", "create", "rbac.authorization.k8s.io", "roles"),
    )
    .await;
    let carol = user(&c, "carol", &[]);
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles";
    let bindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings";
    // What she holds she may hand on...
    ok(
        &carol,
        "POST",
        roles,
        json!({"metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    )
    .await;
    ok(
        &carol,
        "POST",
        bindings,
        json!({"metadata": {"name": "dave-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [user_subject("dave")]}),
    )
    .await;
    // ... what she does not, she may not.
    let (code, body) = carol
        .call(
            "POST",
            roles,
            Some(json!({"metadata": {"name": "secret-reader"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]})),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.starts_with(r#"roles.rbac.authorization.k8s.io "secret-reader" is forbidden: user "carol" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#)
            && msg.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#),
        "{msg}"
    );
    // Nor widen her own role by a patch.
    let (code, _) = carol
        .call(
            "PATCH",
            &format!("{roles}/pod-reader"),
            Some(json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})),
        )
        .await;
    assert_eq!(code, 403);
    let admin_binding = json!({"metadata": {"name": "carol-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [user_subject("carol")]});
    let (code, body) = carol
        .call("POST", bindings, Some(admin_binding.clone()))
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is attempting to grant RBAC permissions not currently held")
    );
    // With `bind` on the admin ClusterRole she may bind it, holding it or not.
    ok(
        &admin,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "bind-admin"}, "rules": [{"apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["admin"]}]}),
    )
    .await;
    bind(&c, "team", "carol-may-bind", "ClusterRole", "bind-admin", "carol",
        json!({"namespace": "team", "verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": "admin"})).await;
    ok(&carol, "POST", bindings, admin_binding).await;
    // Now admin in team, carol reads secrets there.
    eventually("carol reads secrets", || async {
        carol
            .call("GET", "/api/v1/namespaces/team/secrets", None)
            .await
            .0
            == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_what_their_pods_use_and_only_their_own_node() {
    let c = common::start().await;
    let admin = admin(&c);
    let w1 = user(&c, "system:node:w1", &["system:nodes"]);
    ok(
        &w1,
        "POST",
        "/api/v1/nodes",
        json!({"metadata": {"name": "w1"}}),
    )
    .await;
    let (code, body) = w1
        .call(
            "POST",
            "/api/v1/nodes",
            Some(json!({"metadata": {"name": "w2"}})),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(r#"node "w1" is not allowed to modify node "w2""#)
    );
    ok(
        &admin,
        "POST",
        "/api/v1/nodes",
        json!({"metadata": {"name": "w2"}}),
    )
    .await;
    let (code, body) = w1
        .call(
            "PATCH",
            "/api/v1/nodes/w2",
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    assert!(denied(code, &body, "patch"), "{body}");
    ok(
        &w1,
        "PATCH",
        "/api/v1/nodes/w1",
        json!({"metadata": {"labels": {"x": "y"}}}),
    )
    .await;

    for (name, kind) in [
        ("used", "secrets"),
        ("unused", "secrets"),
        ("used", "configmaps"),
    ] {
        ok(
            &admin,
            "POST",
            &format!("/api/v1/namespaces/default/{kind}"),
            json!({"metadata": {"name": name}, "data": {}}),
        )
        .await;
    }
    ok(
        &admin,
        "POST",
        "/api/v1/namespaces/default/pods",
        json!({"metadata": {"name": "p"}, "spec": {"nodeName": "w1", "containers": [{"name": "c", "image": "i",
            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "used", "key": "a"}}}]}],
            "volumes": [{"name": "s", "secret": {"secretName": "used"}}]}}),
    )
    .await;
    // At once: the graph follows a watch, but a refusal is judged again on the stored pods.
    assert_eq!(
        w1.call("GET", "/api/v1/namespaces/default/secrets/used", None)
            .await
            .0,
        200,
        "the node could not read its new pod's secret"
    );
    assert_eq!(
        w1.call("GET", "/api/v1/namespaces/default/configmaps/used", None)
            .await
            .0,
        200
    );
    let (code, body) = w1
        .call("GET", "/api/v1/namespaces/default/secrets/unused", None)
        .await;
    assert!(denied(code, &body, "get"), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no relationship found between node 'w1' and this object")
    );
    let (code, body) = w1
        .call("GET", "/api/v1/namespaces/default/secrets", None)
        .await;
    assert!(denied(code, &body, "list"), "{body}");
    // Its pod's status is its to write; another node's is not.
    let w2 = user(&c, "system:node:w2", &["system:nodes"]);
    let status = json!({"status": {"phase": "Running"}});
    ok(
        &w1,
        "PATCH",
        "/api/v1/namespaces/default/pods/p/status",
        status.clone(),
    )
    .await;
    let (code, body) = w2
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/p/status",
            Some(status),
        )
        .await;
    assert!(denied(code, &body, "patch"), "{body}");
    assert_eq!(w2.call("GET", "/api/v1/pods", None).await.0, 200);
    // Its lease, not another's.
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    ok(
        &w1,
        "POST",
        leases,
        json!({"metadata": {"name": "w1"}, "spec": {"holderIdentity": "w1"}}),
    )
    .await;
    let (code, body) = w2.call("GET", &format!("{leases}/w1"), None).await;
    assert!(denied(code, &body, "get"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_roles_pick_up_new_rules() {
    let c = common::start().await;
    let admin = admin(&c);
    let view = "/apis/rbac.authorization.k8s.io/v1/clusterroles/view";
    let (_, v) = admin.call("GET", view, None).await;
    assert!(v["rules"].as_array().unwrap().len() > 5, "{v}");
    ok(
        &admin,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for role in ["view", "edit", "admin"] {
        loop {
            let (_, v) = admin
                .call(
                    "GET",
                    &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}"),
                    None,
                )
                .await;
            if v["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["resources"] == json!(["widgets"]))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{role} never aggregated widgets: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The default roles are reconciled, not overwritten: a removed rule comes back at
    // start, but a role marked autoupdate=false is left as it is (checked in strake-rbac).
    let (_, crb) = admin
        .call(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cluster-admin",
            None,
        )
        .await;
    assert_eq!(crb["subjects"][0]["name"], "system:masters");
    assert_eq!(
        crb["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
        "true"
    );
}

/// A caller presenting a bearer token (no client certificate).
fn bearer(c: &Loopback, token: &str) -> (Caller, String) {
    (
        Caller {
            http: tls_client(&c.creds.ca_pem, None),
            base: c.base.clone(),
        },
        format!("Bearer {token}"),
    )
}

async fn token_request(c: &Caller, ns: &str, sa: &str, spec: Value) -> (u16, Value) {
    c.call(
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_bound_to_live_objects() {
    let c = common::start().await;
    namespace(&c, "team").await;
    let admin = admin(&c);
    let sa = ok(
        &admin,
        "POST",
        "/api/v1/namespaces/team/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    // The ServiceAccount admission plugin projects the token, CA and namespace into pods.
    let pod = ok(
        &admin,
        "POST",
        "/api/v1/namespaces/team/pods",
        json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "robot", "nodeName": "w1",
            "containers": [{"name": "c", "image": "i"}]}}),
    )
    .await;
    let vol = &pod["spec"]["volumes"][0];
    assert!(
        vol["name"]
            .as_str()
            .unwrap()
            .starts_with("kube-api-access-"),
        "{pod}"
    );
    assert_eq!(
        vol["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0],
        json!({"name": vol["name"], "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );
    let opted_out = ok(
        &admin,
        "POST",
        "/api/v1/namespaces/team/pods",
        json!({"metadata": {"name": "q"}, "spec": {"automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "i"}]}}),
    )
    .await;
    assert_eq!(opted_out["spec"]["serviceAccountName"], "default");
    assert!(
        opted_out["spec"]["volumes"]
            .as_array()
            .is_none_or(|v| v.is_empty()),
        "{opted_out}"
    );

    let pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let (code, tr) = token_request(
        &admin,
        "team",
        "robot",
        json!({
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod_uid}}),
    )
    .await;
    assert_eq!(code, 201, "{tr}");
    let token = tr["status"]["token"].as_str().unwrap().to_string();
    assert!(tr["status"]["expirationTimestamp"].is_string());
    assert_eq!(tr["spec"]["expirationSeconds"], 3600);
    let (anon, auth) = bearer(&c, &token);
    let with = [("Authorization", auth.as_str())];
    // Authenticated as the account, which holds nothing yet.
    let (code, body) = anon
        .call_as("GET", "/api/v1/namespaces/team/pods", None, &with)
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        r#"pods is forbidden: User "system:serviceaccount:team:robot" cannot list resource "pods" in API group "" in the namespace "team""#
    );
    let (_, who) = anon
        .call_as(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
            &with,
        )
        .await;
    let info = &who["status"]["userInfo"];
    assert_eq!(info["username"], "system:serviceaccount:team:robot");
    assert_eq!(info["uid"], sa["metadata"]["uid"]);
    assert_eq!(
        info["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    // Bound to view, it reads pods but not secrets.
    ok(
        &admin,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
        json!({"metadata": {"name": "robot-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "team"}]}),
    )
    .await;
    eventually("the account reads pods", || async {
        anon.call_as("GET", "/api/v1/namespaces/team/pods", None, &with)
            .await
            .0
            == 200
    })
    .await;
    let (code, body) = anon
        .call_as("GET", "/api/v1/namespaces/team/secrets", None, &with)
        .await;
    assert!(denied(code, &body, "list"), "{body}");

    // TokenReview answers for the API's audience, and for others only if the token has them.
    let review = |aud: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": aud}})
    };
    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    let (_, r) = admin.call("POST", reviews, Some(review(json!([])))).await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:team:robot"
    );
    let (_, r) = admin
        .call("POST", reviews, Some(review(json!(["vault"]))))
        .await;
    assert_eq!(r["status"]["authenticated"], false, "{r}");
    // A token for another audience is no key to the API.
    let (_, vault) = token_request(&admin, "team", "robot", json!({"audiences": ["vault"]})).await;
    let vault_token = vault["status"]["token"].as_str().unwrap();
    let (v, auth_v) = bearer(&c, vault_token);
    assert_eq!(
        v.call_as(
            "GET",
            "/api/v1/namespaces/team/pods",
            None,
            &[("Authorization", &auth_v)]
        )
        .await
        .0,
        401
    );
    // Forged: another signature.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (f, auth_f) = bearer(&c, &forged);
    let (code, body) = f
        .call_as(
            "GET",
            "/api/v1/namespaces/team/pods",
            None,
            &[("Authorization", &auth_f)],
        )
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("Unauthorized")),
        "{body}"
    );
    // Bad requests.
    let (code, body) =
        token_request(&admin, "team", "robot", json!({"expirationSeconds": 60})).await;
    assert_eq!(code, 422, "{body}");
    let (code, _) = token_request(&admin, "team", "ghost", json!({})).await;
    assert_eq!(code, 404);
    let (code, _) = token_request(
        &admin,
        "team",
        "robot",
        json!({"boundObjectRef": {"kind": "Pod", "name": "nope"}}),
    )
    .await;
    assert_eq!(code, 404);

    // A node may ask only for the accounts of its own pods.
    let w1 = user(&c, "system:node:w1", &["system:nodes"]);
    let (code, body) = token_request(
        &w1,
        "team",
        "robot",
        json!({"boundObjectRef": {"kind": "Pod", "name": "p"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = token_request(&w1, "team", "default", json!({})).await;
    assert!(denied(code, &body, "create"), "{body}");

    // Deleting the pod ends its token at once.
    let (code, _) = admin
        .call(
            "DELETE",
            "/api/v1/namespaces/team/pods/p?gracePeriodSeconds=0",
            None,
        )
        .await;
    assert_eq!(code, 200);
    eventually("the pod's token refused", || async {
        anon.call_as("GET", "/api/v1/namespaces/team/pods", None, &with)
            .await
            .0
            == 401
    })
    .await;
    let (_, r) = admin.call("POST", reviews, Some(review(json!([])))).await;
    assert_eq!(r["status"]["authenticated"], false);
    assert!(
        r["status"]["error"].as_str().unwrap().contains("pod \"p\""),
        "{r}"
    );
}
