//! [`Store`]: the handle the control plane uses — open, read, write, watch, compact, shut down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};

use crate::config::{Networked, StoreConfig};
use crate::db::{DbCell, open_data_dir};
use crate::error::StoreError;
use crate::forward::{self, Answer, Forwarded, Local, MemberChange};
use crate::keyspace;
use crate::log_store::LogStore;
use crate::peer_tls::PeerTls;
use crate::propose::Proposer;
use crate::raft_types::{NodeId, TypeConfig};
use crate::read_index::ReadIndex;
use crate::state_machine::{Shared, StateMachine, WatchMessage};
use crate::transport::client::NetworkFactory;
use crate::transport::server::{self, PeerServer};
use crate::types::{
    KeyValue, Op, OpResult, RangeRequest, RangeResponse, Txn, TxnResponse, WatchRequest,
};
use crate::watch::WatchStream;

/// How long [`Store::open`] waits for the node to become leader and catch up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a leader to be elected before raft's answer (no leader)
/// stands: longer than the clustered election timeout.
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// The cluster store: a raft-replicated MVCC keyspace. Clones share one raft node.
///
/// Replication: a clustered node ([`StoreConfig::cluster`]) talks raft to its peers over HTTP/2
/// with mutual TLS ([`crate::PeerTls`]); reads are linearizable through read-index. Every member
/// serves writes and reads: a follower forwards writes to the leader and asks it for the read
/// index of a linearizable read (see [`crate::forward`]); membership changes too:
/// [`Store::add_learner`], [`Store::promote`], [`Store::remove`], [`Store::members`].
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) node_id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    log: LogStore,
    /// What this node does by itself (also for followers that forward to it).
    pub(crate) local: Arc<Local>,
    /// Connections to peers, for forwarding to the leader.
    network: NetworkFactory,
    /// The peer listener of a clustered node; dropping it closes every peer connection.
    server: std::sync::Mutex<Option<PeerServer>>,
    /// The certificate both sides of the peer transport present, and the CA they trust.
    peer_cert: Option<(Arc<strake_pki::RotatingCert>, String)>,
}

impl Drop for Inner {
    /// The last handle dropped without [`Store::shutdown`]: stop raft and release the files in
    /// the background, so the data directory can be reopened shortly after.
    fn drop(&mut self) {
        self.stop_serving();
        self.log.stop_waiting();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let raft = self.raft.clone();
        let shared = self.shared.clone();
        let log = self.log.clone();
        runtime.spawn(async move {
            if let Err(err) = raft.shutdown().await {
                tracing::warn!(error = %err, "raft task failed while shutting down a dropped store");
            }
            let _ = shared.events.send(WatchMessage::Closed);
            for result in [log.close(), shared.close()] {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "closing a dropped store's files");
                }
            }
        });
    }
}

