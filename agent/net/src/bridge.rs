//! The node's bridge and the veth pair of each pod sandbox.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest as _, Sha256};

use crate::ipam::gateway;
use crate::{NetError, in_netns, netlink};

/// The pod's interface, inside its sandbox.
pub const POD_INTERFACE: &str = "eth0";
const DEFAULT_MTU: u32 = 1500;

/// The node's side of pod networking: its bridge, holding the pods' gateway address.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    bridge: String,
    cidr: Ipv4Net,
    mtu: u32,
    /// The namespace the bridge lives in (None: the caller's); tests use one of their own.
    host_ns: Option<PathBuf>,
}

/// What [`NodeNetwork::attach`] made for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The veth end on the bridge.
    pub host_interface: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// The host end's name for a pod keyed `key` (its uid): `veth` and 8 hex digits of a hash, so
/// it fits IFNAMSIZ and is the same on every attempt.
pub fn host_interface(key: &str) -> String {
    format!("veth{}", &hex::encode(Sha256::digest(key.as_bytes()))[..8])
}

pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(msg) => Ok(msg),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("finding link {name}"))(e)),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    link_by_name(handle, name)
        .await?
        .map(|m| m.header.index)
        .ok_or_else(|| NetError::Netlink {
            op: format!("finding link {name}"),
            message: "no such device".into(),
        })
}

async fn set(handle: &Handle, msg: LinkMessage, op: String) -> Result<(), NetError> {
    handle.link().set(msg).execute().await.map_err(netlink(op))
}

/// The MTU of the link the default route leaves through, or 1500.
async fn uplink_mtu(handle: &Handle) -> Result<u32, NetError> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing routes"))?;
    let oif = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        });
    let Some(oif) = oif else {
        return Ok(DEFAULT_MTU);
    };
    let link = handle
        .link()
        .get()
        .match_index(oif)
        .execute()
        .try_next()
        .await
        .map_err(netlink("reading the uplink"))?;
    Ok(link
        .and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        })
        .unwrap_or(DEFAULT_MTU))
}

