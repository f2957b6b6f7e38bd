//! Store members as separate `strake_store_node` processes on loopback, for tests that
//! SIGKILL them, and a line-protocol client for their client port.
#![allow(dead_code)]

pub mod proxy;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strake_pki::ClusterCa;
use strake_store::PeerTls;
use strake_store::raft::NodeId;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Deadline for any one awaited condition; generous for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_addr;

/// What a node answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Value { mod_revision: u64, value: String },
    Absent,
    Ok(u64),
    CasFailed,
    Status(Status),
    NotLeader(Option<NodeId>),
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub term: Option<u64>,
}

fn num(word: Option<&str>) -> Option<u64> {
    word.and_then(|w| w.parse().ok())
}

fn parse_reply(line: &str) -> Reply {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("VALUE") => match (num(words.next()), words.next()) {
            (Some(mod_revision), Some(value)) => Reply::Value {
                mod_revision,
                value: value.to_owned(),
            },
            _ => Reply::Other(format!("malformed reply {line:?}")),
        },
        Some("ABSENT") => Reply::Absent,
        Some("OK") => num(words.next()).map_or_else(
            || Reply::Other(format!("malformed reply {line:?}")),
            Reply::Ok,
        ),
        Some("FAILED") => Reply::CasFailed,
        Some("STATUS") => {
            let leader = num(words.next());
            let is_leader = words.next() == Some("Leader");
            Reply::Status(Status {
                leader,
                is_leader,
                last_log_index: num(words.next()),
                last_applied: num(words.next()),
                term: num(words.next()),
            })
        }
        Some("ERR") if words.next() == Some("NOTLEADER") => Reply::NotLeader(num(words.next())),
        _ => Reply::Other(line.to_owned()),
    }
}

/// One connection to a node's client port.
pub struct Conn {
    read: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Conn {
    pub async fn connect(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Conn {
            read: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends one request and reads its answer; `None` if the connection failed.
    pub async fn call(&mut self, request: &str) -> Option<Reply> {
        self.write
            .write_all(format!("{request}\n").as_bytes())
            .await
            .ok()?;
        let line = self.read.next_line().await.ok()??;
        Some(parse_reply(&line))
    }
}

/// One request on a fresh connection, with a timeout; `None` on any failure.
pub async fn call_once(addr: &str, request: &str, timeout: Duration) -> Option<Reply> {
    tokio::time::timeout(timeout, async {
        Conn::connect(addr).await.ok()?.call(request).await
    })
    .await
    .ok()?
}

/// One member's fixed identity.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: NodeId,
    pub dir: PathBuf,
    pub tls_dir: PathBuf,
    /// Where it listens for peers.
    pub peer_addr: String,
    /// Where it serves the line protocol.
    pub client_addr: String,
}

/// A cluster of node processes. Every child still running is SIGKILLed on drop.
pub struct ProcCluster {
    pub root: TempDir,
    pub members: BTreeMap<NodeId, Member>,
    /// The address peers reach each member at: its peer address unless a test routes it
    /// elsewhere (through a proxy) before the first start.
    pub advertise: BTreeMap<NodeId, String>,
    pub snapshot_every: u64,
    children: BTreeMap<NodeId, Child>,
}

impl ProcCluster {
    pub fn new(voters: &[NodeId], snapshot_every: u64) -> ProcCluster {
        let ca = ClusterCa::generate("store-proc-test").expect("test CA");
        let root = tempfile::tempdir().expect("temp dir");
        let mut members = BTreeMap::new();
        for &id in voters {
            let tls = PeerTls::issue(&ca, id).expect("peer certificate");
            let tls_dir = root.path().join(format!("tls-{id}"));
            std::fs::create_dir_all(&tls_dir).expect("tls dir");
            for (name, pem) in [
                ("ca.pem", &tls.ca_pem),
                ("cert.pem", &tls.cert_pem),
                ("key.pem", &tls.key_pem),
            ] {
                std::fs::write(tls_dir.join(name), pem).expect("write pem");
            }
            members.insert(
                id,
                Member {
                    id,
                    dir: root.path().join(format!("node-{id}")),
                    tls_dir,
                    peer_addr: free_addr(),
                    client_addr: free_addr(),
                },
            );
        }
        let advertise = members
            .iter()
            .map(|(id, m)| (*id, m.peer_addr.clone()))
            .collect();
        ProcCluster {
            root,
            members,
            advertise,
            snapshot_every,
            children: BTreeMap::new(),
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.children.keys().copied().collect()
    }

    /// Spawns the processes of `ids` and waits until each serves clients and knows a leader.
    pub async fn start(&mut self, ids: &[NodeId]) {
        self.spawn_members(ids);
        self.wait_ready(ids).await;
    }

    /// Spawns the processes of `ids` without waiting for them.
    pub fn spawn_members(&mut self, ids: &[NodeId]) {
        for &id in ids {
            self.spawn(id);
        }
    }

    /// Waits until each of `ids` serves clients and knows a leader.
    pub async fn wait_ready(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let addr = self.members[&id].client_addr.clone();
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(Reply::Status(Status {
                    leader: Some(_), ..
                })) = call_once(&addr, "STATUS", Duration::from_secs(2)).await
                {
                    break;
                }
                if let Some(child) = self.children.get_mut(&id)
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "node {id} exited during startup: {status}; see {:?}",
                        self.log(id)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not serve clients within {DEADLINE:?}; see {:?}",
                    self.log(id)
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// The last lines every member wrote to its log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- node {id} log:\n{tail}\n"));
            if let Some(child) = self.children.get(&id) {
                let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()));
                for task in tasks.into_iter().flatten().flatten() {
                    let read = |name: &str| {
                        std::fs::read_to_string(task.path().join(name)).unwrap_or_default()
                    };
                    let state = read("stat");
                    let state = state.rsplit(") ").next().unwrap_or("").split(' ').next();
                    out.push_str(&format!(
                        "thread {} {:?} state {state:?} wchan {}\n",
                        task.file_name().to_string_lossy(),
                        read("comm").trim(),
                        read("wchan")
                    ));
                }
            }
        }
        out
    }