impl Inner {
    fn stop_serving(&self) {
        let server = match self.server.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(server);
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

fn raft_config(snapshot_every: u64, clustered: bool) -> Result<Config, StoreError> {
    // Over the network, append-entries must fit in three quarters of a heartbeat interval
    // (openraft's RPC timeout) even on a loaded machine; a lone voter only talks to itself.
    // Clustered stores start elections themselves, after a pre-vote round (see
    // [`crate::election`]): a follower asks once it has not heard from a leader for the lease
    // (openraft's leader lease is election_timeout_max) plus up to 0.3 s, so a dead leader is
    // noticed in 1.0-1.3 s. openraft's own timer, which waited the lease plus another random
    // election timeout (1.9-2.4 s, and 3-4 s with the 1-2 s timeouts before that), is off.
    let (heartbeat_interval, election_timeout_min, election_timeout_max) = if clustered {
        (200, 700, crate::election::LEASE.as_millis() as u64)
    } else {
        (100, 300, 600)
    };
    Config {
        cluster_name: "strake".into(),
        heartbeat_interval,
        election_timeout_min,
        election_timeout_max,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        ..Config::default()
    }
    .validate()
    .map_err(|e| StoreError::Config {
        problem: e.to_string(),
    })
}

pub(crate) fn read_error(
    err: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
) -> StoreError {
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

pub(crate) fn write_error(
    err: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> StoreError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => StoreError::Membership {
            problem: e.to_string(),
        },
        RaftError::Fatal(f) => f.into(),
    }
}

impl Store {
    /// Opens the store in `cfg.data_dir`.
    ///
    /// A single voter ([`StoreConfig::single`]) initializes a fresh directory as a one-voter
    /// cluster and returns once it leads and has applied its log. A clustered node listens on
    /// `listen_addr`; if the cluster is fresh the lowest id of it and its peers initializes it
    /// with all of them as voters, and every member returns once a leader is known (so open all
    /// members of a fresh or fully stopped cluster concurrently). A `join`ing node returns as
    /// soon as it listens.
    ///
    /// Fails, naming the field, on an invalid config; fails, naming the file, if a data file is
    /// missing, empty, truncated or corrupt, or belongs to another node id; never reinitializes
    /// over existing data.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let networked = cfg.validate()?;
        let config = Arc::new(raft_config(cfg.snapshot_every, networked.is_some())?);
        let dir = cfg.data_dir.clone();
        let node_id = cfg.node_id;
        let reserve = cfg.disk_reserve_bytes;
        let (log, state_db) = tokio::task::spawn_blocking(move || {
            let data = open_data_dir(&dir, node_id)?;
            // Dropped (and so closed) with the error if the log does not open.
            let state_db = Arc::new(data.state);
            let log = LogStore::open(node_id, Arc::new(data.log), &data.wal, reserve)?;
            Ok::<_, StoreError>((log, state_db))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("opening the data directory panicked: {e}")))??;
        let close_files = |err: StoreError| {
            let _ = log.close();
            let _ = state_db.close();
            err
        };
        let meta = keyspace::read_meta(&state_db).map_err(close_files)?;
        let (network, listener, peer_cert) = match &networked {
            Some(net) => {
                let (cert, client, server) = net.tls.rotating().map_err(close_files)?;
                let network =
                    NetworkFactory::with_config(node_id, client).waiting_for(log.durable());
                let listener = server::bind(net.listen, server)
                    .await
                    .map_err(close_files)?;
                (
                    network,
                    Some(listener),
                    Some((cert, net.tls.ca_pem.clone())),
                )
            }
            None => (NetworkFactory::disabled(node_id), None, None),
        };
        // Reads wait until everything this log held at startup is applied; see [`ReadIndex`].
        let opened_with = log
            .clone()
            .get_log_state()
            .await
            .map_err(|e| close_files(StoreError::Internal(format!("reading the log state: {e}"))))?
            .last_log_id
            .map(|id| id.index);
        let shared = Shared::new(state_db.clone(), meta.revision);
        let raft = Raft::new(
            node_id,
            config,
            network.clone(),
            log.clone(),
            StateMachine::new(shared.clone(), log.durable()),
        )
        .await
        .map_err(|e| close_files(e.into()))?;
        let local = Arc::new(Local {
            raft: raft.clone(),
            shared: shared.clone(),
            log: log.clone(),
            reads: Arc::new(ReadIndex::new(opened_with)),
            writes: Arc::new(Proposer::new(node_id)),
            contacts: network.contacts(),
            leader_contact: crate::election::LeaderContact::new(),
            changing: tokio::sync::Mutex::new(()),
            handover: crate::election::Handover::new(),
        });
        if networked.is_some() {
            // Elections start after a pre-vote round (see [`crate::election`]), not on
            // openraft's timer.
            raft.runtime_config().elect(false);
            crate::election::spawn(raft.clone(), local.clone(), network.clone(), node_id);
        }
        let server = listener.map(|l| l.serve(raft.clone(), local.clone()));
        let store = Store {
            inner: Arc::new(Inner {
                node_id,
                raft,
                shared,
                log: log.clone(),
                local,
                network,
                server: std::sync::Mutex::new(server),
                peer_cert,
            }),
        };
        let ready = match &networked {
            None => store.become_ready().await,
            Some(net) => store.join_cluster(&cfg, net).await,
        };
        match ready {
            Ok(()) => Ok(store),
            Err(err) => {
                if let Err(close_err) = store.close().await {
                    tracing::warn!(error = %close_err, "closing the store after a failed open");
                }
                Err(err)
            }
        }
    }

    /// Clustered start: initialize a fresh cluster if this node has the lowest id, then wait
    /// for a leader (unless joining).
    async fn join_cluster(&self, cfg: &StoreConfig, net: &Networked) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let me = self.inner.node_id;
        if !raft.is_initialized().await? {
            if cfg.join {
                return Ok(());
            }
            let lowest = cfg.peers.iter().all(|(id, _)| *id > me);
            if lowest {
                let mut members: BTreeMap<NodeId, BasicNode> = cfg
                    .peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                    .collect();
                members.insert(
                    me,
                    BasicNode {
                        addr: net.advertise.clone(),
                    },
                );
                initialize(raft, members).await?;
            }
        }
        elect_if_lone_voter(raft, me).await?;
        wait_for(raft, STARTUP_TIMEOUT, "a known leader", |m| {
            m.current_leader.is_some()
        })
        .await?;
        if let Err(err) = self.record_own_address(&net.advertise).await {
            // The cluster still works through the address the others have; say so.
            tracing::warn!(error = %err, addr = %net.advertise, "could not record this node's peer address");
        }
        Ok(())
    }

