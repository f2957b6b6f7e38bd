//! The server side of the peer transport: accepts mutual-TLS connections from store peers and
//! hands their RPCs to the local raft node, refusing any RPC whose claimed node id is not the
//! one in the caller's certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openraft::Raft;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::{
    CONNECTION_WINDOW, CONTENT_TYPE, HANDSHAKE_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT,
    MAX_BODY, PATH_APPEND, PATH_FORWARD, PATH_SNAPSHOT, PATH_VOTE, STREAM_WINDOW,
};
use crate::error::StoreError;
use crate::forward::{Forwarded, Local};
use crate::peer_tls::node_id_of;
use crate::raft_types::{NodeId, TypeConfig};

/// A bound, not yet serving, peer listener.
pub(crate) struct BoundListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

/// Binds the peer port. Done before raft starts so a busy port fails the open early.
pub(crate) async fn bind(
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> Result<BoundListener, StoreError> {
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StoreError::Listen { addr, source })?;
    Ok(BoundListener { listener, acceptor })
}

/// The running peer server; stops (closing every peer connection) when dropped.
#[derive(Debug)]
pub(crate) struct PeerServer {
    task: JoinHandle<()>,
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BoundListener {
    /// Serves raft RPCs, and requests forwarded by followers (answered by `local`), from peers
    /// until the returned server is dropped.
    pub(crate) fn serve(self, raft: Raft<TypeConfig>, local: Arc<Local>) -> PeerServer {
        let BoundListener { listener, acceptor } = self;
        let task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting the accept loop ends them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, remote)) => {
                            connections.spawn(serve_connection(
                                tcp,
                                remote,
                                acceptor.clone(),
                                raft.clone(),
                                local.clone(),
                            ));
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "accepting a raft peer connection");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        PeerServer { task }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    raft: Raft<TypeConfig>,
    local: Arc<Local>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(%remote, error = %err, "raft peer TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "raft peer TLS handshake timed out");
            return;
        }
    };
    let peer = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => Err("no client certificate presented".to_string()),
        Some(cert) => node_id_of(cert),
    };
    let peer = match peer {
        Ok(peer) => peer,
        Err(problem) => {
            tracing::warn!(%remote, problem, "refusing a raft peer connection");
            return;
        }
    };
    let service = service_fn(move |req| {
        let raft = raft.clone();
        let local = local.clone();
        async move { Ok::<_, Infallible>(handle(&raft, &local, peer, req).await) }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        tracing::debug!(%remote, peer, error = %err, "raft peer connection ended");
    }
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

fn encoded<T: Serialize>(answer: &T) -> Response<Full<Bytes>> {
    match postcard::to_allocvec(answer) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(err) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {err}"),
        ),
    }
}

/// Why an RPC was refused before it reached raft.
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refuse(status: StatusCode, message: String) -> Refusal {
    Refusal { status, message }
}

/// Reads and decodes a bounded request body.
async fn read_body<T: DeserializeOwned>(req: Request<Incoming>, what: &str) -> Result<T, Refusal> {
    let too_large = |size: String| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} body is {size} bytes, more than the limit of {MAX_BODY}"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > MAX_BODY as u64
    {
        return Err(too_large(size.to_string()));
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large("more than that".into()));
        }
        Err(err) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the {what} body: {err}"),
            ));
        }
    };
    postcard::from_bytes(&bytes).map_err(|err| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("cannot decode the {what} body: {err}"),
        )
    })
}

/// Refuses an RPC whose claimed sender is not the node the certificate names.
fn check_claim(peer: NodeId, claimed: Option<NodeId>, what: &str) -> Result<(), Refusal> {
    if claimed == Some(peer) {
        return Ok(());
    }
    tracing::warn!(
        peer,
        ?claimed,
        what,
        "refusing a raft RPC that impersonates another node"
    );
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!(
            "{what} claims to come from node {claimed:?}, but the peer certificate is for node {peer}"
        ),
    ))
}

/// Refuses a peer this node's membership does not hold: a removed member's certificate is
/// revoked by its removal (ids are never reused), and a removed node that still runs cannot
/// disrupt the cluster with votes. A node with no membership yet (being added, or one of a
/// fresh cluster's initial voters) takes anyone the cluster CA vouches for.
fn check_member(raft: &Raft<TypeConfig>, peer: NodeId) -> Result<(), Refusal> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.nodes().next().is_none() || membership.get_node(&peer).is_some() {
        return Ok(());
    }
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!("node {peer} is not a member of this cluster (it was removed, or never joined)"),
    ))
}

/// Append-entries and snapshots are taken from the leader of this node's vote or a later one,
/// whatever the membership this node's log has reached: a joiner replays the log from its
/// start, through memberships older than today's leader, and refusing it there left the
/// joiner stuck. A removed node's leadership is older than the vote, so it is still refused
/// (and votes, which could disrupt, always need membership).
fn check_leader_or_member(
    raft: &Raft<TypeConfig>,
    peer: NodeId,
    vote: &openraft::Vote<NodeId>,
) -> Result<(), Refusal> {
    let current = raft.metrics().borrow().vote;
    if *vote >= current {
        return Ok(());
    }
    check_member(raft, peer)
}

async fn handle(
    raft: &Raft<TypeConfig>,
    local: &Local,
    peer: NodeId,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match dispatch(raft, local, peer, req).await {
        Ok(response) => response,
        Err(refusal) => plain(refusal.status, refusal.message),
    }
}

async fn dispatch(
    raft: &Raft<TypeConfig>,
    local: &Local,
    peer: NodeId,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if req.method() != Method::POST {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("raft RPCs are POSTs, not {}", req.method()),
        ));
    }
    match req.uri().path() {
        PATH_APPEND => {
            let rpc: AppendEntriesRequest<TypeConfig> = read_body(req, "append-entries").await?;
            check_claim(peer, rpc.vote.leader_id().voted_for(), "append-entries")?;
            check_leader_or_member(raft, peer, &rpc.vote)?;
            let answer = raft.append_entries(rpc).await;
            if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                local.leader_contact.heard();
            }
            Ok(encoded(&answer))
        }
        PATH_VOTE => {
            let rpc: VoteRequest<NodeId> = read_body(req, "vote").await?;
            check_claim(peer, rpc.vote.leader_id().voted_for(), "vote")?;
            check_member(raft, peer)?;
            Ok(encoded(&raft.vote(rpc).await))
        }
        PATH_SNAPSHOT => {
            let rpc: InstallSnapshotRequest<TypeConfig> =
                read_body(req, "install-snapshot").await?;
            check_claim(peer, rpc.vote.leader_id().voted_for(), "install-snapshot")?;
            check_leader_or_member(raft, peer, &rpc.vote)?;
            let leader = rpc.vote;
            let answer = raft.install_snapshot(rpc).await;
            if matches!(&answer, Ok(a) if a.vote == leader) {
                local.leader_contact.heard();
            }
            Ok(encoded(&answer))
        }
        PATH_FORWARD => {
            let request: Forwarded = read_body(req, "forwarded request").await?;
            match &request {
                Forwarded::PreVote { candidate, .. } => {
                    check_claim(peer, Some(*candidate), "pre-vote")?
                }
                Forwarded::CampaignNow { leader } => check_claim(peer, Some(*leader), "handover")?,
                _ => {}
            }
            check_member(raft, peer)?;
            Ok(encoded(&local.answer(request).await))
        }
        other => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no raft RPC at {other:?}"),
        )),
    }
}
