//! Users of an OpenID Connect provider: a provider on loopback (discovery document and JWKS
//! over HTTPS with its own CA) signs ID tokens; the API server takes them as users with the
//! configured claims and prefixes, RBAC judges them, `kubectl auth whoami`'s review and
//! TokenReview name them, bad tokens get 401, and a rotated key is fetched when first seen.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use common::send;
use serde_json::{Value, json};
use strake_apiserver::{Housekeeping, Limits, OidcSettings};
use strake_pki::ClusterCa;
use strake_tokens::Signer;

#[derive(Clone)]
struct Provider {
    issuer: Arc<Mutex<String>>,
    keys: Arc<Mutex<Vec<Value>>>,
}

async fn discovery(State(p): State<Provider>) -> Json<Value> {
    let iss = p.issuer.lock().unwrap().clone();
    Json(json!({"issuer": iss, "jwks_uri": format!("{iss}/keys")}))
}

async fn keys(State(p): State<Provider>) -> Json<Value> {
    Json(json!({"keys": p.keys.lock().unwrap().clone()}))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn as_user(
    c: &common::Loopback,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    // A bearer token only: a client certificate would win.
    let tls = strake_pki::client_config(&c.creds.ca_pem, None).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let r = http
        .request(method.parse().unwrap(), format!("{}{path}", c.base))
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_users_are_authenticated_by_their_provider_and_judged_by_rbac() {
    let idp_dir = tempfile::tempdir().unwrap();
    let idp_ca = ClusterCa::load_or_generate(idp_dir.path(), "idp").unwrap();
    let provider = Provider {
        issuer: Arc::default(),
        keys: Arc::default(),
    };
    let signer = Signer::generate();
    provider.keys.lock().unwrap().push(signer.jwk());
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/keys", get(keys))
        .with_state(provider.clone());
    let addr = common::serve_https(app, &idp_ca, &[]).await;
    let iss = format!("https://{addr}");
    *provider.issuer.lock().unwrap() = iss.clone();
    let settings = OidcSettings {
        username_claim: "email".into(),
        groups_claim: Some("groups".into()),
        groups_prefix: "oidc:".into(),
        ..OidcSettings::new(&iss, "strake")
    };
    let ca_pem = idp_ca.ca.cert_pem.clone();
    let c = common::start_configured(Housekeeping::default(), Limits::default(), None, move |s| {
        s.with_oidc(settings, Some(ca_pem)).unwrap()
    })
    .await;
    let token = |s: &Signer, extra: Value| {
        let mut claims = json!({"iss": iss, "aud": "strake", "sub": "u-1", "iat": now(),
            "exp": now() + 600, "email": "alice@example.com", "email_verified": true,
            "groups": ["devs"]});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.sign(&claims)
    };
    let alice = token(&signer, json!({}));

    // Who am I: the claims' user, prefixed groups, and system:authenticated.
    let (code, body) = as_user(
        &c,
        &alice,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["userInfo"]["username"], "alice@example.com");
    assert_eq!(
        body["status"]["userInfo"]["groups"],
        json!(["oidc:devs", "system:authenticated"])
    );
    // Authenticated, not yet authorized.
    let (code, body) = as_user(
        &c,
        &alice,
        "GET",
        "/api/v1/namespaces/default/pods",
        &Value::Null,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"alice@example.com\" cannot list resource \"pods\""),
        "{body}"
    );
    // A binding to the provider's group lets her read.
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        &json!({"metadata": {"name": "devs-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oidc:devs"}]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let mut code = 0;
    for _ in 0..50 {
        code = as_user(
            &c,
            &alice,
            "GET",
            "/api/v1/namespaces/default/pods",
            &Value::Null,
        )
        .await
        .0;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, 200);
    // TokenReview names her too.
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": alice}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["authenticated"], true, "{body}");
    assert_eq!(body["status"]["user"]["username"], "alice@example.com");

    // Bad tokens: 401 and nothing else.
    let stranger = Signer::generate();
    for (why, bad) in [
        ("expired", token(&signer, json!({"exp": now() - 3600}))),
        ("another client's", token(&signer, json!({"aud": "other"}))),
        (
            "unverified email",
            token(&signer, json!({"email_verified": false})),
        ),
        ("signed by a stranger", token(&stranger, json!({}))),
    ] {
        let (code, body) = as_user(
            &c,
            &bad,
            "GET",
            "/api/v1/namespaces/default/pods",
            &Value::Null,
        )
        .await;
        assert_eq!(code, 401, "{why}: {body}");
    }

    // The provider rotates to a new key: a token under it is taken once the keys are fetched
    // again (within seconds of the first unknown key id).
    let rotated = Signer::generate();
    provider.keys.lock().unwrap().push(rotated.jwk());
    let bob = token(&rotated, json!({"email": "bob@example.com"}));
    let mut code = 0;
    for _ in 0..60 {
        code = as_user(
            &c,
            &bob,
            "GET",
            "/api/v1/namespaces/default/pods",
            &Value::Null,
        )
        .await
        .0;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(code, 200, "a token under the rotated key");
}
