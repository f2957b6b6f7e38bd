//! Endpoints of a Service follow its pods: EndpointSlices with ready, serving and terminating
//! conditions, named target ports resolved per pod, slices of at most 100 endpoints, the legacy
//! Endpoints object with ready and not-ready addresses; services without a selector are left
//! to their owners.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use strake_apimachinery::{Filter, ListOptions, Part};

use common::WAIT;

async fn slices(c: &Cluster, svc: &str) -> Vec<EndpointSlice> {
    let (all, _): (Vec<EndpointSlice>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    all.into_iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .map(String::as_str)
                == Some(svc)
        })
        .collect()
}

/// A pod on n1 that the scripted kubelet runs (and gives an IP), ready or not.
async fn pod(c: &Cluster, name: &str, ready: bool) {
    let image = if ready { "web:1" } else { "never-ready:1" };
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": image,
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &p).await.unwrap();
}

async fn node(c: &Cluster) {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}
    }))
    .unwrap();
    c.client.create(None, &node).await.unwrap();
}

fn named<'a>(s: &'a EndpointSlice, pod: &str) -> &'a k8s_openapi::api::discovery::v1::Endpoint {
    s.endpoints
        .iter()
        .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_and_endpoints_follow_the_pods() {
    let c = cluster().await;
    node(&c).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &svc).await.unwrap();
    // No pods yet: one empty slice.
    let s = eventually("an empty slice", WAIT, || async {
        let s = slices(&c, "web").await;
        (s.len() == 1).then_some(s)
    })
    .await;
    assert!(s[0].endpoints.is_empty());

    pod(&c, "a", true).await;
    pod(&c, "b", false).await;
    let s = eventually("two endpoints", WAIT, || async {
        let mut s = slices(&c, "web").await;
        (s.len() == 1 && s[0].endpoints.len() == 2).then(|| s.remove(0))
    })
    .await;
    assert_eq!(s.address_type, "IPv4");
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080)),
        "the named target port resolved"
    );
    let a = named(&s, "a");
    let conds = a.conditions.clone().unwrap();
    assert_eq!(
        (conds.ready, conds.serving, conds.terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(a.node_name.as_deref(), Some("n1"));
    assert_eq!(a.zone.as_deref(), Some("z1"));
    let b = named(&s, "b");
    assert_eq!(b.conditions.clone().unwrap().ready, Some(false));
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );

    let ep = eventually("the legacy Endpoints", WAIT, || async {
        let e: Endpoints = c.client.get(Some("default"), "web").await.ok()?;
        let sub = e.subsets.clone()?.remove(0);
        (sub.addresses.as_ref()?.len() == 1 && sub.not_ready_addresses.as_ref()?.len() == 1)
            .then_some(sub)
    })
    .await;
    assert_eq!(ep.addresses.unwrap()[0].ip, a.addresses[0]);
    assert_eq!(ep.ports.unwrap()[0].port, 8080);

    // A relabelled pod leaves; a deleted service takes its slices with it.
    c.client
        .modify::<Pod>(Some("default"), "b", Part::Main, |p| {
            p.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
            true
        })
        .await
        .unwrap();
    eventually("one endpoint left", WAIT, || async {
        let s = slices(&c, "web").await;
        (s.len() == 1 && s[0].endpoints.len() == 1).then_some(())
    })
    .await;
    c.client
        .delete::<Service>(Some("default"), "web", &Default::default())
        .await
        .unwrap();
    eventually(
        "slices and Endpoints gone with the service",
        WAIT,
        || async {
            let gone = c
                .client
                .get::<Endpoints>(Some("default"), "web")
                .await
                .is_err();
            (gone && slices(&c, "web").await.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_services_are_split_and_selectorless_ones_left_alone() {
    let c = cluster().await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    node(&c).await;
    c.client.create(Some("default"), &svc).await.unwrap();
    for i in 0..230 {
        pod(&c, &format!("p{i:03}"), true).await;
    }
    let s = eventually(
        "230 endpoints in three slices",
        Duration::from_secs(60),
        || async {
            let s = slices(&c, "web").await;
            (s.iter().map(|s| s.endpoints.len()).sum::<usize>() == 230).then_some(s)
        },
    )
    .await;
    assert_eq!(
        s.len(),
        3,
        "{:?}",
        s.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>()
    );
    assert!(s.iter().all(|s| s.endpoints.len() <= 100));

    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "external", "namespace": "default"},
        "spec": {"ports": [{"port": 5432}]}
    }))
    .unwrap();
    c.client.create(Some("default"), &manual).await.unwrap();
    let mine: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "external", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]
    }))
    .unwrap();
    c.client.create(Some("default"), &mine).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e: Endpoints = c.client.get(Some("default"), "external").await.unwrap();
    assert_eq!(
        e.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "192.0.2.10"
    );
    let def = c.client.def::<EndpointSlice>().unwrap();
    let all = c
        .reg
        .list(&def, Some("default"), &ListOptions::default())
        .await
        .unwrap();
    assert!(
        !all.items
            .iter()
            .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "external")
    );
}
