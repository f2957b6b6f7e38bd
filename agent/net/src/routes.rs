//! Routes to the other nodes' pods, the cross-node half of the pod network.
//!
//! Each peer node's pod CIDR is reached one of two ways:
//! - **host-gw**: a plain route through the peer's node address, when the peer shares an L2
//!   with this node (its address is inside a prefix of the interface holding ours);
//! - **VXLAN**: a route through the peer's tunnel endpoint on the `strake.vxlan` device
//!   (VNI 1, UDP 8472), with a permanent neighbour entry and a forwarding-database entry that
//!   send the frame to the peer's node address. Every endpoint's MAC is derived from its node
//!   address, so nothing has to be published for a peer to be reached.
//!
//! [`Backend::Auto`] picks per peer; `HostGw` and `Vxlan` force one. The pods' MTU is the
//! uplink's, less the 50 bytes of VXLAN encapsulation unless the backend is host-gw.
//!
//! Routes added here carry a protocol number of their own ([`ROUTE_PROTOCOL`]), so a sync
//! removes exactly the routes it made and never another's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::bridge::link_by_name;
use crate::{NetError, in_netns, netlink};

/// The tunnel device.
pub const VXLAN_DEVICE: &str = "strake.vxlan";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// Outer IPv4, UDP and VXLAN headers and the inner Ethernet header.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The `proto` of the routes this module owns.
pub const ROUTE_PROTOCOL: u8 = 57;

/// How peers' pods are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// host-gw for peers on this node's L2, VXLAN for the rest.
    #[default]
    Auto,
    HostGw,
    Vxlan,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            other => Err(format!(
                "unknown pod network backend {other:?}: expected auto, host-gw or vxlan"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        })
    }
}

/// Another node: where its pods are and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// How one peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A route through the peer's node address.
    Direct,
    /// A route through the VXLAN device.
    Tunnel,
}

/// The tunnel endpoint MAC of the node at `ip`: locally administered, unicast, and the address
/// in the last four bytes.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x5a, o[0], o[1], o[2], o[3]]
}

/// The tunnel endpoint address of the node whose pods are `cidr`: its network address (on the
/// VXLAN device as a /32; the node's bridge holds the first host address).
pub fn vtep_ip(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.network()
}

/// Which path each peer takes. Peers that are this node (same address or pod CIDR), or
/// whose pod CIDR overlaps this node's, are left out; so is, under a forced host-gw, a peer
/// that is not on this node's L2 (a route through it could not be added), which is returned
/// in the second list.
pub fn plan(
    backend: Backend,
    node_ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
    onlink: &[Ipv4Net],
    peers: &[Peer],
) -> (Vec<(Peer, Path)>, Vec<Peer>) {
    let mut out = Vec::new();
    let mut unreachable = Vec::new();
    let mut seen = BTreeSet::new();
    for p in peers {
        let overlaps =
            p.pod_cidr.contains(&pod_cidr.network()) || pod_cidr.contains(&p.pod_cidr.network());
        if p.node_ip == node_ip || overlaps || !seen.insert(p.pod_cidr) {
            continue;
        }
        let local = onlink.iter().any(|n| n.contains(&p.node_ip));
        let path = match backend {
            Backend::Vxlan => Path::Tunnel,
            Backend::HostGw if local => Path::Direct,
            Backend::HostGw => {
                unreachable.push(p.clone());
                continue;
            }
            Backend::Auto if local => Path::Direct,
            Backend::Auto => Path::Tunnel,
        };
        out.push((p.clone(), path));
    }
    (out, unreachable)
}

/// What one [`PodRoutes::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub direct: usize,
    pub tunnel: usize,
    /// Routes added or changed.
    pub changed: usize,
    /// Routes of ours removed (their peers are gone).
    pub removed: usize,
    /// Peers a forced host-gw cannot reach.
    pub unreachable: Vec<Peer>,
}

/// This node's routes to its peers' pods.
#[derive(Debug, Clone)]
pub struct PodRoutes {
    backend: Backend,
    node_ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
    /// The prefixes of the interface holding the node address: peers inside are on our L2.
    onlink: Vec<Ipv4Net>,
    uplink_mtu: u32,
    host_ns: Option<PathBuf>,
}

