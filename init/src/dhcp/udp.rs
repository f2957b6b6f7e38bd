//! The real DHCP transport: a UDP socket on 0.0.0.0:68 bound to one interface with
//! SO_BINDTODEVICE and allowed to broadcast. The interface needs no address: the kernel routes
//! limited broadcasts out of the bound device, and QEMU's user-mode DHCP server answers to the
//! broadcast address, which a socket bound to 0.0.0.0 receives.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

use super::client::DhcpTransport;

/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// UDP DHCP transport for one interface.
pub struct UdpTransport {
    socket: UdpSocket,
    server: SocketAddrV4,
}

impl UdpTransport {
    /// Binds 0.0.0.0:`port` on `ifname` (port 68 in production).
    pub fn bind(ifname: &str, port: u16) -> std::io::Result<UdpTransport> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))?;
        socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(0, 0, 0, 0, port),
        )?;
        Ok(UdpTransport {
            socket: UdpSocket::from(fd),
            server: SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
        })
    }

    /// Sends to `server` instead of the broadcast address on port 67 (tests).
    pub fn with_server(mut self, server: SocketAddrV4) -> Self {
        self.server = server;
        self
    }
}

impl DhcpTransport for UdpTransport {
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(packet, self.server).map(drop)
    }

    fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 1500];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _from)) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}
