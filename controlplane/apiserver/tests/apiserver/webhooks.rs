//! Admission webhooks against HTTPS webhook servers on loopback: a validating webhook that
//! denies (with upstream's message) and sees the AdmissionReview it should, namespace and
//! object selectors, a webhook that times out and one that cannot be reached under each
//! failurePolicy, a mutating webhook whose JSONPatch is stored (and seen by the validating
//! one), a patch that makes the object invalid, a caBundle that is enforced, and a webhook
//! behind a Service reached through its Endpoints.

use crate::common;

use common::send;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};
use strake_pki::ClusterCa;

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn answer(review: &Value, allowed: bool, extra: Value) -> Json<Value> {
    let mut response = json!({"uid": review["request"]["uid"], "allowed": allowed});
    if let (Some(r), Some(e)) = (response.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

async fn deny(State(seen): State<Seen>, Json(review): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(("deny".into(), review.clone()));
    let name = review["request"]["name"].as_str().unwrap_or_default();
    if name.starts_with("bad") {
        return answer(
            &review,
            false,
            json!({"status": {"code": 403, "reason": "Forbidden", "message": "no pods named bad"}}),
        );
    }
    answer(&review, true, json!({"warnings": ["checked by deny"]}))
}

async fn slow(Json(review): Json<Value>) -> Json<Value> {
    tokio::time::sleep(Duration::from_secs(4)).await;
    answer(&review, true, json!({}))
}

fn patch(ops: Value) -> Value {
    json!({
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(ops.to_string()),
    })
}

async fn mutate(State(seen): State<Seen>, Json(review): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(("mutate".into(), review.clone()));
    answer(
        &review,
        true,
        patch(json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])),
    )
}

async fn break_it(Json(review): Json<Value>) -> Json<Value> {
    answer(
        &review,
        true,
        patch(
            json!([{"op": "replace", "path": "/spec/containers/0/name", "value": "Not A Name!"}]),
        ),
    )
}

