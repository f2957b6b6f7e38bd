//! Fault test: three voters on loopback serve concurrent clients (linearizable reads, writes,
//! compare-and-set on a few keys) while a nemesis keeps shutting the leader down and restarting
//! it from its data dir. Some clients talk to the leader, the others to whichever member they
//! picked, which forwards to the leader. The recorded history must be linearizable, every
//! acknowledged write's key readable afterwards, and everything still there after all three
//! restart.
//!
//! Set `STRAKE_FAULT_SEED` to replay a seed's choices (timing still varies).

mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strake_store::linearizability::{self, Call, Outcome, Recorder};
use strake_store::raft::NodeId;
use strake_store::{CmpOp, Compare, KeyValue, Op, Store, StoreError, Txn};
use support::{Cluster, eventually};
use tokio::time::Instant;

const KEYS: [&str; 5] = ["/f/a", "/f/b", "/f/c", "/f/d", "/f/e"];
const CLIENTS: usize = 5;
/// How long clients run and the nemesis strikes.
const WORKLOAD: Duration = Duration::from_secs(13);
/// A client gives up on one request after this; the outcome is then unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(4);
/// Small enough that the workload snapshots and purges the log, so restarted members may
/// catch up from a snapshot.
const SNAPSHOT_EVERY: u64 = 300;

type History = Recorder<String, String>;
/// The members that are up, as the clients see them.
type Running = Arc<RwLock<BTreeMap<NodeId, Store>>>;

