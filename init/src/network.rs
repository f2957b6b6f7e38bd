//! Network bring-up: loopback, the first ethernet interface, then static configuration from the
//! command line or a DHCP lease; `/etc/resolv.conf`, `/etc/hosts` and `/run/strake/network.json`.
//! The rtnetlink implementation of [`NetConfigurator`] runs on a current-thread tokio runtime built
//! for this phase only (init's supervisor never runs tokio).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};

use crate::config::{IpConfig, StaticIp};
use crate::dhcp::{self, DhcpError, DhcpTransport, Lease, RetryPolicy, UdpTransport};
use crate::mounts::host_path;
use crate::sys::{Link, NetConfigurator};

/// Errors of the network phase.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink {op}: {message}")]
    Netlink { op: &'static str, message: String },
    #[error("starting the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no ethernet interface appeared within {0:?} (is the NIC driver module loaded?)")]
    NoInterface(Duration),
    #[error("interface {name} named by strake.ip did not appear within {waited:?}")]
    InterfaceNotFound { name: String, waited: Duration },
    #[error("interface {0} has no MAC address, cannot run DHCP")]
    NoMac(String),
    #[error("opening the DHCP socket on {ifname}: {source}")]
    DhcpSocket {
        ifname: String,
        source: std::io::Error,
    },
    #[error("DHCP on {ifname}: {source}")]
    Dhcp { ifname: String, source: DhcpError },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The configuration that was applied, written to `/run/strake/network.json` for the services.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetState {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// `dhcp` or `static`.
    pub source: &'static str,
    pub lease: Option<Lease>,
}

/// Where the applied network state is published.
pub const NETWORK_STATE_PATH: &str = "/run/strake/network.json";

/// Picks the interface to configure: the named one, or the ethernet link with the lowest index.
pub fn pick_interface<'a>(links: &'a [Link], wanted: Option<&str>) -> Option<&'a Link> {
    match wanted {
        Some(name) => links.iter().find(|l| l.name == name),
        None => links
            .iter()
            .filter(|l| l.ethernet && !l.loopback)
            .min_by_key(|l| l.index),
    }
}

/// Polls the link list until the wanted interface shows up (NIC drivers probe asynchronously
/// after their module loads).
pub fn wait_for_interface(
    net: &mut dyn NetConfigurator,
    wanted: Option<&str>,
    timeout: Duration,
    poll: Duration,
) -> Result<Link, NetError> {
    let start = Instant::now();
    loop {
        let links = net.links()?;
        if let Some(link) = pick_interface(&links, wanted) {
            return Ok(link.clone());
        }
        if start.elapsed() >= timeout {
            return Err(match wanted {
                Some(name) => NetError::InterfaceNotFound {
                    name: name.into(),
                    waited: timeout,
                },
                None => NetError::NoInterface(timeout),
            });
        }
        std::thread::sleep(poll);
    }
}

/// `strake-<last three MAC bytes in hex>`, e.g. `strake-123456`.
pub fn default_hostname(mac: Option<[u8; 6]>) -> String {
    let m = mac.unwrap_or_default();
    format!("strake-{:02x}{:02x}{:02x}", m[3], m[4], m[5])
}

/// Brings `lo` up with 127.0.0.1/8.
pub fn configure_loopback(net: &mut dyn NetConfigurator) -> Result<(), NetError> {
    let links = net.links()?;
    let lo = links
        .iter()
        .find(|l| l.loopback)
        .ok_or_else(|| NetError::Netlink {
            op: "find lo",
            message: "no loopback interface".into(),
        })?;
    net.set_up(lo.index)?;
    net.add_address(lo.index, Ipv4Addr::LOCALHOST, 8)
}

/// Configures `nic` according to `ip`: static, or by DHCP through `transport` (opened by the
/// configurator when `None`).
pub fn configure_interface(
    net: &mut dyn NetConfigurator,
    nic: &Link,
    ip: &IpConfig,
    hostname: &str,
    policy: RetryPolicy,
    next_xid: &mut dyn FnMut() -> u32,
) -> Result<NetState, NetError> {
    net.set_up(nic.index)?;
    let state = match ip {
        IpConfig::Static(s) => static_state(nic, s),
        IpConfig::Dhcp => {
            let mac = nic.mac.ok_or_else(|| NetError::NoMac(nic.name.clone()))?;
            let mut transport: Box<dyn DhcpTransport> = net.dhcp_transport(nic)?;
            let lease =
                dhcp::obtain_lease(transport.as_mut(), mac, Some(hostname), policy, next_xid)
                    .map_err(|source| NetError::Dhcp {
                        ifname: nic.name.clone(),
                        source,
                    })?;
            tracing::info!(
                target: "strake_init::network",
                "lease {}/{} gateway {} dns {:?} for {}s from {}",
                lease.address,
                lease.prefix,
                lease.gateway.map_or_else(|| "none".to_string(), |g| g.to_string()),
                lease.dns,
                lease.lease_seconds,
                lease.server
            );
            NetState {
                interface: nic.name.clone(),
                address: lease.address,
                prefix: lease.prefix,
                gateway: lease.gateway,
                dns: lease.dns.clone(),
                source: "dhcp",
                lease: Some(lease),
            }
        }
    };
    net.add_address(nic.index, state.address, state.prefix)?;
    if let Some(gw) = state.gateway {
        net.add_default_route(nic.index, gw)?;
    }
    Ok(state)
}

