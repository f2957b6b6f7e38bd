//! Pod networking for real, inside network namespaces this test creates (one standing in for
//! the node, one per pod): the bridge, veth pairs, addresses and routes; pods reach each other
//! and the node reaches them; a detached pod is unreachable. Needs root; never touches the
//! host's own network.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Namespaces, serve_in};
use strake_net::{Ipam, NodeNetwork, POD_INTERFACE, connect_in};
use strake_runtime::Sandbox;

/// Serves two echo connections on `port` inside `netns`.
fn echo_in(netns: &Path, port: u16) -> std::thread::JoinHandle<()> {
    serve_in(netns, port, 2, |mut s, _| {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    })
}

fn echo(from: &Path, to: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_in(from, to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hello")?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn pods_on_the_bridge_reach_each_other_and_the_node_reaches_them() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["node", "a", "b"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let _cleanup = Namespaces(dirs.clone());
    let node = Sandbox::create(&dirs[0], "node").unwrap();
    let a = Sandbox::create(&dirs[1], "a").unwrap();
    let b = Sandbox::create(&dirs[2], "b").unwrap();

    let cidr = "10.99.7.0/24".parse().unwrap();
    let net = NodeNetwork::setup("strake0", cidr, None, Some(node.net.clone())).unwrap();
    assert_eq!(net.gateway(), Ipv4Addr::new(10, 99, 7, 1));
    assert_eq!(net.mtu(), 1500, "no uplink in the test namespace");
    // Setting up again (an agent restart) is fine.
    NodeNetwork::setup("strake0", cidr, None, Some(node.net.clone())).unwrap();

    let ipam = Ipam::open(&tmp.path().join("ipam"), cidr).unwrap();
    let ip_a = ipam.allocate("uid-a").unwrap();
    let ip_b = ipam.allocate("uid-b").unwrap();
    let att = net.attach(&a.net, "uid-a", ip_a).unwrap();
    assert_eq!(att.ip, ip_a);
    assert!(att.host_interface.starts_with("veth") && att.host_interface.len() <= 15);
    // A second attempt for the same pod replaces the first pair.
    net.attach(&a.net, "uid-a", ip_a).unwrap();
    net.attach(&b.net, "uid-b", ip_b).unwrap();
    let err = net
        .attach(&b.net, "uid-c", Ipv4Addr::new(10, 1, 1, 1))
        .unwrap_err();
    assert!(err.to_string().contains("not a pod address"), "{err}");

    let server = echo_in(&a.net, 8080);
    let to_a = SocketAddr::from((ip_a, 8080));
    assert_eq!(echo(&b.net, to_a).unwrap(), "hello", "pod b reaches pod a");
    assert_eq!(
        echo(&node.net, to_a).unwrap(),
        "hello",
        "the node reaches pod a"
    );
    server.join().unwrap();
    // The pod's own loopback works too (what port-forward uses).
    let server = echo_in(&a.net, 8081);
    assert_eq!(
        echo(&a.net, SocketAddr::from(([127, 0, 0, 1], 8081))).unwrap(),
        "hello"
    );
    assert!(
        echo(&b.net, SocketAddr::from(([127, 0, 0, 1], 8081))).is_err(),
        "pod b's loopback is its own"
    );
    assert_eq!(
        echo(&node.net, SocketAddr::from((ip_a, 8081))).unwrap(),
        "hello"
    );
    server.join().unwrap();
    assert_eq!(POD_INTERFACE, "eth0");

    net.detach("uid-a").unwrap();
    net.detach("uid-a").unwrap(); // idempotent
    let _server = std::thread::spawn({
        let ns = a.net.clone();
        move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(("0.0.0.0", 8082)).unwrap();
            let _ = l.set_nonblocking(true);
            std::thread::sleep(Duration::from_secs(4));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        echo(&b.net, SocketAddr::from((ip_a, 8082))).is_err(),
        "a detached pod is unreachable"
    );
}
