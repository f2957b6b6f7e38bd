//! Node IPAM: each node gets its own slice of the cluster CIDR (10.244.0.0/22 in the test
//! cluster, /24 slices), written once; a node that finds none left gets CIDRNotAvailable and
//! the slice of a deleted node.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::{cluster, eventually};
use k8s_openapi::api::core::v1::{Event, Node};
use serde_json::json;
use strake_apimachinery::{DeleteOptions, Filter, Part};

use common::WAIT;

async fn cidr_of(c: &common::Cluster, name: &str) -> Option<String> {
    let n: Node = c.client.get(None, name).await.ok()?;
    let spec = n.spec?;
    assert_eq!(
        spec.pod_cidrs.as_deref(),
        spec.pod_cidr.as_ref().map(std::slice::from_ref)
    );
    spec.pod_cidr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_slices_and_freed_ones_are_reused() {
    let c = cluster().await;
    for i in 0..5 {
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": format!("n{i}")}})).unwrap();
        c.client.create(None, &n).await.unwrap();
    }
    let mut seen = HashSet::new();
    for i in 0..4 {
        let name = format!("n{i}");
        let cidr = eventually(&format!("a pod CIDR for {name}"), WAIT, || {
            cidr_of(&c, &name)
        })
        .await;
        assert!(
            cidr.starts_with("10.244.") && cidr.ends_with(".0/24"),
            "{cidr}"
        );
        assert!(seen.insert(cidr.clone()), "{cidr} handed out twice");
    }
    eventually("CIDRNotAvailable for the fifth node", WAIT, || async {
        let (events, _): (Vec<Event>, _) = c.client.list(None, &Filter::default()).await.ok()?;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.involved_object.name.as_deref() == Some("n4")
            })
            .then_some(())
    })
    .await;
    assert_eq!(cidr_of(&c, "n4").await, None);

    // A slice, once set, cannot be changed, even by hand.
    let err = c
        .client
        .modify::<Node>(None, "n0", Part::Main, |n| {
            n.spec.get_or_insert_default().pod_cidrs = Some(vec!["10.9.0.0/24".into()]);
            n.spec.get_or_insert_default().pod_cidr = Some("10.9.0.0/24".into());
            true
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not change podCIDR"), "{err}");

    let freed = cidr_of(&c, "n1").await.unwrap();
    c.client
        .delete::<Node>(None, "n1", &DeleteOptions::default())
        .await
        .unwrap();
    let got = eventually("n4 gets the freed slice", Duration::from_secs(45), || {
        cidr_of(&c, "n4")
    })
    .await;
    assert_eq!(got, freed);
}
