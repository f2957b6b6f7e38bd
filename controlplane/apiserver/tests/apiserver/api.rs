//! The API server over real HTTPS on loopback, backed by a real single-voter store: the
//! behaviours kubectl and controllers rely on, driven through the bootstrap flow and the client.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;
use strake_apiserver::{ApiServer, Config};
use strake_kubeclient::{Client, ClientError, WatchEvent};
use strake_pki::{BootstrapToken, CertifiedKey};

struct Cluster {
    client: Client,
    store: strake_store::Store,
    url: String,
    token: BootstrapToken,
    _dir: tempfile::TempDir,
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = strake_store::Store::open(strake_store::StoreConfig::single(
        1,
        dir.path().join("store"),
    ))
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = BootstrapToken::generate();
    let server = ApiServer::new(
        Config {
            listen: addr,
            advertise: addr.to_string(),
            pki_dir: dir.path().join("pki"),
            cluster_name: "t".into(),
            token: Some(token.clone()),
            sans: vec![],
            default_toleration_seconds: strake_apimachinery::admission::DEFAULT_TOLERATION_SECONDS,
            service_cidr: strake_apimachinery::admission::DEFAULT_SERVICE_CIDR,
        },
        store.clone(),
    )
    .unwrap();
    server.ensure_defaults().await.unwrap();
    tokio::spawn(server.serve_on(listener));
    let url = format!("https://{addr}");
    let creds = strake_kubeclient::bootstrap(&url, &token, "/strake/v1/kubeconfig", &json!({}))
        .await
        .unwrap();
    let client = Client::new(
        &url,
        &creds.ca_pem,
        Some(&CertifiedKey {
            cert_pem: creds.cert_pem,
            key_pem: creds.key_pem,
        }),
    )
    .unwrap();
    Cluster {
        client,
        store,
        url,
        token,
        _dir: dir,
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_conflict_and_delete() {
    let c = start().await;
    let created: Pod = c.client.create(Some("default"), &pod("a")).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    let again = c
        .client
        .create(Some("default"), &pod("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(again, ClientError::Api { code: 409, ref reason, .. } if reason == "AlreadyExists"),
        "{again}"
    );

    // Two writers from the same version: the second gets 409 Conflict.
    let mut first = created.clone();
    first
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "1".into());
    c.client
        .replace(Some("default"), "a", &first)
        .await
        .unwrap();
    let mut stale = created.clone();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let err = c
        .client
        .replace(Some("default"), "a", &stale)
        .await
        .unwrap_err();
    assert!(
        c.client
            .get::<Pod>(Some("default"), "a")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
            != rv
    );
    assert!(err.is_conflict(), "{err}");

    // Unscheduled pods are deleted at once.
    c.client
        .delete::<Pod>(Some("default"), "a", None, None)
        .await
        .unwrap();
    assert!(
        c.client
            .get::<Pod>(Some("default"), "a")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // Pods in a namespace that does not exist are refused.
    let err = c.client.create(Some("nope"), &pod("b")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn bound_pods_terminate_gracefully() {
    let c = start().await;
    c.client.create(Some("default"), &pod("g")).await.unwrap();
    // Bind through the HTTP subresource, as any scheduler would.
    let (http, base) = reqwest_client(&c).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "g"}, "target": {"kind": "Node", "name": "n1"}});
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods/g/binding"))
        .json(&binding)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods/g/binding"))
        .json(&binding)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409, "a pod binds once");
    let bound: Pod = c.client.get(Some("default"), "g").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("n1")
    );
    c.client
        .delete::<Pod>(Some("default"), "g", None, None)
        .await
        .unwrap();
    let terminating: Pod = c.client.get(Some("default"), "g").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // The node's final delete with grace 0 and the uid precondition removes it.
    let wrong = c
        .client
        .delete::<Pod>(Some("default"), "g", Some(0), Some("not-the-uid"))
        .await
        .unwrap_err();
    assert!(wrong.is_conflict(), "{wrong}");
    let uid = terminating.metadata.uid.clone().unwrap();
    c.client
        .delete::<Pod>(Some("default"), "g", Some(0), Some(&uid))
        .await
        .unwrap();
    assert!(
        c.client
            .get::<Pod>(Some("default"), "g")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn watch_delivers_ordered_events_with_selectors() {
    let c = start().await;
    let (_, rv) = c.client.list::<Pod>(Some("default"), None).await.unwrap();
    let stream = c
        .client
        .watch::<Pod>(
            Some("default"),
            Some("metadata.name=w1"),
            &rv,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    c.client.create(Some("default"), &pod("w0")).await.unwrap();
    c.client.create(Some("default"), &pod("w1")).await.unwrap();
    c.client
        .patch_status::<Pod>(
            Some("default"),
            "w1",
            &json!({"status": {"phase": "Running"}}),
        )
        .await
        .unwrap();
    c.client
        .delete::<Pod>(Some("default"), "w1", None, None)
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .unwrap()
        {
            WatchEvent::Added(p) => kinds.push(("ADDED", p.metadata.name.unwrap())),
            WatchEvent::Modified(p) => kinds.push(("MODIFIED", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => kinds.push(("DELETED", p.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
        }
    }
    assert_eq!(
        kinds,
        vec![
            ("ADDED", "w1".to_string()),
            ("MODIFIED", "w1".into()),
            ("DELETED", "w1".into())
        ]
    );

    // Without a resourceVersion the watch starts with the current objects as ADDED.
    let stream = c
        .client
        .watch::<Namespace>(None, None, "", Duration::from_secs(5))
        .await
        .unwrap();
    let names: Vec<String> = stream
        .take(4)
        .map(|e| match e.unwrap() {
            WatchEvent::Added(n) => n.metadata.name.unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
        .await;
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    // A watch from a resourceVersion the store has compacted away is 410 Expired.
    c.store.compact(c.store.revision()).await.unwrap();
    let err = c
        .client
        .watch::<Pod>(Some("default"), None, "2", Duration::from_secs(5))
        .await;
    match err {
        Err(ClientError::Api { code, .. }) => assert_eq!(code, 410),
        Ok(s) => {
            let first = Box::pin(s).next().await.unwrap();
            assert!(
                matches!(first, Err(ClientError::Api { code: 410, .. })),
                "{first:?}"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn bad_requests_get_status_objects() {
    let c = start().await;
    // Anonymous callers see /version but nothing else.
    let anon = strake_kubeclient::Client::new(&c.url, &ca(&c).await, None).unwrap();
    assert!(anon.get_json("/version").await.unwrap()["minor"] == "32");
    // ... and are refused, as upstream words it, by RBAC.
    let err = anon.get_json("/api/v1/pods").await.unwrap_err();
    assert!(matches!(err, ClientError::Api { code: 403, .. }), "{err}");
    assert!(
        err.to_string().contains(
            r#"pods is forbidden: User "system:anonymous" cannot list resource "pods" in API group "" at the cluster scope"#
        ),
        "{err}"
    );

    let (http, base) = reqwest_client(&c).await;
    // A malformed protobuf body is a 400 naming the problem.
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods"))
        .header("Content-Type", "application/vnd.kubernetes.protobuf")
        .body(&b"k8s\0\x0a\x00"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let s: serde_json::Value = r.json().await.unwrap();
    assert_eq!(s["kind"], "Status");
    assert!(s["message"].as_str().unwrap().contains("protobuf"), "{s}");
    // Oversized bodies: 413.
    let big = vec![b' '; 4 * 1024 * 1024];
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // A body with the wrong shape names the field.
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/pods"))
        .body(r#"{"metadata":{"name":"p"},"spec":{"containers":7}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let s: serde_json::Value = r.json().await.unwrap();
    assert!(
        s["message"].as_str().unwrap().contains("spec.containers"),
        "{s}"
    );
    // Table output for kubectl get.
    c.client.create(Some("default"), &pod("t1")).await.unwrap();
    let r = http
        .get(format!("{base}/api/v1/namespaces/default/pods"))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap();
    let t: serde_json::Value = r.json().await.unwrap();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["rows"][0]["cells"][0], "t1");
    assert_eq!(t["rows"][0]["cells"][2], "Pending");
    // Unknown paths are 404 Status.
    let r = http
        .get(format!("{base}/apis/nope.example.com/v1/things"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Status is a subresource: a main-resource update cannot change it.
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    let mut created = c.client.create(None, &node).await.unwrap();
    created.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
    let updated = c.client.replace(None, "n1", &created).await.unwrap();
    assert!(
        updated
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .is_none(),
        "status changed through the main resource"
    );
}

async fn ca(c: &Cluster) -> String {
    strake_kubeclient::bootstrap(&c.url, &c.token, "/strake/v1/kubeconfig", &json!({}))
        .await
        .unwrap()
        .ca_pem
}

async fn reqwest_client(c: &Cluster) -> (reqwest::Client, String) {
    let creds = strake_kubeclient::bootstrap(&c.url, &c.token, "/strake/v1/kubeconfig", &json!({}))
        .await
        .unwrap();
    let tls = strake_pki::client_config(
        &creds.ca_pem,
        Some(&CertifiedKey {
            cert_pem: creds.cert_pem,
            key_pem: creds.key_pem,
        }),
    )
    .unwrap();
    (
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap(),
        c.url.clone(),
    )
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    let c = start().await;
    let (http, base) = reqwest_client(&c).await;
    let r = http
        .post(format!("{base}/api/v1/namespaces/default/secrets"))
        .header("Content-Type", "application/json")
        .body(r#"{"metadata":{"name":"db"},"stringData":{"password":"correct-horse-battery"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // What the store holds: sealed, with the key's name, and no plaintext anywhere.
    let raw = strake_apimachinery::storage::RaftStore::new(c.store.clone());
    let stored =
        strake_apimachinery::storage::ObjectStore::get(&raw, b"/registry/secrets/default/db")
            .await
            .unwrap()
            .expect("the secret is stored");
    assert!(stored.value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode("correct-horse-battery");
    for needle in [
        "correct-horse-battery".as_bytes(),
        b64.as_bytes(),
        b"password",
        b"\"db\"",
    ] {
        assert!(
            !stored.value.windows(needle.len()).any(|w| w == needle),
            "{} in the store",
            String::from_utf8_lossy(needle)
        );
    }
    // A ConfigMap is not sealed by the default configuration.
    http.post(format!("{base}/api/v1/namespaces/default/configmaps"))
        .header("Content-Type", "application/json")
        .body(r#"{"metadata":{"name":"plain"},"data":{"k":"visible"}}"#)
        .send()
        .await
        .unwrap();
    let cm =
        strake_apimachinery::storage::ObjectStore::get(&raw, b"/registry/configmaps/default/plain")
            .await
            .unwrap()
            .unwrap();
    assert!(cm.value.windows(7).any(|w| w == b"visible"));
    // Through the API it reads as written.
    let got: serde_json::Value = http
        .get(format!("{base}/api/v1/namespaces/default/secrets/db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["data"]["password"], b64);
    // The configuration was written with the key, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(
        c._dir
            .path()
            .join("pki")
            .join(strake_apiserver::ENCRYPTION_CONFIG),
    )
    .unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_corrupt_encryption_key_file_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let file = pki.join(strake_apiserver::ENCRYPTION_CONFIG);
    std::fs::write(&file, "kind: EncryptionConfiguration\nresources: [{resources: [secrets], providers: [{aesgcm: {keys: [{name: k, secret: bm90IDMyIGJ5dGVz}]}}]}]\n").unwrap();
    let store = strake_store::Store::open(strake_store::StoreConfig::single(
        1,
        dir.path().join("store"),
    ))
    .await
    .unwrap();
    let config = strake_apiserver::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1:6443".into(),
        pki_dir: pki,
        cluster_name: "t".into(),
        token: None,
        sans: vec![],
        default_toleration_seconds: strake_apimachinery::admission::DEFAULT_TOLERATION_SECONDS,
        service_cidr: strake_apimachinery::admission::DEFAULT_SERVICE_CIDR,
    };
    let err = strake_apiserver::ApiServer::new(config, store)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("encryption-config.yaml") && err.contains("32 bytes"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("bm90IDMyIGJ5dGVz"),
        "left as it was"
    );
}
