//! Service routing for real, inside network namespaces this test creates: a "node" with the
//! pod bridge and a second bridge to an "outside" client, two pods, and Strake's nf_tables
//! table programmed in the node's namespace through netlink. Traffic to a cluster IP reaches a
//! ready endpoint, a node port answers from outside (masqueraded), a pod reaching itself through its Service
//! is masqueraded, pods' traffic leaving the cluster is masqueraded, a port without endpoints
//! is refused, rules follow endpoint changes (incrementally), and removing the table removes
//! it all. Needs root; never touches the host's own network.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Namespaces;
use strake_net::services::{self, Desired, Protocol, ServicePort};
use strake_net::{Ipam, NodeNetwork, connect_in};
use strake_runtime::Sandbox;

/// Serves `count` connections on `port` inside `netns`, answering each with `<name> <peer ip>`.
fn serve_in(
    netns: &Path,
    port: u16,
    name: &'static str,
    count: usize,
) -> std::thread::JoinHandle<()> {
    common::serve_in(netns, port, count, move |mut s, peer| {
        let _ = s.write_all(format!("{name} {}", peer.ip()).as_bytes());
    })
}

fn ask(from: &Path, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = connect_in(from, to, timeout)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

const LONG: Duration = Duration::from_secs(3);

#[test]
fn cluster_ips_node_ports_and_masquerade() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root"
    );
    assert!(
        Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        "br_netfilter must be loaded (modprobe br_netfilter): pods reaching a Service on their own bridge need it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["node", "a", "b", "client"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let _cleanup = Namespaces(dirs.clone());
    let node = Sandbox::create(&dirs[0], "node").unwrap();
    let a = Sandbox::create(&dirs[1], "a").unwrap();
    let b = Sandbox::create(&dirs[2], "b").unwrap();
    let client = Sandbox::create(&dirs[3], "client").unwrap();

    let pods = "10.99.7.0/24".parse().unwrap();
    let net = NodeNetwork::setup("strake0", pods, None, Some(node.net.clone())).unwrap();
    let ipam = Ipam::open(&tmp.path().join("ipam"), pods).unwrap();
    let (ip_a, ip_b) = (ipam.allocate("a").unwrap(), ipam.allocate("b").unwrap());
    net.attach(&a.net, "a", ip_a).unwrap();
    net.attach(&b.net, "b", ip_b).unwrap();
    // The world outside the cluster: a client on another link of the node (TEST-NET-3).
    let outside = "203.0.113.0/24".parse().unwrap();
    let uplink = NodeNetwork::setup("outside0", outside, None, Some(node.net.clone())).unwrap();
    let client_ip = Ipv4Addr::new(203, 0, 113, 2);
    uplink.attach(&client.net, "client", client_ip).unwrap();
    // The node's default route leads outside, as a real node's does.
    common::default_route(&node.net, client_ip);

    let cluster_ip = Ipv4Addr::new(10, 100, 0, 10);
    let empty_ip = Ipv4Addr::new(10, 100, 0, 11);
    let web = |endpoints: Vec<(Ipv4Addr, u16)>| ServicePort {
        name: "t/web:http/TCP".into(),
        cluster_ip: Some(cluster_ip),
        external_ips: vec![uplink.gateway()],
        protocol: Protocol::Tcp,
        port: 80,
        node_port: Some(30080),
        endpoints,
        local_endpoints: Vec::new(),
        internal_local: false,
        external_local: false,
        affinity_timeout: None,
    };
    let mut desired = Desired {
        pod_cidr: Some(pods),
        cluster_cidr: "10.99.0.0/16".parse().unwrap(),
        node_ips: vec![net.gateway(), uplink.gateway()],
        services: vec![
            web(vec![(ip_a, 8080)]),
            ServicePort {
                name: "t/empty:/TCP".into(),
                cluster_ip: Some(empty_ip),
                external_ips: Vec::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                internal_local: false,
                external_local: false,
                affinity_timeout: None,
            },
        ],
        dns: Some((Ipv4Addr::new(10, 100, 0, 53), net.gateway())),
    };
    services::sync(&desired, Some(&node.net)).unwrap();
    // Syncing the same state again is a clean swap.
    services::sync(&desired, Some(&node.net)).unwrap();

    let server = serve_in(&a.net, 8080, "a", 5);
    let to_service = SocketAddr::from((cluster_ip, 80));
    // Traffic from outside the cluster is masqueraded (its endpoint could be on another
    // node): the pod sees the node's address on its bridge.
    let got = ask(&client.net, to_service, LONG).unwrap();
    assert_eq!(
        got,
        format!("a {}", net.gateway()),
        "a cluster IP from outside"
    );
    let got = ask(
        &client.net,
        SocketAddr::from((uplink.gateway(), 30080)),
        LONG,
    )
    .unwrap();
    assert_eq!(
        got,
        format!("a {}", net.gateway()),
        "a node port from outside"
    );
    let got = ask(&client.net, SocketAddr::from((uplink.gateway(), 80)), LONG).unwrap();
    assert_eq!(
        got,
        format!("a {}", net.gateway()),
        "the service port on an external address"
    );
    // The masquerade bit does not stay on traffic no Service took: a client reaching a pod
    // directly keeps its own address.
    let direct = serve_in(&a.net, 8090, "a", 1);
    let got = ask(&client.net, SocketAddr::from((ip_a, 8090)), LONG).unwrap();
    assert_eq!(
        got,
        format!("a {client_ip}"),
        "routed to a pod, not masqueraded"
    );
    direct.join().unwrap();
    // A pod reaching itself through its Service is masqueraded, or the reply would go astray.
    let got = ask(&a.net, to_service, LONG).unwrap();
    assert_eq!(got, format!("a {}", net.gateway()), "hairpin");
    let got = ask(&b.net, to_service, LONG).unwrap();
    assert!(
        got.starts_with("a "),
        "another pod through the cluster IP: {got}"
    );
    server.join().unwrap();

    // The cluster DNS address leads to the node's own server.
    let dns = serve_in(&node.net, 53, "dns", 1);
    let got = ask(&b.net, SocketAddr::from(([10, 100, 0, 53], 53)), LONG).unwrap();
    assert_eq!(got, format!("dns {ip_b}"), "node-local DNS");
    dns.join().unwrap();

    // Traffic leaving the cluster leaves with the node's address.
    let outside_server = serve_in(&client.net, 9090, "client", 1);
    let got = ask(&a.net, SocketAddr::from((client_ip, 9090)), LONG).unwrap();
    assert_eq!(
        got,
        format!("client {}", uplink.gateway()),
        "egress masquerade"
    );
    outside_server.join().unwrap();

    let refused = ask(&b.net, SocketAddr::from((empty_ip, 80)), LONG).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "a port without endpoints is refused at once"
    );

    // The endpoint moves to pod b: only that port's chains change.
    let before = desired.clone();
    desired.services[0] = web(vec![(ip_b, 8081)]);
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    let server = serve_in(&b.net, 8081, "b", 1);
    let got = ask(&client.net, to_service, LONG).unwrap();
    assert!(got.starts_with("b "), "after the endpoint moved: {got}");
    server.join().unwrap();

    // Two endpoints: both get traffic.
    let before = desired.clone();
    desired.services[0] = web(vec![(ip_a, 8080), (ip_b, 8081)]);
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    let sa = serve_in(&a.net, 8080, "a", 1);
    let sb = serve_in(&b.net, 8081, "b", 1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        if seen.len() == 2 {
            break;
        }
        if let Ok(got) = ask(&client.net, to_service, LONG) {
            seen.insert(got.split(' ').next().unwrap_or_default().to_string());
        }
    }
    assert_eq!(seen.len(), 2, "both endpoints chosen: {seen:?}");
    sa.join().unwrap();
    sb.join().unwrap();

    // Session affinity (ClientIP): every connection of one client goes to one endpoint; the
    // port comes and goes incrementally with its affinity sets.
    let sticky_ip = Ipv4Addr::new(10, 100, 0, 14);
    let before = desired.clone();
    desired.services.push(ServicePort {
        name: "t/sticky:/TCP".into(),
        cluster_ip: Some(sticky_ip),
        external_ips: Vec::new(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        endpoints: vec![(ip_a, 8091), (ip_b, 8092)],
        local_endpoints: Vec::new(),
        internal_local: false,
        external_local: false,
        affinity_timeout: Some(60),
    });
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    let _sa = serve_in(&a.net, 8091, "a", 20);
    let _sb = serve_in(&b.net, 8092, "b", 20);
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let got = ask(&client.net, SocketAddr::from((sticky_ip, 80)), LONG).unwrap();
        chosen.insert(got.split(' ').next().unwrap_or_default().to_string());
    }
    assert_eq!(chosen.len(), 1, "one client, one endpoint: {chosen:?}");
    let before = desired.clone();
    desired.services.pop();
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());

    // A port removed and one added, incrementally; an unchanged state changes nothing.
    let before = desired.clone();
    desired.services.remove(1);
    desired.services.push(ServicePort {
        name: "t/late:/TCP".into(),
        cluster_ip: Some(empty_ip),
        external_ips: Vec::new(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        endpoints: vec![(ip_a, 8080)],
        local_endpoints: Vec::new(),
        internal_local: false,
        external_local: false,
        affinity_timeout: None,
    });
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    assert!(services::sync_from(Some(&desired), &desired, Some(&node.net)).unwrap());
    let late = serve_in(&a.net, 8080, "a", 1);
    let got = ask(&client.net, SocketAddr::from((empty_ip, 80)), LONG).unwrap();
    assert!(got.starts_with("a "), "the added port: {got}");
    late.join().unwrap();
    // Traffic policies. externalTrafficPolicy Local keeps the client's address and leads
    // only to this node's endpoints (pods still reach every endpoint); a port whose
    // endpoints are all on other nodes answers nothing from outside, and under
    // internalTrafficPolicy Local nothing on its cluster IP either.
    let before = desired.clone();
    let (local_ip, remote_ip) = (Ipv4Addr::new(10, 100, 0, 12), Ipv4Addr::new(10, 100, 0, 13));
    let elsewhere = (Ipv4Addr::new(10, 99, 8, 7), 8080);
    let policy_port = |name: &str,
                       ip,
                       node_port,
                       endpoints: Vec<(Ipv4Addr, u16)>,
                       local: Vec<(Ipv4Addr, u16)>,
                       internal| ServicePort {
        name: name.into(),
        cluster_ip: Some(ip),
        external_ips: Vec::new(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: Some(node_port),
        endpoints,
        local_endpoints: local,
        internal_local: internal,
        external_local: true,
        affinity_timeout: None,
    };
    desired.services.push(policy_port(
        "t/local:/TCP",
        local_ip,
        30090,
        vec![(ip_a, 8080)],
        vec![(ip_a, 8080)],
        false,
    ));
    desired.services.push(policy_port(
        "t/remote:/TCP",
        remote_ip,
        30091,
        vec![elsewhere],
        vec![],
        true,
    ));
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    let server = serve_in(&a.net, 8080, "a", 2);
    let got = ask(
        &client.net,
        SocketAddr::from((uplink.gateway(), 30090)),
        LONG,
    )
    .unwrap();
    assert_eq!(
        got,
        format!("a {client_ip}"),
        "Local: the client's address is kept"
    );
    let got = ask(&b.net, SocketAddr::from((uplink.gateway(), 30090)), LONG).unwrap();
    assert_eq!(
        got,
        format!("a {}", net.gateway()),
        "Local: a pod through the node port reaches every endpoint, masqueraded"
    );
    server.join().unwrap();
    let short = Duration::from_millis(800);
    assert!(
        ask(
            &client.net,
            SocketAddr::from((uplink.gateway(), 30091)),
            short
        )
        .is_err(),
        "Local without a local endpoint: nothing answers from outside"
    );
    assert!(
        ask(&b.net, SocketAddr::from((remote_ip, 80)), short).is_err(),
        "internal Local without a local endpoint: the cluster IP answers nothing"
    );
    // Taken out again, incrementally.
    let before = desired.clone();
    desired.services.truncate(desired.services.len() - 2);
    assert!(services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    assert!(
        ask(
            &client.net,
            SocketAddr::from((uplink.gateway(), 30090)),
            short
        )
        .is_err(),
        "the Local port is gone"
    );
    // The node's addresses changed: the whole table is rebuilt.
    let before = desired.clone();
    desired.node_ips.pop();
    assert!(!services::sync_from(Some(&before), &desired, Some(&node.net)).unwrap());
    assert!(
        ask(
            &client.net,
            SocketAddr::from((uplink.gateway(), 30080)),
            Duration::from_millis(800)
        )
        .is_err(),
        "the node port left with the address"
    );

    services::remove(Some(&node.net)).unwrap();
    services::remove(Some(&node.net)).unwrap(); // idempotent
    let _late = serve_in(&a.net, 8080, "a", 1);
    assert!(
        ask(&client.net, to_service, Duration::from_millis(800)).is_err(),
        "no rules, no service"
    );
    // Leave the last server's accept: connect once directly so its thread ends.
    let _ = ask(&node.net, SocketAddr::from((ip_a, 8080)), LONG);
}
