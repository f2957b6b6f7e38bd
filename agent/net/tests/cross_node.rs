//! Pods on two "nodes" reaching each other, inside network namespaces this test creates: the
//! nodes share a link (a veth pair standing in for their L2), each has its pod bridge and a
//! pod, and [`PodRoutes`] routes each node's pod CIDR to the other, first host-gw, then over
//! VXLAN. A peer that goes away takes its routes with it. Needs root; never touches the
//! host's own network.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Namespaces, serve_in};
use strake_net::routes::{Backend, Peer, PodRoutes, VXLAN_DEVICE};
use strake_net::{Ipam, Ipv4Net, NodeNetwork, connect_in, link_namespaces};
use strake_runtime::Sandbox;

fn ask(from: &Path, to: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_in(from, to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Answers `count` connections on `port` in `netns` with `<name> <peer ip>`.
fn answer(
    netns: &Path,
    port: u16,
    name: &'static str,
    count: usize,
) -> std::thread::JoinHandle<()> {
    serve_in(netns, port, count, move |mut s, peer| {
        let _ = s.write_all(format!("{name} {}", peer.ip()).as_bytes());
    })
}

/// Whether a link named `name` exists in `netns`.
fn has_link(netns: &Path, name: &str) -> bool {
    let (netns, name) = (netns.to_owned(), name.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        // This thread's namespace (/proc/net follows the process's first thread).
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .unwrap()
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{name}:")))
    })
    .join()
    .unwrap()
}

struct Node {
    ns: Sandbox,
    pod: Sandbox,
    ip: Ipv4Addr,
    cidr: Ipv4Net,
    pod_ip: Ipv4Addr,
}

fn node(tmp: &Path, name: &str, ip: Ipv4Addr, cidr: &str, mtu: Option<u32>) -> Node {
    let ns = Sandbox::create(&tmp.join(name), name).unwrap();
    let pod = Sandbox::create(&tmp.join(format!("{name}-pod")), "pod").unwrap();
    let cidr: Ipv4Net = cidr.parse().unwrap();
    let net = NodeNetwork::setup("strake0", cidr, mtu, Some(ns.net.clone())).unwrap();
    let ipam = Ipam::open(&tmp.join(format!("{name}-ipam")), cidr).unwrap();
    let pod_ip = ipam.allocate("pod").unwrap();
    net.attach(&pod.net, "pod", pod_ip).unwrap();
    Node {
        ns,
        pod,
        ip,
        cidr,
        pod_ip,
    }
}

fn peer_of(n: &Node, name: &str) -> Peer {
    Peer {
        name: name.into(),
        node_ip: n.ip,
        pod_cidr: n.cidr,
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_host_gw_and_over_vxlan() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["n1", "n1-pod", "n2", "n2-pod"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let _cleanup = Namespaces(dirs);
    let (ip1, ip2) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    // The pods get the MTU the routes call for (the agent asks PodRoutes first).
    let n1 = node(tmp.path(), "n1", ip1, "10.98.1.0/24", Some(1450));
    let n2 = node(tmp.path(), "n2", ip2, "10.98.2.0/24", Some(1450));
    link_namespaces(
        &n1.ns.net,
        &n2.ns.net,
        "wire",
        Ipv4Net::new(ip1, 24).unwrap(),
        Ipv4Net::new(ip2, 24).unwrap(),
    )
    .unwrap();

    // Without routes, n1's pod cannot reach n2's.
    let to_2 = SocketAddr::from((n2.pod_ip, 8080));
    let to_1 = SocketAddr::from((n1.pod_ip, 8080));
    assert!(ask(&n1.pod.net, to_2).is_err(), "no route yet");

    // host-gw: each node routes the other's pod CIDR through its address.
    let r1 = PodRoutes::setup(Backend::Auto, ip1, n1.cidr, Some(n1.ns.net.clone())).unwrap();
    let r2 = PodRoutes::setup(Backend::Auto, ip2, n2.cidr, Some(n2.ns.net.clone())).unwrap();
    assert_eq!(r1.pod_mtu(), 1450, "auto leaves room for VXLAN");
    let report = r1.sync(&[peer_of(&n2, "n2"), peer_of(&n1, "n1")]).unwrap();
    assert_eq!((report.direct, report.tunnel, report.changed), (1, 0, 1));
    r2.sync(&[peer_of(&n1, "n1")]).unwrap();
    // A second sync changes nothing.
    let again = r1.sync(&[peer_of(&n2, "n2")]).unwrap();
    assert_eq!((again.changed, again.removed), (0, 0));

    let server = answer(&n2.pod.net, 8080, "pod2", 1);
    assert_eq!(
        ask(&n1.pod.net, to_2).unwrap(),
        format!("pod2 {}", n1.pod_ip),
        "pod to pod across nodes, host-gw, with the pod's own address"
    );
    server.join().unwrap();
    let server = answer(&n1.pod.net, 8080, "pod1", 1);
    assert_eq!(
        ask(&n2.pod.net, to_1).unwrap(),
        format!("pod1 {}", n2.pod_ip)
    );
    server.join().unwrap();

    // VXLAN: the same nodes, tunnelled (a forced backend, as configuration can ask).
    let v1 = PodRoutes::setup(Backend::Vxlan, ip1, n1.cidr, Some(n1.ns.net.clone())).unwrap();
    let v2 = PodRoutes::setup(Backend::Vxlan, ip2, n2.cidr, Some(n2.ns.net.clone())).unwrap();
    assert!(has_link(&n1.ns.net, VXLAN_DEVICE));
    let report = v1.sync(&[peer_of(&n2, "n2")]).unwrap();
    assert_eq!(
        (report.direct, report.tunnel, report.changed, report.removed),
        (0, 1, 1, 1),
        "the host-gw route is replaced by the tunnel's"
    );
    v2.sync(&[peer_of(&n1, "n1")]).unwrap();
    let server = answer(&n2.pod.net, 8080, "pod2", 2);
    assert_eq!(
        ask(&n1.pod.net, to_2).unwrap(),
        format!("pod2 {}", n1.pod_ip),
        "pod to pod across nodes over VXLAN"
    );
    // A large reply crosses the tunnel too (the pods' MTU leaves room for encapsulation).
    let big = serve_in(&n2.pod.net, 8081, 1, |mut s, _| {
        let _ = s.write_all(&vec![b'x'; 200_000]);
    });
    let mut s = connect_in(
        &n1.pod.net,
        SocketAddr::from((n2.pod_ip, 8081)),
        Duration::from_secs(3),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 200_000, "a 200 kB reply over VXLAN");
    big.join().unwrap();

    // The peer leaves: its route, neighbour and forwarding entries go; the pod is unreachable.
    let gone = v1.sync(&[]).unwrap();
    assert_eq!(gone.removed, 1);
    assert!(ask(&n1.pod.net, to_2).is_err(), "the peer's route is gone");
    // Back to host-gw: the tunnel device is removed.
    PodRoutes::setup(Backend::HostGw, ip1, n1.cidr, Some(n1.ns.net.clone())).unwrap();
    assert!(!has_link(&n1.ns.net, VXLAN_DEVICE));
    // Leave the second accept of the server: connect once from its own node.
    let _ = ask(&n2.ns.net, to_2);
    server.join().unwrap();
}
