//! Loopback TCP proxies in front of each member's peer listener, with per-link cuts.
//!
//! Every member advertises its proxy's address, so all raft traffic to it passes the proxy. A
//! link (from, to) is the traffic member `from` sends to member `to`; the proxy of `to` learns
//! `from` by finding which node process owns the connecting socket (`/proc/net/tcp` gives the
//! socket's inode, `/proc/<pid>/fd` the process holding it). Cutting a link closes its open
//! connections and refuses new ones until healed. mTLS passes through untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;
use strake_store::raft::NodeId;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    /// Node process ids, to tell who connects.
    pids: BTreeMap<u32, NodeId>,
    /// Links (from, to) that are cut.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Open proxied connections per link; dropping the sender closes the connection.
    open: Vec<((NodeId, NodeId), watch::Sender<()>)>,
    /// Connections refused because the link was cut or the source was not a node.
    refused: usize,
    /// Connections whose source could not be told.
    unidentified: usize,
}

/// The proxies of one cluster. Dropping it stops them.
pub struct Proxies {
    state: Arc<Mutex<State>>,
    /// The proxy address of each member.
    pub addrs: BTreeMap<NodeId, String>,
    listeners: Vec<AbortHandle>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// `addr` as `/proc/net/tcp` writes it.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    Some(format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    ))
}

/// The inode of the live TCP socket from `peer` to `proxy`, from `/proc/net/tcp`.
fn socket_inode(peer: SocketAddr, proxy: SocketAddr) -> Option<u64> {
    let (local, remote) = (proc_addr(peer)?, proc_addr(proxy)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let inode: u64 = fields.get(9)?.parse().ok()?;
        (fields.get(1) == Some(&local.as_str())
            && fields.get(2) == Some(&remote.as_str())
            && inode != 0)
            .then_some(inode)
    })
}

/// Which of `pids` holds socket `inode`.
fn owner(pids: &BTreeMap<u32, NodeId>, inode: u64) -> Option<NodeId> {
    let target = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, id)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            .then_some(*id)
    })
}

impl Proxies {
    /// Binds a proxy for each of `targets` (member id → its real peer address).
    pub async fn start(targets: &BTreeMap<NodeId, String>) -> Proxies {
        let state = Arc::new(Mutex::new(State::default()));
        let mut addrs = BTreeMap::new();
        let mut listeners = Vec::new();
        for (&to, target) in targets {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a proxy");
            addrs.insert(to, listener.local_addr().expect("proxy addr").to_string());
            let task = tokio::spawn(accept_loop(listener, to, target.clone(), state.clone()));
            listeners.push(task.abort_handle());
        }
        Proxies {
            state,
            addrs,
            listeners,
        }
    }

    /// Tells the proxies which process is which member (again after any restart).
    pub fn set_pids(&self, pids: BTreeMap<u32, NodeId>) {
        lock(&self.state).pids = pids;
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId, members: &[NodeId]) {
        let mut state = lock(&self.state);
        for &other in members.iter().filter(|m| **m != id) {
            state.cut.insert((id, other));
            state.cut.insert((other, id));
        }
        let cut = state.cut.clone();
        state.open.retain(|(link, _)| !cut.contains(link));
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.state).cut.clear();
    }

    /// Connections refused so far.
    pub fn refused(&self) -> usize {
        lock(&self.state).refused
    }

    /// Connections refused because no node process held their socket.
    pub fn unidentified(&self) -> usize {
        lock(&self.state).unidentified
    }

    /// The links with open connections, for diagnostics.
    pub fn open_links(&self) -> Vec<(NodeId, NodeId)> {
        let state = lock(&self.state);
        state
            .open
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(link, _)| *link)
            .collect()
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        lock(&self.state).open.clear();
    }
}

async fn accept_loop(listener: TcpListener, to: NodeId, target: String, state: Arc<Mutex<State>>) {
    while let Ok((inbound, peer)) = listener.accept().await {
        let Ok(local) = inbound.local_addr() else {
            continue;
        };
        let link = (peer, local);
        tokio::spawn(proxy(inbound, link, to, target.clone(), state.clone()));
    }
}

/// Tells which member connected from `peer`; retries briefly, as a just-spawned node may
/// connect before the test has registered its pid.
async fn identify((peer, proxy): (SocketAddr, SocketAddr), state: &Mutex<State>) -> Option<NodeId> {
    for _ in 0..20 {
        let pids = lock(state).pids.clone();
        if let Some(from) = socket_inode(peer, proxy).and_then(|inode| owner(&pids, inode)) {
            return Some(from);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

async fn proxy(
    mut inbound: TcpStream,
    peer: (SocketAddr, SocketAddr),
    to: NodeId,
    target: String,
    state: Arc<Mutex<State>>,
) {
    let from = identify(peer, &state).await;
    let mut closed = {
        let mut guard = lock(&state);
        let Some(from) = from else {
            guard.refused += 1;
            guard.unidentified += 1;
            return;
        };
        if guard.cut.contains(&(from, to)) {
            guard.refused += 1;
            return;
        }
        let (tx, rx) = watch::channel(());
        guard.open.retain(|(_, tx)| !tx.is_closed());
        guard.open.push(((from, to), tx));
        rx
    };
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = closed.changed() => {}
    }
}
