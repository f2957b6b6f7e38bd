//! Real clients nobody here wrote, against the API server on loopback: the official Python
//! client (CRUD of core and apps kinds, watch, every patch type, 409, 422, scale, status),
//! lightkube (a watch without a resourceVersion starts with ADDED) and kopf (an operator that
//! reconciles a CRD and writes its status). `scripts/test.sh` installs them into a virtualenv;
//! STRAKE_PYTHON names another interpreter that has them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn python() -> PathBuf {
    let p = std::env::var_os("STRAKE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.cache/pyclients/bin/python3"
            ))
        });
    assert!(
        p.exists(),
        "{} is missing: scripts/test.sh installs the Python clients (kubernetes, lightkube, kopf) there, or set STRAKE_PYTHON",
        p.display()
    );
    let probe = Command::new(&p)
        .args(["-c", "import kubernetes, lightkube, kopf"])
        .status()
        .expect("run python");
    assert!(
        probe.success(),
        "{} lacks the kubernetes, lightkube or kopf package",
        p.display()
    );
    p
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients")).join(name)
}

use crate::common;

fn run_script(py: &PathBuf, name: &str, kubeconfig: &PathBuf, ns: &str) {
    let out = Command::new(py)
        .arg(script(name))
        .arg(kubeconfig)
        .arg(ns)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{name} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_lightkube_and_kopf_work_unchanged() {
    let py = python();
    let s = common::start().await;
    let (kc, py2) = (s.kubeconfig.clone(), py.clone());
    tokio::task::spawn_blocking(move || {
        run_script(&py2, "python_client.py", &kc, "py");
        run_script(&py2, "lightkube_client.py", &kc, "lk");
    })
    .await
    .unwrap();

    // kopf: a CRD with a structural schema and a status subresource, and an operator for it.
    let http = s.http.clone();
    let post = |path: &str, body: serde_json::Value| {
        let (http, url) = (http.clone(), s.base.clone());
        let path = path.to_string();
        async move {
            http.post(format!("{url}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post("/api/v1/namespaces", json!({"metadata": {"name": "op"}})).await,
        201
    );
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "greetings.strake.dev"},
        "spec": {"group": "strake.dev", "scope": "Namespaced", "names": {"plural": "greetings", "singular": "greeting", "kind": "Greeting"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["who"], "properties": {"who": {"type": "string"}, "times": {"type": "integer", "minimum": 1}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
    assert_eq!(
        post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd
        )
        .await,
        201
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("{}/apis/strake.dev/v1", s.base))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the CRD was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut kopf = Command::new(&py)
        .args([
            "-m",
            "kopf",
            "run",
            "--standalone",
            "-n",
            "op",
            "--liveness=",
            "--verbose",
        ])
        .arg(script("kopf_operator.py"))
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kopf");
    assert_eq!(post("/apis/strake.dev/v1/namespaces/op/greetings", json!({"apiVersion": "strake.dev/v1", "kind": "Greeting", "metadata": {"name": "hi"}, "spec": {"who": "strake", "times": 2}})).await, 201);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let v: serde_json::Value = http
            .get(format!(
                "{}/apis/strake.dev/v1/namespaces/op/greetings/hi",
                s.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"]["message"].is_string() {
            break v["status"].clone();
        }
        if Instant::now() > deadline || kopf.try_wait().unwrap().is_some() {
            let _ = kopf.kill();
            let out = kopf.wait_with_output().unwrap();
            panic!(
                "kopf never wrote the status: {v}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = kopf.kill();
    let _ = kopf.wait();
    assert_eq!(status["message"], "hello, strake (2x)", "{status}");
    assert_eq!(status["phase"], "Greeted");
}
