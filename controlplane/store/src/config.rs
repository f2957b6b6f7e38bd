//! [`StoreConfig`]: where and as whom a store node runs, and its validation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::StoreError;
use crate::peer_tls::PeerTls;
use crate::raft_types::NodeId;

/// Raft log entries between automatic snapshots unless configured otherwise.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

/// Where and as whom the store runs.
///
/// A single voter needs only `node_id` and `data_dir` ([`StoreConfig::single`]). A clustered
/// node also needs `listen_addr` and `tls` ([`StoreConfig::cluster`]); `peers` then lists the
/// other initial voters, or stays empty for a lone voter that members join later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// This node's raft id; must stay the same for the life of `data_dir`.
    pub node_id: NodeId,
    /// Directory holding `raft-log.redb` and `state.redb`; created if missing.
    pub data_dir: PathBuf,
    /// The other initial voters as (node id, "ip:port" of their peer listener). Only used when
    /// the cluster is fresh: the lowest id of this node and its peers initializes it.
    pub peers: Vec<(NodeId, String)>,
    /// "ip:port" this node listens on for peers, which is also the address it gives them.
    /// Required with `peers`, `tls` or `join`.
    pub listen_addr: Option<String>,
    /// "ip:port" peers are given for this node when it initializes a cluster, if not
    /// `listen_addr` (when peers reach it through a proxy or a forwarded port).
    pub advertise_addr: Option<String>,
    /// Mutual-TLS material of the peer transport. Required with `listen_addr`.
    pub tls: Option<PeerTls>,
    /// This node joins an existing cluster: it never initializes one, and [`crate::Store::open`]
    /// returns as soon as it listens (a leader adds it with [`crate::Store::add_learner`]).
    pub join: bool,
    /// Raft log entries between automatic snapshots; the log is purged up to a tenth of this
    /// (at most 1,000 entries) behind each snapshot.
    pub snapshot_every: u64,
    /// Free space on the data directory's file system that log appends leave alone, so the
    /// state file can always apply what the log accepted. Below it, writes fail with
    /// [`crate::StoreError::DiskFull`] until space is freed; the store keeps running.
    pub disk_reserve_bytes: u64,
}

/// Default of [`StoreConfig::disk_reserve_bytes`].
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

impl StoreConfig {
    /// A single-voter store that does not listen for peers.
    pub fn single(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            peers: Vec::new(),
            listen_addr: None,
            advertise_addr: None,
            tls: None,
            join: false,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            disk_reserve_bytes: DEFAULT_DISK_RESERVE,
        }
    }

    /// A clustered node listening on `listen_addr`, with `peers` as the other initial voters.
    pub fn cluster(
        node_id: NodeId,
        data_dir: impl Into<PathBuf>,
        listen_addr: impl Into<String>,
        peers: Vec<(NodeId, String)>,
        tls: PeerTls,
    ) -> Self {
        Self {
            peers,
            listen_addr: Some(listen_addr.into()),
            tls: Some(tls),
            ..Self::single(node_id, data_dir)
        }
    }
}

