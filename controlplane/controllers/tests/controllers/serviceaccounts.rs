//! Every active namespace gets the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap with the cluster CA; both come back when deleted, and the CA when changed.

use crate::common;

use common::{TEST_CA, cluster, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strake_apimachinery::{DeleteOptions, Part};

use common::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_the_default_account_and_the_root_ca() {
    let c = cluster().await;
    for ns in ["default", "kube-system"] {
        eventually(&format!("defaults in {ns}"), WAIT, || async {
            c.client
                .get::<ServiceAccount>(Some(ns), "default")
                .await
                .ok()?;
            c.client
                .get::<ConfigMap>(Some(ns), "kube-root-ca.crt")
                .await
                .ok()
        })
        .await;
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("team".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    c.client.create(None, &ns).await.unwrap();
    let cm = eventually("the root CA in a new namespace", WAIT, || async {
        c.client
            .get::<ConfigMap>(Some("team"), "kube-root-ca.crt")
            .await
            .ok()
    })
    .await;
    assert_eq!(cm.data.unwrap()["ca.crt"], TEST_CA);
    eventually("the default account in a new namespace", WAIT, || async {
        c.client
            .get::<ServiceAccount>(Some("team"), "default")
            .await
            .ok()
    })
    .await;

    c.client
        .delete::<ServiceAccount>(Some("team"), "default", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the default account recreated", WAIT, || async {
        c.client
            .get::<ServiceAccount>(Some("team"), "default")
            .await
            .ok()
    })
    .await;
    c.client
        .modify::<ConfigMap>(Some("team"), "kube-root-ca.crt", Part::Main, |cm| {
            cm.data = Some([("ca.crt".to_string(), "tampered".to_string())].into());
            true
        })
        .await
        .unwrap();
    eventually("the root CA restored", WAIT, || async {
        let cm: ConfigMap = c.client.get(Some("team"), "kube-root-ca.crt").await.ok()?;
        (cm.data?.get("ca.crt")?.as_str() == TEST_CA).then_some(())
    })
    .await;
}