fn static_state(nic: &Link, s: &StaticIp) -> NetState {
    NetState {
        interface: nic.name.clone(),
        address: s.address,
        prefix: s.prefix,
        gateway: s.gateway,
        dns: s.dns.clone(),
        source: "static",
        lease: None,
    }
}

/// The contents of `/etc/resolv.conf`.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by strake init\n");
    for d in dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// The contents of `/etc/hosts`.
pub fn hosts_file(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    if let Some(a) = address {
        s.push_str(&format!("{a}\t{hostname}\n"));
    } else {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Writes resolv.conf, hosts and the published network state under `root`.
pub fn write_files(root: &Path, hostname: &str, state: &NetState) -> Result<(), NetError> {
    let write = |abs: &str, data: &[u8]| {
        let path = host_path(root, abs);
        let err = |source| NetError::Write {
            path: abs.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&path, data).map_err(err)
    };
    write("/etc/resolv.conf", resolv_conf(&state.dns).as_bytes())?;
    write(
        "/etc/hosts",
        hosts_file(hostname, Some(state.address)).as_bytes(),
    )?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| NetError::Write {
        path: NETWORK_STATE_PATH.into(),
        source: std::io::Error::other(e),
    })?;
    write(NETWORK_STATE_PATH, &json)
}

/// A random transaction id. Read from `/proc/sys/kernel/random/uuid`, which never waits: early
/// in boot `/dev/urandom` first spends about a second generating jitter entropy under TCG. Falls
/// back to the clock mixed with the MAC address.
pub fn random_u32(mac: [u8; 6]) -> u32 {
    if let Ok(uuid) = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        && let Some(x) = uuid.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok())
    {
        return x;
    }
    let (s, ns) = crate::console::monotonic_now();
    let m = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    (ns ^ m).wrapping_mul(0x9e37_79b9) ^ u32::try_from(s & 0xffff_ffff).unwrap_or_default()
}

/// [`NetConfigurator`] over rtnetlink.
pub struct RtNetlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

fn nl_err(op: &'static str) -> impl Fn(rtnetlink::Error) -> NetError {
    move |e| NetError::Netlink {
        op,
        message: e.to_string(),
    }
}

impl RtNetlink {
    /// Opens a netlink connection in the calling thread's network namespace.
    pub fn new() -> Result<RtNetlink, NetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetError::Runtime)?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Runtime)?;
            tokio::spawn(connection);
            Ok::<_, NetError>(handle)
        })?;
        Ok(RtNetlink { runtime, handle })
    }
}

fn link_from(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    let mut virtual_kind = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                virtual_kind |= infos.iter().any(|i| matches!(i, LinkInfo::Kind(_)));
            }
            _ => {}
        }
    }
    let loopback = msg.header.flags.contains(LinkFlags::Loopback);
    Link {
        index: msg.header.index,
        name,
        mac,
        loopback,
        ethernet: msg.header.link_layer_type == LinkLayerType::Ether && !virtual_kind && !loopback,
    }
}

