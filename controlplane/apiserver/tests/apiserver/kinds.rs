//! One generic suite run against every kind the table serves, over real HTTPS on a real
//! single-voter store: create, get, list (selectors, chunking), watch, update (409 on a stale
//! resourceVersion), every patch type, status, dry-run, delete with finalizers, and Table
//! output. Then the machinery that is not per kind: server-side apply, CRDs, scale, bad input.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::common;

struct Api {
    http: reqwest::Client,
    base: String,
    _server: common::Loopback,
}

impl From<common::Loopback> for Api {
    fn from(l: common::Loopback) -> Self {
        Api {
            http: l.http.clone(),
            base: l.base.clone(),
            _server: l,
        }
    }
}

async fn start() -> Api {
    common::start().await.into()
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        ct: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r
                .header("Content-Type", ct.unwrap_or("application/json"))
                .body(serde_json::to_vec(&b).unwrap());
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, None, Some(body))
            .await
    }
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, None, Some(body))
            .await
    }
    async fn patch(&self, path: &str, ct: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(ct), Some(body))
            .await
    }
    async fn delete(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None, body).await
    }
}

fn pod_spec() -> Value {
    json!({"containers": [{"name": "c", "image": "busybox:1"}]})
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec()})
}

/// The fields a kind needs beyond metadata to be valid.
fn sample(group: &str, kind: &str) -> Value {
    match (group, kind) {
        ("", "Pod") => json!({"spec": pod_spec()}),
        ("", "Service") => json!({"spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}}),
        ("", "Event") => {
            json!({"involvedObject": {"kind": "Pod", "name": "x", "namespace": "suite"}, "reason": "R", "message": "m", "type": "Normal"})
        }
        ("", "PersistentVolume") => {
            json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp"}}})
        }
        ("", "PersistentVolumeClaim") => {
            json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        }
        ("", "PodTemplate") => json!({"template": template()}),
        ("", "ReplicationController") => {
            json!({"spec": {"selector": {"app": "x"}, "template": template()}})
        }
        ("", "LimitRange") => json!({"spec": {"limits": [{"type": "Container"}]}}),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            json!({"spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template()}})
        }
        ("apps", "StatefulSet") => {
            json!({"spec": {"selector": {"matchLabels": {"app": "x"}}, "serviceName": "x", "template": template()}})
        }
        ("apps", "ControllerRevision") => json!({"revision": 1, "data": {"spec": {}}}),
        ("batch", "Job") => {
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}], "restartPolicy": "Never"}}}})
        }
        ("batch", "CronJob") => {
            json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}], "restartPolicy": "OnFailure"}}}}}})
        }
        ("discovery.k8s.io", "EndpointSlice") => json!({"addressType": "IPv4", "endpoints": []}),
        ("events.k8s.io", "Event") => {
            json!({"eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "suite", "reportingInstance": "suite", "action": "A", "reason": "R", "type": "Normal"})
        }
        ("storage.k8s.io", "StorageClass") => json!({"provisioner": "strake.dev/local-path"}),
        ("storage.k8s.io", "VolumeAttachment") => {
            json!({"spec": {"attacher": "a", "nodeName": "n", "source": {"persistentVolumeName": "pv"}}})
        }
        ("scheduling.k8s.io", "PriorityClass") => json!({"value": 100}),
        ("node.k8s.io", "RuntimeClass") => json!({"handler": "runc"}),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            json!({"spec": {"maxReplicas": 3, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}}})
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd_body("gadgets", "Gadget"),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            use base64::Engine;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "suite");
            let pem = params
                .serialize_request(&rcgen::KeyPair::generate().unwrap())
                .unwrap()
                .pem()
                .unwrap();
            json!({"spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": "example.com/suite", "usages": ["client auth"]}})
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "u"}]})
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            json!({"spec": {"policyName": "p", "validationActions": ["Deny"]}})
        }
        _ => json!({}),
    }
}

fn crd_body(plural: &str, kind: &str) -> Value {
    json!({"spec": {
        "group": "suite.strake.dev", "scope": "Namespaced",
        "names": {"plural": plural, "kind": kind, "singular": kind.to_ascii_lowercase(), "shortNames": [format!("{}x", &plural[..2])]},
        "versions": [{"name": "v1", "served": true, "storage": true,
            "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
            "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "integer", "minimum": 1}, "replicas": {"type": "integer"}, "mode": {"type": "string", "enum": ["a", "b"], "default": "a"}}},
                "status": {"type": "object", "properties": {"phase": {"type": "string"}, "replicas": {"type": "integer"}}}}}}}]}})
}