/// What a validated clustered config boils down to.
#[derive(Debug, Clone)]
pub(crate) struct Networked {
    pub listen: SocketAddr,
    pub advertise: String,
    pub tls: PeerTls,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> StoreError {
    StoreError::InvalidConfig {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Parses an "ip:port" peer address (names are not resolved: no DNS on the control plane).
pub(crate) fn parse_peer_addr(addr: &str) -> Result<SocketAddr, String> {
    let socket: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an ip:port address ({e})"))?;
    if socket.port() == 0 {
        return Err(format!("{addr:?} has port 0; peers need a fixed port"));
    }
    if socket.ip().is_unspecified() {
        return Err(format!(
            "{addr:?} is an unspecified address; peers need one they can reach"
        ));
    }
    Ok(socket)
}

impl StoreConfig {
    /// Checks the config; returns the peer transport settings if the node is clustered.
    pub(crate) fn validate(&self) -> Result<Option<Networked>, StoreError> {
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", "must be at least 1"));
        }
        let mut seen = BTreeSet::new();
        for (i, (id, addr)) in self.peers.iter().enumerate() {
            let field = format!("peers[{i}]");
            if *id == self.node_id {
                return Err(invalid(
                    field,
                    format!("lists this node's own id {id}; list only the other members"),
                ));
            }
            if !seen.insert(*id) {
                return Err(invalid(field, format!("node {id} is listed twice")));
            }
            parse_peer_addr(addr).map_err(|problem| invalid(field, problem))?;
        }
        let needs_transport = !self.peers.is_empty() || self.join;
        let (listen, tls) = match (&self.listen_addr, &self.tls) {
            (None, _) if self.advertise_addr.is_some() => {
                return Err(invalid(
                    "advertise_addr",
                    "given without listen_addr: a node that does not listen cannot be reached",
                ));
            }
            (None, None) if needs_transport => {
                return Err(invalid(
                    "listen_addr",
                    "required when peers are listed or the node joins a cluster",
                ));
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(invalid(
                    "tls",
                    "required with listen_addr: the peer transport only speaks mutual TLS",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "listen_addr",
                    "required with tls: peers need an address to reach this node",
                ));
            }
            (Some(addr), Some(tls)) => (addr, tls.clone()),
        };
        let socket = parse_peer_addr(listen).map_err(|problem| invalid("listen_addr", problem))?;
        let advertise = match &self.advertise_addr {
            Some(addr) => {
                parse_peer_addr(addr).map_err(|problem| invalid("advertise_addr", problem))?;
                addr.clone()
            }
            None => listen.clone(),
        };
        tls.validate(self.node_id)?;
        Ok(Some(Networked {
            listen: socket,
            advertise,
            tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use strake_pki::ClusterCa;

    use super::*;

    fn field_of(err: StoreError) -> String {
        match err {
            StoreError::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other}"),
        }
    }

    #[test]
    fn clustered_configs_are_checked_field_by_field() {
        let ca = ClusterCa::generate("t").unwrap();
        let tls = PeerTls::issue(&ca, 1).unwrap();
        let good = StoreConfig::cluster(
            1,
            "/nonexistent",
            "127.0.0.1:2380",
            vec![(2, "127.0.0.1:2381".into())],
            tls.clone(),
        );
        let networked = good.validate().unwrap().unwrap();
        assert_eq!(networked.advertise, "127.0.0.1:2380");

        let mut own = good.clone();
        own.peers.push((1, "127.0.0.1:2382".into()));
        assert_eq!(field_of(own.validate().unwrap_err()), "peers[1]");

        let mut twice = good.clone();
        twice.peers.push((2, "127.0.0.1:2382".into()));
        assert_eq!(field_of(twice.validate().unwrap_err()), "peers[1]");

        let mut named = good.clone();
        named.peers[0].1 = "node-2:2380".into();
        assert_eq!(field_of(named.validate().unwrap_err()), "peers[0]");

        let mut no_tls = good.clone();
        no_tls.tls = None;
        assert_eq!(field_of(no_tls.validate().unwrap_err()), "tls");

        let mut no_listen = good.clone();
        no_listen.listen_addr = None;
        no_listen.tls = None;
        assert_eq!(field_of(no_listen.validate().unwrap_err()), "listen_addr");

        let mut port_zero = good.clone();
        port_zero.listen_addr = Some("127.0.0.1:0".into());
        assert_eq!(field_of(port_zero.validate().unwrap_err()), "listen_addr");

        let mut other_cert = good.clone();
        other_cert.tls = Some(PeerTls::issue(&ca, 3).unwrap());
        assert_eq!(field_of(other_cert.validate().unwrap_err()), "tls.cert_pem");

        let mut advertised = good.clone();
        advertised.advertise_addr = Some("127.0.0.1:3380".into());
        assert_eq!(
            advertised.validate().unwrap().unwrap().advertise,
            "127.0.0.1:3380"
        );
        advertised.advertise_addr = Some("0.0.0.0:3380".into());
        assert_eq!(
            field_of(advertised.validate().unwrap_err()),
            "advertise_addr"
        );

        let mut no_snapshots = good;
        no_snapshots.snapshot_every = 0;
        assert_eq!(
            field_of(no_snapshots.validate().unwrap_err()),
            "snapshot_every"
        );

        assert!(StoreConfig::single(1, "/x").validate().unwrap().is_none());
    }
}
