//! What machined reports of the machine it runs on: disks from sysfs, addresses from the
//! kernel's interface list, routes from `/proc/net/route` and `/proc/net/ipv6_route`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use strake_machineapi::{AddressView, DiskView, PartitionView, RouteView};

/// Every disk init would consider for STATE, with its partitions.
pub fn disks(root: &Path) -> Vec<DiskView> {
    strake_init::state::scan(root)
        .into_iter()
        .map(|disk| {
            let facts = strake_init::state::facts(root, &disk);
            DiskView {
                device: format!("/dev/{}", disk.name),
                bytes: facts.bytes,
                model: facts.model,
                serial: facts.serial,
                wwn: facts.wwn,
                partitions: disk
                    .partitions
                    .into_iter()
                    .map(|p| PartitionView {
                        device: format!("/dev/{}", p.name),
                        label: p.label,
                        // sysfs counts 512-byte sectors whatever the disk's own.
                        bytes: p.sectors * 512,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Every IPv4 and IPv6 address on every interface, loopback included.
pub fn addresses() -> std::io::Result<Vec<AddressView>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let entry = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let prefix = u32::from(m.ip()).count_ones();
            format!("{}/{prefix}", a.ip())
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let prefix = u128::from(m.ip()).count_ones();
            format!("{}/{prefix}", a.ip())
        } else {
            continue;
        };
        out.push(AddressView {
            interface: ifa.interface_name,
            address: entry,
        });
    }
    Ok(out)
}

/// The main table's IPv4 routes from `/proc/net/route` (addresses in the host's byte order,
/// as hex).
pub fn routes_v4(text: &str) -> Vec<RouteView> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (dest, gateway, metric, mask) =
                (hex(f.get(1)?)?, hex(f.get(2)?)?, f.get(6)?, hex(f.get(7)?)?);
            // The kernel prints the address's bytes as a native-endian u32.
            let ip = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
            Some(RouteView {
                destination: format!("{}/{}", ip(dest), mask.count_ones()),
                gateway: (gateway != 0).then(|| ip(gateway).to_string()),
                interface: f[0].to_owned(),
                metric: metric.parse().ok()?,
            })
        })
        .collect()
}

/// The main table's IPv6 routes from `/proc/net/ipv6_route` (local and multicast ones left out).
pub fn routes_v6(text: &str) -> Vec<RouteView> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[9] == "lo" {
                return None;
            }
            let addr = |s: &str| u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from);
            let dest = addr(f[0])?;
            if dest.segments()[0] & 0xff00 == 0xff00 {
                return None;
            }
            let prefix = u8::from_str_radix(f[1], 16).ok()?;
            let gateway = addr(f[4])?;
            Some(RouteView {
                destination: format!("{dest}/{prefix}"),
                gateway: (!gateway.is_unspecified()).then(|| gateway.to_string()),
                interface: f[9].to_owned(),
                metric: u32::from_str_radix(f[5], 16).ok()?,
            })
        })
        .collect()
}

/// The API server's URL on this node: its own address, port 6443.
pub fn api_url(addresses: &[IpAddr]) -> String {
    match addresses.first() {
        Some(IpAddr::V6(a)) => format!("https://[{a}]:6443"),
        Some(a) => format!("https://{a}:6443"),
        None => "https://127.0.0.1:6443".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_routes_are_read_from_proc() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
cni0\t0000F40A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        let routes = routes_v4(text);
        assert_eq!(
            routes[0],
            RouteView {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.0.2.2".into()),
                interface: "eth0".into(),
                metric: 0,
            }
        );
        assert_eq!(routes[1].destination, "10.0.2.0/24");
        assert_eq!(routes[1].gateway, None);
        assert_eq!(
            (routes[2].destination.as_str(), routes[2].metric),
            ("10.244.0.0/24", 100)
        );
    }

    #[test]
    fn ipv6_routes_are_read_from_proc_without_local_or_multicast_ones() {
        let text = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n\
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        let routes = routes_v6(text);
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(
            (routes[0].destination.as_str(), routes[0].metric),
            ("fe80::/64", 256)
        );
        assert_eq!(routes[1].destination, "::/0");
        assert_eq!(routes[1].gateway.as_deref(), Some("fe80::1"));
    }

    #[test]
    fn the_api_url_is_the_first_address() {
        assert_eq!(
            api_url(&["10.0.2.15".parse().unwrap()]),
            "https://10.0.2.15:6443"
        );
        assert_eq!(
            api_url(&["fd00::5".parse().unwrap()]),
            "https://[fd00::5]:6443"
        );
    }
}
