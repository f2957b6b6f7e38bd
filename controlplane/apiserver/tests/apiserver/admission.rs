//! Admission over HTTPS: Pod Security at each level (one refused pod per check, warnings for
//! the warn level and for workloads' templates, namespace labels checked), and LimitRanges
//! (defaults filled in, bounds refused in upstream's words).

use crate::common;

use common::send;

use serde_json::{Value, json};
use strake_podsecurity::{self as pss, Level};

async fn namespace(c: &common::Loopback, name: &str, labels: Value) {
    let (code, body, _) = send(
        c,
        "POST",
        "/api/v1/namespaces",
        &json!({"metadata": {"name": name, "labels": labels}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
}

/// A pod that passes the restricted level.
fn restricted_pod() -> Value {
    json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "c", "image": "busybox",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }]
    })
}

/// Sets `value` at a JSON pointer of `spec`, making the objects on the way; null removes it.
fn set(spec: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let mut at = spec;
    for part in parent.split('/').skip(1) {
        at = match part.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => {
                if at.get(part).is_none() {
                    at[part] = json!({});
                }
                &mut at[part]
            }
        };
    }
    if value.is_null() {
        at.as_object_mut().unwrap().remove(last);
    } else {
        at[last] = value;
    }
}

/// For each check: its level, its upstream id, and the changes that make a restricted pod
/// fail it (and nothing else of its level).
/// A check's level, its id, and the changes (JSON pointer, value) that make a pod fail it.
type Case = (Level, &'static str, Vec<(&'static str, Value)>);

