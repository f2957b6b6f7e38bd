//! strake-dns: the cluster's DNS server, built into every node's agent (no CoreDNS).
//!
//! [`Zone`] answers the cluster's names (Services, their endpoints and ports, pods, reverse
//! lookups) from a snapshot of the cluster the agent keeps current; [`Server`] serves it over
//! UDP and TCP, truncating UDP answers that do not fit (clients retry over TCP), forwarding
//! every other name to the node's resolvers (over TCP when their UDP answer is truncated), and
//! caching forwarded answers, negative ones included, for their TTL (at most 30 s). The wire
//! format is hickory-proto's.

mod server;
mod zone;

pub use server::{Server, Upstreams};
pub use zone::{Answer, Endpoint, Port, Service, TTL, Zone};

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
