//! Stale UDP flows, for real, inside network namespaces this test creates: a client keeps
//! sending from one port to a UDP Service; its endpoint moves to another pod; the client's
//! conntrack entry still leads to the old one until the agent's flush deletes it, after which
//! the client reaches the new endpoint. Needs root and br_netfilter; never touches the host's
//! own network.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use strake_net::conntrack;
use strake_net::services::{self, Desired, Protocol, ServicePort};

/// Answers every datagram on `port` in `netns` with `name`, for as long as the test runs.
fn answer_udp(netns: &Path, port: u16, name: &'static str) {
    let netns = netns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(name.as_bytes(), peer);
        }
    });
    rx.recv().unwrap();
}

/// A UDP socket bound to `port` inside `netns` (it stays there whichever thread uses it).
fn udp_in(netns: &Path, port: u16) -> UdpSocket {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap()
}

fn ask(s: &UdpSocket, to: SocketAddr) -> String {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(b"?", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_moved_udp_endpoint_takes_its_flows_along_once_flushed() {
    common::require_root_and_br_netfilter();
    let tmp = tempfile::tempdir().unwrap();
    let lab = common::pod_node(tmp.path(), "10.97.5.0/24", &["a", "b", "client"]);
    let (node, net, cidr) = (&lab.node, &lab.net, lab.net.cidr());
    let [(a, ip_a), (b, ip_b), (client, ip_c)] = [0, 1, 2].map(|i| (&lab.pods[i].0, lab.pods[i].1));
    answer_udp(&a.net, 5353, "a");
    answer_udp(&b.net, 5353, "b");

    let dns_ip = Ipv4Addr::new(10, 100, 5, 10);
    let desired = |endpoint: Ipv4Addr| Desired {
        pod_cidr: Some(cidr),
        cluster_cidr: "10.97.0.0/16".parse().unwrap(),
        node_ips: vec![net.gateway()],
        services: vec![ServicePort {
            name: "t/dns:dns/UDP".into(),
            cluster_ip: Some(dns_ip),
            external_ips: Vec::new(),
            protocol: Protocol::Udp,
            port: 53,
            node_port: None,
            endpoints: vec![(endpoint, 5353)],
            local_endpoints: Vec::new(),
            internal_local: false,
            external_local: false,
            affinity_timeout: None,
        }],
        dns: None,
    };
    let before = desired(ip_a);
    services::sync(&before, Some(&node.net)).unwrap();
    let sock = udp_in(&client.net, 40000);
    let to = SocketAddr::from((dns_ip, 53));
    assert_eq!(ask(&sock, to), "a");

    // The endpoint moves to b. The rules change, but the client's flow is still tracked to a.
    let after = desired(ip_b);
    assert!(services::sync_from(Some(&before), &after, Some(&node.net)).unwrap());
    assert_eq!(
        ask(&sock, to),
        "a",
        "the flow's conntrack entry outlives the rule"
    );
    let listed = conntrack::list(Some(&node.net)).unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e.orig.src == ip_c && e.orig.dport == 53 && e.reply.src == ip_a),
        "the entry is listed: {listed:?}"
    );

    // The agent's flush deletes it; the client's next datagram reaches b.
    let stale = services::stale_udp(&before, &after);
    assert!(stale.gone_endpoints.contains(&(ip_a, 5353)), "{stale:?}");
    assert!(conntrack::flush(Some(&node.net), &stale).unwrap() >= 1);
    assert_eq!(ask(&sock, to), "b", "after the flush, the new endpoint");
    // Nothing stale: nothing deleted, and the new flow stays.
    assert_eq!(
        conntrack::flush(Some(&node.net), &services::stale_udp(&after, &after)).unwrap(),
        0
    );
    assert_eq!(ask(&sock, to), "b");
}