    async fn become_ready(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let me = self.inner.node_id;
        if raft.is_initialized().await? {
            elect_if_lone_voter(raft, me).await?;
        } else {
            let members = BTreeMap::from([(me, BasicNode::default())]);
            initialize(raft, members).await?;
        }
        wait_for(raft, STARTUP_TIMEOUT, "become leader", |m| {
            m.state == ServerState::Leader && m.current_leader == Some(me)
        })
        .await?;
        raft.ensure_linearizable().await.map_err(read_error)?;
        Ok(())
    }

    /// The state file (keyspace, history, applied state), holding everything applied so far.
    pub(crate) fn state_db(&self) -> Result<&DbCell, StoreError> {
        self.inner.shared.visible()
    }

    /// This node's raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Latest applied revision on this node.
    pub fn revision(&self) -> u64 {
        self.inner.shared.acked_revision()
    }

    /// Returns once reads of this node's applied state are linearizable: a read-index round
    /// shared with concurrent readers ([`ReadIndex`]), run here on the leader or asked of the
    /// leader by a follower, which then applies up to it.
    pub(crate) async fn ensure_linearizable(&self) -> Result<(), StoreError> {
        // A read-index round is safe to ask again: once of a leader that was lost meanwhile,
        // and twice, a moment later, when the followers' answers came too late for a quorum
        // (a loaded machine; a leader truly cut off still fails, 0.4 s later).
        let (mut moved, mut late) = (0, 0);
        loop {
            match self.read_index_round().await {
                Err(StoreError::LeaderUnreachable { .. } | StoreError::NotLeader { .. })
                    if moved < 1 =>
                {
                    moved += 1;
                }
                Err(StoreError::NoQuorum(_)) if late < 2 => {
                    late += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn read_index_round(&self) -> Result<(), StoreError> {
        self.await_leader().await;
        let Some(leader) = self.leader_elsewhere() else {
            return self.inner.local.read_index().await.map(|_| ());
        };
        let index = match self
            .forward(leader, &Forwarded::ReadIndex, forward::FORWARD_TIMEOUT)
            .await?
        {
            Answer::ReadIndex(index) => index,
            other => return Err(unexpected("a read-index request", other)),
        };
        if let Some(index) = index {
            let raft = &self.inner.raft;
            raft.wait(Some(forward::CATCH_UP_TIMEOUT))
                .applied_index_at_least(Some(index), "applying up to the leader's read index")
                .await
                .map_err(|_| StoreError::CatchingUp {
                    needed: index,
                    applied: raft.metrics().borrow().last_applied.map(|id| id.index),
                })?;
        }
        Ok(())
    }

    /// Resolves once this node no longer takes `id` for the leader (or raft stopped).
    async fn leader_moved_from(&self, id: NodeId) {
        let mut metrics = self.inner.raft.metrics();
        while metrics.borrow_and_update().current_leader == Some(id) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits (a little longer than an election takes) for a leader if none is known, so a
    /// request made during an election waits for its outcome instead of failing at once.
    async fn await_leader(&self) {
        let raft = &self.inner.raft;
        if raft.metrics().borrow().current_leader.is_some() {
            return;
        }
        let _ = raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await;
    }

    /// The leader and its address when it is another member; `None` when this node leads or
    /// no leader is known (raft then answers locally with why not).
    fn leader_elsewhere(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader == self.inner.node_id {
            return None;
        }
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Sends `request` to the leader, following a moved leader's name a few times.
    async fn forward(
        &self,
        leader: (NodeId, String),
        request: &Forwarded,
        timeout: Duration,
    ) -> Result<Answer, StoreError> {
        let body = postcard::to_allocvec(request)
            .map_err(|e| StoreError::Internal(format!("cannot encode a forwarded request: {e}")))?;
        let (mut id, mut addr) = leader;
        for _ in 0..forward::MAX_HOPS {
            let to = addr.clone();
            let sent = self.inner.network.forward(id, &to, body.clone(), timeout);
            tokio::pin!(sent);
            // A leader that dies keeps the request until openraft's timeout; this node's view
            // moves on once an election starts, and the caller hears of it then. A leader that
            // handed over answers at once (it held the request, and names its successor), so
            // it gets a moment more.
            let answered = tokio::select! {
                answer = &mut sent => Some(answer),
                () = self.leader_moved_from(id) => {
                    tokio::time::timeout(forward::MOVED_GRACE, &mut sent).await.ok()
                }
            };
            let Some(answer) = answered else {
                return Err(StoreError::LeaderUnreachable {
                    leader_id: id,
                    leader_addr: addr.clone(),
                    problem: "it stopped being the leader while it had the request, which may or may not have taken effect".into(),
                });
            };
            let answer = answer.map_err(|e| StoreError::LeaderUnreachable {
                leader_id: id,
                leader_addr: addr.clone(),
                problem: e.to_string(),
            })?;
            match answer {
                Answer::Failed(forward::Failure::NotLeader {
                    leader_id: Some(next),
                    leader_addr: Some(next_addr),
                }) if next != id && next != self.inner.node_id => (id, addr) = (next, next_addr),
                Answer::Failed(failure) => return Err(failure.into_error(id, &addr)),
                answer => return Ok(answer),
            }
        }
        Err(StoreError::NotLeader {
            leader_id: Some(id),
            leader_addr: Some(addr),
        })
    }

    /// Linearizable read of one key; returns it (if present) and the header revision.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), StoreError> {
        self.ensure_linearizable().await?;
        keyspace::get(self.inner.shared.visible()?, key)
    }

    /// Linearizable range read; see [`RangeRequest`].
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.ensure_linearizable().await?;
        keyspace::range(self.inner.shared.visible()?, &req)
    }

    /// Serializable read of one key from this node's applied state, leader or not: no quorum
    /// round trip, but it may lag the leader (the header revision says how far it got).
    pub fn get_serializable(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), StoreError> {
        self.inner.shared.wait_for_acked();
        keyspace::get(self.inner.shared.visible()?, key)
    }

    /// Serializable range read from this node's applied state; see [`Store::get_serializable`].
    pub fn range_serializable(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.inner.shared.wait_for_acked();
        keyspace::range(self.inner.shared.visible()?, &req)
    }

    /// Runs a transaction through raft. A failed compare is not an error: `succeeded` is false.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        self.await_leader().await;
        self.inner.local.handover.wait_out().await;
        let Some(leader) = self.leader_elsewhere() else {
            return self.inner.local.txn(txn).await;
        };
        let request = Forwarded::Txn(txn);
        let answer = match self
            .forward(leader, &request, forward::FORWARD_TIMEOUT)
            .await
        {
            // The leader handed over to this node while it had the request (and held it).
            Err(StoreError::NotLeader {
                leader_id: Some(id),
                ..
            }) if id == self.inner.node_id => {
                let Forwarded::Txn(txn) = request else {
                    unreachable!("built above")
                };
                return self.inner.local.txn(txn).await;
            }
            other => other?,
        };
        match answer {
            Answer::Txn(response) => {
                // Answered once applied here too, so reads and watches on this node see it, as
                // they see writes it proposed itself. A node too far behind answers anyway.
                let shared = &self.inner.shared;
                if !shared
                    .applied(response.revision, forward::CATCH_UP_TIMEOUT)
                    .await
                {
                    tracing::warn!(
                        revision = response.revision,
                        "a forwarded write is not applied here yet; answering without it"
                    );
                }
                Ok(response)
            }
            other => Err(unexpected("a forwarded transaction", other)),
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
        self.inner.shared.wait_for_acked();
        if req.start_revision != 0 {
            let meta = keyspace::read_meta(self.inner.shared.visible()?)?;
            if req.start_revision < meta.compacted {
                return Err(StoreError::Compacted {
                    requested: req.start_revision,
                    compacted: meta.compacted,
                });
            }
        } else {
            self.inner.shared.visible()?.with(|_| Ok(()))?;
        }
        Ok(WatchStream::start(self.inner.shared.clone(), req))
    }

    /// Makes a membership change on the leader (see [`crate::membership`]); `timeout` bounds
    /// a follower's wait for the leader's answer.
    pub(crate) async fn change_members(
        &self,
        change: MemberChange,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let Some(leader) = self.leader_elsewhere() else {
            return self.inner.local.change_members(change).await;
        };
        match self
            .forward(leader, &Forwarded::Members(change), timeout)
            .await?
        {
            Answer::MembersChanged => Ok(()),
            other => Err(unexpected("a forwarded membership change", other)),
        }
    }

    /// Drops history older than `revision`: reads as of revisions below `revision - 1` and
    /// watches starting below `revision` then fail with [`StoreError::Compacted`]. Compacting
    /// to an already compacted revision does nothing.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let Some(leader) = self.leader_elsewhere() else {
            return self.inner.local.compact(revision).await;
        };
        match self
            .forward(
                leader,
                &Forwarded::Compact { revision },
                forward::FORWARD_TIMEOUT,
            )
            .await?
        {
            Answer::Compacted => Ok(()),
            other => Err(unexpected("a forwarded compaction", other)),
        }
    }

    /// Builds a snapshot of everything applied so far and purges the raft log up to it (raft
    /// also snapshots by itself every `snapshot_every` entries; see [`StoreConfig`]). Returns
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

    /// Presents `tls`'s certificate to peers from the next handshake on, both as server and
    /// as client; connections already open keep the one they have. It must name this node
    /// and come from the CA the store trusts (a new CA needs a restart).
    pub fn rotate_peer_tls(&self, tls: &PeerTls) -> Result<(), StoreError> {
        let Some((cert, ca_pem)) = &self.inner.peer_cert else {
            return Err(StoreError::PeerTls {
                problem: "this store has no peer transport, so no peer certificate to rotate"
                    .into(),
            });
        };
        tls.validate(self.inner.node_id)?;
        if tls.ca_pem.trim() != ca_pem.trim() {
            return Err(StoreError::PeerTls {
                problem: "the new peer certificate's CA is not the one this store trusts; a new CA takes a restart".into(),
            });
        }
        cert.set(&tls.certified_key())
            .map_err(|e| StoreError::PeerTls {
                problem: format!("loading the new peer certificate: {e}"),
            })?;
        tracing::info!("rotated the store's peer certificate");
        Ok(())
    }

    /// Hands the leadership to another voter, if this node leads a store with others: holds
    /// new writes, waits (up to [`crate::election::HANDOVER`] in all, after a lease from its
    /// own election) for a voter to hold the whole log, and asks it to campaign at once (see
    /// [`crate::election`]).
    /// Returns the new leader, or `None` when this node did not lead, had nobody to hand over
    /// to, or the handover did not finish in time (the others then elect a leader as after a
    /// crash). Writes held meanwhile go to the new leader.
    pub async fn hand_over(&self) -> Option<NodeId> {
        let raft = &self.inner.raft;
        let me = self.inner.node_id;
        let started = std::time::Instant::now();
        // A leader elected less than a lease ago would refuse its successor's vote.
        if let Some(at) = self.inner.local.leader_contact.grants_handover_at() {
            tokio::time::sleep_until(at.into()).await;
        }
        let deadline = tokio::time::Instant::now() + crate::election::HANDOVER;
        let _held = self.inner.local.handover.begin();
        let mut metrics = raft.metrics();
        // The voter that holds the whole log, once writes in flight have settled.
        let target = loop {
            let found = {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return None;
                }
                let voters: Vec<NodeId> = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|id| *id != me)
                    .collect();
                if voters.is_empty() {
                    return None;
                }
                let last = m.last_log_index;
                // Every write proposed so far answered, so none is left unanswered when this
                // node steps down.
                let answered = m.last_applied.map(|l| l.index) == last;
                m.replication.as_ref().filter(|_| answered).and_then(|r| {
                    voters
                        .iter()
                        .filter(|id| r.get(id).copied().flatten().map(|l| l.index) == last)
                        .filter_map(|id| {
                            let addr = m.membership_config.membership().get_node(id)?;
                            Some((*id, addr.addr.clone()))
                        })
                        .next()
                })
            };
            if let Some(t) = found {
                break t;
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                tracing::warn!(
                    "no voter caught up with the leader's log in time; not handing over"
                );
                return None;
            }
        };
        let body = postcard::to_allocvec(&Forwarded::CampaignNow { leader: me }).ok()?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self
            .inner
            .network
            .forward(target.0, &target.1, body, left)
            .await
        {
            Ok(Answer::Campaigning(Ok(()))) => {}
            other => {
                tracing::warn!(to = target.0, answer = ?other, "the handover was refused");
                return None;
            }
        }
        // Held writes are released once this node follows the new leader, so they find it.
        let moved = tokio::time::timeout_at(
            deadline,
            metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != me)),
        )
        .await;
        match moved
            .ok()
            .and_then(Result::ok)
            .and_then(|m| m.current_leader)
        {
            Some(leader) => {
                tracing::info!(
                    leader,
                    ms = started.elapsed().as_millis() as u64,
                    "handed the store's leadership over"
                );
                Some(leader)
            }
            None => {
                tracing::warn!(to = target.0, "the handover started no new leader in time");
                None
            }
        }
    }

    /// Stops raft, ends every watch with [`StoreError::Stopped`], and closes the data files so
    /// the directory can be reopened. Other clones fail with [`StoreError::Stopped`] afterwards.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.close().await
    }

    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        self.inner.stop_serving();
        self.inner.log.stop_waiting();
        self.inner.raft.shutdown().await.map_err(|e| {
            StoreError::Internal(format!("raft task failed while shutting down: {e}"))
        })?;
        let _ = self.inner.shared.events.send(WatchMessage::Closed);
        // Both files are released even if closing the first fails.
        let log = self.inner.log.close();
        let state = self.inner.shared.close();
        log.and(state)
    }
}

