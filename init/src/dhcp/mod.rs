//! DHCPv4: pure wire format (`packet`), the client exchange over a transport (`client`) and the
//! real UDP transport (`udp`).

pub mod client;
pub mod packet;
pub mod udp;

pub use client::{DhcpError, DhcpTransport, Lease, RetryPolicy, obtain_lease};
pub use udp::UdpTransport;
