//! The serving certificate is renewed while the server runs: a new connection sees the new
//! certificate, and a watch opened before the rotation goes on delivering events after it.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use strake_apiserver::{Housekeeping, Limits};

/// The certificate a fresh TLS connection to the server is shown.
async fn presented(c: &common::Loopback) -> Vec<u8> {
    let addr = c.base.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = strake_pki::client_config(&c.creds.ca_pem, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (_, session) = stream.get_ref();
    session.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_rotates_while_a_watch_stays_open() {
    let c = common::start_configured(Housekeeping::default(), Limits::default(), None, |s| {
        s.with_serving_rotation(Duration::from_secs(6), Duration::from_millis(200))
            .unwrap()
    })
    .await;
    let first = presented(&c).await;
    let watch = c
        .http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=120",
            c.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut events = watch.bytes_stream();
    // Renewed after two thirds of six seconds.
    let mut rotated = false;
    for _ in 0..100 {
        if presented(&c).await != first {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rotated, "the serving certificate was never renewed");
    // A fresh client trusts the new certificate.
    let tls = strake_pki::client_config(&c.creds.ca_pem, None).unwrap();
    let fresh = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let r = fresh
        .get(format!("{}/version", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The watch opened before the rotation sees what is written after it.
    let (code, body, _) = common::send(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "after-rotation"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(chunk)) = events.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("after-rotation") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the open watch stopped: {seen}");
}