    pub fn log(&self, id: NodeId) -> PathBuf {
        self.root.path().join(format!("node-{id}.log"))
    }

    fn spawn(&mut self, id: NodeId) {
        let me = &self.members[&id];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(id))
            .expect("node log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_strake_store_node"));
        command
            .arg("--id")
            .arg(id.to_string())
            .arg("--data")
            .arg(&me.dir)
            .arg("--listen")
            .arg(&me.peer_addr)
            .arg("--advertise")
            .arg(&self.advertise[&id])
            .arg("--client")
            .arg(&me.client_addr)
            .arg("--tls-dir")
            .arg(&me.tls_dir)
            .arg("--snapshot-every")
            .arg(self.snapshot_every.to_string());
        for peer in self.members.keys().filter(|p| **p != id) {
            command
                .arg("--peer")
                .arg(format!("{peer}={}", self.advertise[peer]));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn strake_store_node");
        self.children.insert(id, child);
    }

    /// SIGKILLs member `id` and reaps it.
    pub fn kill(&mut self, id: NodeId) {
        let mut child = self.children.remove(&id).expect("node is running");
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node");
    }

    pub fn kill_all(&mut self) {
        for id in self.running() {
            self.kill(id);
        }
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> BTreeMap<u32, NodeId> {
        self.children.iter().map(|(id, c)| (c.id(), *id)).collect()
    }

    pub fn client_addr(&self, id: NodeId) -> &str {
        &self.members[&id].client_addr
    }

    /// Status of every running member that answers.
    pub async fn statuses(&self) -> BTreeMap<NodeId, Status> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            if let Some(Reply::Status(status)) =
                call_once(self.client_addr(id), "STATUS", Duration::from_secs(2)).await
            {
                out.insert(id, status);
            }
        }
        out
    }

    /// Waits until every running member agrees on one running leader that knows it leads.
    pub async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let statuses = self.statuses().await;
            let leaders: std::collections::BTreeSet<Option<NodeId>> =
                statuses.values().map(|s| s.leader).collect();
            if statuses.len() == self.children.len()
                && leaders.len() == 1
                && let Some(Some(leader)) = leaders.into_iter().next()
                && statuses.get(&leader).is_some_and(|s| s.is_leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {DEADLINE:?}: {statuses:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running member has applied the leader's whole log.
    pub async fn quiesce(&self) {
        let leader = self.leader().await;
        let target = self.statuses().await[&leader].last_log_index;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let statuses = self.statuses().await;
            if statuses.len() == self.children.len()
                && statuses.values().all(|s| s.last_applied >= target)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not apply up to {target:?} within {DEADLINE:?}: {statuses:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
