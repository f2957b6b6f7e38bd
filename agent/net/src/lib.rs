//! strake-net: pod networking over netlink, with no CNI binaries.
//!
//! - [`NodeNetwork`]: the node's bridge (`strake0`), holding the first address of the node's
//!   pod CIDR as the pods' gateway, and a veth pair per pod sandbox: the host end on the
//!   bridge, the pod end as `eth0` in the sandbox's network namespace with the pod's address
//!   and a default route through the gateway.
//! - [`Ipam`]: the node's pod addresses, one file per address under a directory on disk
//!   (named by the address, holding its owner), so an agent restart never hands out an
//!   address twice, and addresses whose owners are gone are swept.
//! - [`routes`]: routes to the other nodes' pods, host-gw on a shared L2 and VXLAN otherwise.
//! - [`services`]: Service routing and masquerade in an nf_tables table of Strake's own, built
//!   with [`nft`], an nf_tables netlink encoder (no `nft` binary, no C library).
//! - [`policy`]: NetworkPolicy, judged per connection in a second nf_tables table of its own.
//! - [`conntrack`]: the UDP flows a Service change leaves stale, deleted over ctnetlink.
//! - [`vip`]: a shared virtual IP added to and removed from an interface, announced with
//!   gratuitous ARP from a packet socket.
//! - [`connect_in`]: a TCP connection made from inside a pod's network namespace (what
//!   port-forward needs, so a server bound to the pod's loopback is reachable).
//!
//! Each netlink conversation runs on a thread of its own that first enters the namespace it
//! configures (`setns` moves only the calling thread), with a netlink socket opened there; the
//! caller's threads never change namespace. Namespaces themselves (creating and pinning them)
//! are the runtime's job (`strake_runtime::Sandbox`).

mod bridge;
pub mod conntrack;
mod ipam;
pub mod nft;
pub mod policy;
pub mod routes;
pub mod services;
pub mod vip;

use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bridge::{Attachment, NodeNetwork, POD_INTERFACE, host_interface};
pub use ipam::Ipam;
pub use ipnet::Ipv4Net;

/// Errors of pod networking, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {op}: {message}")]
    Netlink { op: String, message: String },
    #[error("entering the network namespace {}: {errno}", .path.display())]
    Namespace {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free pod address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("pod CIDR {0} has no room for a gateway and pods")]
    TooSmall(Ipv4Net),
    #[error("invalid address owner {0:?}: must be non-empty, one line, without '/'")]
    BadOwner(String),
    #[error("network thread: {0}")]
    Thread(String),
}

pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::Netlink {
        op,
        message: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            e => e.to_string(),
        },
    }
}

/// Enters the network namespace at `ns` (None: stays in the caller's) on the current thread.
fn enter(ns: Option<&Path>) -> Result<(), NetError> {
    let Some(path) = ns else { return Ok(()) };
    let file = std::fs::File::open(path).map_err(|source| NetError::Io {
        op: "opening",
        path: path.to_owned(),
        source,
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        NetError::Namespace {
            path: path.to_owned(),
            errno,
        }
    })
}

/// Runs `f` with a netlink handle opened inside the network namespace at `ns`, on a thread of
/// its own (with a runtime of its own), and returns its result.
pub(crate) fn in_netns<T, F, Fut>(ns: Option<&Path>, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, NetError>>,
{
    std::thread::scope(|s| {
        s.spawn(move || {
            enter(ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| NetError::Thread(format!("starting a netlink runtime: {e}")))?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| NetError::Thread(format!("opening a netlink socket: {e}")))?;
                let conn = tokio::spawn(conn);
                let out = f(handle).await;
                conn.abort();
                out
            })
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Thread("the netlink thread panicked".into())))
    })
}

/// Joins the network namespaces `a` and `b` with a veth pair named `name` on both sides,
/// holding `a_addr` and `b_addr`, both up: two machines on one link, for tests and benches.
pub fn link_namespaces(
    a: &Path,
    b: &Path,
    name: &str,
    a_addr: Ipv4Net,
    b_addr: Ipv4Net,
) -> Result<(), NetError> {
    let peer = format!("{}-peer", &name[..name.len().min(10)]);
    let b_file = std::fs::File::open(b).map_err(|source| NetError::Io {
        op: "opening",
        path: b.to_owned(),
        source,
    })?;
    let address = |handle: rtnetlink::Handle, link: String, addr: Ipv4Net, rename: bool| async move {
        let index = bridge::link_by_name(&handle, &link)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| NetError::Netlink {
                op: format!("finding {link}"),
                message: "no such device".into(),
            })?;
        let mut msg = rtnetlink::LinkUnspec::new_with_index(index).up();
        if rename {
            msg = msg.name(name.to_string());
        }
        handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(netlink(format!("setting {link} up")))?;
        handle
            .address()
            .add(index, addr.addr().into(), addr.prefix_len())
            .execute()
            .await
            .map_err(netlink(format!("adding {addr} to {link}")))
    };
    in_netns(Some(a), |handle| {
        let peer = peer.clone();
        async move {
            use std::os::fd::AsRawFd as _;
            handle
                .link()
                .add(rtnetlink::LinkVeth::new(name, &peer).build())
                .execute()
                .await
                .map_err(netlink(format!("creating veth pair {name}/{peer}")))?;
            let index = bridge::link_by_name(&handle, &peer)
                .await?
                .map(|l| l.header.index)
                .ok_or_else(|| NetError::Netlink {
                    op: format!("finding {peer}"),
                    message: "no such device".into(),
                })?;
            handle
                .link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(index)
                        .setns_by_fd(b_file.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!("moving {peer}")))?;
            address(handle, name.to_string(), a_addr, false).await
        }
    })?;
    in_netns(Some(b), |handle| {
        address(handle, peer.clone(), b_addr, true)
    })
}

/// Opens a TCP connection to `addr` from inside the network namespace at `netns`. The socket
/// stays in that namespace whichever thread uses it afterwards.
pub fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(Some(netns)).map_err(std::io::Error::other)?;
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}
