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
