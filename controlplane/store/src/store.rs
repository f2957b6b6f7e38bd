//! [`Store`]: the handle the control plane uses — open, read, write, watch, compact, shut down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};

use crate::db::{DbCell, open_data_dir};
use crate::error::StoreError;
use crate::keyspace;
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::raft_types::{Command, CommandResponse, NodeId, TypeConfig};
use crate::state_machine::{Shared, StateMachine, WatchMessage};
use crate::types::{
    KeyValue, Op, OpResult, RangeRequest, RangeResponse, Txn, TxnResponse, WatchRequest,
};
use crate::watch::WatchStream;

/// How long [`Store::open`] waits for the node to become leader and catch up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Raft log entries between snapshots; the log is purged up to the snapshot afterwards.
const SNAPSHOT_EVERY: u64 = 10_000;

/// Where and as whom the store runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// This node's raft id; must stay the same for the life of `data_dir`.
    pub node_id: NodeId,
    /// Directory holding `raft-log.redb` and `state.redb`; created if missing.
    pub data_dir: PathBuf,
    /// The other voters as (node id, peer address). Empty = a single-voter cluster.
    pub peers: Vec<(NodeId, String)>,
}

impl StoreConfig {
    /// A single-voter store.
    pub fn single(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            peers: Vec::new(),
        }
    }
}

/// The cluster store: a raft-replicated MVCC keyspace. Clones share one raft node.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    log_db: Arc<DbCell>,
}

impl Drop for Inner {
    /// The last handle dropped without [`Store::shutdown`]: stop raft and release the files in
    /// the background, so the data directory can be reopened shortly after.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let raft = self.raft.clone();
        let shared = self.shared.clone();
        let log_db = self.log_db.clone();
        runtime.spawn(async move {
            if let Err(err) = raft.shutdown().await {
                tracing::warn!(error = %err, "raft task failed while shutting down a dropped store");
            }
            let _ = shared.events.send(WatchMessage::Closed);
            for result in [log_db.close(), shared.db.close()] {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "closing a dropped store's files");
                }
            }
        });
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.inner.node_id)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

fn raft_config() -> Result<Config, StoreError> {
    Config {
        cluster_name: "strake".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 1000,
        ..Config::default()
    }
    .validate()
    .map_err(|e| StoreError::Config {
        problem: e.to_string(),
    })
}

fn read_error(err: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> StoreError {
    match err {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
            StoreError::NoQuorum(Box::new(q))
        }
        RaftError::Fatal(f) => f.into(),
    }
}

fn write_error(err: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> StoreError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => StoreError::Internal(
            format!("a client write failed with a membership error: {e}"),
        ),
        RaftError::Fatal(f) => f.into(),
    }
}

