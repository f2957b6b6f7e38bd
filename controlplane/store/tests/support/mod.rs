//! A loopback cluster of store nodes for the replication tests: certificates from one test CA,
//! ports below the ephemeral range (see `common/ports.rs`), and polling helpers with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use openraft::ServerState;
use strake_pki::ClusterCa;
use strake_store::raft::NodeId;
use strake_store::{PeerTls, Store, StoreConfig, StoreError};
use tempfile::TempDir;

/// Deadline for any one awaited condition; generous for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// Polls `probe` until it yields a value, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_addr;

/// One member's fixed identity: id, data dir, address and certificate.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: NodeId,
    pub dir: PathBuf,
    pub addr: String,
    pub tls: PeerTls,
}

/// A loopback cluster. `running` holds the stores of the members that are up.
pub struct Cluster {
    pub ca: ClusterCa,
    pub root: TempDir,
    pub members: BTreeMap<NodeId, Member>,
    /// The initial voters (what `peers` lists).
    pub voters: Vec<NodeId>,
    pub running: BTreeMap<NodeId, Store>,
    pub snapshot_every: u64,
}

impl Cluster {
    /// Identities for `voters`; nothing runs yet.
    pub fn new(voters: &[NodeId], snapshot_every: u64) -> Cluster {
        let ca = ClusterCa::generate("store-test").expect("test CA");
        let root = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            ca,
            root,
            members: BTreeMap::new(),
            voters: voters.to_vec(),
            running: BTreeMap::new(),
            snapshot_every,
        };
        for id in voters {
            cluster.define(*id);
        }
        cluster
    }

    /// Gives node `id` a data dir, an address and a certificate.
    pub fn define(&mut self, id: NodeId) -> Member {
        let member = Member {
            id,
            dir: self.root.path().join(format!("node-{id}")),
            addr: free_addr(),
            tls: PeerTls::issue(&self.ca, id).expect("peer certificate"),
        };
        self.members.insert(id, member.clone());
        member
    }

    /// The config member `id` starts with; `join` for members added later.
    pub fn config(&self, id: NodeId, join: bool) -> StoreConfig {
        let me = &self.members[&id];
        let peers = if join {
            Vec::new()
        } else {
            self.voters
                .iter()
                .filter(|v| **v != id)
                .map(|v| (*v, self.members[v].addr.clone()))
                .collect()
        };
        StoreConfig {
            join,
            snapshot_every: self.snapshot_every,
            ..StoreConfig::cluster(id, &me.dir, me.addr.clone(), peers, me.tls.clone())
        }
    }

    /// Opens the given members concurrently (a fresh or fully stopped cluster needs a quorum
    /// up before any open returns).
    pub async fn start(&mut self, ids: &[NodeId]) {
        let opens = ids.iter().map(|id| {
            let cfg = self.config(*id, false);
            async move {
                let store = tokio::time::timeout(DEADLINE, Store::open(cfg))
                    .await
                    .unwrap_or_else(|_| panic!("node {id} did not open within {DEADLINE:?}"))
                    .unwrap_or_else(|e| panic!("node {id} failed to open: {e}"));
                (*id, store)
            }
        });
        for (id, store) in futures::future::join_all(opens).await {
            self.running.insert(id, store);
        }
    }

    /// Opens member `id` as a node joining an existing cluster.
    pub async fn start_joining(&mut self, id: NodeId) {
        self.start_with(id, self.config(id, true)).await;
    }

    /// Opens member `id` with a custom config.
    pub async fn start_with(&mut self, id: NodeId, cfg: StoreConfig) {
        let store = tokio::time::timeout(DEADLINE, Store::open(cfg))
            .await
            .unwrap_or_else(|_| panic!("node {id} did not open within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("node {id} failed to open: {e}"));
        self.running.insert(id, store);
    }

    /// Shuts member `id` down (files closed, listener gone).
    pub async fn stop(&mut self, id: NodeId) {
        let store = self.running.remove(&id).expect("node is running");
        tokio::time::timeout(DEADLINE, store.shutdown())
            .await
            .expect("shutdown within the deadline")
            .expect("clean shutdown");
    }

    pub fn store(&self, id: NodeId) -> &Store {
        &self.running[&id]
    }

    /// Waits until every running voter agrees on one running leader, which knows it leads.
    pub async fn leader(&self) -> NodeId {
        eventually("one agreed, running leader", || async {
            let mut seen = None;
            for store in self.running.values() {
                let members = store.members();
                if !members.voters.contains_key(&store.node_id()) {
                    continue;
                }
                let leader = members.leader?;
                if *seen.get_or_insert(leader) != leader {
                    return None;
                }
            }
            let leader = seen?;
            let metrics = self.running.get(&leader)?.raft_metrics();
            (metrics.state == ServerState::Leader).then_some(leader)
        })
        .await
    }

    /// Puts through whoever leads, retrying while leadership moves; returns the revision.
    pub async fn put(&self, key: &str, value: &str) -> u64 {
        eventually(&format!("an acknowledged put of {key}"), || async {
            let leader = self.leader().await;
            match self
                .store(leader)
                .put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
                .await
            {
                Ok(revision) => Some(revision),
                Err(StoreError::NotLeader { .. } | StoreError::NoQuorum(_)) => None,
                Err(other) => panic!("put {key} failed: {other}"),
            }
        })
        .await
    }

    /// Waits until member `id` has applied at least `revision`.
    pub async fn caught_up(&self, id: NodeId, revision: u64) {
        let store = self.store(id);
        eventually(
            &format!("node {id} to apply revision {revision}"),
            || async { (store.revision() >= revision).then_some(()) },
        )
        .await
    }

    /// Asserts that member `id` holds `key` = `value` in its applied state.
    pub fn assert_holds(&self, id: NodeId, key: &str, value: &str) {
        let (kv, _) = self
            .store(id)
            .get_serializable(key.as_bytes())
            .expect("serializable read");
        let kv = kv.unwrap_or_else(|| panic!("node {id} lacks {key}"));
        assert_eq!(kv.value, value.as_bytes(), "node {id}, key {key}");
    }

    /// Shuts every running member down.
    pub async fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
