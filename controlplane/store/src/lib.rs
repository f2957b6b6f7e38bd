//! strake-store owns the cluster store ("our etcd"): an openraft node whose log, vote and MVCC
//! keyspace (revisions, history, watches, compaction, snapshots) live in redb files in one data dir.
//! It must not touch anything outside its data dir, and knows nothing of Kubernetes objects.

mod backup;
mod config;
mod db;
mod election;
mod error;
mod forward;
mod keyspace;
pub mod linearizability;
mod log_store;
mod membership;
mod mvcc;
mod peer_tls;
mod propose;
mod raft_types;
mod read_index;
mod state_machine;
mod store;
mod transport;
mod types;
mod wal;
mod watch;

pub use backup::{BackupContents, BackupInfo, read_backup};
pub use config::{DEFAULT_DISK_RESERVE, DEFAULT_SNAPSHOT_EVERY, StoreConfig};
pub use error::StoreError;
pub use membership::Members;
pub use peer_tls::{PEER_CERT_LIFETIME, PEER_GROUP, PeerTls, peer_name};
pub use store::Store;
pub use transport::{MAX_BODY, TransportError};
pub use types::{
    CmpOp, Compare, EventKind, KeyValue, MAX_KEY_SIZE, MAX_TXN_BYTES, MAX_TXN_OPS, MAX_VALUE_SIZE,
    Op, OpResult, RangeRequest, RangeResponse, Txn, TxnResponse, WatchEvent, WatchRequest,
};
pub use watch::WatchStream;

/// The raft plumbing: type configuration, storage and network seams. The API server does not
/// need these; they are public for the storage conformance suite and transport tests.
pub mod raft {
    use std::path::Path;
    use std::sync::Arc;

    pub use crate::log_store::LogStore;
    pub use crate::raft_types::{Command, CommandResponse, NodeId, TypeConfig};
    pub use crate::state_machine::{SnapshotBuilder, StateMachine};
    pub use crate::transport::client::{NetworkFactory, NoPeerTransport, PeerConnection};

    use crate::error::StoreError;

    /// Opens (or creates) the raft log store and state machine of a data directory without
    /// starting raft.
    pub fn open_storage(
        data_dir: &Path,
        node_id: NodeId,
    ) -> Result<(LogStore, StateMachine), StoreError> {
        let data = crate::db::open_data_dir(data_dir, node_id)?;
        let state = Arc::new(data.state);
        let meta = crate::keyspace::read_meta(&state)?;
        let shared = crate::state_machine::Shared::new(state, meta.revision);
        let log = LogStore::open(
            node_id,
            Arc::new(data.log),
            &data.wal,
            crate::config::DEFAULT_DISK_RESERVE,
        )?;
        let durable = log.durable();
        Ok((log, StateMachine::new(shared, durable)))
    }
}

#[cfg(test)]
mod tests {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + 'static>() {}
    fn error_for_anyhow<T: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn handles_can_cross_tasks() {
        shareable::<crate::Store>();
        sendable::<crate::WatchStream>();
        error_for_anyhow::<crate::StoreError>();
    }
}
