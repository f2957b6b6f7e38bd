//! The DNS server on loopback, against a fake upstream resolver on loopback: cluster names
//! answered authoritatively, missing ones NXDOMAIN with the zone's SOA, other names forwarded
//! once and then cached, ExternalName chased, large answers truncated over UDP and whole over
//! TCP, upstream truncation retried over TCP, zone updates seen at once, garbage refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use strake_dns::{Endpoint, Port, Server, Service, Upstreams, Zone};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn service(ns: &str, name: &str, ip: Option<Ipv4Addr>, endpoints: usize) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: ip,
        external_name: None,
        ports: vec![Port {
            name: "http".into(),
            protocol: "tcp".into(),
            port: 80,
        }],
        endpoints: (0..endpoints)
            .map(|i| Endpoint {
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + i as u32),
                hostname: None,
            })
            .collect(),
    }
}

/// A resolver for `example.org` (A 192.0.2.7) and `big.example` (truncated over UDP, whole
/// over TCP); everything else NXDOMAIN. Counts the UDP queries it gets.
/// A UDP socket and a TCP listener on one free loopback port. The TCP side of a free UDP port
/// may be taken by another test, so a few ports are tried.
async fn socket_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port was free for both UDP and TCP");
}

async fn fake_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let (udp, tcp) = socket_pair().await;
    let addr = udp.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let answer = |q: &Message, whole: bool| {
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query);
        r.add_queries(q.queries().iter().cloned());
        let name = q.queries()[0].name().to_ascii();
        match name.as_str() {
            "example.org." => {
                r.add_answer(Record::from_rdata(
                    q.queries()[0].name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
            }
            "big.example." if !whole => {
                r.set_truncated(true);
            }
            "big.example." => {
                r.add_answer(Record::from_rdata(
                    q.queries()[0].name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 9))),
                ));
            }
            _ => {
                r.set_response_code(ResponseCode::NXDomain);
            }
        }
        r.to_vec().unwrap()
    };
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            udp.send_to(&answer(&q, false), peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut q).await.unwrap();
            let out = answer(&Message::from_vec(&q).unwrap(), true);
            s.write_all(&(out.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&out).await.unwrap();
        }
    });
    (addr, count)
}

fn query(name: &str, ty: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, ty: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(name, ty), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.id(), 4242);
    m
}

async fn ask_tcp(server: SocketAddr, name: &str, ty: RecordType) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let q = query(name, ty);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers()
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .map(|r| r.data().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_cluster_and_forwards_the_rest() {
    let (upstream, upstream_queries) = fake_upstream().await;
    let mut ext = service("default", "ext", None, 0);
    ext.external_name = Some("example.org".into());
    let zone = |extra: Vec<Service>| {
        let mut all = vec![
            service("default", "web", Some(Ipv4Addr::new(10, 96, 3, 4)), 1),
            service("default", "many", None, 100),
            ext.clone(),
        ];
        all.extend(extra);
        Arc::new(Zone::new("cluster.local", all).unwrap())
    };
    let (tx, rx) = tokio::sync::watch::channel(zone(vec![]));
    let (udp, tcp) = socket_pair().await;
    let addr = udp.local_addr().unwrap();
    let server = Server::new(rx, Upstreams(vec![upstream]));
    tokio::spawn(server.serve_sockets(udp, tcp));

    let m = ask_udp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert!(m.authoritative());
    assert_eq!(addresses(&m), ["10.96.3.4"]);
    let m = ask_udp(addr, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);

    let m = ask_udp(addr, "example.org.", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.7"]);
    assert!(!m.authoritative());
    let m = ask_udp(addr, "EXAMPLE.org.", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.7"]);
    assert_eq!(
        upstream_queries.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    let m = ask_udp(addr, "missing.example.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    ask_udp(addr, "missing.example.", RecordType::A).await;
    assert_eq!(
        upstream_queries.load(Ordering::SeqCst),
        2,
        "negative answers are cached too"
    );

    let m = ask_udp(addr, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.answers()[0].record_type(), RecordType::CNAME);
    assert_eq!(addresses(&m), ["192.0.2.7"], "the alias is chased");

    // 100 addresses do not fit 512 bytes: truncated over UDP, whole over TCP.
    let m = ask_udp(addr, "many.default.svc.cluster.local.", RecordType::A).await;
    assert!(m.truncated() && m.answers().is_empty());
    let m = ask_tcp(addr, "many.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&m).len(), 100);
    // The upstream truncates over UDP: the server asks again over TCP.
    let m = ask_udp(addr, "big.example.", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.9"]);

    tx.send_replace(zone(vec![service(
        "team",
        "new",
        Some(Ipv4Addr::new(10, 96, 9, 9)),
        0,
    )]));
    let m = ask_udp(addr, "new.team.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        addresses(&m),
        ["10.96.9.9"],
        "a zone update is seen at once"
    );

    // Garbage gets FORMERR or nothing, and the server goes on.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&[0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0xff], addr)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    if let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await
    {
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.response_code(), ResponseCode::FormErr);
    }
    let m = ask_tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.96.3.4"]);
}