fn collection(group: &str, version: &str, plural: &str, ns: Option<&str>) -> String {
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

#[tokio::test]
async fn every_served_kind_passes_the_generic_suite() {
    let api = start().await;
    assert_eq!(
        api.post("/api/v1/namespaces", json!({"metadata": {"name": "suite"}}))
            .await
            .0,
        201
    );
    let (_, disc) = api.call(reqwest::Method::GET, "/apis", None, None).await;
    let mut kinds: Vec<(String, String, String, String, bool)> = Vec::new();
    let mut with_status = std::collections::HashMap::new();
    let (_, core) = api.get("/api/v1").await;
    let mut lists = vec![core];
    for g in disc["groups"].as_array().unwrap() {
        let gv = g["preferredVersion"]["groupVersion"].as_str().unwrap();
        lists.push(api.get(&format!("/apis/{gv}")).await.1);
    }
    for list in lists {
        let gv = list["groupVersion"].as_str().unwrap().to_string();
        let (group, version) = gv
            .split_once('/')
            .map(|(g, v)| (g.to_string(), v.to_string()))
            .unwrap_or((String::new(), gv.clone()));
        for r in list["resources"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            let verbs: Vec<&str> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            if name.contains('/') || !verbs.contains(&"list") {
                continue;
            }
            let status = format!("{name}/status");
            let has_status = list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == status.as_str());
            with_status.insert((group.clone(), name.to_string()), has_status);
            kinds.push((
                group.clone(),
                version.clone(),
                name.to_string(),
                r["kind"].as_str().unwrap().to_string(),
                r["namespaced"].as_bool().unwrap(),
            ));
        }
    }
    assert!(kinds.len() >= 44, "only {} kinds are served", kinds.len());
    for (group, version, plural, kind, namespaced) in &kinds {
        let ns = namespaced.then_some("suite");
        let coll = collection(group, version, plural, ns);
        let api_version = if group.is_empty() {
            version.clone()
        } else {
            format!("{group}/{version}")
        };
        let what = format!("{api_version} {kind}");
        let mut body = sample(group, kind);
        let name = if kind == "CustomResourceDefinition" {
            "gadgets.suite.strake.dev".to_string()
        } else {
            format!("s-{}", plural.trim_end_matches('s'))
        };
        body["apiVersion"] = api_version.clone().into();
        body["kind"] = kind.clone().into();
        body["metadata"] = json!({"name": name, "labels": {"suite": "yes", "n": "1"}});

        // dry-run create persists nothing
        let (code, out) = api.post(&format!("{coll}?dryRun=All"), body.clone()).await;
        assert_eq!(code, 201, "{what}: dry-run create: {out}");
        assert_eq!(
            api.get(&format!("{coll}/{name}")).await.0,
            404,
            "{what}: a dry-run create wrote"
        );
        // create, and a second create conflicts
        let (code, created) = api.post(&coll, body.clone()).await;
        assert_eq!(code, 201, "{what}: create: {created}");
        assert_eq!(created["kind"], kind.as_str());
        assert!(
            created["metadata"]["uid"].is_string()
                && created["metadata"]["resourceVersion"].is_string(),
            "{what}: {created}"
        );
        let (code, dup) = api.post(&coll, body.clone()).await;
        assert_eq!(
            (code, dup["reason"].as_str()),
            (409, Some("AlreadyExists")),
            "{what}: {dup}"
        );
        // a second object for list tests
        let mut other = body.clone();
        let other_name = format!("{name}-b");
        if kind != "CustomResourceDefinition" {
            other["metadata"] = json!({"name": other_name, "labels": {"suite": "yes", "n": "2"}});
            assert_eq!(api.post(&coll, other).await.0, 201, "{what}: second create");
        }
        // get
        let (code, got) = api.get(&format!("{coll}/{name}")).await;
        assert_eq!(code, 200, "{what}: get {got}");
        // list: label selector, field selector, chunking
        let (code, l) = api
            .get(&format!("{coll}?labelSelector=suite%3Dyes,n%3D1"))
            .await;
        assert_eq!(code, 200, "{what}: list {l}");
        assert_eq!(
            l["items"].as_array().unwrap().len(),
            1,
            "{what}: label selector"
        );
        assert_eq!(l["kind"], format!("{kind}List"));
        let (_, l) = api
            .get(&format!("{coll}?fieldSelector=metadata.name%3D{name}"))
            .await;
        assert_eq!(
            l["items"].as_array().unwrap().len(),
            1,
            "{what}: field selector {l}"
        );
        if kind != "CustomResourceDefinition" {
            let (_, page) = api
                .get(&format!("{coll}?labelSelector=suite&limit=1"))
                .await;
            assert_eq!(
                page["items"].as_array().unwrap().len(),
                1,
                "{what}: a page holds at most the limit"
            );
            let mut token = page["metadata"]["continue"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no continue token {page}"))
                .to_string();
            let mut seen = 1;
            for _ in 0..10 {
                let (_, next) = api
                    .get(&format!(
                        "{coll}?labelSelector=suite&limit=1&continue={token}"
                    ))
                    .await;
                seen += next["items"].as_array().unwrap().len();
                match next["metadata"]["continue"].as_str() {
                    Some(t) => token = t.to_string(),
                    None => break,
                }
            }
            assert_eq!(seen, 2, "{what}: the pages hold every match once");
        }
        // Table output
        let r = api
            .http
            .get(format!("{}{coll}", api.base))
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .send()
            .await
            .unwrap();
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["kind"], "Table", "{what}");
        let cols = t["columnDefinitions"].as_array().unwrap().len();
        for row in t["rows"].as_array().unwrap() {
            assert_eq!(
                row["cells"].as_array().unwrap().len(),
                cols,
                "{what}: every row has a cell per column"
            );
        }
        // watch from the current version sees a patch
        let rv = got["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let watch = api.http.get(format!("{}{coll}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3D{name}&timeoutSeconds=20", api.base)).send().await.unwrap();
        let mut events = watch.bytes_stream();
        // update with a stale resourceVersion: 409; with the current one: 200
        let mut stale = got.clone();
        stale["metadata"]["labels"]["n"] = "9".into();
        stale["metadata"]["resourceVersion"] = "1".into();
        let (code, c409) = api.put(&format!("{coll}/{name}"), stale).await;
        assert_eq!(code, 409, "{what}: stale update {c409}");
        // An update at the current resourceVersion succeeds (re-read if a controller, as the
        // CRD controller does, wrote in between: that 409 is the point of resourceVersions).
        let mut updated = None;
        for _ in 0..10 {
            let (_, mut fresh) = api.get(&format!("{coll}/{name}")).await;
            fresh["metadata"]["annotations"] = json!({"suite/updated": "yes"});
            match api.put(&format!("{coll}/{name}"), fresh).await {
                (200, upd) => {
                    updated = Some(upd);
                    break;
                }
                (409, _) => continue,
                (code, upd) => panic!("{what}: update {code} {upd}"),
            }
        }
        assert!(updated.is_some(), "{what}: no update succeeded");
        let item = format!("{coll}/{name}");
        // status is a subresource: a main write keeps it, a status write keeps the rest
        if with_status[&(group.clone(), plural.clone())] {
            // Re-read on a 409: a controller (CRDs have one) may write in between.
            let (mut before, mut after) = (Value::Null, Value::Null);
            for _ in 0..10 {
                before = api.get(&item).await.1;
                let mut main = before.clone();
                main["status"] = json!({"suiteWroteThis": true});
                let (code, out) = api.put(&item, main).await;
                after = out;
                if code != 409 {
                    assert_eq!(code, 200, "{what}: main update {after}");
                    break;
                }
            }
            assert_eq!(
                after.get("status"),
                before.get("status"),
                "{what}: a main write changed status"
            );
            let (code, st) = api
                .patch(
                    &format!("{item}/status"),
                    "application/merge-patch+json",
                    json!({"metadata": {"labels": {"via-status": "1"}}}),
                )
                .await;
            assert_eq!(code, 200, "{what}: status patch {st}");
            assert!(
                st["metadata"]["labels"]["via-status"].is_null(),
                "{what}: a status write changed labels"
            );
            let (code, _) = api.get(&format!("{item}/status")).await;
            assert_eq!(code, 200, "{what}: get status");
        }
        // every patch type
        let (code, p) = api
            .patch(
                &item,
                "application/merge-patch+json",
                json!({"metadata": {"labels": {"merge": "1"}}}),
            )
            .await;
        assert_eq!(
            (code, p["metadata"]["labels"]["merge"].as_str()),
            (200, Some("1")),
            "{what}: merge patch {p}"
        );
        let (code, p) = api
            .patch(
                &item,
                "application/strategic-merge-patch+json",
                json!({"metadata": {"labels": {"smp": "1"}}}),
            )
            .await;
        assert_eq!(
            (code, p["metadata"]["labels"]["smp"].as_str()),
            (200, Some("1")),
            "{what}: strategic patch {p}"
        );
        let (code, p) = api
            .patch(
                &item,
                "application/json-patch+json",
                json!([{"op": "add", "path": "/metadata/labels/jp", "value": "1"}]),
            )
            .await;
        assert_eq!(
            (code, p["metadata"]["labels"]["jp"].as_str()),
            (200, Some("1")),
            "{what}: json patch {p}"
        );
        let apply = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "annotations": {"suite/applied": "yes"}}});
        let (code, p) = api
            .patch(
                &format!("{item}?fieldManager=suite"),
                "application/apply-patch+yaml",
                apply,
            )
            .await;
        assert_eq!(
            (code, p["metadata"]["annotations"]["suite/applied"].as_str()),
            (200, Some("yes")),
            "{what}: apply {p}"
        );
        let (code, p) = api
            .patch(
                &format!("{item}?dryRun=All"),
                "application/merge-patch+json",
                json!({"metadata": {"labels": {"dry": "1"}}}),
            )
            .await;
        assert_eq!(
            (code, p["metadata"]["labels"]["dry"].as_str()),
            (200, Some("1")),
            "{what}: dry-run patch"
        );
        assert!(
            api.get(&item).await.1["metadata"]["labels"]["dry"].is_null(),
            "{what}: a dry-run patch wrote"
        );
        let got_event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: watch saw nothing"))
            .unwrap()
            .unwrap();
        let ev: Value =
            serde_json::from_slice(got_event.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(ev["type"], "MODIFIED", "{what}: {ev}");
        // delete: a finalizer holds the object; removing it lets it go; dry-run deletes nothing
        let (code, _) = api
            .patch(
                &item,
                "application/merge-patch+json",
                json!({"metadata": {"finalizers": ["suite.strake.dev/hold"]}}),
            )
            .await;
        assert_eq!(code, 200, "{what}: add finalizer");
        let (code, d) = api.delete(&format!("{item}?dryRun=All"), None).await;
        assert_eq!(code, 200, "{what}: dry-run delete {d}");
        assert!(
            api.get(&item).await.1["metadata"]["deletionTimestamp"].is_null(),
            "{what}: a dry-run delete wrote"
        );
        let (code, d) = api.delete(&item, None).await;
        assert_eq!(code, 200, "{what}: delete {d}");
        let (code, held) = api.get(&item).await;
        assert!(
            code == 200 && held["metadata"]["deletionTimestamp"].is_string(),
            "{what}: the finalizer holds the object: {held}"
        );
        let (code, _) = api
            .patch(
                &item,
                "application/json-patch+json",
                json!([{"op": "remove", "path": "/metadata/finalizers"}]),
            )
            .await;
        assert_eq!(code, 200, "{what}: remove finalizer");
        let gone = async {
            loop {
                if api.get(&item).await.0 == 404 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), gone)
            .await
            .unwrap_or_else(|_| panic!("{what}: not deleted after its finalizer went"));
        // deletecollection removes the rest
        let (code, _) = api
            .delete(&format!("{coll}?labelSelector=suite"), None)
            .await;
        assert_eq!(code, 200, "{what}: deletecollection");
        // Terminating objects (namespaces) finish once their controller empties them.
        let emptied = async {
            while api.get(&format!("{coll}?labelSelector=suite")).await.1["items"]
                .as_array()
                .map(Vec::len)
                != Some(0)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), emptied)
            .await
            .unwrap_or_else(|_| panic!("{what}: deletecollection left objects"));
    }
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let api = start().await;
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let ct = "application/apply-patch+yaml";
    let (code, created) = api
        .patch(
            &format!("{path}?fieldManager=alice"),
            ct,
            deployment("web", "nginx:1"),
        )
        .await;
    assert_eq!(code, 201, "apply creates: {created}");
    assert_eq!(created["spec"]["replicas"], 1, "defaults apply");
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
    // Another manager setting the same field to another value conflicts, naming the owner.
    let (code, conflict) = api
        .patch(
            &format!("{path}?fieldManager=bob"),
            ct,
            deployment("web", "nginx:2"),
        )
        .await;
    assert_eq!(code, 409, "{conflict}");
    let msg = conflict["message"].as_str().unwrap();
    assert!(msg.contains("alice") && msg.contains("image"), "{msg}");
    // The same value is shared ownership, not a conflict; force takes the field.
    assert_eq!(
        api.patch(
            &format!("{path}?fieldManager=bob"),
            ct,
            deployment("web", "nginx:1")
        )
        .await
        .0,
        200
    );
    let (code, forced) = api
        .patch(
            &format!("{path}?fieldManager=bob&force=true"),
            ct,
            deployment("web", "nginx:3"),
        )
        .await;
    assert_eq!(
        (
            code,
            forced["spec"]["template"]["spec"]["containers"][0]["image"].as_str()
        ),
        (200, Some("nginx:3")),
        "{forced}"
    );
    // A field alice applied and then drops is removed.
    let mut with_label = deployment("web", "nginx:3");
    with_label["metadata"]["labels"] = json!({"team": "a"});
    assert_eq!(
        api.patch(&format!("{path}?fieldManager=alice"), ct, with_label)
            .await
            .0,
        200
    );
    let (_, dropped) = api
        .patch(
            &format!("{path}?fieldManager=alice"),
            ct,
            deployment("web", "nginx:3"),
        )
        .await;
    assert!(dropped["metadata"]["labels"]["team"].is_null(), "{dropped}");
    // An apply needs a field manager.
    assert_eq!(
        api.patch(path, ct, deployment("web", "nginx:3")).await.0,
        400
    );
}