impl NetConfigurator for RtNetlink {
    fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let handle = self.handle.clone();
        self.runtime.block_on(async move {
            let msgs: Vec<LinkMessage> = handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("list links"))?;
            Ok(msgs.iter().map(link_from).collect())
        })
    }

    fn set_up(&mut self, index: u32) -> Result<(), NetError> {
        let handle = self.handle.clone();
        self.runtime.block_on(async move {
            let msg = rtnetlink::LinkUnspec::new_with_index(index).up().build();
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl_err("set link up"))
        })
    }

    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let handle = self.handle.clone();
        self.runtime.block_on(async move {
            handle
                .address()
                .add(index, address.into(), prefix)
                .replace()
                .execute()
                .await
                .map_err(nl_err("add address"))
        })
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetError> {
        let handle = self.handle.clone();
        self.runtime.block_on(async move {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl_err("add default route"))
        })
    }

    fn dhcp_transport(&mut self, link: &Link) -> Result<Box<dyn DhcpTransport>, NetError> {
        let t = UdpTransport::bind(&link.name, dhcp::udp::CLIENT_PORT).map_err(|source| {
            NetError::DhcpSocket {
                ifname: link.name.clone(),
                source,
            }
        })?;
        Ok(Box::new(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;

    fn eth(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            loopback: false,
            ethernet: true,
        }
    }

    #[test]
    fn picks_lowest_ethernet_or_named() {
        let lo = Link {
            index: 1,
            name: "lo".into(),
            mac: None,
            loopback: true,
            ethernet: false,
        };
        let links = vec![lo, eth(3, "eth1"), eth(2, "eth0")];
        assert_eq!(
            pick_interface(&links, None).map(|l| l.name.as_str()),
            Some("eth0")
        );
        assert_eq!(
            pick_interface(&links, Some("eth1")).map(|l| l.index),
            Some(3)
        );
        assert!(pick_interface(&links[..1], None).is_none());
    }

    #[test]
    fn waits_for_the_nic_to_appear() {
        let fake = FakeKernel::with_nic();
        fake.state().links_hidden_for = 3;
        let mut net = fake.clone();
        let link = wait_for_interface(
            &mut net,
            None,
            Duration::from_secs(5),
            Duration::from_millis(1),
        )
        .expect("nic");
        assert_eq!(link.name, "eth0");
        assert_eq!(fake.state().link_queries, 4);
        let err = wait_for_interface(
            &mut net,
            Some("eth9"),
            Duration::from_millis(20),
            Duration::from_millis(1),
        )
        .expect_err("missing");
        assert!(err.to_string().contains("eth9"), "{err}");
    }

    #[test]
    fn transaction_ids_vary() {
        let a = random_u32([0; 6]);
        let distinct = (0..8)
            .map(|_| random_u32([0; 6]))
            .filter(|b| *b != a)
            .count();
        assert!(distinct > 0);
    }

    #[test]
    fn hostname_from_mac() {
        assert_eq!(
            default_hostname(Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            "strake-123456"
        );
    }

    #[test]
    fn static_configuration_applies_address_and_route() {
        let fake = FakeKernel::with_nic();
        let mut net = fake.clone();
        let ip = IpConfig::Static(StaticIp {
            address: Ipv4Addr::new(192, 168, 7, 2),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 7, 1)),
            interface: None,
            dns: vec![Ipv4Addr::new(9, 9, 9, 9)],
        });
        let nic = eth(2, "eth0");
        let state =
            configure_interface(&mut net, &nic, &ip, "h", RetryPolicy::default(), &mut || 1)
                .expect("ok");
        assert_eq!(state.source, "static");
        let s = fake.state();
        assert_eq!(s.ups, [2]);
        assert_eq!(s.addresses, [(2, Ipv4Addr::new(192, 168, 7, 2), 24)]);
        assert_eq!(s.routes, [(2, Ipv4Addr::new(192, 168, 7, 1))]);
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = NetState {
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: None,
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            source: "dhcp",
            lease: None,
        };
        write_files(dir.path(), "n1", &state).expect("write");
        let resolv = std::fs::read_to_string(dir.path().join("etc/resolv.conf")).expect("resolv");
        assert!(resolv.ends_with("nameserver 10.0.2.3\n"));
        let hosts = std::fs::read_to_string(dir.path().join("etc/hosts")).expect("hosts");
        assert!(hosts.contains("10.0.2.15\tn1\n"));
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("run/strake/network.json")).expect("json"),
        )
        .expect("parse");
        assert_eq!(json["address"], "10.0.2.15");
    }

    /// The real rtnetlink configurator, in a network namespace private to this test thread.
    #[test]
    fn rtnetlink_in_a_private_netns() {
        let result = std::thread::spawn(|| -> Result<(), String> {
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                eprintln!("skipping: cannot create a network namespace (not root?)");
                return Ok(());
            }
            let mut net = RtNetlink::new().map_err(|e| e.to_string())?;
            configure_loopback(&mut net).map_err(|e| e.to_string())?;
            // Idempotent: a second run must not fail on the existing address.
            configure_loopback(&mut net).map_err(|e| e.to_string())?;
            let links = net.links().map_err(|e| e.to_string())?;
            let lo = links.iter().find(|l| l.name == "lo").ok_or("no lo")?;
            if !lo.loopback || lo.ethernet {
                return Err(format!("lo misclassified: {lo:?}"));
            }
            if pick_interface(&links, None).is_some() {
                return Err("a fresh netns has no ethernet interface".into());
            }
            std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("lo not usable: {e}"))?;
            Ok(())
        })
        .join()
        .expect("thread");
        result.expect("netns test");
    }
}
