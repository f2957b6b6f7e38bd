//! The raft network seam. The mTLS peer transport is not built yet: every peer connection
//! reports itself unreachable, which is all a single voter ever needs (it sends no RPCs).

use std::future::Future;

use openraft::error::{
    Fatal, InstallSnapshotError, RPCError, RaftError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, Vote};

use crate::raft_types::{NodeId, TypeConfig};

/// Why a peer cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error(
    "raft peer {target} at {addr:?} is unreachable: the peer transport (mTLS) is not implemented yet"
)]
pub struct PeerTransportMissing {
    pub target: NodeId,
    pub addr: String,
}

/// Creates connections to raft peers.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory;

/// A connection to one raft peer.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    target: NodeId,
    addr: String,
}

impl PeerConnection {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&PeerTransportMissing {
            target: self.target,
            addr: self.addr.clone(),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote<NodeId>,
        _snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}

#[cfg(test)]
mod tests {
    use openraft::network::RPCOption;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    #[tokio::test]
    async fn peers_are_unreachable_with_a_clear_message() {
        let mut factory = NetworkFactory;
        let mut conn = factory
            .new_client(
                2,
                &BasicNode {
                    addr: "10.0.0.2:2380".into(),
                },
            )
            .await;
        let vote = VoteRequest {
            vote: Vote::new(1, 1),
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
        };
        let err = conn
            .vote(vote, RPCOption::new(std::time::Duration::from_millis(10)))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("peer 2") && message.contains("not implemented"),
            "{message}"
        );
    }
}
