//! A shared virtual IP held by one node at a time: added to an interface as a /32, announced
//! with gratuitous ARP so the L2 segment's caches move to this node's MAC, and removed when
//! the node stops holding it. Who holds it is the caller's decision (the control plane gives
//! it to the store's leader).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;

use crate::{NetError, in_netns, netlink};

/// The index of link `iface`.
fn index_of(iface: &str) -> Result<u32, NetError> {
    nix::net::if_::if_nametoindex(iface).map_err(|errno| NetError::Netlink {
        op: format!("finding the link {iface}"),
        message: errno.desc().to_string(),
    })
}

/// Adds `ip`/32 to `iface` (no error if it is there already).
pub fn add(iface: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    let index = index_of(iface)?;
    in_netns(None, |handle| async move {
        handle
            .address()
            .add(index, ip.into(), 32)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("adding the virtual IP {ip}/32 to {iface}")))
    })
}

/// Removes `ip` from `iface` (no error if it is not there).
pub fn remove(iface: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    use futures::TryStreamExt as _;
    let index = index_of(iface)?;
    in_netns(None, |handle| async move {
        let mut addrs = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip.into())
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(netlink(format!("listing {iface}'s addresses")))?
        {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(netlink(format!(
                    "removing the virtual IP {ip} from {iface}"
                )))?;
        }
        Ok(())
    })
}

/// The gratuitous ARP announcing that `ip` is at `mac` (RFC 5227's announcement: a broadcast
/// request whose sender and target address are both `ip`).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The MAC address of `iface`.
fn mac_of(iface: &str) -> Result<[u8; 6], NetError> {
    let path = PathBuf::from(format!("/sys/class/net/{iface}/address"));
    let text = std::fs::read_to_string(&path).map_err(|source| NetError::Io {
        op: "reading",
        path: path.clone(),
        source,
    })?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::Thread(format!(
            "{} holds {:?}, not a MAC address",
            path.display(),
            text.trim()
        )));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| {
            NetError::Thread(format!(
                "{} holds {:?}, not a MAC address",
                path.display(),
                text.trim()
            ))
        })?;
    }
    Ok(mac)
}

/// Broadcasts a gratuitous ARP for `ip` from `iface`.
pub fn announce(iface: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    let index = index_of(iface)?;
    let mac = mac_of(iface)?;
    let frame = garp_frame(mac, ip);
    let failed = |what: &str| {
        let err = std::io::Error::last_os_error();
        NetError::Thread(format!("{what} to announce {ip} on {iface}: {err}"))
    };
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.into(),
        )
    };
    if fd < 0 {
        return Err(failed("opening a packet socket"));
    }
    // SAFETY: fd is a freshly opened socket nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and address outlive the call, and their lengths are passed with them.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(failed("sending a gratuitous ARP"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_a_broadcast_request_for_the_address_itself() {
        let mac = [0x52, 0x54, 0, 0x80, 0, 0x11];
        let f = garp_frame(mac, Ipv4Addr::new(192, 168, 80, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[192, 168, 80, 100], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &[192, 168, 80, 100], "target IP");
    }
}
