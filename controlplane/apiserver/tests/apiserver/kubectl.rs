//! Real kubectl (1.32, and 1.30 and 1.33 where installed side by side) against the API server on
//! loopback: the typed commands that send protobuf bodies, explain over the generated OpenAPI,
//! auth reviews, and apply in each mode. The QEMU end-to-end test repeats the core of this
//! against a booted image; this one is quick to run on every change.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

const KUBECTLS: &[&str] = &["1.32", "1.30", "1.33"];

fn kubectl_bin(minor: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{minor}"));
    assert!(
        p.exists(),
        "{} is missing: this test needs kubectl {minor} (the google-cloud-sdk kubectl packages)",
        p.display()
    );
    p
}

fn run(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(bin: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = run(bin, kubeconfig, args);
    assert!(success, "kubectl {} failed:\n{out}{err}", args.join(" "));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_explain_auth_and_apply() {
    let server = common::start().await;
    let kubeconfig = server.kubeconfig.clone();
    let dir = server.dir.path().to_path_buf();
    let kc = kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        for minor in KUBECTLS {
            let bin = kubectl_bin(minor);
            let ns = format!("k{}", minor.replace('.', ""));
            scenario(&bin, &kc, &ns, &dir);
        }
    })
    .await
    .unwrap();
}

fn scenario(bin: &Path, kc: &Path, ns: &str, dir: &Path) {
    let n = ["-n", ns];
    let with = |args: &[&str]| -> Vec<String> {
        n.iter().chain(args.iter()).map(|s| s.to_string()).collect()
    };
    let okn = |args: &[&str]| {
        let a = with(args);
        ok(bin, kc, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ok(bin, kc, &["create", "namespace", ns]);
    // kubectl 1.32 and later send typed creates as protobuf and take protobuf back: the
    // response it printed from was the server's protobuf encoding.
    let (success, out, err) = run(
        bin,
        kc,
        &[
            "-n",
            ns,
            "create",
            "configmap",
            "pbcheck",
            "--from-literal=a=b",
            "-v=8",
        ],
    );
    assert!(
        success && out.contains("configmap/pbcheck created"),
        "{out}{err}"
    );
    if !bin.ends_with("kubectl.1.30") {
        assert!(
            err.contains("Accept: application/vnd.kubernetes.protobuf"),
            "kubectl asked for protobuf:\n{err}"
        );
        assert!(
            err.matches("Content-Type: application/vnd.kubernetes.protobuf")
                .count()
                >= 2,
            "the request and the response were protobuf:\n{err}"
        );
    }
    okn(&[
        "create",
        "configmap",
        "cm",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    okn(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=token=s3cret",
    ]);
    okn(&[
        "create",
        "deployment",
        "dep",
        "--image=busybox:1",
        "--replicas=2",
        "--port=8080",
    ]);
    okn(&["create", "job", "once", "--image=busybox:1", "--", "true"]);
    okn(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox:1",
        "--schedule=*/5 * * * *",
        "--",
        "true",
    ]);
    okn(&["create", "serviceaccount", "robot"]);
    okn(&[
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    okn(&[
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        "--serviceaccount=default:robot",
    ]);
    okn(&["create", "service", "clusterip", "svc", "--tcp=80:8080"]);
    okn(&[
        "expose",
        "deployment",
        "dep",
        "--name=exposed",
        "--port=80",
        "--target-port=8080",
    ]);
    okn(&[
        "create",
        "pdb",
        "budget",
        "--selector=app=dep",
        "--min-available=1",
    ]);
    okn(&[
        "create",
        "priorityclass",
        &format!("{ns}-high"),
        "--value=1000",
    ]);
    assert_eq!(
        okn(&["get", "cm", "cm", "-o", "jsonpath={.data.a}{.data.b}"]),
        "12"
    );
    assert_eq!(
        okn(&["get", "secret", "sec", "-o", "jsonpath={.data.token}"]),
        "czNjcmV0"
    );
    assert_eq!(
        okn(&[
            "get",
            "deploy",
            "dep",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.type}"
        ]),
        "2 8080 RollingUpdate"
    );
    assert_eq!(
        okn(&[
            "get",
            "job",
            "once",
            "-o",
            "jsonpath={.spec.template.spec.restartPolicy} {.spec.backoffLimit}"
        ]),
        "Never 6"
    );
    assert_eq!(
        okn(&["get", "cronjob", "tick", "-o", "jsonpath={.spec.schedule}"]),
        "*/5 * * * *"
    );
    assert_eq!(
        okn(&[
            "get",
            "svc",
            "exposed",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "8080"
    );
    let table = okn(&["get", "deploy", "-o", "wide"]);
    assert!(
        table.contains("UP-TO-DATE") && table.contains("busybox:1"),
        "{table}"
    );
    // Typed creates honour --dry-run=server.
    okn(&[
        "create",
        "configmap",
        "ghost",
        "--from-literal=x=y",
        "--dry-run=server",
    ]);
    assert!(
        !run(
            bin,
            kc,
            &with(&["get", "cm", "ghost"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )
        .0,
        "create --dry-run=server wrote"
    );
    // An invalid typed create is refused with the field named.
    let (success, _, err) = run(
        bin,
        kc,
        &with(&["create", "deployment", "Bad_Name", "--image=x"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!success && err.contains("metadata.name"), "{err}");
    // explain reads the generated schemas.
    let explain = ok(bin, kc, &["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");
    let explain = ok(bin, kc, &["explain", "pods.spec.containers.image"]);
    assert!(explain.contains("image"), "{explain}");
    // auth answers from the review kinds.
    assert_eq!(
        ok(bin, kc, &["auth", "can-i", "create", "pods"]).trim(),
        "yes"
    );
    let whoami = ok(bin, kc, &["auth", "whoami"]);
    assert!(
        whoami.contains("strake-admin") && whoami.contains("system:masters"),
        "{whoami}"
    );
    // create token sends its TokenRequest as protobuf.
    let token = ok(
        bin,
        kc,
        &["-n", ns, "create", "token", "robot", "--duration", "10m"],
    );
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    // apply: client-side, changed, server-side, diff.
    let manifest = dir.join(format!("{ns}.yaml"));
    let app = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: a\n        image: {image}\n      - name: b\n        image: busybox:1\n"
        )
    };
    std::fs::write(&manifest, app("web:1")).unwrap();
    let path = manifest.to_str().unwrap();
    ok(bin, kc, &["apply", "-f", path]);
    std::fs::write(&manifest, app("web:2")).unwrap();
    let (_, diff, _) = run(bin, kc, &["diff", "-f", path]);
    assert!(diff.contains("web:2"), "diff: {diff}");
    ok(bin, kc, &["apply", "-f", path]);
    assert_eq!(
        okn(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "web:2"
    );
    std::fs::write(&manifest, app("web:3")).unwrap();
    ok(
        bin,
        kc,
        &["apply", "--server-side", "--force-conflicts", "-f", path],
    );
    assert_eq!(
        okn(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "web:3"
    );
    okn(&["scale", "deploy", "web", "--replicas=4"]);
    assert_eq!(
        okn(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let resources = ok(bin, kc, &["api-resources"]);
    assert!(
        resources.contains("horizontalpodautoscalers")
            && resources.contains("customresourcedefinitions"),
        "{resources}"
    );
    ok(bin, kc, &["delete", "namespace", ns, "--timeout=60s"]);
}

/// A PEM certificate request for `cn`.
fn csr_pem(cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_certificate_approve_and_deny() {
    use base64::Engine;
    let server = common::start().await;
    let kc = server.kubeconfig.clone();
    let dir = server.dir.path().to_path_buf();
    // Carol may update approvals but approve for no signer.
    let ca = strake_pki::ClusterCa::load_or_generate(&dir.join("pki"), "t").unwrap();
    let carol = ca
        .issue_client("carol", &["reviewers"], time::Duration::hours(1))
        .unwrap();
    let carol_kc = dir.join("carol.kubeconfig");
    std::fs::write(
        &carol_kc,
        strake_pki::Credentials {
            cert_pem: carol.cert_pem,
            key_pem: carol.key_pem,
            ..server.creds.clone()
        }
        .kubeconfig("t", &server.base),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let bin = kubectl_bin("1.32");
        let mut yaml = String::new();
        for name in ["alice", "bob", "dave"] {
            let request = base64::engine::general_purpose::STANDARD.encode(csr_pem(name));
            yaml.push_str(&format!(
                "---\napiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [digital signature, client auth]\n  username: eve\n"
            ));
        }
        yaml.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: csr-reviewer\nrules:\n- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests, certificatesigningrequests/approval]\n  verbs: [get, list, update]\n");
        yaml.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: csr-reviewers\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: csr-reviewer\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: reviewers\n");
        let file = dir.join("csrs.yaml");
        std::fs::write(&file, yaml).unwrap();
        ok(&bin, &kc, &["apply", "-f", file.to_str().unwrap()]);
        // The requester is who sent it, whatever the body said.
        let who = ok(&bin, &kc, &["get", "csr", "alice", "-o", "jsonpath={.spec.username}"]);
        assert_eq!(who, "strake-admin");
        ok(&bin, &kc, &["certificate", "approve", "alice"]);
        ok(&bin, &kc, &["certificate", "deny", "bob"]);
        let table = ok(&bin, &kc, &["get", "csr"]);
        assert!(table.contains("SIGNERNAME") && table.contains("CONDITION"), "{table}");
        let line = |n: &str| table.lines().find(|l| l.starts_with(n)).unwrap_or_default().to_string();
        assert!(line("alice").contains("Approved"), "{table}");
        assert!(line("bob").contains("Denied"), "{table}");
        assert!(line("dave").contains("Pending"), "{table}");
        let reason = ok(&bin, &kc, &["get", "csr", "alice", "-o", "jsonpath={.status.conditions[0].reason}"]);
        assert_eq!(reason, "KubectlApprove");
        // Without `approve` on the signer, updating the approval is not enough.
        let mut refused = (true, String::new(), String::new());
        for _ in 0..50 {
            refused = run(&bin, &carol_kc, &["certificate", "approve", "dave"]);
            if refused.2.contains("not permitted to approve") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!refused.0, "{refused:?}");
        assert!(
            refused.2.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""),
            "{refused:?}"
        );
        let state = ok(&bin, &kc, &["get", "csr", "dave", "-o", "jsonpath={.status.conditions}"]);
        assert!(state.is_empty(), "{state}");
    })
    .await
    .unwrap();
}
