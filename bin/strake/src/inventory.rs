//! What machined reports of the machine it runs on: disks from sysfs, addresses from the
//! kernel's interface list, routes from `/proc/net/route` and `/proc/net/ipv6_route`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use strake_machineapi::{AddressView, DiskView, PartitionView, RouteView, SocketView};

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

/// A socket address in `/proc/net/{tcp,udp}[6]`'s hex: the address as native-endian 32-bit
/// words, then the port big-endian.
fn proc_socket(text: &str) -> Option<String> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match addr.len() {
        8 => Some(format!("{}:{port}", Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

const TCP_STATES: [&str; 12] = [
    "",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// The sockets in one `/proc/net/<protocol>` table, with the socket inode each belongs to.
pub fn sockets(protocol: &str, text: &str) -> Vec<(u64, SocketView)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let state = usize::from_str_radix(f.get(3)?, 16).ok()?;
            let state = if protocol.starts_with("tcp") {
                TCP_STATES
                    .get(state)
                    .copied()
                    .unwrap_or("UNKNOWN")
                    .to_owned()
            } else if state == 7 {
                // UDP has no connection states; 7 is an unconnected socket.
                String::new()
            } else {
                "CONNECTED".to_owned()
            };
            Some((
                f.get(9)?.parse().ok()?,
                SocketView {
                    protocol: protocol.to_owned(),
                    local: proc_socket(f.get(1)?)?,
                    remote: proc_socket(f.get(2)?)?,
                    state,
                    process: None,
                },
            ))
        })
        .collect()
}

/// Socket inode → `pid/name` of a process holding it, from `/proc/*/fd`.
pub fn socket_owners(root: &Path) -> std::collections::HashMap<u64, String> {
    let mut owners = std::collections::HashMap::new();
    let proc = root.join("proc");
    for entry in std::fs::read_dir(&proc).into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        for fd in std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
            {
                owners
                    .entry(inode)
                    .or_insert_with(|| format!("{pid}/{name}"));
            }
        }
    }
    owners
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
    fn sockets_are_read_from_proc_with_their_states() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0\n\
   1: 0F02000A:C350 0202000A:D431 01 00000000:00000000 02:000A7C8F 00000000     0        0 1240 2 0 20 4 28 10 -1\n";
        let s = sockets("tcp", tcp);
        assert_eq!(s[0].0, 1234);
        assert_eq!(
            s[0].1,
            SocketView {
                protocol: "tcp".into(),
                local: "0.0.0.0:50000".into(),
                remote: "0.0.0.0:0".into(),
                state: "LISTEN".into(),
                process: None,
            }
        );
        assert_eq!(
            (
                s[1].1.local.as_str(),
                s[1].1.remote.as_str(),
                s[1].1.state.as_str()
            ),
            ("10.0.2.15:50000", "10.0.2.2:54321", "ESTABLISHED")
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:1A0B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1\n";
        assert_eq!(sockets("tcp6", tcp6)[0].1.local, "[::1]:6667");
        let udp = "  sl  local_address rem_address   st\n\
  1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2\n";
        let u = sockets("udp", udp);
        assert_eq!(
            (u[0].1.local.as_str(), u[0].1.state.as_str()),
            ("0.0.0.0:68", "")
        );
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
