//! ServiceLB: LoadBalancer Services get the Ready nodes' InternalIPs; a port another holds
//! leaves the later Service pending with PortInUse until it is free; leaving the type clears
//! the status; another implementation's class is left alone; an externalTrafficPolicy Local
//! Service gets only the nodes running its ready endpoints.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::core::v1::{Event, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter, Part};

use common::WAIT;

async fn node(c: &Cluster, name: &str, ip: &str, ready: bool) {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    c.client.create(None, &n).await.unwrap();
    c.client
        .modify::<Node>(None, name, Part::Status, |n| {
            n.status = Some(
                serde_json::from_value(json!({
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
                }))
                .unwrap(),
            );
            true
        })
        .await
        .unwrap();
}

async fn lb(c: &Cluster, name: &str, port: i32, class: Option<&str>) {
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": port, "targetPort": 8080}]});
    if let Some(class) = class {
        spec["loadBalancerClass"] = json!(class);
    }
    let s: Service =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    c.client.create(Some("default"), &s).await.unwrap();
}

async fn ingress(c: &Cluster, name: &str) -> Vec<String> {
    let s: Service = c.client.get(Some("default"), name).await.unwrap();
    s.status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_get_the_nodes_addresses() {
    let c = cluster().await;
    node(&c, "a", "192.0.2.11", true).await;
    node(&c, "b", "192.0.2.12", true).await;
    node(&c, "down", "192.0.2.13", false).await;
    lb(&c, "first", 80, None).await;
    let want = vec!["192.0.2.11".to_string(), "192.0.2.12".to_string()];
    eventually("the first LoadBalancer's addresses", WAIT, || async {
        (ingress(&c, "first").await == want).then_some(())
    })
    .await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    lb(&c, "second", 80, None).await;
    lb(&c, "other-class", 443, Some("example.com/lb")).await;
    eventually("PortInUse for the second", WAIT, || async {
        let (events, _): (Vec<Event>, _) = c.client.list(None, &Filter::default()).await.ok()?;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PortInUse")
                    && e.involved_object.name.as_deref() == Some("second")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("80/TCP") && m.contains("default/first"))
            })
            .then_some(())
    })
    .await;
    assert!(ingress(&c, "second").await.is_empty());

    c.client
        .delete::<Service>(Some("default"), "first", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("the second gets the port once free", WAIT, || async {
        (ingress(&c, "second").await == want).then_some(())
    })
    .await;

    c.client
        .modify::<Service>(Some("default"), "second", Part::Main, |s| {
            let spec = s.spec.get_or_insert_default();
            spec.type_ = Some("ClusterIP".into());
            for p in spec.ports.iter_mut().flatten() {
                p.node_port = None;
            }
            true
        })
        .await
        .unwrap();
    eventually("the status cleared with the type", WAIT, || async {
        ingress(&c, "second").await.is_empty().then_some(())
    })
    .await;
    assert!(
        ingress(&c, "other-class").await.is_empty(),
        "another class is left alone"
    );
}

/// externalTrafficPolicy Local: only the nodes running a ready endpoint, following the
/// endpoints as they move; none while there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_load_balancers_get_only_the_nodes_with_endpoints() {
    let c = cluster().await;
    node(&c, "a", "192.0.2.21", true).await;
    node(&c, "b", "192.0.2.22", true).await;
    let s: Service = serde_json::from_value(json!({
        "metadata": {"name": "local"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "ports": [{"port": 9000, "targetPort": 8080}]},
    }))
    .unwrap();
    c.client.create(Some("default"), &s).await.unwrap();
    let slice = |node: &str, ready: bool| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "local-1", "labels": {"kubernetes.io/service-name": "local"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": node,
                           "conditions": {"ready": ready}}],
        }))
        .unwrap()
    };
    // No endpoint yet: no node would answer, so no address.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ingress(&c, "local").await.is_empty());
    c.client
        .create(Some("default"), &slice("b", true))
        .await
        .unwrap();
    eventually("the Local LoadBalancer on b only", WAIT, || async {
        (ingress(&c, "local").await == ["192.0.2.22"]).then_some(())
    })
    .await;
    c.client
        .modify::<EndpointSlice>(Some("default"), "local-1", Part::Main, |s| {
            s.endpoints = slice("a", true).endpoints;
            true
        })
        .await
        .unwrap();
    eventually(
        "the Local LoadBalancer following its endpoint to a",
        WAIT,
        || async { (ingress(&c, "local").await == ["192.0.2.21"]).then_some(()) },
    )
    .await;
    c.client
        .modify::<EndpointSlice>(Some("default"), "local-1", Part::Main, |s| {
            s.endpoints = slice("a", false).endpoints;
            true
        })
        .await
        .unwrap();
    eventually("no address once no endpoint is ready", WAIT, || async {
        ingress(&c, "local").await.is_empty().then_some(())
    })
    .await;
}