#[tokio::test]
async fn strategic_merge_patches_follow_merge_keys_and_directives() {
    let api = start().await;
    let mut d = deployment("smp", "a:1");
    d["spec"]["template"]["spec"]["containers"] = json!([{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "b:1"}]);
    assert_eq!(
        api.post("/apis/apps/v1/namespaces/default/deployments", d)
            .await
            .0,
        201
    );
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}}});
    let (code, out) = api
        .patch(
            "/apis/apps/v1/namespaces/default/deployments/smp",
            "application/strategic-merge-patch+json",
            patch,
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        (c[0]["name"].as_str(), c[1]["image"].as_str()),
        (Some("b"), Some("a:2")),
        "{c}"
    );
    assert_eq!(
        c[1]["env"].as_array().unwrap().len(),
        2,
        "env merges by name"
    );
    assert_eq!(
        out["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
}

#[tokio::test]
async fn custom_resources_are_served_from_their_definition() {
    let api = start().await;
    let mut crd = crd_body("widgets", "Widget");
    crd["apiVersion"] = "apiextensions.k8s.io/v1".into();
    crd["kind"] = "CustomResourceDefinition".into();
    crd["metadata"] = json!({"name": "widgets.suite.strake.dev"});
    let (code, out) = api
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let established = async {
        loop {
            let (_, c) = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.suite.strake.dev").await;
            if c["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), established)
        .await
        .expect("the CRD becomes Established");
    let (_, disc) = api.get("/apis/suite.strake.dev/v1").await;
    assert!(
        disc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "widgets/status"),
        "{disc}"
    );
    let coll = "/apis/suite.strake.dev/v1/namespaces/default/widgets";
    let (code, bad) = api.post(coll, json!({"apiVersion": "suite.strake.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 0, "mode": "c"}})).await;
    assert_eq!(code, 422, "{bad}");
    let fields: Vec<&str> = bad["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"spec.size") && fields.contains(&"spec.mode"),
        "every violation is named: {fields:?}"
    );
    let r = api.http.post(format!("{}{coll}?fieldValidation=Strict", api.base)).json(&json!({"apiVersion": "suite.strake.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1, "bogus": true}})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "unknown fields under Strict");
    let (code, w) = api.post(coll, json!({"apiVersion": "suite.strake.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2, "bogus": true}, "status": {"phase": "set-by-client"}})).await;
    assert_eq!(code, 201, "{w}");
    assert_eq!(w["spec"]["mode"], "a", "schema defaults");
    assert!(w["spec"]["bogus"].is_null(), "unknown fields are pruned");
    assert!(w["status"].is_null(), "status is a subresource");
    let (code, s) = api
        .patch(
            &format!("{coll}/w/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Ready", "replicas": 1}}),
        )
        .await;
    assert_eq!(
        (code, s["status"]["phase"].as_str()),
        (200, Some("Ready")),
        "{s}"
    );
    let (code, scale) = api
        .patch(
            &format!("{coll}/w/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 4}}),
        )
        .await;
    assert_eq!(
        (
            code,
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["replicas"].as_i64()
        ),
        (200, Some(4), Some(1)),
        "{scale}"
    );
    let r = api
        .http
        .get(format!("{}{coll}", api.base))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["columnDefinitions"][1]["name"], "Size");
    assert_eq!(
        t["rows"][0]["cells"][1], 2,
        "printer columns read their JSONPath"
    );
    // Deleting the CRD deletes its objects, then stops serving it.
    assert_eq!(
        api.delete(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.suite.strake.dev",
            None
        )
        .await
        .0,
        200
    );
    let gone = async {
        while api.get("/apis/suite.strake.dev/v1").await.0 != 404 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), gone)
        .await
        .expect("the CRD's group goes away");
}

#[tokio::test]
async fn scale_dry_run_and_propagation() {
    let api = start().await;
    let coll = "/apis/apps/v1/namespaces/default/deployments";
    assert_eq!(api.post(coll, deployment("s", "x:1")).await.0, 201);
    let (code, scale) = api.get(&format!("{coll}/s/scale")).await;
    assert_eq!(
        (
            code,
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64()
        ),
        (200, Some("Scale"), Some(1))
    );
    assert_eq!(scale["status"]["selector"], "app=s");
    let mut up = scale.clone();
    up["spec"]["replicas"] = 3.into();
    assert_eq!(api.put(&format!("{coll}/s/scale"), up).await.0, 200);
    assert_eq!(api.get(&format!("{coll}/s")).await.1["spec"]["replicas"], 3);
    let (code, neg) = api
        .patch(
            &format!("{coll}/s/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": -1}}),
        )
        .await;
    assert_eq!(code, 422, "{neg}");
    // dryRun on update and delete writes nothing.
    let mut d = api.get(&format!("{coll}/s")).await.1;
    d["spec"]["replicas"] = 9.into();
    assert_eq!(
        api.put(&format!("{coll}/s?dryRun=All"), d).await.1["spec"]["replicas"],
        9
    );
    assert_eq!(api.get(&format!("{coll}/s")).await.1["spec"]["replicas"], 3);
    // Orphan and foreground deletion hold the object with their finalizer for the collector.
    let (code, held) = api
        .delete(
            &format!("{coll}/s"),
            Some(json!({"propagationPolicy": "Orphan"})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(held["metadata"]["finalizers"], json!(["orphan"]), "{held}");
    assert_eq!(api.post(coll, deployment("f", "x:1")).await.0, 201);
    let (_, held) = api
        .delete(&format!("{coll}/f?propagationPolicy=Foreground"), None)
        .await;
    assert_eq!(
        held["metadata"]["finalizers"],
        json!(["foregroundDeletion"]),
        "{held}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_status_that_names_it() {
    let api = start().await;
    let pods = "/api/v1/namespaces/default/pods";
    // A name that is not a path segment never reaches a key.
    let (code, s) = api.get("/api/v1/namespaces/default/pods/a%2Fb").await;
    assert_eq!((code, s["kind"].as_str()), (400, Some("Status")), "{s}");
    // Unknown group, version or resource: 404.
    assert_eq!(api.get("/apis/apps/v9/deployments").await.0, 404);
    assert_eq!(api.get("/api/v1/widgets").await.0, 404);
    // The body's namespace or name disagrees with the URL: 400.
    let (code, s) = api
        .post(
            pods,
            json!({"metadata": {"name": "p", "namespace": "other"}, "spec": pod_spec()}),
        )
        .await;
    assert_eq!(code, 400, "{s}");
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "c"}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, s) = api
        .put(
            "/api/v1/namespaces/default/configmaps/c",
            json!({"metadata": {"name": "d"}}),
        )
        .await;
    assert_eq!(code, 400, "{s}");
    // The wrong kind for the URL: 400.
    assert_eq!(
        api.post(
            pods,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        )
        .await
        .0,
        400
    );
    // Invalid objects: 422 with every cause.
    let (code, s) = api.post("/apis/apps/v1/namespaces/default/deployments", json!({"metadata": {"name": "Bad_Name"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "c"}}, "spec": {"containers": [{"name": "c"}]}}}})).await;
    assert_eq!(code, 422, "{s}");
    let fields: Vec<&str> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    for f in [
        "metadata.name",
        "spec.template.metadata.labels",
        "spec.template.spec.containers[0].image",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    // Duplicate and unknown fields under Strict: 400; under Warn: a Warning header.
    let raw = br#"{"metadata":{"name":"dup","name":"dup2"},"data":{"a":"1"}}"#.to_vec();
    let r = api
        .http
        .post(format!(
            "{}/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            api.base
        ))
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("duplicate field"));
    let r = api
        .http
        .post(format!("{}/api/v1/namespaces/default/configmaps", api.base))
        .body(br#"{"metadata":{"name":"w"},"bogus":1}"#.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert!(
        r.headers()
            .get("warning")
            .is_some_and(|w| w.to_str().unwrap().contains("bogus"))
    );
    // YAML bodies are accepted; malformed ones name the problem.
    let r = api
        .http
        .post(format!("{}/api/v1/namespaces/default/configmaps", api.base))
        .header("Content-Type", "application/yaml")
        .body("metadata:\n  name: from-yaml\ndata:\n  k: v\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let r = api
        .http
        .post(format!("{}/api/v1/namespaces/default/configmaps", api.base))
        .header("Content-Type", "application/yaml")
        .body("metadata: [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Unsupported media type: 415.
    let r = api
        .http
        .post(format!("{}/api/v1/namespaces/default/configmaps", api.base))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // Creating in a namespace that does not exist: 404; the system namespaces cannot go.
    assert_eq!(
        api.post(
            "/api/v1/namespaces/nope/configmaps",
            json!({"metadata": {"name": "x"}})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        api.delete("/api/v1/namespaces/kube-system", None).await.0,
        403
    );
}

#[tokio::test]
async fn events_aggregate_and_expire_and_the_store_compacts_itself() {
    use strake_apimachinery::events::{EventType, record};
    let server = common::start_with(strake_apiserver::Housekeeping {
        compaction: Duration::from_millis(300),
        event_ttl: Duration::from_secs(2),
    })
    .await;
    let reg = server.registry.clone();
    let api: Api = server.into();

    let (_, pod) = api
        .post(
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": "p"}, "spec": pod_spec()}),
        )
        .await;
    for _ in 0..3 {
        record(
            &reg,
            &pod,
            EventType::Warning,
            "FailedScheduling",
            "0/1 nodes are available",
            "default-scheduler",
        )
        .await
        .unwrap();
    }
    record(
        &reg,
        &pod,
        EventType::Normal,
        "Scheduled",
        "assigned",
        "default-scheduler",
    )
    .await
    .unwrap();
    let (_, evs) = api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dp,reason%3DFailedScheduling").await;
    let items = evs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the same event aggregates: {evs}");
    assert_eq!(items[0]["count"], 3);
    assert_eq!(items[0]["involvedObject"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(items[0]["source"]["component"], "default-scheduler");
    // An old resourceVersion expires once the compactor has run twice.
    let old = pod["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let expired = async {
        loop {
            let (code, _) = api.get(&format!("/api/v1/namespaces/default/pods?resourceVersion={old}&resourceVersionMatch=Exact")).await;
            if code == 410 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), expired)
        .await
        .expect("the store was never compacted");
    // Events expire after their time to live.
    let gone = async {
        while !api.get("/api/v1/namespaces/default/events").await.1["items"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), gone)
        .await
        .expect("events never expired");
}

#[tokio::test]
async fn many_watchers_share_one_store_watch_per_resource() {
    let server = common::start().await;
    let reg = server.registry.clone();
    let api: Api = server.into();
    let (_, list) = api.get("/api/v1/namespaces/default/configmaps").await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // The namespace and volume controllers' caches (namespaces, pods; claims, volumes,
    // classes, nodes), the authorizer (the four RBAC kinds; pods), the admission webhooks
    // (both configuration kinds) and the admission policies (policies, bindings) hold feeds of
    // their own, one per resource.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reg.watch_cache().feeds() < 14 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = reg.watch_cache().feeds();
    assert_eq!(
        before, 14,
        "the controllers, the authorizer, the webhooks and the policies watch namespaces, pods, claims, volumes, classes, nodes, the RBAC kinds, the webhook configurations and the admission policies"
    );
    let mut streams = Vec::new();
    for i in 0..50 {
        // Half watch the namespace, half the whole resource with a label selector.
        let path = if i % 2 == 0 {
            "/api/v1/namespaces/default/configmaps".to_string()
        } else {
            "/api/v1/configmaps".to_string()
        };
        let r = api
            .http
            .get(format!(
                "{}{path}?watch=true&resourceVersion={rv}&labelSelector=w%3D1&timeoutSeconds=30",
                api.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        streams.push(r.bytes_stream());
    }
    assert_eq!(
        api.post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "skip"}})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        api.post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "seen", "labels": {"w": "1"}}})
        )
        .await
        .0,
        201
    );
    for (i, s) in streams.iter_mut().enumerate() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap_or_else(|_| panic!("watcher {i} got nothing"))
            .unwrap()
            .unwrap();
        let ev: Value =
            serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(
            (
                ev["type"].as_str(),
                ev["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("seen")),
            "watcher {i}: {ev}"
        );
    }
    assert_eq!(
        reg.watch_cache().feeds() - before,
        1,
        "fifty watchers of configmaps share one store watch"
    );
}

/// Responses to a client whose first choice is protobuf, read back with upstream's generated
/// message types: an object, a list, an error Status, and a watch stream's frames.
#[tokio::test]
async fn protobuf_clients_get_protobuf_responses() {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::Unknown;
    use prost::Message;
    const PB: &str = "application/vnd.kubernetes.protobuf";
    let api = start().await;
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pb", "labels": {"a": "b"}}, "data": {"k": "v"}}),
        )
        .await;
    assert_eq!(code, 201);
    let get = |path: &str| {
        api.http
            .get(format!("{}{path}", api.base))
            .header("Accept", format!("{PB}, application/json"))
            .send()
    };
    let unwrap = |bytes: &[u8]| -> (String, String, Vec<u8>) {
        assert_eq!(&bytes[..4], b"k8s\0", "the envelope");
        let u = Unknown::decode(&bytes[4..]).unwrap();
        let tm = u.type_meta.unwrap();
        (tm.api_version.unwrap(), tm.kind.unwrap(), u.raw.unwrap())
    };

    let r = get("/api/v1/namespaces/default/configmaps/pb")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], PB);
    let (av, kind, raw) = unwrap(&r.bytes().await.unwrap());
    assert_eq!((av.as_str(), kind.as_str()), ("v1", "ConfigMap"));
    let cm = core::ConfigMap::decode(raw.as_slice()).unwrap();
    let m = cm.metadata.unwrap();
    assert_eq!(m.name.as_deref(), Some("pb"));
    assert_eq!(m.labels["a"], "b");
    assert!(m.creation_timestamp.unwrap().seconds.unwrap() > 1_700_000_000);
    assert!(!m.uid.unwrap().is_empty());
    assert_eq!(cm.data["k"], "v");

    let r = get("/api/v1/namespaces/default/configmaps").await.unwrap();
    let (_, kind, raw) = unwrap(&r.bytes().await.unwrap());
    assert_eq!(kind, "ConfigMapList");
    let list = core::ConfigMapList::decode(raw.as_slice()).unwrap();
    assert!(
        list.items
            .iter()
            .any(|c| c.metadata.as_ref().unwrap().name.as_deref() == Some("pb"))
    );
    assert!(!list.metadata.unwrap().resource_version.unwrap().is_empty());

    let r = get("/api/v1/namespaces/default/configmaps/missing")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (_, kind, raw) = unwrap(&r.bytes().await.unwrap());
    assert_eq!(kind, "Status");
    let st = meta::Status::decode(raw.as_slice()).unwrap();
    assert_eq!(
        (st.code, st.reason.as_deref()),
        (Some(404), Some("NotFound"))
    );

    // Table and CRD responses stay JSON, which such clients accept as their fallback.
    let r = api
        .http
        .get(format!("{}/api/v1/namespaces/default/configmaps", api.base))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");

    let r = get("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=2")
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.kubernetes.protobuf;stream=watch"
    );
    let body = r.bytes().await.unwrap();
    let mut rest = &body[..];
    let mut names = Vec::new();
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let ev = meta::WatchEvent::decode(&rest[4..4 + n]).unwrap();
        rest = &rest[4 + n..];
        let (_, kind, raw) = unwrap(&ev.object.unwrap().raw.unwrap());
        assert_eq!(
            (ev.r#type.as_deref(), kind.as_str()),
            (Some("ADDED"), "ConfigMap")
        );
        names.push(
            core::ConfigMap::decode(raw.as_slice())
                .unwrap()
                .metadata
                .unwrap()
                .name
                .unwrap(),
        );
    }
    assert!(rest.is_empty(), "whole frames");
    assert!(names.contains(&"pb".to_string()), "{names:?}");
}

fn owners(obj: &Value) -> Vec<(String, String, Value)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_string(),
                e["operation"].as_str().unwrap_or_default().to_string(),
                e["fieldsV1"].clone(),
            )
        })
        .collect()
}

