//! The concurrent client workload of the process fault tests: clients doing linearizable
//! reads, writes and compare-and-set on a few keys through the line protocol, recording a
//! history for the linearizability checker.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strake_store::linearizability::{self, Call, Outcome, Recorder};
use strake_store::raft::NodeId;
use tokio::time::Instant;

use super::{Conn, DEADLINE, ProcCluster, Reply};

pub const KEYS: [&str; 5] = ["/k/a", "/k/b", "/k/c", "/k/d", "/k/e"];
pub const CLIENTS: usize = 5;
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
pub const SNAPSHOT_EVERY: u64 = 300;

pub type History = Recorder<String, String>;
/// The members that are up, with their client addresses.
pub type Up = Arc<RwLock<BTreeMap<NodeId, String>>>;

pub fn up_now(up: &Up) -> BTreeMap<NodeId, String> {
    match up.read() {
        Ok(map) => map.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

pub fn set_up(up: &Up, id: NodeId, addr: Option<String>) {
    let mut map = match up.write() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    match addr {
        Some(addr) => map.insert(id, addr),
        None => map.remove(&id),
    };
}

#[derive(Debug, Default)]
pub struct Tally {
    pub reads: usize,
    pub writes: usize,
    pub cas_ok: usize,
    pub cas_failed: usize,
    pub errors: usize,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.cas_ok += o.cas_ok;
        self.cas_failed += o.cas_failed;
        self.errors += o.errors;
    }
}

pub struct Client {
    id: usize,
    rng: StdRng,
    target: NodeId,
    up: Up,
    conns: BTreeMap<NodeId, Conn>,
    history: History,
    written: u64,
    tally: Tally,
}

impl Client {
    /// Sends `request` to the target member; `None` (and a new target) on failure.
    async fn call(&mut self, request: &str) -> Option<Reply> {
        let up = up_now(&self.up);
        let Some(addr) = up.get(&self.target) else {
            self.retarget(&up);
            return None;
        };
        if !self.conns.contains_key(&self.target) {
            let conn = tokio::time::timeout(OP_TIMEOUT, Conn::connect(addr)).await;
            match conn {
                Ok(Ok(conn)) => self.conns.insert(self.target, conn),
                _ => {
                    self.retarget(&up);
                    return None;
                }
            };
        }
        let conn = self.conns.get_mut(&self.target)?;
        match tokio::time::timeout(OP_TIMEOUT, conn.call(request)).await {
            Ok(Some(Reply::NotLeader(leader))) => {
                match leader {
                    Some(leader) if leader != self.target => self.target = leader,
                    _ => self.retarget(&up),
                }
                Some(Reply::NotLeader(leader))
            }
            Ok(Some(Reply::Other(err))) => {
                self.retarget(&up);
                Some(Reply::Other(err))
            }
            Ok(Some(reply)) => Some(reply),
            _ => {
                self.conns.remove(&self.target);
                self.retarget(&up);
                None
            }
        }
    }

    fn retarget(&mut self, up: &BTreeMap<NodeId, String>) {
        let ids: Vec<NodeId> = up.keys().copied().collect();
        if !ids.is_empty() {
            self.target = ids[self.rng.gen_range(0..ids.len())];
        }
    }

    async fn read(&mut self, key: &str) -> Option<Option<(u64, String)>> {
        let pending = self.history.begin(self.id, key.to_owned(), Call::Read);
        match self.call(&format!("GET {key}")).await {
            Some(Reply::Value {
                mod_revision,
                value,
            }) => {
                pending.finish(Outcome::Read(Some(value.clone())));
                self.tally.reads += 1;
                Some(Some((mod_revision, value)))
            }
            Some(Reply::Absent) => {
                pending.finish(Outcome::Read(None));
                self.tally.reads += 1;
                Some(None)
            }
            _ => {
                pending.finish(Outcome::Unknown);
                self.tally.errors += 1;
                None
            }
        }
    }

    fn next_value(&mut self) -> String {
        self.written += 1;
        format!("c{}-{}", self.id, self.written)
    }

    async fn write(&mut self, key: &str) {
        let value = self.next_value();
        let pending = self
            .history
            .begin(self.id, key.to_owned(), Call::Write(value.clone()));
        match self.call(&format!("PUT {key} {value}")).await {
            Some(Reply::Ok(_)) => {
                pending.finish(Outcome::Done);
                self.tally.writes += 1;
            }
            // Even a NotLeader answer may come from a deposed leader whose entry still
            // commits: the outcome is unknown.
            _ => {
                pending.finish(Outcome::Unknown);
                self.tally.errors += 1;
            }
        }
    }

    async fn cas(&mut self, key: &str) {
        let Some(current) = self.read(key).await else {
            return;
        };
        let new = self.next_value();
        let (mod_revision, expected) = match current {
            Some((rev, value)) => (rev, Some(value)),
            None => (0, None),
        };
        let pending = self.history.begin(
            self.id,
            key.to_owned(),
            Call::Cas {
                expected,
                new: new.clone(),
            },
        );
        match self.call(&format!("CAS {key} {mod_revision} {new}")).await {
            Some(Reply::Ok(_)) => {
                pending.finish(Outcome::Done);
                self.tally.cas_ok += 1;
            }
            Some(Reply::CasFailed) => {
                pending.finish(Outcome::CasFailed);
                self.tally.cas_failed += 1;
            }
            _ => {
                pending.finish(Outcome::Unknown);
                self.tally.errors += 1;
            }
        }
    }

    pub async fn run(mut self, until: Instant) -> Tally {
        while Instant::now() < until {
            let key = KEYS[self.rng.gen_range(0..KEYS.len())];
            let errors = self.tally.errors;
            match self.rng.gen_range(0..10) {
                0..=3 => {
                    self.read(key).await;
                }
                4..=6 => self.write(key).await,
                _ => self.cas(key).await,
            }
            if self.tally.errors != errors {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.tally
    }
}

/// Reads every key through the leader, recording the reads.
pub async fn read_all(
    cluster: &ProcCluster,
    history: &History,
) -> BTreeMap<String, Option<String>> {
    let mut values = BTreeMap::new();
    for key in KEYS {
        let deadline = Instant::now() + DEADLINE;
        let value = loop {
            let leader = cluster.leader().await;
            let pending = history.begin(usize::MAX, key.to_owned(), Call::Read);
            let reply = super::call_once(
                cluster.client_addr(leader),
                &format!("GET {key}"),
                OP_TIMEOUT,
            )
            .await;
            match reply {
                Some(Reply::Value { value, .. }) => {
                    pending.finish(Outcome::Read(Some(value.clone())));
                    break Some(value);
                }
                Some(Reply::Absent) => {
                    pending.finish(Outcome::Read(None));
                    break None;
                }
                other => {
                    pending.finish(Outcome::Unknown);
                    assert!(
                        Instant::now() < deadline,
                        "no read of {key} within {DEADLINE:?}; last answer {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        values.insert(key.to_owned(), value);
    }
    values
}

/// The members of `cluster` that are up, for the clients.
pub fn up_of(cluster: &ProcCluster) -> Up {
    Arc::new(RwLock::new(
        cluster
            .running()
            .into_iter()
            .map(|id| (id, cluster.client_addr(id).to_owned()))
            .collect(),
    ))
}

/// Starts [`CLIENTS`] clients that run until `until`.
pub fn spawn_clients(
    seed: u64,
    up: &Up,
    history: &History,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..CLIENTS)
        .map(|id| {
            let client = Client {
                id,
                rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64 + 1)),
                target: 1 + (id as u64 % 3),
                up: up.clone(),
                conns: BTreeMap::new(),
                history: history.clone(),
                written: 0,
                tally: Tally::default(),
            };
            tokio::spawn(client.run(until))
        })
        .collect()
}

/// Waits for the clients and adds up what they saw.
pub async fn join_clients(clients: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut tally = Tally::default();
    for client in clients {
        tally.add(client.await.expect("client task"));
    }
    tally
}

/// Every key that had an acknowledged write or compare-and-set.
pub fn acknowledged_keys(history: &History) -> std::collections::BTreeSet<String> {
    history
        .history()
        .into_iter()
        .filter(|op| {
            op.outcome == Outcome::Done && matches!(op.call, Call::Write(_) | Call::Cas { .. })
        })
        .map(|op| op.key)
        .collect()
}

/// Checks the history for linearizability, saving it to a temp file if it is not.
pub fn check_history(history: &History, seed: u64, test: &str) {
    let history = history.history();
    let summary = linearizability::check(&history).unwrap_or_else(|err| {
        let dump = std::env::temp_dir().join(format!("strake-{test}-history-{seed}.txt"));
        let lines: Vec<String> = history.iter().map(|op| op.to_string()).collect();
        let saved = std::fs::write(&dump, lines.join("\n"));
        panic!(
            "{err}\n(history of {} operations: {dump:?}, {saved:?})",
            history.len()
        )
    });
    eprintln!("history checked: {summary:?}");
}