fn running_stores(running: &Running) -> BTreeMap<NodeId, Store> {
    match running.read() {
        Ok(map) => map.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn set_running(running: &Running, id: NodeId, store: Option<Store>) {
    let mut map = match running.write() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    match store {
        Some(store) => map.insert(id, store),
        None => map.remove(&id),
    };
}

fn text(kv: &Option<KeyValue>) -> Option<String> {
    kv.as_ref()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// What a client saw, for the test's sanity floor and its log.
#[derive(Debug, Default)]
struct Tally {
    reads: usize,
    writes: usize,
    cas_ok: usize,
    cas_failed: usize,
    not_leader: usize,
    /// Every failed or timed-out request.
    errors: usize,
    other_errors: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.cas_ok += other.cas_ok;
        self.cas_failed += other.cas_failed;
        self.not_leader += other.not_leader;
        self.errors += other.errors;
        for (kind, n) in other.other_errors {
            *self.other_errors.entry(kind).or_default() += n;
        }
    }
}

/// One client: picks the member it believes leads (or, `via_followers`, any member that knows
/// a leader, to go through forwarding), follows `NotLeader` hints, and tries another member
/// when its target is down or answers nothing.
struct Client {
    id: usize,
    via_followers: bool,
    rng: StdRng,
    target: NodeId,
    running: Running,
    history: History,
    written: u64,
    tally: Tally,
}

impl Client {
    /// The store to send the next request to, if any member is up and knows a leader.
    fn pick(&mut self) -> Option<Store> {
        let stores = running_stores(&self.running);
        if !stores.contains_key(&self.target) {
            let ids: Vec<NodeId> = stores.keys().copied().collect();
            self.target = *ids.get(self.rng.gen_range(0..ids.len().max(1)))?;
        }
        let store = stores.get(&self.target)?;
        match store.leader() {
            Some(leader) if leader == self.target || self.via_followers => Some(store.clone()),
            // Follow its view of the leader, and ask that one whether it agrees.
            Some(leader) if stores.contains_key(&leader) => {
                self.target = leader;
                None
            }
            // An election is on, or the leader is the member that is down: wait. (Writes sent
            // to a node that does not lead would only add unknown outcomes.)
            _ => None,
        }
    }

    /// Learns from a failed request where to go next.
    fn failed(&mut self, err: Option<StoreError>) {
        self.tally.errors += 1;
        match err {
            Some(StoreError::NotLeader {
                leader_id: Some(leader),
                ..
            }) if leader != self.target => {
                self.tally.not_leader += 1;
                self.target = leader;
            }
            other => {
                match other {
                    Some(StoreError::NotLeader { .. }) => self.tally.not_leader += 1,
                    Some(err) => {
                        let kind = format!("{err:?}");
                        let kind = kind.split([' ', '(', '{']).next().unwrap_or("").to_owned();
                        *self.tally.other_errors.entry(kind).or_default() += 1;
                    }
                    None => *self.tally.other_errors.entry("timeout".into()).or_default() += 1,
                }
                self.target = 1 + self.rng.gen_range(0..3);
            }
        }
    }

    async fn read(&mut self, store: &Store, key: &str) -> Option<Option<KeyValue>> {
        let pending = self.history.begin(self.id, key.to_owned(), Call::Read);
        match tokio::time::timeout(OP_TIMEOUT, store.get(key.as_bytes())).await {
            Ok(Ok((kv, _))) => {
                pending.finish(Outcome::Read(text(&kv)));
                self.tally.reads += 1;
                Some(kv)
            }
            Ok(Err(err)) => {
                pending.finish(Outcome::Unknown);
                self.failed(Some(err));
                None
            }
            Err(_) => {
                pending.finish(Outcome::Unknown);
                self.failed(None);
                None
            }
        }
    }

    fn next_value(&mut self) -> String {
        self.written += 1;
        format!("c{}-{}", self.id, self.written)
    }

    async fn write(&mut self, store: &Store, key: &str) {
        let value = self.next_value();
        let pending = self
            .history
            .begin(self.id, key.to_owned(), Call::Write(value.clone()));
        let put = store.put(key.as_bytes().to_vec(), value.into_bytes());
        match tokio::time::timeout(OP_TIMEOUT, put).await {
            Ok(Ok(_)) => {
                pending.finish(Outcome::Done);
                self.tally.writes += 1;
            }
            // Any failure of a proposed write may still commit later (even NotLeader, when a
            // deposed leader's uncommitted entry is cut off): its outcome is unknown.
            Ok(Err(err)) => {
                pending.finish(Outcome::Unknown);
                self.failed(Some(err));
            }
            Err(_) => {
                pending.finish(Outcome::Unknown);
                self.failed(None);
            }
        }
    }

    /// Compare-and-set on the value: read it, then swap it if the key's mod_revision is still
    /// the one read. Every write stores a value never stored before, so the mod_revision
    /// matches exactly when the value does (0 and absent likewise).
    async fn cas(&mut self, store: &Store, key: &str) {
        let Some(current) = self.read(store, key).await else {
            return;
        };
        let new = self.next_value();
        let call = Call::Cas {
            expected: text(&current),
            new: new.clone(),
        };
        let pending = self.history.begin(self.id, key.to_owned(), call);
        let txn = store.txn(Txn {
            compare: vec![Compare::ModRevision {
                key: key.as_bytes().to_vec(),
                op: CmpOp::Equal,
                value: current.map_or(0, |kv| kv.mod_revision),
            }],
            success: vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: new.into_bytes(),
            }],
            failure: Vec::new(),
        });
        match tokio::time::timeout(OP_TIMEOUT, txn).await {
            Ok(Ok(response)) if response.succeeded => {
                pending.finish(Outcome::Done);
                self.tally.cas_ok += 1;
            }
            Ok(Ok(_)) => {
                pending.finish(Outcome::CasFailed);
                self.tally.cas_failed += 1;
            }
            Ok(Err(err)) => {
                pending.finish(Outcome::Unknown);
                self.failed(Some(err));
            }
            Err(_) => {
                pending.finish(Outcome::Unknown);
                self.failed(None);
            }
        }
    }

    async fn run(mut self, until: Instant) -> Tally {
        while Instant::now() < until {
            let Some(store) = self.pick() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let key = KEYS[self.rng.gen_range(0..KEYS.len())];
            let errors_before = self.tally.errors;
            match self.rng.gen_range(0..10) {
                0..=3 => {
                    self.read(&store, key).await;
                }
                4..=6 => self.write(&store, key).await,
                _ => self.cas(&store, key).await,
            }
            if self.tally.errors != errors_before {
                // Leadership is moving: give the election a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        self.tally
    }
}

/// Shuts the leader down and restarts it from its data dir, again and again, until `until`.
async fn nemesis(
    mut cluster: Cluster,
    running: Running,
    seed: u64,
    until: Instant,
) -> (Cluster, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut restarts = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(800..1500))).await;
        if Instant::now() >= until {
            return (cluster, restarts);
        }
        let leader = cluster.leader().await;
        set_running(&running, leader, None);
        cluster.stop(leader).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..600))).await;
        cluster.start(&[leader]).await;
        set_running(&running, leader, Some(cluster.store(leader).clone()));
        restarts += 1;
    }
}

