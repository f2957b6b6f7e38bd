//! The client side of the peer transport: openraft's [`RaftNetworkFactory`] and one
//! [`PeerConnection`] (an HTTP/2 connection over mutual TLS) per peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{
    APPEND_BUDGET, CONNECT_TIMEOUT, CONNECTION_WINDOW, CONTENT_TYPE, KEEP_ALIVE_INTERVAL,
    KEEP_ALIVE_TIMEOUT, MAX_BODY, PATH_APPEND, PATH_FORWARD, PATH_SNAPSHOT, PATH_VOTE,
    STREAM_WINDOW, TransportError,
};
use crate::error::StoreError;
use crate::forward::Answer;
use crate::log_store::Durable;
use crate::peer_tls::{PeerTls, peer_name};
use crate::raft_types::{NodeId, TypeConfig};

/// Open HTTP/2 connections by peer id, with the address each was made to. openraft asks for a
/// new client for every read-index heartbeat and every vote; they all share one multiplexed
/// connection per peer instead of each paying for a TCP and TLS handshake.
type Pool = Arc<Connections>;
type Sender = SendRequest<Full<Bytes>>;

#[derive(Default)]
struct Connections {
    /// The open connection to each peer, and the address it was made to.
    open: Mutex<HashMap<NodeId, (String, Sender)>>,
    /// Held while a connection to the peer is being made, so RPCs that find none wait for
    /// that one instead of each starting its own.
    making: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
}

/// When each peer last answered an RPC of this node: how a leader tells which voters it can
/// reach (openraft 0.9 keeps no per-peer liveness), for quorum-safe membership changes.
#[derive(Clone, Default, Debug)]
pub(crate) struct Contacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Contacts {
    fn heard(&self, peer: NodeId) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(peer, Instant::now());
    }

    /// Whether `peer` answered within `within`.
    pub(crate) fn recent(&self, peer: NodeId, within: Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).is_some_and(|t| t.elapsed() <= within)
    }
}

/// Creates connections to raft peers. Without peer TLS (a single voter that does not listen),
/// every peer is unreachable.
#[derive(Clone)]
pub struct NetworkFactory {
    me: NodeId,
    tls: Option<TlsConnector>,
    pool: Pool,
    /// This node's raft log, if RPCs wait for it to be on disk (see [`crate::log_store`]).
    log: Option<Durable>,
    contacts: Contacts,
}

impl std::fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkFactory")
            .field("me", &self.me)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl NetworkFactory {
    /// Connections from node `me`, authenticated with `tls`.
    pub fn new(me: NodeId, tls: &PeerTls) -> Result<Self, StoreError> {
        Ok(Self::with_config(me, tls.client_config()?))
    }

    /// Connections from node `me`, with a client config built already (a rotating one).
    pub(crate) fn with_config(me: NodeId, config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            me,
            tls: Some(TlsConnector::from(config)),
            pool: Pool::default(),
            log: None,
            contacts: Contacts::default(),
        }
    }

    /// Makes append-entries wait until `log` is on disk up to the commit index they carry,
    /// and votes until it is on disk as far as they claim: a raft node's factory must.
    pub(crate) fn waiting_for(mut self, log: Durable) -> Self {
        self.log = Some(log);
        self
    }

    /// Sends an encoded [`crate::forward::Forwarded`] request to the leader `target` at `addr`
    /// over the pooled connection to it.
    pub(crate) async fn forward(
        &self,
        target: NodeId,
        addr: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, TransportError> {
        let mut peer = PeerConnection {
            me: self.me,
            target,
            node: BasicNode {
                addr: addr.to_owned(),
            },
            tls: self.tls.clone(),
            pool: self.pool.clone(),
            log: None,
            contacts: self.contacts.clone(),
        };
        let answer = match tokio::time::timeout(timeout, peer.send(PATH_FORWARD, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::Timeout { target, timeout }),
        };
        if answer.is_err() {
            peer.drop_connection();
        }
        answer
    }

    /// A factory whose peers are all unreachable: for a single voter without a transport.
    pub(crate) fn disabled(me: NodeId) -> Self {
        Self {
            me,
            tls: None,
            pool: Pool::default(),
            log: None,
            contacts: Contacts::default(),
        }
    }

    /// When each peer last answered.
    pub(crate) fn contacts(&self) -> Contacts {
        self.contacts.clone()
    }
}

/// Why a voter without peer TLS cannot reach anyone.
#[derive(Debug, thiserror::Error)]
#[error(
    "raft peer {target} at {addr:?} is unreachable: this node has no peer TLS configured (a single voter without a listen address)"
)]
pub struct NoPeerTransport {
    pub target: NodeId,
    pub addr: String,
}