/// The link holding `ip`, with its MTU and every IPv4 prefix on it.
async fn uplink_of(handle: &Handle, ip: Ipv4Addr) -> Result<(u32, u32, Vec<Ipv4Net>), NetError> {
    let addrs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    let v4 = |m: &rtnetlink::packet_route::address::AddressMessage| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) => {
                Some(*v)
            }
            _ => None,
        })
    };
    let index = addrs
        .iter()
        .find(|m| v4(m) == Some(ip))
        .map(|m| m.header.index)
        .ok_or_else(|| NetError::Netlink {
            op: "finding the node's interface".into(),
            message: format!("no interface holds the node address {ip}"),
        })?;
    let onlink = addrs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| Some(Ipv4Net::new(v4(m)?, m.header.prefix_len).ok()?.trunc()))
        .collect();
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(netlink("reading the node's interface"))?;
    let mtu = link
        .and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        })
        .unwrap_or(1500);
    Ok((index, mtu, onlink))
}

fn mac_of(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The destination, gateway and output interface of a route.
fn route_parts(r: &RouteMessage) -> (Option<Ipv4Net>, Option<Ipv4Addr>, Option<u32>) {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                dst = Ipv4Net::new(*d, r.header.destination_prefix_length).ok()
            }
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    (dst, gw, oif)
}

