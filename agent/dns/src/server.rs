//! Serving: UDP and TCP listeners, answers from the current [`Zone`], forwarding with a cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::DnsError;
use crate::zone::{Answer, Zone};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a forwarded answer is cached.
const MAX_CACHE: Duration = Duration::from_secs(30);
/// Entries in the forwarding cache.
const CACHE_SIZE: usize = 4096;
/// A TCP client gets this long per message.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Where names outside the cluster are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(pub Vec<SocketAddr>);

impl Upstreams {
    /// The nameservers of a resolv.conf (port 53).
    pub fn from_resolv_conf(text: &str) -> Self {
        Self(
            text.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next()? == "nameserver").then_some(())?;
                    let ip: std::net::IpAddr = w.next()?.parse().ok()?;
                    Some(SocketAddr::new(ip, 53))
                })
                .collect(),
        )
    }
}

struct Cached {
    until: Instant,
    response: Message,
}

/// The DNS server: the zone (replaced as the cluster changes) and the upstreams.
pub struct Server {
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Upstreams,
    cache: Mutex<HashMap<(Name, RecordType), Cached>>,
}

impl Server {
    pub fn new(zone: watch::Receiver<Arc<Zone>>, upstreams: Upstreams) -> Arc<Self> {
        Arc::new(Self {
            zone,
            upstreams,
            cache: Mutex::default(),
        })
    }

