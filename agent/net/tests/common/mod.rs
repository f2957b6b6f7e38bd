//! What the namespace tests share: sandboxes removed on drop, and listeners inside a
//! namespace.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use strake_runtime::Sandbox;

/// Removes the namespaces on drop, so a failed assertion leaves nothing pinned.
pub struct Namespaces(pub Vec<PathBuf>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Sandbox::remove(dir);
        }
    }
}

/// Serves `count` connections on `port` inside `netns` from a thread of its own, calling
/// `each` with every accepted stream and its peer; returns once the listener is bound.
pub fn serve_in(
    netns: &Path,
    port: u16,
    count: usize,
    each: impl Fn(std::net::TcpStream, std::net::SocketAddr) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let netns = netns.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        ready_tx.send(()).unwrap();
        for _ in 0..count {
            let (s, peer) = l.accept().unwrap();
            each(s, peer);
        }
    });
    ready_rx.recv().unwrap();
    t
}

/// Adds a default route via `gateway` inside `netns` (a node's uplink, in the tests).
pub fn default_route(netns: &Path, gateway: std::net::Ipv4Addr) {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .gateway(gateway)
                .build();
            handle.route().add(route).execute().await.unwrap();
        });
    })
    .join()
    .unwrap();
}

/// Fails loudly unless the test can make namespaces and bridged traffic reaches the IP hooks.
pub fn require_root_and_br_netfilter() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root"
    );
    assert!(
        Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        "br_netfilter must be loaded (modprobe br_netfilter): traffic between pods on one bridge reaches the rules only through it"
    );
}

/// A node namespace with its pod bridge on `cidr` and one attached pod per name.
pub struct PodNode {
    pub node: Sandbox,
    pub net: strake_net::NodeNetwork,
    pub pods: Vec<(Sandbox, std::net::Ipv4Addr)>,
    _cleanup: Namespaces,
}

pub fn pod_node(tmp: &Path, cidr: &str, pods: &[&str]) -> PodNode {
    let names: Vec<&str> = std::iter::once("node")
        .chain(pods.iter().copied())
        .collect();
    let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.join(n)).collect();
    let cleanup = Namespaces(dirs.clone());
    let node = Sandbox::create(&dirs[0], "node").unwrap();
    let cidr: strake_net::Ipv4Net = cidr.parse().unwrap();
    let net =
        strake_net::NodeNetwork::setup("strake0", cidr, None, Some(node.net.clone())).unwrap();
    let ipam = strake_net::Ipam::open(&tmp.join("ipam"), cidr).unwrap();
    let pods = pods
        .iter()
        .zip(&dirs[1..])
        .map(|(name, dir)| {
            let sb = Sandbox::create(dir, name).unwrap();
            let ip = ipam.allocate(name).unwrap();
            net.attach(&sb.net, name, ip).unwrap();
            (sb, ip)
        })
        .collect();
    PodNode {
        node,
        net,
        pods,
        _cleanup: cleanup,
    }
}