/// A client of one raft peer over the factory's shared connection to it; after a failure on
/// the connection (not a timeout) it is dropped and the next RPC makes a new one.
pub struct PeerConnection {
    me: NodeId,
    target: NodeId,
    node: BasicNode,
    tls: Option<TlsConnector>,
    pool: Pool,
    log: Option<Durable>,
    contacts: Contacts,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("me", &self.me)
            .field("target", &self.target)
            .field("addr", &self.node.addr)
            .finish()
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            me: self.me,
            target,
            node: node.clone(),
            tls: self.tls.clone(),
            pool: self.pool.clone(),
            log: self.log.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, TransportError> {
    postcard::to_allocvec(value).map_err(|source| TransportError::Codec { what, source })
}

/// How long an append-entries waits for this node's log to be on disk up to the commit index
/// it carries, before it carries a lower one: well inside openraft's RPC timeout (the
/// heartbeat interval), so a slow disk delays followers' applies, not heartbeats.
const COMMIT_GATE_WAIT: Duration = Duration::from_millis(50);

impl PeerConnection {
    /// The commit index an append-entries may carry: `commit` once this node's log is on disk
    /// that far (see [`crate::log_store`]). If that takes longer than [`COMMIT_GATE_WAIT`],
    /// the highest log id of the request that is on disk and committed, or none: a follower
    /// never moves its commit index back, and learns the rest from a later request.
    async fn commit_to_send<E: std::error::Error>(
        &self,
        commit: LogId<NodeId>,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<Option<LogId<NodeId>>, RPCError<NodeId, BasicNode, E>> {
        let Some(log) = &self.log else {
            return Ok(Some(commit));
        };
        let network = |err: StoreError| RPCError::Network(NetworkError::new(&err));
        if let Ok(held) = tokio::time::timeout(COMMIT_GATE_WAIT, log.holds(commit.index)).await {
            return held.map(|()| Some(commit)).map_err(network);
        }
        let end = log.end().map_err(network)?;
        Ok(rpc
            .prev_log_id
            .iter()
            .chain(rpc.entries.iter().map(|e| &e.log_id))
            .filter(|id| id.index < end && id.index <= commit.index)
            .max_by_key(|id| id.index)
            .copied())
    }

    /// Waits until this node's log is on disk up to `index` (if the factory was told to).
    async fn log_holds<E: std::error::Error>(
        &self,
        index: u64,
    ) -> Result<(), RPCError<NodeId, BasicNode, E>> {
        match &self.log {
            Some(log) => log
                .holds(index)
                .await
                .map_err(|err| RPCError::Network(NetworkError::new(&err))),
            None => Ok(()),
        }
    }

    /// The pooled connection to this peer, if it is open and was made to the same address.
    fn pooled(&self) -> Option<SendRequest<Full<Bytes>>> {
        let pool = self.pool.open.lock().unwrap_or_else(|p| p.into_inner());
        match pool.get(&self.target) {
            Some((addr, sender)) if *addr == self.node.addr && !sender.is_closed() => {
                Some(sender.clone())
            }
            _ => None,
        }
    }

    fn pool_insert(&self, sender: &SendRequest<Full<Bytes>>) {
        let mut pool = self.pool.open.lock().unwrap_or_else(|p| p.into_inner());
        pool.insert(self.target, (self.node.addr.clone(), sender.clone()));
    }

    /// Forgets the pooled connection after a failure on it.
    fn drop_connection(&self) {
        let mut pool = self.pool.open.lock().unwrap_or_else(|p| p.into_inner());
        pool.remove(&self.target);
    }

    async fn connect(
        &self,
        tls: &TlsConnector,
    ) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let addr = &self.node.addr;
        let socket: SocketAddr =
            addr.parse()
                .map_err(|e: std::net::AddrParseError| TransportError::BadAddr {
                    addr: addr.clone(),
                    problem: e.to_string(),
                })?;
        let tcp = TcpStream::connect(socket)
            .await
            .map_err(|source| TransportError::Connect {
                target: self.target,
                addr: addr.clone(),
                source,
            })?;
        // Small RPCs (votes, heartbeats) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        // The server must hold the certificate of the node we mean to reach, whatever answers
        // at its address.
        let name =
            ServerName::try_from(peer_name(self.target)).map_err(|e| TransportError::BadAddr {
                addr: addr.clone(),
                problem: format!("peer name: {e}"),
            })?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|source| TransportError::Handshake {
                target: self.target,
                addr: addr.clone(),
                source,
            })?;
        let http = |source| TransportError::Http {
            target: self.target,
            addr: addr.clone(),
            source,
        };
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let (me, target) = (self.me, self.target);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(me, target, error = %err, "raft peer connection ended");
            }
        });
        Ok(sender)
    }

    /// The pooled connection, or a new one. The connection is made by a task of its own,
    /// one at a time per peer, and pooled when made even if the RPC that asked for it gave up
    /// meanwhile: on a loaded machine a TCP, TLS and HTTP/2 handshake can outlast an RPC's
    /// timeout (150 ms for append-entries), and a connection abandoned with its RPC left every
    /// later RPC to start another, which timed out in turn.
    async fn pooled_or_connect(
        &self,
        tls: TlsConnector,
    ) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let making = {
            let mut making = self.pool.making.lock().unwrap_or_else(|p| p.into_inner());
            making.entry(self.target).or_default().clone()
        };
        let this = PeerConnection {
            me: self.me,
            target: self.target,
            node: self.node.clone(),
            tls: None,
            pool: self.pool.clone(),
            log: None,
            contacts: self.contacts.clone(),
        };
        let task = tokio::spawn(async move {
            let _one_at_a_time = making.lock_owned().await;
            if let Some(sender) = this.pooled() {
                return Ok(sender);
            }
            let sender = tokio::time::timeout(CONNECT_TIMEOUT, this.connect(&tls))
                .await
                .map_err(|_| TransportError::Connect {
                    target: this.target,
                    addr: this.node.addr.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {CONNECT_TIMEOUT:?}"),
                    ),
                })??;
            this.pool_insert(&sender);
            Ok(sender)
        });
        task.await.map_err(|e| TransportError::Connect {
            target: self.target,
            addr: self.node.addr.clone(),
            source: std::io::Error::other(format!("the connecting task failed: {e}")),
        })?
    }

    /// Posts an encoded body to `path` and decodes the answer.
    async fn send<Resp: DeserializeOwned>(
        &mut self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<Resp, TransportError> {
        let Some(tls) = self.tls.clone() else {
            return Err(TransportError::Connect {
                target: self.target,
                addr: self.node.addr.clone(),
                source: std::io::Error::other(NoPeerTransport {
                    target: self.target,
                    addr: self.node.addr.clone(),
                }),
            });
        };
        if body.len() > MAX_BODY {
            return Err(TransportError::TooLarge {
                what: "an RPC body",
                size: body.len(),
                max: MAX_BODY,
            });
        }
        let http = |target: NodeId, addr: &str| {
            let addr = addr.to_string();
            move |source| TransportError::Http {
                target,
                addr,
                source,
            }
        };
        let mut sender = match self.pooled() {
            Some(sender) => sender,
            None => self.pooled_or_connect(tls).await?,
        };
        sender
            .ready()
            .await
            .map_err(http(self.target, &self.node.addr))?;
        let request = http::Request::post(format!("https://{}{path}", peer_name(self.target)))
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::Body {
                target: self.target,
                problem: format!("building the request: {e}"),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(http(self.target, &self.node.addr))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| TransportError::Body {
                target: self.target,
                problem: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(TransportError::Refused {
                target: self.target,
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        self.contacts.heard(self.target);
        postcard::from_bytes(&bytes).map_err(|source| TransportError::Codec {
            what: "a raft answer",
            source,
        })
    }

    /// [`Self::send`] with a deadline; failures map to openraft's RPC errors.
    async fn call<Resp, E>(
        &mut self,
        action: RPCTypes,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, TransportError> =
            match tokio::time::timeout(timeout, self.send(path, body)).await {
                Ok(answer) => answer,
                // The connection stays: a slow answer on one stream says nothing of the
                // others, and HTTP/2 keep-alive closes a connection whose peer is gone.
                Err(_) => {
                    return Err(RPCError::Timeout(Timeout {
                        action,
                        id: self.me,
                        target: self.target,
                        timeout,
                    }));
                }
            };
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                remote,
            ))),
            Err(err) => {
                self.drop_connection();
                if err.is_unreachable() {
                    Err(RPCError::Unreachable(Unreachable::new(&err)))
                } else {
                    Err(RPCError::Network(NetworkError::new(&err)))
                }
            }
        }
    }
}

fn codec_error<E: std::error::Error>(err: TransportError) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&err))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut rpc = rpc;
        if let Some(commit) = rpc.leader_commit {
            rpc.leader_commit = self.commit_to_send(commit, &rpc).await?;
        }
        let entries = rpc.entries.len();
        let body = encode("append-entries", &rpc).map_err(codec_error)?;
        if body.len() > APPEND_BUDGET && entries > 1 {
            let fitting = (entries as u64 * APPEND_BUDGET as u64 / body.len() as u64).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fitting),
            ));
        }
        self.call(
            RPCTypes::AppendEntries,
            PATH_APPEND,
            body,
            option.soft_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = encode("install-snapshot", &rpc).map_err(codec_error)?;
        self.call(
            RPCTypes::InstallSnapshot,
            PATH_SNAPSHOT,
            body,
            option.soft_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if let Some(last) = rpc.last_log_id {
            self.log_holds(last.index).await?;
        }
        let body = encode("vote", &rpc).map_err(codec_error)?;
        self.call(RPCTypes::Vote, PATH_VOTE, body, option.soft_ttl())
            .await
    }
}
