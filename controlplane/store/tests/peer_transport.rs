//! The peer transport's identity and bounds checks, against a lone clustered voter on loopback.

mod support;

use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, SnapshotMeta, Vote};
use strake_pki::ClusterCa;
use strake_store::raft::{NetworkFactory, PeerConnection};
use strake_store::{MAX_BODY, PeerTls};
use support::{Cluster, DEADLINE};

async fn client(tls: &PeerTls, me: u64, target: u64, addr: &str) -> PeerConnection {
    NetworkFactory::new(me, tls)
        .expect("client TLS config")
        .new_client(
            target,
            &BasicNode {
                addr: addr.to_string(),
            },
        )
        .await
}

fn vote_from(node: u64) -> VoteRequest<u64> {
    VoteRequest {
        // Term 0 is older than any live term: an honest request is answered, never granted.
        vote: Vote::new(0, node),
        last_log_id: None,
    }
}

fn option() -> RPCOption {
    RPCOption::new(DEADLINE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_who_its_certificate_says() {
    let mut cluster = Cluster::new(&[1], strake_store::DEFAULT_SNAPSHOT_EVERY);
    cluster.start(&[1]).await;
    assert_eq!(cluster.leader().await, 1, "a lone clustered voter leads");
    let addr = cluster.members[&1].addr.clone();
    let term = cluster.store(1).raft_metrics().current_term;

    // Node 9's certificate claiming to be node 2: refused, naming both.
    let nine = PeerTls::issue(&cluster.ca, 9).unwrap();
    let mut conn = client(&nine, 9, 1, &addr).await;
    let err = conn.vote(vote_from(2), option()).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RPCError::Network(_)), "{message}");
    assert!(
        message.contains("peer certificate is for node 9") && message.contains("Some(2)"),
        "{message}"
    );

    // The same certificate, claiming what it is: refused all the same, as node 9 is not a
    // member (removing a member revokes its certificate).
    let err = conn.vote(vote_from(9), option()).await.unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    // A member's certificate, claiming what it is: answered (and not granted).
    let one = PeerTls::issue(&cluster.ca, 1).unwrap();
    let answer = client(&one, 1, 1, &addr)
        .await
        .vote(vote_from(1), option())
        .await
        .unwrap();
    assert!(!answer.vote_granted);

    // A certificate from another cluster's CA never gets past the handshake.
    let stranger = PeerTls::issue(&ClusterCa::generate("other").unwrap(), 2).unwrap();
    let err = client(&stranger, 2, 1, &addr)
        .await
        .vote(vote_from(2), option())
        .await
        .unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err}");

    // A cluster client certificate that is not a store peer certificate is dropped.
    let admin = cluster
        .ca
        .issue_client(
            "strake-store-2",
            &["system:masters"],
            time::Duration::days(1),
        )
        .unwrap();
    let impostor = PeerTls {
        ca_pem: cluster.ca.ca.cert_pem.clone(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    let err = client(&impostor, 2, 1, &addr)
        .await
        .vote(vote_from(2), option())
        .await;
    assert!(err.is_err(), "a non-peer certificate was served: {err:?}");

    // The client checks the server too: node 1's certificate does not name node 3.
    let err = client(&nine, 9, 3, &addr)
        .await
        .vote(vote_from(9), option())
        .await
        .unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // None of it disturbed the node.
    assert_eq!(cluster.store(1).raft_metrics().current_term, term);
    cluster.put("still", "serving").await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_a_clear_error() {
    let mut cluster = Cluster::new(&[1], strake_store::DEFAULT_SNAPSHOT_EVERY);
    cluster.start(&[1]).await;
    let addr = cluster.members[&1].addr.clone();
    let two = PeerTls::issue(&cluster.ca, 2).unwrap();
    let mut conn = client(&two, 2, 1, &addr).await;
    let chunk = InstallSnapshotRequest {
        vote: Vote::new(0, 2),
        meta: SnapshotMeta::default(),
        offset: 0,
        data: vec![0; MAX_BODY + 1],
        done: false,
    };
    let err = conn.install_snapshot(chunk, option()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("more than the limit") && message.contains(&MAX_BODY.to_string()),
        "{message}"
    );
    cluster.stop_all().await;
}

/// Posts `body` to node 1's peer port as a correctly authenticated peer, bypassing the raft
/// client, and returns the status and the answer's text.
async fn raw_post(cluster: &Cluster, as_node: u64, path: &str, body: Vec<u8>) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let tls = PeerTls::issue(&cluster.ca, as_node).unwrap();
    let mut config = strake_pki::client_config(
        &tls.ca_pem,
        Some(&strake_pki::CertifiedKey {
            cert_pem: tls.cert_pem.clone(),
            key_pem: tls.key_pem.clone(),
        }),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&cluster.members[&1].addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(strake_store::peer_name(1)).unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("https://{}{path}", strake_store::peer_name(1)))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("answer within the deadline")
        .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_bounds_and_checks_what_peers_send() {
    let mut cluster = Cluster::new(&[1], strake_store::DEFAULT_SNAPSHOT_EVERY);
    cluster.start(&[1]).await;

    let (status, text) = raw_post(
        &cluster,
        2,
        "/raft/v1/install-snapshot",
        vec![0; MAX_BODY + 1],
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("more than the limit of 67108864"), "{text}");

    let (status, text) = raw_post(&cluster, 2, "/raft/v1/vote", b"not postcard".to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("cannot decode the vote body"), "{text}");

    let (status, text) = raw_post(&cluster, 2, "/raft/v1/elsewhere", Vec::new()).await;
    assert_eq!(status, 404, "{text}");

    cluster.put("still", "serving").await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_peer_port_fails_the_open_and_names_the_address() {
    let cluster = Cluster::new(&[1], strake_store::DEFAULT_SNAPSHOT_EVERY);
    let addr = cluster.members[&1].addr.clone();
    let squatter = std::net::TcpListener::bind(&addr).unwrap();
    match strake_store::Store::open(cluster.config(1, false)).await {
        Err(err @ strake_store::StoreError::Listen { .. }) => {
            assert!(err.to_string().contains(&addr), "{err}");
        }
        other => panic!("expected a listen error, got {other:?}"),
    }
    // The files were released: once the port is free, the same directory opens.
    drop(squatter);
    let mut cluster = cluster;
    cluster.start(&[1]).await;
    cluster.stop_all().await;
}

/// The certificate the peer server at `addr` (node `id`) presents to a handshake made with
/// `tls`.
async fn presented(tls: &PeerTls, id: u64, addr: &str) -> Vec<u8> {
    let config = strake_pki::client_config(
        &tls.ca_pem,
        Some(&strake_pki::CertifiedKey {
            cert_pem: tls.cert_pem.clone(),
            key_pem: tls.key_pem.clone(),
        }),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(strake_store::peer_name(id)).unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A running node's peer certificate is replaced: its next handshakes present the new one,
/// as server and as client (a restarted member's connections from the others are new), and
/// the cluster goes on replicating. A certificate naming another node, or from another CA,
/// is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_certificates_rotate_without_a_restart() {
    let mut cluster = Cluster::new(&[1, 2, 3], strake_store::DEFAULT_SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    let addr = cluster.members[&1].addr.clone();
    let asker = PeerTls::issue(&cluster.ca, 2).unwrap();
    let first = presented(&asker, 1, &addr).await;
    assert_eq!(first, der(&cluster.members[&1].tls.cert_pem));

    let wrong_node = PeerTls::issue(&cluster.ca, 2).unwrap();
    let err = cluster.store(1).rotate_peer_tls(&wrong_node).unwrap_err();
    assert!(err.to_string().contains("node 2"), "{err}");
    let other_ca = PeerTls::issue(&ClusterCa::generate("other").unwrap(), 1).unwrap();
    let err = cluster.store(1).rotate_peer_tls(&other_ca).unwrap_err();
    assert!(err.to_string().contains("CA"), "{err}");
    assert_eq!(
        presented(&asker, 1, &addr).await,
        first,
        "refusals change nothing"
    );

    for id in [1, 2, 3] {
        let fresh = PeerTls::issue(&cluster.ca, id).unwrap();
        cluster.store(id).rotate_peer_tls(&fresh).unwrap();
        if id == 1 {
            let now = presented(&asker, 1, &addr).await;
            assert_eq!(
                now,
                der(&fresh.cert_pem),
                "the new certificate is presented"
            );
        }
    }
    // Member 2 restarts: the others connect to it anew, presenting their new certificates.
    cluster.stop(2).await;
    cluster.start(&[2]).await;
    let written = cluster.put("after", "rotation").await;
    cluster.caught_up(2, written).await;
    cluster.assert_holds(2, "after", "rotation");
    cluster.stop_all().await;
}
