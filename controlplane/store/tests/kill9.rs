//! Fault test with real processes: three `strake_store_node` voters on loopback serve concurrent
//! clients (linearizable reads, writes, compare-and-set) while a nemesis SIGKILLs the leader's
//! process and restarts it. The history must be linearizable; then all three are SIGKILLed and
//! restarted, and every key must hold exactly what it held before.
//!
//! Set `STRAKE_FAULT_SEED` to replay a seed's choices (timing still varies).

mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use procs::{Conn, DEADLINE, ProcCluster, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strake_store::linearizability::{self, Call, Outcome, Recorder};
use strake_store::raft::NodeId;
use tokio::time::Instant;

const KEYS: [&str; 5] = ["/k/a", "/k/b", "/k/c", "/k/d", "/k/e"];
const CLIENTS: usize = 5;
const WORKLOAD: Duration = Duration::from_secs(12);
const OP_TIMEOUT: Duration = Duration::from_secs(4);
const SNAPSHOT_EVERY: u64 = 300;

type History = Recorder<String, String>;
/// The members that are up, with their client addresses.
type Up = Arc<RwLock<BTreeMap<NodeId, String>>>;

fn up_now(up: &Up) -> BTreeMap<NodeId, String> {
    match up.read() {
        Ok(map) => map.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn set_up(up: &Up, id: NodeId, addr: Option<String>) {
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
struct Tally {
    reads: usize,
    writes: usize,
    cas_ok: usize,
    cas_failed: usize,
    errors: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.cas_ok += o.cas_ok;
        self.cas_failed += o.cas_failed;
        self.errors += o.errors;
    }
}

struct Client {
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

    async fn run(mut self, until: Instant) -> Tally {
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

/// SIGKILLs the leader's process and restarts it, again and again, until `until`.
async fn nemesis(
    mut cluster: ProcCluster,
    up: Up,
    seed: u64,
    until: Instant,
) -> (ProcCluster, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(800..1500))).await;
        if Instant::now() >= until {
            return (cluster, kills);
        }
        let leader = cluster.leader().await;
        set_up(&up, leader, None);
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
        cluster.start(&[leader]).await;
        set_up(&up, leader, Some(cluster.client_addr(leader).to_owned()));
        kills += 1;
    }
}

/// Reads every key through the leader, recording the reads.
async fn read_all(cluster: &ProcCluster, history: &History) -> BTreeMap<String, Option<String>> {
    let mut values = BTreeMap::new();
    for key in KEYS {
        let deadline = Instant::now() + DEADLINE;
        let value = loop {
            let leader = cluster.leader().await;
            let pending = history.begin(usize::MAX, key.to_owned(), Call::Read);
            let reply = procs::call_once(
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

fn seed() -> u64 {
    let seed = std::env::var("STRAKE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fault test seed: {seed} (STRAKE_FAULT_SEED={seed} to replay)");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_leader_processes_keep_the_history_linearizable() {
    let started = Instant::now();
    let seed = seed();
    let mut cluster = ProcCluster::new(&[1, 2, 3], SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    cluster.leader().await;
    let up: Up = Arc::new(RwLock::new(
        cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.client_addr(id).to_owned()))
            .collect(),
    ));
    let history = History::new();
    let until = Instant::now() + WORKLOAD;
    let clients: Vec<_> = (0..CLIENTS)
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
        .collect();
    let (mut cluster, kills) = tokio::spawn(nemesis(cluster, up.clone(), seed, until))
        .await
        .expect("nemesis task");
    let mut tally = Tally::default();
    for client in clients {
        tally.add(client.await.expect("client task"));
    }
    eprintln!(
        "workload done after {:?}: {kills} leader SIGKILLs, {tally:?}",
        started.elapsed()
    );
    assert!(kills >= 3, "the nemesis struck only {kills} times");
    assert!(
        tally.writes + tally.cas_ok >= 30 && tally.reads >= 30,
        "too little got through to mean anything: {tally:?}"
    );

    // Once every member applied the leader's whole log, no timed-out proposal can still
    // commit, so after SIGKILLing everything the keys must hold exactly these values.
    cluster.quiesce().await;
    let before = read_all(&cluster, &history).await;
    let acknowledged: BTreeSet<String> = history
        .history()
        .into_iter()
        .filter(|op| {
            op.outcome == Outcome::Done && matches!(op.call, Call::Write(_) | Call::Cas { .. })
        })
        .map(|op| op.key)
        .collect();
    for key in &acknowledged {
        assert!(
            before[key].is_some(),
            "{key} had an acknowledged write but reads as absent"
        );
    }
    cluster.kill_all();
    cluster.start(&[1, 2, 3]).await;
    let after = read_all(&cluster, &history).await;
    assert_eq!(
        after, before,
        "SIGKILLing every member changed what the keys hold"
    );
    cluster.kill_all();

    let history = history.history();
    let summary = linearizability::check(&history).unwrap_or_else(|err| {
        let dump = std::env::temp_dir().join(format!("strake-kill9-history-{seed}.txt"));
        let lines: Vec<String> = history.iter().map(|op| op.to_string()).collect();
        let saved = std::fs::write(&dump, lines.join("\n"));
        panic!(
            "{err}\n(history of {} operations: {dump:?}, {saved:?})",
            history.len()
        )
    });
    eprintln!(
        "history checked: {summary:?}; whole test {:?}",
        started.elapsed()
    );
}