impl PodRoutes {
    /// Finds the interface holding `node_ip` and, unless the backend is host-gw, makes sure
    /// the VXLAN device is there (recreated if its MAC or MTU is not what this node's address
    /// and uplink call for) with this node's tunnel endpoint address. Under host-gw a VXLAN
    /// device left by an earlier configuration is removed.
    pub fn setup(
        backend: Backend,
        node_ip: Ipv4Addr,
        pod_cidr: Ipv4Net,
        host_ns: Option<PathBuf>,
    ) -> Result<Self, NetError> {
        let pod_cidr = pod_cidr.trunc();
        let (uplink_mtu, onlink) = in_netns(host_ns.as_deref(), |handle| async move {
            let (uplink, mtu, onlink) = uplink_of(&handle, node_ip).await?;
            let existing = link_by_name(&handle, VXLAN_DEVICE).await?;
            let want_mac = vtep_mac(node_ip).to_vec();
            let want_mtu = mtu.saturating_sub(VXLAN_OVERHEAD);
            let keep = backend != Backend::HostGw
                && existing.as_ref().is_some_and(|l| {
                    mac_of(l).as_ref() == Some(&want_mac) && mtu_of(l) == Some(want_mtu)
                });
            if let Some(l) = existing.filter(|_| !keep) {
                handle
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(netlink(format!("removing {VXLAN_DEVICE}")))?;
            }
            if backend != Backend::HostGw {
                if !keep {
                    handle
                        .link()
                        .add(
                            LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                                .dev(uplink)
                                .local(node_ip)
                                .port(VXLAN_PORT)
                                .learning(false)
                                .mtu(want_mtu)
                                .address(want_mac)
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(netlink(format!("creating {VXLAN_DEVICE}")))?;
                }
                let index = link_by_name(&handle, VXLAN_DEVICE)
                    .await?
                    .map(|l| l.header.index)
                    .ok_or_else(|| NetError::Netlink {
                        op: format!("finding {VXLAN_DEVICE}"),
                        message: "it vanished after it was made".into(),
                    })?;
                handle
                    .address()
                    .add(index, vtep_ip(pod_cidr).into(), 32)
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "adding {}/32 to {VXLAN_DEVICE}",
                        vtep_ip(pod_cidr)
                    )))?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(netlink(format!("setting {VXLAN_DEVICE} up")))?;
            }
            Ok((mtu, onlink))
        })?;
        tracing::info!(%backend, %node_ip, uplink_mtu, "cross-node pod routes ready");
        Ok(Self {
            backend,
            node_ip,
            pod_cidr,
            onlink,
            uplink_mtu,
            host_ns,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The MTU pods get: the uplink's, less the encapsulation unless no peer can be tunnelled.
    pub fn pod_mtu(&self) -> u32 {
        match self.backend {
            Backend::HostGw => self.uplink_mtu,
            _ => self.uplink_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }

    /// The plan for `peers` (see [`plan`]).
    pub fn plan(&self, peers: &[Peer]) -> (Vec<(Peer, Path)>, Vec<Peer>) {
        plan(
            self.backend,
            self.node_ip,
            self.pod_cidr,
            &self.onlink,
            peers,
        )
    }

    /// Makes the routes (and, for tunnelled peers, the neighbour and forwarding entries) match
    /// `peers`, removing those of peers that are gone.
    pub fn sync(&self, peers: &[Peer]) -> Result<SyncReport, NetError> {
        let (planned, unreachable) = self.plan(peers);
        let backend = self.backend;
        in_netns(self.host_ns.as_deref(), |handle| async move {
            let vxlan = if backend == Backend::HostGw {
                None
            } else {
                Some(
                    link_by_name(&handle, VXLAN_DEVICE)
                        .await?
                        .map(|l| l.header.index)
                        .ok_or_else(|| NetError::Netlink {
                            op: "syncing pod routes".into(),
                            message: format!("{VXLAN_DEVICE} is missing"),
                        })?,
                )
            };
            let mut report = SyncReport {
                unreachable,
                ..Default::default()
            };
            // What each route should be: destination → (gateway, tunnel device).
            let mut want: BTreeMap<Ipv4Net, (Ipv4Addr, Option<u32>)> = BTreeMap::new();
            for (peer, path) in &planned {
                match (path, vxlan) {
                    (Path::Direct, _) => {
                        report.direct += 1;
                        want.insert(peer.pod_cidr, (peer.node_ip, None));
                    }
                    (Path::Tunnel, Some(dev)) => {
                        report.tunnel += 1;
                        want.insert(peer.pod_cidr, (vtep_ip(peer.pod_cidr), Some(dev)));
                    }
                    (Path::Tunnel, None) => {}
                }
            }
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(netlink("listing routes"))?;
            let mut have: BTreeMap<Ipv4Net, (Option<Ipv4Addr>, Option<u32>)> = BTreeMap::new();
            for r in routes {
                if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                    continue;
                }
                let (dst, gw, oif) = route_parts(&r);
                let Some(dst) = dst else { continue };
                let keep = want
                    .get(&dst)
                    .is_some_and(|(g, dev)| gw == Some(*g) && (dev.is_none() || *dev == oif));
                if keep {
                    have.insert(dst, (gw, oif));
                } else {
                    handle
                        .route()
                        .del(r)
                        .execute()
                        .await
                        .map_err(netlink(format!("removing the route to {dst}")))?;
                    report.removed += 1;
                }
            }
            // Tunnel entries first, so a route never points at an unresolved endpoint.
            if let Some(dev) = vxlan {
                sync_tunnel_entries(&handle, dev, &planned).await?;
            }
            for (dst, (gw, dev)) in &want {
                if have.contains_key(dst) {
                    continue;
                }
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .gateway(*gw)
                    .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
                if let Some(dev) = dev {
                    b = b.output_interface(*dev).onlink();
                }
                handle
                    .route()
                    .add(b.build())
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink(format!("adding the route to {dst} via {gw}")))?;
                report.changed += 1;
            }
            Ok(report)
        })
    }
}

fn neighbour_dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        _ => None,
    })
}

fn neighbour_lladdr(m: &NeighbourMessage) -> Option<Vec<u8>> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
        _ => None,
    })
}

