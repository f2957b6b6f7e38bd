//! The raft peer transport: HTTP/2 over mutual TLS with postcard bodies. Each node runs one
//! [`server`] for its peers and opens one [`client`] connection per peer it replicates to.
//! A peer is who its certificate says (`strake-store-<id>`), never what an RPC claims.

pub(crate) mod client;
pub(crate) mod server;

use std::time::Duration;

/// The largest request or response body either side accepts (a snapshot chunk, a batch of
/// log entries, or an answer).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Above this many encoded bytes an append-entries batch is split (openraft retries with
/// fewer entries), so one RPC stays well inside the replication timeout.
pub(crate) const APPEND_BUDGET: usize = 8 * 1024 * 1024;
/// HTTP/2 flow-control windows: large enough that a snapshot chunk is not throttled.
pub(crate) const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// HTTP/2 pings on idle peer connections, so a half-open connection (a peer that vanished
/// behind a partition) is closed instead of lingering.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake (server side) that takes longer than this is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gives a new connection (TCP, TLS and HTTP/2 handshakes) before giving it
/// up: a peer that is down never answers the SYN, and the next try must not wait behind a
/// connect that would retry it for minutes once the peer is back.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const PATH_APPEND: &str = "/raft/v1/append-entries";
pub(crate) const PATH_VOTE: &str = "/raft/v1/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/v1/install-snapshot";
/// A follower's write or read-index request for the leader (see [`crate::forward`]).
pub(crate) const PATH_FORWARD: &str = "/store/v1/forward";
pub(crate) const CONTENT_TYPE: &str = "application/postcard";

/// Why a peer RPC failed below raft.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer address {addr:?} is not an ip:port: {problem}")]
    BadAddr { addr: String, problem: String },

    #[error("cannot connect to raft peer {target} at {addr}: {source}")]
    Connect {
        target: u64,
        addr: String,
        source: std::io::Error,
    },

    #[error("TLS handshake with raft peer {target} at {addr} failed: {source}")]
    Handshake {
        target: u64,
        addr: String,
        source: std::io::Error,
    },

    #[error("HTTP/2 to raft peer {target} at {addr}: {source}")]
    Http {
        target: u64,
        addr: String,
        source: hyper::Error,
    },

    #[error("{what} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },

    #[error("reading the answer of raft peer {target}: {problem}")]
    Body { target: u64, problem: String },

    #[error("raft peer {target} refused the RPC ({status}): {message}")]
    Refused {
        target: u64,
        status: http::StatusCode,
        message: String,
    },

    #[error("cannot encode or decode {what}: {source}")]
    Codec {
        what: &'static str,
        source: postcard::Error,
    },

    #[error("raft peer {target} did not answer within {timeout:?}")]
    Timeout { target: u64, timeout: Duration },
}

impl TransportError {
    /// Whether the peer could not be reached at all (as opposed to answering badly): openraft
    /// backs off from unreachable peers.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::Handshake { .. }
                | TransportError::BadAddr { .. }
        )
    }
}