/// Creates, updates and patches record their managers as upstream does, and appliers that set
/// the same value share the field; forcing takes only the fields in conflict.
#[tokio::test]
async fn every_write_records_its_field_manager() {
    let api = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (code, created) = api
        .post(
            &format!("{base}?fieldManager=alice"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "labels": {"l": "1"}}, "data": {"a": "1", "b": "2"}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        owners(&created),
        vec![(
            "alice".into(),
            "Update".into(),
            json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:l": {}}}})
        )]
    );
    // Without fieldManager, the User-Agent's product names the manager.
    let r = api
        .http
        .patch(format!("{}{base}/m", api.base))
        .header("Content-Type", "application/merge-patch+json")
        .header("User-Agent", "bob/2.0 (linux)")
        .body(r#"{"data": {"b": "3", "c": "4"}}"#)
        .send()
        .await
        .unwrap();
    let patched: Value = r.json().await.unwrap();
    assert_eq!(
        owners(&patched),
        vec![
            (
                "alice".into(),
                "Update".into(),
                json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:l": {}}}})
            ),
            (
                "bob".into(),
                "Update".into(),
                json!({"f:data": {"f:b": {}, "f:c": {}}})
            ),
        ]
    );
    // A PUT that drops managedFields keeps them; one that removes a field takes it from its owner.
    let mut put = patched.clone();
    put["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    put["metadata"].as_object_mut().unwrap().remove("labels");
    let (code, replaced) = api.put(&format!("{base}/m?fieldManager=carol"), put).await;
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(
        owners(&replaced),
        vec![
            (
                "alice".into(),
                "Update".into(),
                json!({"f:data": {"f:a": {}}})
            ),
            (
                "bob".into(),
                "Update".into(),
                json!({"f:data": {"f:b": {}, "f:c": {}}})
            ),
        ],
        "carol changed nothing it keeps, so it owns nothing"
    );
    // A bad manager name is refused.
    let long = "x".repeat(129);
    assert_eq!(
        api.patch(
            &format!("{base}/m?fieldManager={long}"),
            "application/merge-patch+json",
            json!({})
        )
        .await
        .0,
        400
    );

    // Apply: the same value is shared; force moves only the conflicting field.
    let ct = "application/apply-patch+yaml";
    let cfg = |a: &str, z: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": a, "z": z}});
    let path = format!("{base}/s");
    assert_eq!(
        api.patch(&format!("{path}?fieldManager=p"), ct, cfg("1", "1"))
            .await
            .0,
        201
    );
    let (code, shared) = api
        .patch(&format!("{path}?fieldManager=q"), ct, cfg("1", "1"))
        .await;
    assert_eq!(code, 200, "{shared}");
    let both = json!({"f:data": {"f:a": {}, "f:z": {}}});
    assert_eq!(
        owners(&shared),
        vec![
            ("p".into(), "Apply".into(), both.clone()),
            ("q".into(), "Apply".into(), both.clone())
        ]
    );
    let (code, forced) = api
        .patch(
            &format!("{path}?fieldManager=q&force=true"),
            ct,
            cfg("2", "1"),
        )
        .await;
    assert_eq!(code, 200, "{forced}");
    assert_eq!(
        owners(&forced),
        vec![
            ("p".into(), "Apply".into(), json!({"f:data": {"f:z": {}}})),
            ("q".into(), "Apply".into(), both)
        ]
    );
}

/// core/v1 and events.k8s.io/v1 Events are one set of objects in two forms, as upstream: each
/// API reads, lists, selects and watches what the other wrote.
#[tokio::test]
async fn core_and_events_k8s_io_events_are_the_same_objects() {
    let api = start().await;
    let core = "/api/v1/namespaces/default/events";
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    let watch = api
        .http
        .get(format!(
            "{}{v1}?watch=true&timeoutSeconds=3&fieldSelector=regarding.name%3Dweb",
            api.base
        ))
        .send();
    let watch = tokio::spawn(watch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, made) = api
        .post(
            core,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1"},
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
                "reason": "Pulled", "message": "pulled the image", "type": "Normal", "count": 2,
                "source": {"component": "kubelet"}, "reportingComponent": "kubelet",
                "firstTimestamp": "2026-12-03T10:00:00Z", "lastTimestamp": "2026-12-03T10:01:00Z"}),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let (code, seen) = api.get(&format!("{v1}/web.1")).await;
    assert_eq!(code, 200, "{seen}");
    assert_eq!(seen["apiVersion"], "events.k8s.io/v1");
    assert_eq!(seen["kind"], "Event");
    assert_eq!(seen["regarding"]["name"], "web");
    assert_eq!(seen["note"], "pulled the image");
    assert_eq!(seen["reportingController"], "kubelet");
    assert_eq!(seen["deprecatedCount"], 2);
    assert_eq!(seen["deprecatedSource"]["component"], "kubelet");
    assert!(seen.get("involvedObject").is_none() && seen.get("message").is_none());
    assert_eq!(
        seen["metadata"]["resourceVersion"],
        made["metadata"]["resourceVersion"]
    );

    let (code, made) = api
        .post(
            v1,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "db.1"},
                "regarding": {"kind": "Pod", "name": "db", "namespace": "default"},
                "reason": "Scheduled", "note": "assigned to node-1", "type": "Normal",
                "eventTime": "2026-12-03T10:02:00.000000Z", "action": "Binding",
                "reportingController": "strake-scheduler", "reportingInstance": "cp-1"}),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    assert_eq!(made["note"], "assigned to node-1", "{made}");
    let (_, list) = api
        .get(&format!("{core}?fieldSelector=involvedObject.name%3Ddb"))
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["message"], "assigned to node-1");
    assert_eq!(items[0]["reportingComponent"], "strake-scheduler");
    assert_eq!(items[0]["apiVersion"], "v1");
    let (_, list) = api
        .get(&format!("{v1}?fieldSelector=regarding.name%3Dweb"))
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // A change through one API is seen by the other's watchers.
    let (code, _) = api
        .patch(
            &format!("{core}/web.1"),
            "application/merge-patch+json",
            json!({"count": 3}),
        )
        .await;
    assert_eq!(code, 200);
    let body = watch.await.unwrap().unwrap().text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["deprecatedCount"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(kinds, vec![("ADDED", 2), ("MODIFIED", 3)], "{body}");
    assert!(
        events
            .iter()
            .all(|e| e["object"]["apiVersion"] == "events.k8s.io/v1")
    );

    // Deleted through either, gone from both.
    assert_eq!(api.delete(&format!("{v1}/web.1"), None).await.0, 200);
    assert_eq!(api.get(&format!("{core}/web.1")).await.0, 404);
}