/// The VXLAN device's neighbour entries (endpoint address → MAC) and forwarding entries (MAC →
/// node address) for the tunnelled peers; entries of peers that are gone are removed.
async fn sync_tunnel_entries(
    handle: &Handle,
    dev: u32,
    planned: &[(Peer, Path)],
) -> Result<(), NetError> {
    let tunnelled: Vec<&Peer> = planned
        .iter()
        .filter(|(_, p)| *p == Path::Tunnel)
        .map(|(peer, _)| peer)
        .collect();
    let want_neigh: BTreeSet<(Ipv4Addr, Vec<u8>)> = tunnelled
        .iter()
        .map(|p| (vtep_ip(p.pod_cidr), vtep_mac(p.node_ip).to_vec()))
        .collect();
    let want_fdb: BTreeSet<(Vec<u8>, Ipv4Addr)> = tunnelled
        .iter()
        .map(|p| (vtep_mac(p.node_ip).to_vec(), p.node_ip))
        .collect();

    let neigh: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing neighbours"))?;
    let mut have_neigh = BTreeSet::new();
    for m in neigh.into_iter().filter(|m| m.header.ifindex == dev) {
        let key = match (neighbour_dst(&m), neighbour_lladdr(&m)) {
            (Some(IpAddr::V4(ip)), Some(mac)) => (ip, mac),
            _ => continue,
        };
        if want_neigh.contains(&key) {
            have_neigh.insert(key);
        } else {
            let _ = handle.neighbours().del(m).execute().await;
        }
    }
    for (ip, mac) in want_neigh.difference(&have_neigh) {
        handle
            .neighbours()
            .add(dev, IpAddr::V4(*ip))
            .link_layer_address(mac)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "adding the neighbour {ip} on {VXLAN_DEVICE}"
            )))?;
    }

    let fdb: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing forwarding entries"))?;
    let mut have_fdb = BTreeSet::new();
    for m in fdb.into_iter().filter(|m| m.header.ifindex == dev) {
        let key = match (neighbour_lladdr(&m), neighbour_dst(&m)) {
            (Some(mac), Some(IpAddr::V4(ip))) => (mac, ip),
            _ => continue,
        };
        if want_fdb.contains(&key) {
            have_fdb.insert(key);
        } else {
            let _ = handle.neighbours().del(m).execute().await;
        }
    }
    for (mac, ip) in want_fdb.difference(&have_fdb) {
        handle
            .neighbours()
            .add_bridge(dev, mac)
            .destination(IpAddr::V4(*ip))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "adding the forwarding entry to {ip} on {VXLAN_DEVICE}"
            )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, ip: [u8; 4], cidr: &str) -> Peer {
        Peer {
            name: name.into(),
            node_ip: Ipv4Addr::from(ip),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    fn paths(b: Backend) -> (Vec<(String, Path)>, Vec<String>) {
        let me: Ipv4Net = "10.244.0.0/24".parse().unwrap();
        let onlink: Vec<Ipv4Net> = vec!["192.168.77.0/24".parse().unwrap()];
        let peers = [
            peer("near", [192, 168, 77, 11], "10.244.1.0/24"),
            peer("far", [192, 168, 78, 12], "10.244.2.0/24"),
            peer("self", [192, 168, 77, 10], "10.244.0.0/24"),
            peer("clash", [192, 168, 77, 13], "10.244.0.0/16"),
            peer("twin", [192, 168, 77, 14], "10.244.1.0/24"),
        ];
        let (p, u) = plan(b, Ipv4Addr::new(192, 168, 77, 10), me, &onlink, &peers);
        (
            p.into_iter().map(|(p, path)| (p.name, path)).collect(),
            u.into_iter().map(|p| p.name).collect(),
        )
    }

    #[test]
    fn auto_routes_peers_on_our_l2_directly_and_tunnels_the_rest() {
        let (p, u) = paths(Backend::Auto);
        assert_eq!(
            p,
            vec![("near".into(), Path::Direct), ("far".into(), Path::Tunnel)]
        );
        assert!(u.is_empty());
    }

    #[test]
    fn forced_backends() {
        let (p, u) = paths(Backend::Vxlan);
        assert_eq!(
            p,
            vec![("near".into(), Path::Tunnel), ("far".into(), Path::Tunnel)]
        );
        assert!(u.is_empty());
        let (p, u) = paths(Backend::HostGw);
        assert_eq!(p, vec![("near".into(), Path::Direct)]);
        assert_eq!(u, vec!["far".to_string()]);
    }

    #[test]
    fn endpoint_addresses_and_names() {
        assert_eq!(
            vtep_mac(Ipv4Addr::new(192, 168, 77, 10)),
            [0x0e, 0x5a, 192, 168, 77, 10]
        );
        // Locally administered, unicast.
        assert_eq!(vtep_mac(Ipv4Addr::new(1, 2, 3, 4))[0] & 0b11, 0b10);
        assert_eq!(
            vtep_ip("10.244.3.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 3, 0)
        );
        assert_eq!("host-gw".parse::<Backend>(), Ok(Backend::HostGw));
        assert!("flannel".parse::<Backend>().unwrap_err().contains("auto"));
        assert!(VXLAN_DEVICE.len() < 16);
    }
}