impl NodeNetwork {
    /// Makes sure the bridge `name` exists and is up with the gateway address of `cidr`,
    /// with the MTU `mtu` (None: the MTU of the node's uplink), and that the node forwards
    /// IPv4. Pods get the bridge's MTU.
    pub fn setup(
        name: &str,
        cidr: Ipv4Net,
        mtu: Option<u32>,
        host_ns: Option<PathBuf>,
    ) -> Result<Self, NetError> {
        let cidr = cidr.trunc();
        let gw = gateway(cidr);
        let mtu = in_netns(host_ns.as_deref(), |handle| async move {
            let mtu = match mtu {
                Some(m) => m,
                None => uplink_mtu(&handle).await?,
            };
            if link_by_name(&handle, name).await?.is_none() {
                handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(netlink(format!("creating bridge {name}")))?;
            }
            let index = index_of(&handle, name).await?;
            handle
                .address()
                .add(index, gw.into(), cidr.prefix_len())
                .replace()
                .execute()
                .await
                .map_err(netlink(format!(
                    "adding {gw}/{} to {name}",
                    cidr.prefix_len()
                )))?;
            set(
                &handle,
                LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
                format!("setting {name} up with MTU {mtu}"),
            )
            .await?;
            // Per namespace: the thread is in the bridge's.
            let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
            std::fs::write(forward, "1").map_err(|source| NetError::Io {
                op: "enabling forwarding in",
                path: forward.to_owned(),
                source,
            })?;
            // Bridged traffic between pods must pass the IP hooks, so that the reply of a pod
            // reached through a Service on the same bridge is un-NATed (br_netfilter).
            let bridged = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
            if let Err(e) = std::fs::write(bridged, "1") {
                tracing::warn!(path = %bridged.display(), error = %e, "pods reaching a Service on their own bridge will fail (is br_netfilter loaded?)");
            }
            Ok(mtu)
        })?;
        tracing::info!(bridge = name, %cidr, gateway = %gw, mtu, "pod network ready");
        Ok(Self {
            bridge: name.to_string(),
            cidr,
            mtu,
            host_ns,
        })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.cidr)
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Connects the sandbox whose network namespace is `netns` to the bridge: a veth pair,
    /// the pod's end named [`POD_INTERFACE`] with `ip`, a default route through the gateway,
    /// and `lo` up. A pair left by an earlier attempt for the same `key` is replaced.
    pub fn attach(&self, netns: &Path, key: &str, ip: Ipv4Addr) -> Result<Attachment, NetError> {
        if !self.cidr.contains(&ip) || ip == self.gateway() {
            return Err(NetError::Netlink {
                op: format!("attaching {key}"),
                message: format!("{ip} is not a pod address of {}", self.cidr),
            });
        }
        let host = host_interface(key);
        // A temporary name for the pod's end while it is still in the node's namespace.
        let peer = format!("vpod{}", &host[4..]);
        let ns_file = std::fs::File::open(netns).map_err(|source| NetError::Io {
            op: "opening",
            path: netns.to_owned(),
            source,
        })?;
        let (bridge, mtu) = (self.bridge.as_str(), self.mtu);
        in_netns(self.host_ns.as_deref(), |handle| {
            let (host, peer) = (host.clone(), peer.clone());
            async move {
                for stale in [&host, &peer] {
                    if let Some(l) = link_by_name(&handle, stale).await? {
                        handle
                            .link()
                            .del(l.header.index)
                            .execute()
                            .await
                            .map_err(netlink(format!("removing stale link {stale}")))?;
                    }
                }
                handle
                    .link()
                    .add(LinkVeth::new(&host, &peer).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(netlink(format!("creating veth pair {host}/{peer}")))?;
                let peer_index = index_of(&handle, &peer).await?;
                set(
                    &handle,
                    LinkUnspec::new_with_index(peer_index)
                        .setns_by_fd(ns_file.as_raw_fd())
                        .build(),
                    format!("moving {peer} into the pod's namespace"),
                )
                .await?;
                let bridge_index = index_of(&handle, bridge).await?;
                let host_index = index_of(&handle, &host).await?;
                set(
                    &handle,
                    LinkUnspec::new_with_index(host_index)
                        .controller(bridge_index)
                        .up()
                        .build(),
                    format!("attaching {host} to {bridge}"),
                )
                .await?;
                // Hairpin: a pod reaching itself through a Service gets its traffic back out
                // of the port it came in by.
                handle
                    .link()
                    .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
                    .execute()
                    .await
                    .map_err(netlink(format!("setting hairpin mode on {host}")))
            }
        })?;
        let (gw, prefix) = (self.gateway(), self.cidr.prefix_len());
        in_netns(Some(netns), |handle| async move {
            let lo = index_of(&handle, "lo").await?;
            set(
                &handle,
                LinkUnspec::new_with_index(lo).up().build(),
                "setting lo up".into(),
            )
            .await?;
            let index = index_of(&handle, &peer).await?;
            set(
                &handle,
                LinkUnspec::new_with_index(index)
                    .name(POD_INTERFACE.to_string())
                    .mtu(mtu)
                    .build(),
                format!("renaming {peer} to {POD_INTERFACE}"),
            )
            .await?;
            handle
                .address()
                .add(index, ip.into(), prefix)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("adding {ip}/{prefix} to {POD_INTERFACE}")))?;
            set(
                &handle,
                LinkUnspec::new_with_index(index).up().build(),
                format!("setting {POD_INTERFACE} up"),
            )
            .await?;
            handle
                .route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(index)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("adding the default route via {gw}")))
        })?;
        Ok(Attachment {
            host_interface: host,
            ip,
            gateway: gw,
        })
    }

    /// Removes the pod's veth pair, if it is still there (it goes by itself with the pod's
    /// network namespace).
    pub fn detach(&self, key: &str) -> Result<(), NetError> {
        let host = host_interface(key);
        in_netns(self.host_ns.as_deref(), |handle| async move {
            if let Some(l) = link_by_name(&handle, &host).await? {
                match handle.link().del(l.header.index).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                    Err(e) => return Err(netlink(format!("removing {host}"))(e)),
                }
            }
            Ok(())
        })
    }
}
