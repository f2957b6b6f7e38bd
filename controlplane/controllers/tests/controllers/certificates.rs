//! The certificate approver and signer against the real registry: a node's own client and
//! serving requests are approved and signed, a person's client request waits for approval and
//! is then signed for the lifetime it asked, a serving request for names not the node's waits,
//! a denied one is never signed, and one its signer's rules refuse is marked Failed.

use crate::common;

use std::time::Duration;

use common::{WAIT, cluster};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use strake_apimachinery::Part;

fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        dn.push(rcgen::DnType::OrganizationName, *o);
    }
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr(
    name: &str,
    pem: &str,
    signer: &str,
    usages: &[&str],
    requester: &str,
    groups: &[&str],
    seconds: Option<i32>,
) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "request": ByteString(pem.as_bytes().to_vec()),
            "signerName": signer,
            "usages": usages,
            "username": requester,
            "groups": groups,
            "expirationSeconds": seconds,
        }
    }))
    .unwrap()
}

async fn wait_for(
    c: &common::Cluster,
    name: &str,
    done: impl Fn(&CertificateSigningRequest) -> bool,
) -> CertificateSigningRequest {
    let mut last = None;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let r: CertificateSigningRequest = c.client.get(None, name).await.unwrap();
            if done(&r) {
                return r;
            }
            last = Some(r);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    got.unwrap_or_else(|_| panic!("{name} never got there: {last:?}"))
}

fn types(r: &CertificateSigningRequest) -> Vec<String> {
    r.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.type_.clone())
        .collect()
}

fn issued(
    r: &CertificateSigningRequest,
) -> Option<x509_parser::certificate::X509Certificate<'static>> {
    let pem = r.status.as_ref()?.certificate.as_ref()?;
    let der = rustls_pemfile::certs(&mut pem.0.as_slice()).next()?.ok()?;
    let der: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
    Some(x509_parser::parse_x509_certificate(der).ok()?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_approved_and_signed_as_their_signers_say() {
    let c = cluster().await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "n1"}]}
    }))
    .unwrap();
    c.client.create(None, &node).await.unwrap();
    // Status is not written on create: the addresses go through the status part.
    let status = node.status.clone();
    c.client
        .modify::<Node>(None, "n1", Part::Status, |n| {
            n.status.clone_from(&status);
            true
        })
        .await
        .unwrap();

    // A node renewing its client certificate: approved and signed, a year at most.
    let client_usages = ["digital signature", "client auth"];
    c.client
        .create(
            None,
            &csr(
                "node-client",
                &request("system:node:n1", &["system:nodes"], &[]),
                "kubernetes.io/kube-apiserver-client-kubelet",
                &client_usages,
                "system:node:n1",
                &["system:nodes", "system:authenticated"],
                None,
            ),
        )
        .await
        .unwrap();
    let r = wait_for(&c, "node-client", |r| issued(r).is_some()).await;
    assert_eq!(types(&r), ["Approved"]);
    let cert = issued(&r).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "system:node:n1"
    );
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );

    // Its serving certificate for its own addresses: approved and signed.
    c.client
        .create(
            None,
            &csr(
                "node-serving",
                &request("system:node:n1", &["system:nodes"], &["n1", "10.0.0.5"]),
                "kubernetes.io/kubelet-serving",
                &["digital signature", "server auth"],
                "system:node:n1",
                &["system:nodes"],
                None,
            ),
        )
        .await
        .unwrap();
    let r = wait_for(&c, "node-serving", |r| issued(r).is_some()).await;
    assert!(
        issued(&r)
            .unwrap()
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );

    // Names that are not the node's, or a person's certificate: they wait for a person.
    for (name, pem, signer, usages) in [
        (
            "foreign-serving",
            request("system:node:n1", &["system:nodes"], &["bank.example"]),
            "kubernetes.io/kubelet-serving",
            vec!["digital signature", "server auth"],
        ),
        (
            "alice",
            request("alice", &["devs"], &[]),
            "kubernetes.io/kube-apiserver-client",
            client_usages.to_vec(),
        ),
        (
            "mallory",
            request("mallory", &[], &[]),
            "kubernetes.io/kube-apiserver-client",
            client_usages.to_vec(),
        ),
        (
            "wrong-usage",
            request("bob", &[], &[]),
            "kubernetes.io/kube-apiserver-client",
            vec!["digital signature", "client auth", "server auth"],
        ),
    ] {
        let requester = if name == "foreign-serving" {
            "system:node:n1"
        } else {
            "admin"
        };
        c.client
            .create(
                None,
                &csr(
                    name,
                    &pem,
                    signer,
                    &usages,
                    requester,
                    &["system:nodes"],
                    Some(3600),
                ),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["foreign-serving", "alice", "mallory", "wrong-usage"] {
        let r: CertificateSigningRequest = c.client.get(None, name).await.unwrap();
        assert!(
            types(&r).is_empty() && issued(&r).is_none(),
            "{name}: {r:?}"
        );
    }

    // Approved by a person: signed, for the hour asked.
    let decide = |ty: &str| CertificateSigningRequestCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some("KubectlApprove".into()),
        message: Some("decided by a test".into()),
        ..Default::default()
    };
    for (name, ty) in [
        ("alice", "Approved"),
        ("mallory", "Denied"),
        ("wrong-usage", "Approved"),
    ] {
        let d = decide(ty);
        c.client
            .modify::<CertificateSigningRequest>(None, name, Part::Status, |r| {
                r.status
                    .get_or_insert_default()
                    .conditions
                    .get_or_insert_default()
                    .push(d.clone());
                true
            })
            .await
            .unwrap();
    }
    let r = wait_for(&c, "alice", |r| issued(r).is_some()).await;
    let cert = issued(&r).unwrap();
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 3600 + 300, "an hour, from five minutes back");
    assert_eq!(
        cert.subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "devs"
    );
    // The signer's rules: a client signer does not give server auth.
    let r = wait_for(&c, "wrong-usage", |r| {
        types(r).contains(&"Failed".to_string())
    })
    .await;
    let failed = r
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("SignerValidationFailure"));
    assert!(
        failed
            .message
            .unwrap()
            .contains("does not allow the usage \"server auth\"")
    );
    // Denied: never signed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r: CertificateSigningRequest = c.client.get(None, "mallory").await.unwrap();
    assert!(issued(&r).is_none());

    // Bad requests are refused when written, naming the field.
    let err = c
        .client
        .create(
            None,
            &csr(
                "garbage",
                "not a request",
                "kubernetes.io/kube-apiserver-client",
                &client_usages,
                "admin",
                &[],
                Some(60),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.request") && err.contains("spec.expirationSeconds"),
        "{err}"
    );
}
