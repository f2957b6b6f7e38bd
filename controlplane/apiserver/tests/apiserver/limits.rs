//! The limits against abuse over HTTPS: requests in flight (429 with Retry-After, long-running
//! requests exempt), open watches per user, oversized headers, and a client that never
//! finishes its headers.

use crate::common;

use std::time::Duration;

use strake_apiserver::{Housekeeping, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_limits_get_429_and_slow_clients_are_cut_off() {
    let c = common::start_limited(
        Housekeeping::default(),
        Limits {
            mutating: 0,
            watches_per_user: 2,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
    )
    .await;
    let base = &c.base;
    // No mutating request may be in flight: writes are refused, reads go on.
    let r = c
        .http
        .post(format!("{base}/api/v1/namespaces/default/configmaps"))
        .header("Content-Type", "application/json")
        .body(r#"{"metadata":{"name":"x"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        c.http
            .get(format!("{base}/api/v1/namespaces/default/configmaps"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // Two watches per user; the third waits for one to close.
    let watch = || {
        c.http
            .get(format!(
                "{base}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=30"
            ))
            .send()
    };
    let first = watch().await.unwrap();
    let second = watch().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = watch().await.unwrap();
    assert_eq!(third.status().as_u16(), 429);
    let body: serde_json::Value = third.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Too many watches"),
        "{body}"
    );
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = watch().await.unwrap();
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed watch was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Headers past the bound are refused (HTTP/1.1: 431; HTTP/2: the stream is reset).
    let big = "x".repeat(32 * 1024);
    let h1 = reqwest::Client::builder()
        .use_preconfigured_tls(
            strake_pki::client_config(
                &c.creds.ca_pem,
                Some(&strake_pki::CertifiedKey {
                    cert_pem: c.creds.cert_pem.clone(),
                    key_pem: c.creds.key_pem.clone(),
                }),
            )
            .unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    match h1
        .get(format!("{base}/version"))
        .header("X-Big", &big)
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    let r = c
        .http
        .get(format!("{base}/version"))
        .header("X-Big", &big)
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status().as_u16() == 431);

    // A client that opens a connection and dribbles half a request line is cut off.
    let addr = base.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls_cfg = strake_pki::client_config(&c.creds.ca_pem, None).unwrap();
    tls_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_cfg));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the half-sent request was never cut off");
}