fn cases() -> Vec<Case> {
    vec![
        (
            Level::Baseline,
            "hostNamespaces",
            vec![("/hostPID", json!(true))],
        ),
        (
            Level::Baseline,
            "privileged",
            vec![
                (
                    "/containers/0/securityContext/allowPrivilegeEscalation",
                    Value::Null,
                ),
                ("/containers/0/securityContext/privileged", json!(true)),
            ],
        ),
        (
            Level::Baseline,
            "capabilities_baseline",
            vec![(
                "/containers/0/securityContext/capabilities/add",
                json!(["SYS_ADMIN"]),
            )],
        ),
        (
            Level::Baseline,
            "hostPathVolumes",
            vec![(
                "/volumes",
                json!([{"name": "root", "hostPath": {"path": "/"}}]),
            )],
        ),
        (
            Level::Baseline,
            "hostPorts",
            vec![(
                "/containers/0/ports",
                json!([{"containerPort": 80, "hostPort": 8080}]),
            )],
        ),
        (
            Level::Baseline,
            "appArmorProfile",
            vec![(
                "/containers/0/securityContext/appArmorProfile",
                json!({"type": "Unconfined"}),
            )],
        ),
        (
            Level::Baseline,
            "seLinuxOptions",
            vec![(
                "/containers/0/securityContext/seLinuxOptions",
                json!({"type": "spc_t"}),
            )],
        ),
        (
            Level::Baseline,
            "procMount",
            vec![("/containers/0/securityContext/procMount", json!("Unmasked"))],
        ),
        (
            Level::Baseline,
            "seccompProfile_baseline",
            vec![(
                "/containers/0/securityContext/seccompProfile",
                json!({"type": "Unconfined"}),
            )],
        ),
        (
            Level::Baseline,
            "sysctls",
            vec![(
                "/securityContext/sysctls",
                json!([{"name": "kernel.msgmax", "value": "1"}]),
            )],
        ),
        (
            Level::Restricted,
            "restrictedVolumes",
            vec![(
                "/volumes",
                json!([{"name": "n", "nfs": {"server": "nfs.example", "path": "/"}}]),
            )],
        ),
        (
            Level::Restricted,
            "allowPrivilegeEscalation",
            vec![(
                "/containers/0/securityContext/allowPrivilegeEscalation",
                Value::Null,
            )],
        ),
        (
            Level::Restricted,
            "runAsNonRoot",
            vec![("/securityContext/runAsNonRoot", Value::Null)],
        ),
        (
            Level::Restricted,
            "runAsUser",
            vec![("/containers/0/securityContext/runAsUser", json!(0))],
        ),
        (
            Level::Restricted,
            "seccompProfile_restricted",
            vec![("/securityContext/seccompProfile", Value::Null)],
        ),
        (
            Level::Restricted,
            "capabilities_restricted",
            vec![("/containers/0/securityContext/capabilities", Value::Null)],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_refuses_one_pod_per_check_at_its_level() {
    let c = common::start().await;
    namespace(
        &c,
        "base",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    )
    .await;
    namespace(
        &c,
        "strict",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let cases = cases();
    assert_eq!(
        cases.iter().filter(|c| c.0 == Level::Baseline).count(),
        10,
        "every baseline check but Windows' hostProcess"
    );
    for (i, (level, id, changes)) in cases.into_iter().enumerate() {
        let mut spec = restricted_pod();
        for (pointer, value) in changes {
            set(&mut spec, pointer, value);
        }
        let name = format!("p{i}");
        let pod = json!({"metadata": {"name": name}, "spec": spec});
        // The case fails exactly the check it is about, at its level.
        let typed: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(spec.clone()).unwrap();
        let meta = Default::default();
        let found = pss::check(level, &meta, &typed);
        assert_eq!(
            found.iter().map(|v| v.check).collect::<Vec<_>>(),
            [id],
            "{id}: {found:?}"
        );
        for (ns, refused) in [("strict", true), ("base", level == Level::Baseline)] {
            let (code, body, _) =
                send(&c, "POST", &format!("/api/v1/namespaces/{ns}/pods"), &pod).await;
            if refused {
                let label = if ns == "strict" {
                    "restricted:latest"
                } else {
                    "baseline:latest"
                };
                let want_level = if ns == "strict" {
                    Level::Restricted
                } else {
                    Level::Baseline
                };
                let want = format!(
                    "pods \"{name}\" is forbidden: {}",
                    pss::message(label, &pss::check(want_level, &meta, &typed))
                );
                assert_eq!(
                    (code, body["message"].as_str()),
                    (403, Some(want.as_str())),
                    "{id} in {ns}"
                );
                assert_eq!(body["reason"], "Forbidden");
            } else {
                assert_eq!(code, 201, "{id} in {ns}: {body}");
            }
        }
    }
    // The compliant pod is admitted at restricted.
    let (code, body, warnings) = send(
        &c,
        "POST",
        "/api/v1/namespaces/strict/pods",
        &json!({"metadata": {"name": "fine"}, "spec": restricted_pod()}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_warns_for_its_warn_level_templates_and_stricter_namespaces() {
    let c = common::start().await;
    namespace(
        &c,
        "open",
        json!({"pod-security.kubernetes.io/warn": "restricted"}),
    )
    .await;
    let plain = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let (code, _, warnings) = send(
        &c,
        "POST",
        "/api/v1/namespaces/open/pods",
        &json!({"metadata": {"name": "plain"}, "spec": plain}),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("299 - \"would violate PodSecurity \\\"restricted:latest\\\": allowPrivilegeEscalation != false"),
        "{warnings:?}"
    );
    // Workloads are never refused, only warned about (enforce warns through warn's default).
    namespace(
        &c,
        "strict",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let deploy = json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox"}]}}}
    });
    let (code, body, warnings) = send(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/strict/deployments",
        &deploy,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert!(
        warnings.iter().any(|w| w.contains("would violate PodSecurity \\\"restricted:latest\\\": host namespaces (hostNetwork=true)")),
        "{warnings:?}"
    );
    // A bad level is refused naming the label; nothing is written.
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "typo", "labels": {"pod-security.kubernetes.io/enforce": "strict"}}}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("pod-security.kubernetes.io/enforce") && msg.contains("\"strict\""),
        "{msg}"
    );
    let (code, _, _) = send(&c, "GET", "/api/v1/namespaces/typo", &json!({})).await;
    assert_eq!(code, 404);
    // Making a namespace stricter names the pods already there that fail the new level.
    let (code, body, warnings) = send(
        &c,
        "PUT",
        "/api/v1/namespaces/open",
        &json!({"metadata": {"name": "open", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        warnings.iter().any(|w| w.contains("existing pods in namespace \\\"open\\\" violate the new PodSecurity enforce level \\\"restricted:latest\\\"")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("plain: allowPrivilegeEscalation != false")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_fill_in_defaults_and_refuse_what_is_out_of_bounds() {
    let c = common::start().await;
    namespace(&c, "lr", json!({})).await;
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/lr/limitranges",
        &json!({"metadata": {"name": "bounds"}, "spec": {"limits": [
            {"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
             "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
             "max": {"cpu": "2", "memory": "1Gi"}, "min": {"cpu": "50m"},
             "maxLimitRequestRatio": {"cpu": "10"}},
            {"type": "PersistentVolumeClaim", "max": {"storage": "5Gi"}},
        ]}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, pod, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/lr/pods",
        &json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}}),
    )
    .await;
    assert_eq!(code, 201, "{pod}");
    let r = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"], json!({"cpu": "500m", "memory": "256Mi"}));
    assert_eq!(r["requests"], json!({"cpu": "100m", "memory": "128Mi"}));
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request; cpu, memory limit for container app"
    );
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/lr/pods",
        &json!({"metadata": {"name": "big"}, "spec": {"containers": [{"name": "app", "image": "busybox",
            "resources": {"limits": {"cpu": "4", "memory": "2Gi"}, "requests": {"cpu": "100m"}}}]}}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "pods \"big\" is forbidden: [maximum cpu usage per Container is 2, but limit is 4, \
         maximum memory usage per Container is 1Gi, but limit is 2Gi, \
         cpu max limit to request ratio per Container is 10, but provided ratio is 40.000000]"
    );
    let (code, body, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/lr/persistentvolumeclaims",
        &json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}}}}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "persistentvolumeclaims \"data\" is forbidden: maximum storage usage per PersistentVolumeClaim is 5Gi, but request is 10Gi"
    );
}