/// The webhook server, with a certificate for 127.0.0.1 and `hook.default.svc`.
async fn webhook_server(ca: &ClusterCa, seen: Seen) -> SocketAddr {
    let app = axum::Router::new()
        .route("/deny", post(deny))
        .route("/slow", post(slow))
        .route("/mutate", post(mutate))
        .route("/break", post(break_it))
        .with_state(seen);
    common::serve_https(app, ca, &["hook.default.svc"]).await
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

/// One webhook entry calling `url`, for pod creates, with the given policy and selectors.
fn entry(name: &str, url: &str, fail: bool, selectors: Value) -> Value {
    let mut w = json!({
        "name": name,
        "clientConfig": {"url": url},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "failurePolicy": if fail { "Fail" } else { "Ignore" },
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 1,
    });
    w.as_object_mut()
        .unwrap()
        .extend(selectors.as_object().unwrap().clone());
    w
}

/// Creates pods until the answer is no longer the one before the configuration took effect.
async fn create_until(
    c: &common::Loopback,
    ns: &str,
    p: &Value,
    not: u16,
) -> (u16, Value, Vec<String>) {
    for _ in 0..100 {
        let out = send(c, "POST", &format!("/api/v1/namespaces/{ns}/pods"), p).await;
        if out.0 != not {
            return out;
        }
        send(
            c,
            "DELETE",
            &format!(
                "/api/v1/namespaces/{ns}/pods/{}?gracePeriodSeconds=0",
                p["metadata"]["name"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the webhook configuration never took effect for {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deny_mutate_time_out_and_fail_as_their_policy_says() {
    let c = common::start().await;
    let ca = ClusterCa::load_or_generate(&c.dir.path().join("pki"), "t").unwrap();
    let seen: Seen = Arc::default();
    let addr = webhook_server(&ca, seen.clone()).await;
    let url = |path: &str| format!("https://{addr}{path}");
    for (ns, labels) in [("hooked", json!({"webhooks": "on"})), ("other", json!({}))] {
        let (code, body, _) = send(
            &c,
            "POST",
            "/api/v1/namespaces",
            &json!({"metadata": {"name": ns, "labels": labels}}),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }

    // A validating webhook for the labelled namespace only; no caBundle: the cluster CA.
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        &json!({"metadata": {"name": "policy"}, "webhooks": [
            entry("deny.example.com", &url("/deny"), true,
                json!({"namespaceSelector": {"matchLabels": {"webhooks": "on"}},
                    "matchConditions": [{"name": "not-exempt",
                        "expression": "object.metadata.name != 'bad-exempt'"}]})),
            entry("slow-fail.example.com", &url("/slow"), true,
                json!({"objectSelector": {"matchLabels": {"slow": "fail"}}})),
            entry("slow-ignore.example.com", &url("/slow"), false,
                json!({"objectSelector": {"matchLabels": {"slow": "ignore"}}})),
            entry("down.example.com", "https://127.0.0.1:1/none", true,
                json!({"objectSelector": {"matchLabels": {"down": "yes"}}})),
        ]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) = create_until(&c, "hooked", &pod("bad", json!({})), 201).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "admission webhook \"deny.example.com\" denied the request: no pods named bad"
    );
    assert_eq!(body["reason"], "Forbidden");
    let (code, body, warnings) = send(
        &c,
        "POST",
        "/api/v1/namespaces/hooked/pods",
        &pod("good", json!({})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert!(
        warnings.iter().any(|w| w.contains("checked by deny")),
        "{warnings:?}"
    );
    {
        let seen = seen.lock().unwrap();
        let (_, review) = seen.iter().rev().find(|(h, _)| h == "deny").unwrap();
        let r = &review["request"];
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(r["operation"], "CREATE");
        assert_eq!(
            r["kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(r["resource"]["resource"], "pods");
        assert_eq!(r["namespace"], "hooked");
        assert_eq!(r["name"], "good");
        assert_eq!(r["userInfo"]["username"], "strake-admin");
        assert_eq!(r["object"]["spec"]["containers"][0]["name"], "c");
        assert_eq!(r["dryRun"], false);
    }
    // A match condition that does not hold leaves the webhook out.
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/hooked/pods",
        &pod("bad-exempt", json!({})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // The namespace selector leaves the other namespace alone.
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/other/pods",
        &pod("bad", json!({})),
    )
    .await;
    assert_eq!(code, 201, "{body}");

    // Too slow: Fail refuses with upstream's words, Ignore lets the write through.
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/other/pods",
        &pod("late", json!({"slow": "fail"})),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        body["message"],
        format!(
            "Internal error occurred: failed calling webhook \"slow-fail.example.com\": failed to call webhook: Post \"{}\": context deadline exceeded",
            url("/slow")
        )
    );
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/other/pods",
        &pod("late-ok", json!({"slow": "ignore"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // Unreachable under Fail: refused, nothing written.
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/other/pods",
        &pod("down", json!({"down": "yes"})),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with(
            "Internal error occurred: failed calling webhook \"down.example.com\": failed to call webhook: Post \"https://127.0.0.1:1/none\""
        ),
        "{body}"
    );
    let (code, _, _) = send(&c, "GET", "/api/v1/namespaces/other/pods/down", &json!({})).await;
    assert_eq!(code, 404);

    // A mutating webhook's patch is stored, and the validating webhook sees the result.
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        &json!({"metadata": {"name": "labels"}, "webhooks": [
            entry("mutate.example.com", &url("/mutate"), true,
                json!({"objectSelector": {"matchLabels": {"mutate": "yes"}}})),
            entry("break.example.com", &url("/break"), true,
                json!({"objectSelector": {"matchLabels": {"break": "yes"}}})),
        ]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // Until the configuration is in memory, pods are created unlabelled.
    let mut got = json!({});
    for i in 0..100 {
        let (code, b, _) = send(
            &c,
            "POST",
            "/api/v1/namespaces/hooked/pods",
            &pod(&format!("m{i}"), json!({"mutate": "yes"})),
        )
        .await;
        assert_eq!(code, 201, "{b}");
        got = b;
        if got["metadata"]["labels"]["mutated"] == "yes" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got["metadata"]["labels"]["mutated"], "yes", "{got}");
    let name = got["metadata"]["name"].as_str().unwrap();
    let (_, stored, _) = send(
        &c,
        "GET",
        &format!("/api/v1/namespaces/hooked/pods/{name}"),
        &json!({}),
    )
    .await;
    assert_eq!(stored["metadata"]["labels"]["mutated"], "yes", "{stored}");
    {
        let seen = seen.lock().unwrap();
        let last_deny = seen.iter().rev().find(|(h, _)| h == "deny").unwrap();
        assert_eq!(
            last_deny.1["request"]["object"]["metadata"]["labels"]["mutated"], "yes",
            "validating webhooks run after mutating ones"
        );
    }
    // A patch that makes the object invalid is refused as invalid.
    let (code, body, _) =
        create_until(&c, "other", &pod("broken", json!({"break": "yes"})), 201).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers[0].name"),
        "{body}"
    );

    // A caBundle of another CA is enforced: the webhook's certificate is not trusted.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = ClusterCa::load_or_generate(foreign_dir.path(), "other").unwrap();
    let mut pinned = entry(
        "pinned.example.com",
        &url("/deny"),
        true,
        json!({"objectSelector": {"matchLabels": {"pinned": "yes"}}}),
    );
    pinned["clientConfig"]["caBundle"] = base64::engine::general_purpose::STANDARD
        .encode(&foreign.ca.cert_pem)
        .into();
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        &json!({"metadata": {"name": "pinned"}, "webhooks": [pinned]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) =
        create_until(&c, "other", &pod("pinned", json!({"pinned": "yes"})), 201).await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("failed calling webhook \"pinned.example.com\""),
        "{body}"
    );

    // The webhook configurations themselves never go to webhooks: they can always be removed.
    for (plural, name) in [
        ("validatingwebhookconfigurations", "policy"),
        ("validatingwebhookconfigurations", "pinned"),
        ("mutatingwebhookconfigurations", "labels"),
    ] {
        let (code, body, _) = send(
            &c,
            "DELETE",
            &format!("/apis/admissionregistration.k8s.io/v1/{plural}/{name}"),
            &json!({}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body, _) = create_until(&c, "hooked", &pod("bad-again", json!({})), 403).await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_a_service_is_reached_through_its_endpoints() {
    let c = common::start().await;
    let ca = ClusterCa::load_or_generate(&c.dir.path().join("pki"), "t").unwrap();
    let seen: Seen = Arc::default();
    let addr = webhook_server(&ca, seen.clone()).await;
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/default/services",
        &json!({"metadata": {"name": "hook"}, "spec": {"ports": [{"name": "https", "port": 443}]}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/default/endpoints",
        &json!({"metadata": {"name": "hook"}, "subsets": [{
            "addresses": [{"ip": "127.0.0.1"}],
            "ports": [{"name": "https", "port": addr.port()}]}]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let mut hook = entry("svc.example.com", "unused", true, json!({}));
    hook["clientConfig"] =
        json!({"service": {"namespace": "default", "name": "hook", "path": "/deny"}});
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        &json!({"metadata": {"name": "svc"}, "webhooks": [hook]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) = create_until(&c, "default", &pod("bad", json!({})), 201).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "admission webhook \"svc.example.com\" denied the request: no pods named bad"
    );
    assert!(seen.lock().unwrap().iter().any(|(h, _)| h == "deny"));
}
