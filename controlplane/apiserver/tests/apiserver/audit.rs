//! The audit log over HTTPS: a policy's levels (None, Metadata, Request, RequestResponse),
//! who asked and as whom, the authorizer's decision, and the outcome, as JSON lines.

use crate::common;

use std::time::Duration;

use serde_json::{Value, json};
use strake_apiserver::{AuditConfig, AuditPolicy, Housekeeping, Limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_recorded_at_their_policy_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut cfg = AuditConfig::new(path.clone());
    cfg.policy = AuditPolicy::parse(
        r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  nonResourceURLs: ["/version"]
- level: RequestResponse
  resources: [{group: "", resources: [secrets]}]
- level: Request
  resources: [{group: "", resources: [configmaps]}]
  verbs: [create]
- level: Metadata
"#,
    )
    .unwrap();
    let c = common::start_full(Housekeeping::default(), Limits::default(), Some(cfg)).await;
    let base = &c.base;
    let send = |r: reqwest::RequestBuilder| async move {
        let resp = r.send().await.unwrap();
        resp.status().as_u16()
    };
    assert_eq!(send(c.http.get(format!("{base}/version"))).await, 200);
    let cm = json!({"metadata": {"name": "audited"}, "data": {"k": "v"}});
    assert_eq!(
        send(
            c.http
                .post(format!("{base}/api/v1/namespaces/default/configmaps"))
                .header("Content-Type", "application/json")
                .body(cm.to_string())
        )
        .await,
        201
    );
    let secret = json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
    assert_eq!(
        send(
            c.http
                .post(format!("{base}/api/v1/namespaces/default/secrets"))
                .header("Content-Type", "application/json")
                .body(secret.to_string())
        )
        .await,
        201
    );
    // Refused, as someone else.
    assert_eq!(
        send(
            c.http
                .get(format!("{base}/api/v1/namespaces/default/pods"))
                .header("Impersonate-User", "mallory")
        )
        .await,
        403
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
            .collect();
        if events
            .iter()
            .any(|e| e["impersonatedUser"]["username"] == "mallory")
        {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events never arrived: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let find = |verb: &str, resource: &str| -> &Value {
        events
            .iter()
            .find(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .unwrap_or_else(|| panic!("no {verb} {resource} in {events:?}"))
    };
    assert!(
        !events.iter().any(|e| e["requestURI"] == "/version"),
        "None level recorded"
    );
    let created = find("create", "configmaps");
    assert_eq!(created["kind"], "Event");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(created["level"], "Request");
    assert_eq!(created["stage"], "ResponseComplete");
    assert_eq!(created["user"]["username"], "strake-admin");
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["requestObject"]["data"]["k"], "v");
    assert!(created.get("responseObject").is_none());
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(
        created["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(created["sourceIPs"][0] == "127.0.0.1");
    let s = find("create", "secrets");
    assert_eq!(s["level"], "RequestResponse");
    assert_eq!(s["responseObject"]["metadata"]["name"], "s");
    let denied = find("list", "pods");
    assert_eq!(denied["level"], "Metadata");
    assert_eq!(denied["impersonatedUser"]["username"], "mallory");
    assert_eq!(denied["user"]["username"], "strake-admin");
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(
        denied["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert!(denied.get("requestObject").is_none());
}