impl Store {
    /// Opens the store in `cfg.data_dir`, creating and initializing a fresh single-voter cluster
    /// if the directory is new, and waits until this node leads and has applied its log.
    ///
    /// Fails, naming the file, if a data file is missing, empty, truncated or corrupt, or belongs
    /// to another node id; never reinitializes over existing data.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let foreign_peers = cfg
            .peers
            .iter()
            .filter(|(id, _)| *id != cfg.node_id)
            .count();
        if foreign_peers > 0 {
            return Err(StoreError::PeersUnsupported {
                peers: foreign_peers,
            });
        }
        let config = Arc::new(raft_config()?);
        let dir = cfg.data_dir.clone();
        let node_id = cfg.node_id;
        let data = tokio::task::spawn_blocking(move || open_data_dir(&dir, node_id))
            .await
            .map_err(|e| {
                StoreError::Internal(format!("opening the data directory panicked: {e}"))
            })??;
        let log_db = Arc::new(data.log);
        let state_db = Arc::new(data.state);
        let close_files = |err: StoreError| {
            let _ = log_db.close();
            let _ = state_db.close();
            err
        };
        let meta = keyspace::read_meta(&state_db).map_err(close_files)?;
        let shared = Shared::new(state_db.clone(), meta.revision);
        let raft = Raft::new(
            node_id,
            config,
            NetworkFactory,
            LogStore::new(log_db.clone()),
            StateMachine::new(shared.clone()),
        )
        .await
        .map_err(|e| close_files(e.into()))?;
        let store = Store {
            inner: Arc::new(Inner {
                node_id,
                raft,
                shared,
                log_db: log_db.clone(),
            }),
        };
        match store.become_ready().await {
            Ok(()) => Ok(store),
            Err(err) => {
                if let Err(close_err) = store.close().await {
                    tracing::warn!(error = %close_err, "closing the store after a failed open");
                }
                Err(err)
            }
        }
    }

    async fn become_ready(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let me = self.inner.node_id;
        if raft.is_initialized().await? {
            let voters: Vec<NodeId> = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            if voters == [me] {
                // A lone voter need not sit out an election timeout.
                raft.trigger().elect().await?;
            }
        } else {
            let members = BTreeMap::from([(me, BasicNode::default())]);
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(RaftError::APIError(err)) => return Err(StoreError::Initialize(Box::new(err))),
                Err(RaftError::Fatal(f)) => return Err(f.into()),
            }
        }
        raft.wait(Some(STARTUP_TIMEOUT))
            .metrics(
                |m| m.state == ServerState::Leader && m.current_leader == Some(me),
                "become leader",
            )
            .await
            .map_err(|e| StoreError::StartupTimeout {
                waited: STARTUP_TIMEOUT,
                detail: e.to_string(),
            })?;
        raft.ensure_linearizable().await.map_err(read_error)?;
        Ok(())
    }

    /// This node's raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Latest applied revision on this node.
    pub fn revision(&self) -> u64 {
        self.inner.shared.revision.load(Ordering::Acquire)
    }

    /// Linearizable read of one key; returns it (if present) and the header revision.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), StoreError> {
        self.inner
            .raft
            .ensure_linearizable()
            .await
            .map_err(read_error)?;
        keyspace::get(&self.inner.shared.db, key)
    }

    /// Linearizable range read; see [`RangeRequest`].
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.inner
            .raft
            .ensure_linearizable()
            .await
            .map_err(read_error)?;
        keyspace::range(&self.inner.shared.db, &req)
    }

    /// Runs a transaction through raft. A failed compare is not an error: `succeeded` is false.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        let response = self
            .inner
            .raft
            .client_write(Command::Txn(txn))
            .await
            .map_err(write_error)?;
        match response.data {
            CommandResponse::Txn(r) => Ok(r),
            other => Err(StoreError::Internal(format!(
                "a txn command was answered with {other:?}"
            ))),
        }
    }

    /// Puts one key; returns the new revision.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64, StoreError> {
        let response = self
            .txn(Txn {
                success: vec![Op::Put { key, value }],
                ..Txn::default()
            })
            .await?;
        Ok(response.revision)
    }

    /// Deletes one key; returns its previous state, `None` if it did not exist.
    pub async fn delete(&self, key: Vec<u8>) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .txn(Txn {
                success: vec![Op::Delete { key }],
                ..Txn::default()
            })
            .await?;
        match response.results.into_iter().next() {
            Some(OpResult::Delete { prev }) => Ok(prev),
            other => Err(StoreError::Internal(format!(
                "a delete was answered with {other:?}"
            ))),
        }
    }

    /// Watches changes under `req.prefix` from `req.start_revision` (0 = from now on).
    /// Fails right away with [`StoreError::Compacted`] if the start revision's history is gone.
    pub fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        if req.start_revision != 0 {
            let meta = keyspace::read_meta(&self.inner.shared.db)?;
            if req.start_revision < meta.compacted {
                return Err(StoreError::Compacted {
                    requested: req.start_revision,
                    compacted: meta.compacted,
                });
            }
        } else {
            self.inner.shared.db.with(|_| Ok(()))?;
        }
        Ok(WatchStream::start(self.inner.shared.clone(), req))
    }

    /// Drops history older than `revision`: reads as of revisions below `revision - 1` and
    /// watches starting below `revision` then fail with [`StoreError::Compacted`]. Compacting
    /// to an already compacted revision does nothing.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let current = self.revision();
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let response = self
            .inner
            .raft
            .client_write(Command::Compact { revision })
            .await
            .map_err(write_error)?;
        match response.data {
            CommandResponse::Compacted { .. } => Ok(()),
            CommandResponse::CompactRejected { requested, current } => {
                Err(StoreError::FutureRevision { requested, current })
            }
            other => Err(StoreError::Internal(format!(
                "a compact command was answered with {other:?}"
            ))),
        }
    }

    /// Builds a snapshot of everything applied so far and purges the raft log up to it (raft
    /// also snapshots by itself every 10,000 entries, keeping the last 1,000 entries). Returns
    /// once the snapshot is stored and the log purged; returns the snapshot's last log index.
    pub async fn snapshot(&self) -> Result<Option<u64>, StoreError> {
        let raft = &self.inner.raft;
        let applied = raft.metrics().borrow().last_applied;
        raft.trigger().snapshot().await?;
        let metrics = raft
            .wait(Some(STARTUP_TIMEOUT))
            .metrics(|m| m.snapshot >= applied, "snapshot built")
            .await
            .map_err(|e| StoreError::Internal(format!("snapshot did not complete: {e}")))?;
        let Some(upto) = metrics.snapshot.map(|id| id.index) else {
            return Ok(None);
        };
        raft.trigger().purge_log(upto).await?;
        raft.wait(Some(STARTUP_TIMEOUT))
            .metrics(
                |m| m.purged.map(|id| id.index) >= Some(upto),
                "log purged up to the snapshot",
            )
            .await
            .map_err(|e| StoreError::Internal(format!("log purge did not complete: {e}")))?;
        Ok(Some(upto))
    }

    /// Stops raft, ends every watch with [`StoreError::Stopped`], and closes the data files so
    /// the directory can be reopened. Other clones fail with [`StoreError::Stopped`] afterwards.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.close().await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.raft.shutdown().await.map_err(|e| {
            StoreError::Internal(format!("raft task failed while shutting down: {e}"))
        })?;
        let _ = self.inner.shared.events.send(WatchMessage::Closed);
        self.inner.log_db.close()?;
        self.inner.shared.db.close()
    }
}