/// The error for a leader's answer of the wrong kind.
fn unexpected(what: &str, answer: Answer) -> StoreError {
    StoreError::Internal(format!("{what} was answered with {answer:?}"))
}

/// Initializes a fresh cluster with `members`; a cluster that already is initialized is fine.
async fn initialize(
    raft: &Raft<TypeConfig>,
    members: BTreeMap<NodeId, BasicNode>,
) -> Result<(), StoreError> {
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(RaftError::APIError(err)) => Err(StoreError::Initialize(Box::new(err))),
        Err(RaftError::Fatal(f)) => Err(f.into()),
    }
}

/// Waits up to `timeout` until raft's metrics satisfy `done` (`what` names it), failing with
/// [`StoreError::StartupTimeout`].
pub(crate) async fn wait_for(
    raft: &Raft<TypeConfig>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&openraft::RaftMetrics<NodeId, BasicNode>) -> bool + Send,
) -> Result<(), StoreError> {
    raft.wait(Some(timeout))
        .metrics(done, what)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::StartupTimeout {
            waited: timeout,
            detail: e.to_string(),
        })
}

/// A lone voter need not sit out an election timeout: it starts the election at once.
async fn elect_if_lone_voter(raft: &Raft<TypeConfig>, me: NodeId) -> Result<(), StoreError> {
    let voters: Vec<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if voters == [me] {
        raft.trigger().elect().await?;
    }
    Ok(())
}
