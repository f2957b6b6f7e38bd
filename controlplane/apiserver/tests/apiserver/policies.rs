//! ValidatingAdmissionPolicy: CEL validations refuse (Deny) or warn (Warn) as their binding
//! says, with parameters from a ConfigMap, variables and message expressions, and an
//! expression that cannot be evaluated under each failurePolicy.

use crate::common;

use std::time::Duration;

use common::send;
use serde_json::{Value, json};

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

fn policy(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"metadata": {"name": name}, "spec": spec})
}

fn binding(name: &str, policy: &str, actions: &[&str], extra: Value) -> Value {
    let mut spec = json!({"policyName": policy, "validationActions": actions});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"metadata": {"name": name}, "spec": spec})
}

const VAP: &str = "/apis/admissionregistration.k8s.io/v1";

/// Creates a deployment in `ns` until the policies in memory give a different answer than
/// `not` (they are followed, so they take effect a moment after they are written).
async fn create_until(
    c: &common::Loopback,
    ns: &str,
    d: &Value,
    not: u16,
) -> (u16, Value, Vec<String>) {
    let name = d["metadata"]["name"].as_str().unwrap();
    for _ in 0..100 {
        let out = send(
            c,
            "POST",
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            d,
        )
        .await;
        if out.0 != not {
            return out;
        }
        send(
            c,
            "DELETE",
            &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
            &json!({}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the policy never took effect for {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_deny_and_warn_with_params_variables_and_failure_policies() {
    let c = common::start().await;
    for ns in ["limited", "warned", "broken"] {
        let (code, body, _) = send(
            &c,
            "POST",
            "/api/v1/namespaces",
            &json!({"metadata": {"name": ns, "labels": {"policy": ns}}}),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/limited/configmaps",
        &json!({"metadata": {"name": "limits"}, "data": {"max": "2"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // Replicas at most the parameter's max, and no deployment named "forbidden".
    let p = policy(
        "replicas",
        json!({
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "variables": [{"name": "name", "expression": "object.metadata.name"}],
            "validations": [
                {"expression": "object.spec.replicas <= int(params.data.max)",
                 "message": "too many replicas", "reason": "Forbidden"},
                {"expression": "variables.name != 'forbidden'",
                 "messageExpression": "'the name ' + variables.name + ' is not allowed'"},
            ],
        }),
    );
    for (plural, body) in [
        ("validatingadmissionpolicies", p),
        (
            "validatingadmissionpolicybindings",
            binding(
                "replicas-limited",
                "replicas",
                &["Deny"],
                json!({
            "paramRef": {"name": "limits", "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"policy": "limited"}}}}),
            ),
        ),
    ] {
        let (code, out, _) = send(&c, "POST", &format!("{VAP}/{plural}"), &body).await;
        assert_eq!(code, 201, "{out}");
    }
    let (code, body, _) = create_until(&c, "limited", &deployment("big", 3), 201).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "ValidatingAdmissionPolicy 'replicas' with binding 'replicas-limited' denied request: too many replicas"
    );
    assert_eq!(body["reason"], "Forbidden");
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/limited/deployments",
        &deployment("small", 2),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/limited/deployments",
        &deployment("forbidden", 1),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("denied request: the name forbidden is not allowed"),
        "{body}"
    );
    // Elsewhere the binding does not apply.
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/warned/deployments",
        &deployment("big", 3),
    )
    .await;
    assert_eq!(code, 201, "{body}");

    // A Warn binding: written, with a warning.
    let (code, out, _) = send(&c, "POST", &format!("{VAP}/validatingadmissionpolicies"),
        &policy("at-most-one", json!({"validations": [{"expression": "object.spec.replicas <= 1", "message": "more than one replica"}]}))).await;
    assert_eq!(code, 201, "{out}");
    let (code, out, _) = send(
        &c,
        "POST",
        &format!("{VAP}/validatingadmissionpolicybindings"),
        &binding(
            "at-most-one-warned",
            "at-most-one",
            &["Warn"],
            json!({"matchResources": {"namespaceSelector": {"matchLabels": {"policy": "warned"}}}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{out}");
    let mut warned = false;
    for i in 0..100 {
        let (code, body, warnings) = send(
            &c,
            "POST",
            "/apis/apps/v1/namespaces/warned/deployments",
            &deployment(&format!("w{i}"), 2),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        if warnings.iter().any(|w| w.contains("Validation failed for ValidatingAdmissionPolicy 'at-most-one' with binding 'at-most-one-warned': more than one replica")) {
            warned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warned, "the Warn binding never warned");

    // An expression this server cannot evaluate: Fail refuses, Ignore lets through.
    for (name, policy_mode, ns_label) in [
        ("odd-fail", "Fail", "broken"),
        ("odd-ignore", "Ignore", "warned"),
    ] {
        let (code, out, _) = send(
            &c,
            "POST",
            &format!("{VAP}/validatingadmissionpolicies"),
            &policy(
                name,
                json!({"failurePolicy": policy_mode,
                "validations": [{"expression": "object.metadata.name.lowerAscii() == 'x'"}]}),
            ),
        )
        .await;
        assert_eq!(code, 201, "{out}");
        let (code, out, _) = send(&c, "POST", &format!("{VAP}/validatingadmissionpolicybindings"),
            &binding(&format!("{name}-b"), name, &["Deny"], json!({"matchResources": {"namespaceSelector": {"matchLabels": {"policy": ns_label}}}}))).await;
        assert_eq!(code, 201, "{out}");
    }
    let (code, body, _) = create_until(&c, "broken", &deployment("any", 1), 201).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("policy 'odd-fail' with binding 'odd-fail-b' denied request: expression 'object.metadata.name.lowerAscii() == 'x'' resulted in error"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body, _) = send(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/warned/deployments",
        &deployment("ignored", 1),
    )
    .await;
    assert_eq!(code, 201, "{body}");
}