/// A CRD's `x-kubernetes-validations` rules are checked on every write: a broken rule is a 422
/// naming its field and message, a transition rule holds across updates, and a CRD whose rule
/// does not compile is refused.
#[tokio::test]
async fn crd_validation_rules_are_enforced() {
    let api = start().await;
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let crd = |rule: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ranges.cel.strake.dev"},
            "spec": {"group": "cel.strake.dev", "scope": "Namespaced",
                "names": {"plural": "ranges", "singular": "range", "kind": "Range", "listKind": "RangeList"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"spec": {"type": "object",
                        "x-kubernetes-validations": [
                            {"rule": rule, "message": "min must not exceed max"},
                            {"rule": "self.zone == oldSelf.zone", "message": "zone is immutable"}],
                        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "zone": {"type": "string"}}}}}}}]}})
    };
    let (code, bad) = api.post(crds, crd("self.min <=")).await;
    assert_eq!(code, 422, "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("x-kubernetes-validations[0].rule"),
        "{bad}"
    );
    let (code, out) = api.post(crds, crd("self.min <= self.max")).await;
    assert_eq!(code, 201, "{out}");
    let coll = "/apis/cel.strake.dev/v1/namespaces/default/ranges";
    let range = |min: i64, max: i64, zone: &str| json!({"apiVersion": "cel.strake.dev/v1", "kind": "Range", "metadata": {"name": "r"}, "spec": {"min": min, "max": max, "zone": zone}});
    let served = async {
        loop {
            if api.get(coll).await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the CRD is served");
    let (code, bad) = api.post(coll, range(5, 1, "a")).await;
    assert_eq!(code, 422, "{bad}");
    let cause = &bad["details"]["causes"][0];
    assert_eq!(cause["field"], "spec", "{bad}");
    assert!(
        cause["message"]
            .as_str()
            .unwrap()
            .contains("min must not exceed max"),
        "{bad}"
    );
    assert_eq!(api.post(coll, range(1, 5, "a")).await.0, 201);
    let (code, bad) = api.put(&format!("{coll}/r"), range(1, 5, "b")).await;
    assert_eq!(code, 422, "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("zone is immutable"),
        "{bad}"
    );
    let (code, ok) = api
        .patch(
            &format!("{coll}/r"),
            "application/merge-patch+json",
            json!({"spec": {"max": 9}}),
        )
        .await;
    assert_eq!((code, ok["spec"]["max"].as_i64()), (200, Some(9)), "{ok}");
}

#[tokio::test]
async fn deleting_a_namespace_empties_it_of_every_kind_crds_included() {
    let api = start().await;
    let mut crd = crd_body("gadgets", "Gadget");
    crd["apiVersion"] = "apiextensions.k8s.io/v1".into();
    crd["kind"] = "CustomResourceDefinition".into();
    crd["metadata"] = json!({"name": "gadgets.suite.strake.dev"});
    let (code, out) = api
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let (code, out) = api
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "doomed"}}),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let gadgets = "/apis/suite.strake.dev/v1/namespaces/doomed/gadgets";
    let served = async {
        loop {
            let body = json!({"apiVersion": "suite.strake.dev/v1", "kind": "Gadget",
                "metadata": {"name": "held", "finalizers": ["suite.strake.dev/hold"]}, "spec": {"size": 1}});
            if api.post(gadgets, body).await.0 == 201 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the CRD is served");
    let cms = "/api/v1/namespaces/doomed/configmaps";
    assert_eq!(
        api.post(cms, json!({"metadata": {"name": "c"}})).await.0,
        201
    );
    assert_eq!(api.delete("/api/v1/namespaces/doomed", None).await.0, 200);
    // The finalizer holds the gadget, and the conditions say so.
    let ns_path = "/api/v1/namespaces/doomed";
    let held = async {
        loop {
            let (_, ns) = api.get(ns_path).await;
            let conds = ns["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let by = |t: &str| conds.iter().find(|c| c["type"] == t).cloned();
            if let (Some(fin), Some(content)) = (
                by("NamespaceFinalizersRemaining"),
                by("NamespaceContentRemaining"),
            ) && fin["status"] == "True"
                && content["message"]
                    == "Some resources are remaining: gadgets.suite.strake.dev has 1 resource instances"
            {
                assert_eq!(ns["status"]["phase"], "Terminating");
                assert_eq!(
                    fin["message"],
                    "Some content in the namespace has finalizers remaining: suite.strake.dev/hold in 1 resource instances"
                );
                assert_eq!(
                    by("NamespaceDeletionContentFailure").unwrap()["status"],
                    "False"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the namespace reports the held gadget");
    assert_eq!(
        api.get(&format!("{cms}/c")).await.0,
        404,
        "the configmap went"
    );
    let (code, out) = api
        .patch(
            &format!("{gadgets}/held"),
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let gone = async {
        loop {
            if api.get(ns_path).await.0 == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the namespace goes once emptied");
}

/// Services get cluster IPs and node ports as upstream's allocators hand them out; values a
/// user picks must be in range and free; `kubernetes` sits on the range's first address and
/// leads to this API server.
#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let api = start().await;
    let svcs = "/api/v1/namespaces/default/services";
    let (code, k) = api.get(&format!("{svcs}/kubernetes")).await;
    assert_eq!(code, 200, "{k}");
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(k["spec"]["ports"][0]["targetPort"], 6443);
    let (code, slice) = api
        .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
        .await;
    assert_eq!(code, 200, "{slice}");
    let advertised = api.base.trim_start_matches("https://").to_string();
    let (ip, port) = advertised.rsplit_once(':').unwrap();
    assert_eq!(slice["endpoints"][0]["addresses"][0], ip);
    assert_eq!(slice["ports"][0]["port"].to_string(), port);

    let svc = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
    let ports = json!([{"port": 80, "targetPort": 8080}]);
    let (code, web) = api
        .post(
            svcs,
            svc("web", json!({"selector": {"app": "web"}, "ports": ports})),
        )
        .await;
    assert_eq!(code, 201, "{web}");
    let ip: std::net::Ipv4Addr = web["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(
        ip.octets()[0] == 10
            && (96..112).contains(&ip.octets()[1])
            && ip != std::net::Ipv4Addr::new(10, 96, 0, 1),
        "{ip}"
    );
    assert_eq!(web["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(web["spec"]["ipFamilies"], json!(["IPv4"]));

    let (code, np) = api
        .post(svcs, svc("np", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]})))
        .await;
    assert_eq!(code, 201, "{np}");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
    let auto = np["spec"]["ports"][1]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&auto) && auto != 30080, "{auto}");

    // Values in use, or out of range, are refused with upstream's words, and nothing is written.
    for (name, spec, field, words) in [
        (
            "dup-port",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            "spec.ports[0].nodePort",
            "provided port is already allocated",
        ),
        (
            "far-port",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
            "spec.ports[0].nodePort",
            "The range of valid ports is 30000-32767",
        ),
        (
            "dup-ip",
            json!({"clusterIP": ip.to_string(), "ports": [{"port": 80}]}),
            "spec.clusterIPs",
            "provided IP is already allocated",
        ),
        (
            "far-ip",
            json!({"clusterIP": "192.0.2.1", "ports": [{"port": 80}]}),
            "spec.clusterIPs",
            "The range of valid IPs is 10.96.0.0/12",
        ),
    ] {
        let (code, out) = api.post(svcs, svc(name, spec)).await;
        assert_eq!(code, 422, "{name}: {out}");
        assert_eq!(out["details"]["causes"][0]["field"], field, "{name}: {out}");
        assert!(
            out["message"].as_str().unwrap().contains(words),
            "{name}: {out}"
        );
        assert_eq!(api.get(&format!("{svcs}/{name}")).await.0, 404);
    }
    // A chosen, free address is kept; headless and ExternalName Services get none.
    let (code, mine) = api
        .post(
            svcs,
            svc(
                "mine",
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(
        (code, mine["spec"]["clusterIP"].as_str()),
        (201, Some("10.96.0.50"))
    );
    let (_, headless) = api
        .post(
            svcs,
            svc(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let (_, ext) = api
        .post(
            svcs,
            svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
        )
        .await;
    assert!(ext["spec"]["clusterIP"].is_null(), "{ext}");
    // A dry run shows values without keeping them; turning a ClusterIP Service into a
    // NodePort one gives it a port and keeps its address.
    let (code, dry) = api
        .post(
            &format!("{svcs}?dryRun=All"),
            svc("dry", json!({"ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(code, 201, "{dry}");
    assert!(dry["spec"]["clusterIP"].is_string());
    let (code, changed) = api
        .patch(
            &format!("{svcs}/web"),
            "application/merge-patch+json",
            json!({"spec": {"type": "NodePort"}}),
        )
        .await;
    assert_eq!(code, 200, "{changed}");
    assert_eq!(changed["spec"]["clusterIP"], ip.to_string());
    assert!(changed["spec"]["ports"][0]["nodePort"].as_u64().unwrap() >= 30000);
    // A deleted Service's port is free again.
    assert_eq!(api.delete(&format!("{svcs}/np"), None).await.0, 200);
    let (code, again) = api
        .post(
            svcs,
            svc(
                "again",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{again}");
}

/// Two API servers over one store hand out node ports and cluster IPs at once, from small
/// ranges: the claims written with each Service keep every value on one Service, deleting a
/// Service or dropping a value frees it at once, and a claim whose Service is gone is taken
/// over.
#[tokio::test]
async fn api_servers_sharing_a_store_never_hand_out_a_value_twice() {
    use std::sync::Arc;
    use strake_apimachinery::servicealloc::ServiceAllocation;
    use strake_apimachinery::storage::{ObjectStore, RaftStore};
    use strake_apimachinery::{ApiError, DeleteOptions, Registry, WriteOptions};

    // The replicated store (one voter): its writes wait on the log, so the creates below
    // interleave as they would on two machines.
    let dir = tempfile::tempdir().unwrap();
    let raft = strake_store::Store::open(strake_store::StoreConfig::single(
        1,
        dir.path().join("store"),
    ))
    .await
    .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(RaftStore::new(raft));
    let server = || {
        Registry::new(
            store.clone(),
            strake_kinds::builtin_table(),
            strake_apimachinery::admission::with_services(
                300,
                ServiceAllocation::new("10.96.0.0/26".parse().unwrap(), 30000..=30029),
            ),
        )
    };
    let (a, b) = (server(), server());
    let table = strake_kinds::builtin_table().snapshot();
    let nsdef = table.lookup("", "v1", "namespaces").unwrap().clone();
    let def = table.lookup("", "v1", "services").unwrap().clone();
    let opts = WriteOptions::default();
    a.create(
        &nsdef,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        &opts,
    )
    .await
    .unwrap();
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    let nodeport = |name: String| svc(&name, json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let creates = (0..16).map(|i| {
        let reg = if i % 2 == 0 { &a } else { &b };
        reg.create(&def, Some("default"), nodeport(format!("s{i}")), &opts)
    });
    let made: Vec<Value> = futures::future::join_all(creates)
        .await
        .into_iter()
        .collect::<Result<_, ApiError>>()
        .expect("every create succeeds: a lost race picks again");
    let distinct = |field: &str| {
        let all: Vec<String> = made.iter().map(|s| s["spec"][field].to_string()).collect();
        let mut set = all.clone();
        set.sort();
        set.dedup();
        (set.len(), all)
    };
    let ports: Vec<Value> = made
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].clone())
        .collect();
    let mut set = ports.iter().map(Value::to_string).collect::<Vec<_>>();
    set.sort();
    set.dedup();
    assert_eq!(set.len(), 16, "node ports handed out twice: {ports:?}");
    let (n, ips) = distinct("clusterIP");
    assert_eq!(n, 16, "cluster IPs handed out twice: {ips:?}");
    let claim = |port: &Value| format!("/allocations/nodeports/{port}").into_bytes();
    let port0 = made[0]["spec"]["ports"][0]["nodePort"].clone();
    assert!(store.get(&claim(&port0)).await.unwrap().is_some());

    // Creating a Service that exists is refused as for any object, whatever it holds (every
    // API server creates the `kubernetes` Service at start).
    let again = b
        .create(&def, Some("default"), made[2].clone(), &opts)
        .await;
    assert!(
        matches!(&again, Err(ApiError::AlreadyExists { name, .. }) if name == "s2"),
        "{again:?}"
    );
    // The other server may not take a held port; once its Service is deleted, it may.
    let want = |name: &str| {
        svc(
            name,
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port0}]}),
        )
    };
    let refused = b.create(&def, Some("default"), want("x"), &opts).await;
    assert!(
        matches!(&refused, Err(ApiError::Invalid { causes, .. })
            if causes[0].message.contains("provided port is already allocated")),
        "{refused:?}"
    );
    a.delete(&def, Some("default"), "s0", &DeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get(&claim(&port0)).await.unwrap(), None, "released");
    b.create(&def, Some("default"), want("x"), &opts)
        .await
        .expect("a deleted Service's port is free at once");

    // Dropping a value (NodePort to ClusterIP) frees it; a claim left by a Service that is
    // gone (a failure between the two writes) does not hold the value.
    let port1 = made[1]["spec"]["ports"][0]["nodePort"].clone();
    let mut s1 = a.get(&def, Some("default"), "s1").await.unwrap();
    s1["spec"]["type"] = json!("ClusterIP");
    s1["spec"]["ports"][0]
        .as_object_mut()
        .unwrap()
        .remove("nodePort");
    a.update(
        &def,
        Some("default"),
        "s1",
        s1,
        strake_apimachinery::Part::Main,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(store.get(&claim(&port1)).await.unwrap(), None, "released");
    let held: Vec<u64> = made
        .iter()
        .filter_map(|s| s["spec"]["ports"][0]["nodePort"].as_u64())
        .collect();
    let free = (30000..=30029).find(|p| !held.contains(p)).unwrap();
    store
        .create(
            claim(&json!(free)),
            serde_json::to_vec(&json!({"namespace": "default", "name": "gone", "uid": "u"}))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut y = want("y");
    y["spec"]["ports"][0]["nodePort"] = json!(free);
    b.create(&def, Some("default"), y, &opts)
        .await
        .expect("a stale claim is taken over");
}