    /// Serves UDP and TCP on `addr` until the task is dropped.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<(), DnsError> {
        let bind = |source| DnsError::Bind { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(bind)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind)?;
        tracing::info!(%addr, "cluster DNS serving");
        self.serve_sockets(udp, tcp).await;
        Ok(())
    }

    /// Serves on sockets already bound (one UDP and one TCP) until the task is dropped.
    pub async fn serve_sockets(self: Arc<Self>, udp: UdpSocket, tcp: TcpListener) {
        let udp = Arc::new(udp);
        let me = self.clone();
        let udp_loop = async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let (me, udp, query) = (me.clone(), udp.clone(), buf[..len].to_vec());
                tokio::spawn(async move {
                    if let Some(out) = me.handle(&query, true).await {
                        let _ = udp.send_to(&out, peer).await;
                    }
                });
            }
        };
        let tcp_loop = async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                tokio::spawn(self.clone().tcp_client(stream));
            }
        };
        tokio::join!(udp_loop, tcp_loop);
    }

    async fn tcp_client(self: Arc<Self>, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).await.is_err() {
                return;
            }
            let Some(out) = self.handle(&query, false).await else {
                return;
            };
            let Ok(n) = u16::try_from(out.len()) else {
                return;
            };
            if stream.write_all(&n.to_be_bytes()).await.is_err()
                || stream.write_all(&out).await.is_err()
            {
                return;
            }
        }
    }

    /// The answer to one query message, encoded; None for something that is not a query.
    pub async fn handle(&self, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                let h = Header::read(&mut BinDecoder::new(bytes)).ok()?;
                if h.message_type() != MessageType::Query {
                    return None;
                }
                return Message::error_msg(h.id(), h.op_code(), ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if req.message_type() != MessageType::Query {
            return None;
        }
        let mut resp = Message::new();
        resp.set_header(Header::response_from_request(req.header()));
        resp.set_recursion_available(true);
        resp.add_queries(req.queries().iter().cloned());
        if let Some(edns) = req.extensions() {
            let mut e = Edns::new();
            e.set_max_payload(edns.max_payload().max(512))
                .set_version(0);
            resp.set_edns(e);
        }
        let limit = if udp {
            usize::from(req.max_payload())
        } else {
            usize::from(u16::MAX)
        };
        match (req.op_code(), req.queries()) {
            (OpCode::Query, [q]) => self.resolve(q, &mut resp, udp).await,
            (OpCode::Query, _) => {
                resp.set_response_code(ResponseCode::FormErr);
            }
            _ => {
                resp.set_response_code(ResponseCode::NotImp);
            }
        }
        let out = resp.to_vec().ok()?;
        if out.len() > limit {
            return resp.truncate().to_vec().ok();
        }
        Some(out)
    }

    async fn resolve(&self, q: &Query, resp: &mut Message, udp: bool) {
        let zone = self.zone.borrow().clone();
        match zone.answer(q.name(), q.query_type()) {
            Answer::Records(r) => {
                resp.set_authoritative(true);
                resp.add_answers(r);
            }
            Answer::NoData => {
                resp.set_authoritative(true);
                resp.add_name_server(zone.soa());
            }
            Answer::NxDomain => {
                resp.set_authoritative(true);
                resp.set_response_code(ResponseCode::NXDomain);
                resp.add_name_server(zone.soa());
            }
            Answer::Alias(alias) => {
                let (cname, target) = *alias;
                resp.add_answer(cname);
                let chased = Query::query(target, q.query_type());
                if let Some(up) = self.forward(&chased, udp).await {
                    resp.add_answers(up.answers().iter().cloned());
                    resp.set_response_code(up.response_code());
                }
            }
            Answer::Forward => match self.forward(q, udp).await {
                Some(up) => {
                    resp.set_response_code(up.response_code());
                    resp.set_truncated(up.truncated());
                    resp.add_answers(up.answers().iter().cloned());
                    resp.add_name_servers(up.name_servers().iter().cloned());
                }
                None => {
                    resp.set_response_code(ResponseCode::ServFail);
                }
            },
        }
    }

    /// Asks the upstreams (from the cache when it can); None when none answers.
    async fn forward(&self, q: &Query, udp: bool) -> Option<Message> {
        let key = (q.name().to_lowercase(), q.query_type());
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&key).filter(|c| c.until > Instant::now()) {
                return Some(c.response.clone());
            }
        }
        let mut msg = Message::new();
        msg.set_id(rand_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        msg.add_query(q.clone());
        let mut e = Edns::new();
        e.set_max_payload(1232);
        msg.set_edns(e);
        let bytes = msg.to_vec().ok()?;
        for up in &self.upstreams.0 {
            let mut answer = if udp {
                ask_udp(*up, &bytes).await
            } else {
                None
            };
            if answer.as_ref().is_none_or(|a| a.truncated()) {
                answer = ask_tcp(*up, &bytes).await.or(answer);
            }
            let Some(a) = answer.filter(|a| a.id() == msg.id()) else {
                continue;
            };
            if matches!(
                a.response_code(),
                ResponseCode::ServFail | ResponseCode::Refused
            ) {
                continue;
            }
            let ttl = a
                .answers()
                .iter()
                .chain(a.name_servers())
                .map(|r| r.ttl())
                .min()
                .map_or(MAX_CACHE, |t| {
                    Duration::from_secs(u64::from(t)).min(MAX_CACHE)
                });
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_SIZE {
                let now = Instant::now();
                cache.retain(|_, c| c.until > now);
                if cache.len() >= CACHE_SIZE {
                    cache.clear();
                }
            }
            if !a.truncated() {
                cache.insert(
                    key,
                    Cached {
                        until: Instant::now() + ttl,
                        response: a.clone(),
                    },
                );
            }
            return Some(a);
        }
        None
    }
}

/// Unpredictable query ids, so off-path answers are hard to forge.
fn rand_id() -> u16 {
    rand::random()
}

async fn ask_udp(up: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let local: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(local).await.ok()?;
    sock.connect(up).await.ok()?;
    sock.send(bytes).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..len]).ok()
}

async fn ask_tcp(up: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let exchange = async {
        let mut s = TcpStream::connect(up).await.ok()?;
        let n = u16::try_from(bytes.len()).ok()?;
        s.write_all(&n.to_be_bytes()).await.ok()?;
        s.write_all(bytes).await.ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
}