/// Reads every key through the leader, recording the reads; retries while leadership moves.
async fn read_all(cluster: &Cluster, history: &History) -> BTreeMap<String, Option<String>> {
    let mut values = BTreeMap::new();
    for key in KEYS {
        let value = eventually(&format!("a linearizable read of {key}"), || async {
            let store = cluster.store(cluster.leader().await);
            let pending = history.begin(usize::MAX, key.to_owned(), Call::Read);
            match store.get(key.as_bytes()).await {
                Ok((kv, _)) => {
                    pending.finish(Outcome::Read(text(&kv)));
                    Some(text(&kv))
                }
                Err(StoreError::NotLeader { .. } | StoreError::NoQuorum(_)) => {
                    pending.finish(Outcome::Unknown);
                    None
                }
                Err(err) => panic!("reading {key} failed: {err}"),
            }
        })
        .await;
        values.insert(key.to_owned(), value);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_restarts_under_concurrent_clients_stay_linearizable() {
    let started = Instant::now();
    let seed = common::seed();

    let mut cluster = Cluster::new(&[1, 2, 3], SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    cluster.leader().await;
    let running: Running = Arc::new(RwLock::new(cluster.running.clone()));
    let history = History::new();

    let until = Instant::now() + WORKLOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let client = Client {
                id,
                via_followers: id % 2 == 1,
                rng: StdRng::seed_from_u64(seed.wrapping_add(id as u64 + 1)),
                target: 1 + (id as u64 % 3),
                running: running.clone(),
                history: history.clone(),
                written: 0,
                tally: Tally::default(),
            };
            tokio::spawn(client.run(until))
        })
        .collect();
    let (mut cluster, restarts) = tokio::spawn(nemesis(cluster, running.clone(), seed, until))
        .await
        .expect("nemesis task");
    let mut tally = Tally::default();
    for client in clients {
        tally.add(client.await.expect("client task"));
    }
    for id in [1, 2, 3] {
        set_running(&running, id, None);
    }
    eprintln!(
        "workload done after {:?}: {restarts} leader restarts, {tally:?}",
        started.elapsed()
    );
    assert!(restarts >= 3, "the nemesis struck only {restarts} times");
    assert!(
        tally.writes + tally.cas_ok >= 30 && tally.reads >= 30,
        "too little got through to mean anything: {tally:?}"
    );

    // Quiesce: once every member has applied everything the leader logged, no proposal of a
    // timed-out request can still commit, so a full restart must show exactly these values.
    let leader = cluster.leader().await;
    let last_log = cluster.store(leader).raft_metrics().last_log_index;
    eventually("every member to apply the leader's whole log", || async {
        cluster
            .running
            .values()
            .all(|store| store.raft_metrics().last_applied.map(|id| id.index) >= last_log)
            .then_some(())
    })
    .await;
    let before = read_all(&cluster, &history).await;
    let acknowledged: Vec<String> = history
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

    cluster.stop_all().await;
    cluster.start(&[1, 2, 3]).await;
    let after = read_all(&cluster, &history).await;
    assert_eq!(after, before, "a full restart changed what the keys hold");
    cluster.stop_all().await;

    let history = history.history();
    let checked = Instant::now();
    let summary = linearizability::check(&history).unwrap_or_else(|err| {
        let dump = std::env::temp_dir().join(format!("strake-fault-history-{seed}.txt"));
        let lines: Vec<String> = history.iter().map(|op| op.to_string()).collect();
        let saved = std::fs::write(&dump, lines.join("\n"));
        panic!(
            "{err}\n(history of {} operations: {dump:?}, {saved:?})",
            history.len()
        )
    });
    eprintln!(
        "history checked in {:?}: {summary:?}; whole test {:?}",
        checked.elapsed(),
        started.elapsed()
    );
}
