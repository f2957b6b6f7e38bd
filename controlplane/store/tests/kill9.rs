//! Fault test with real processes: three `strake_store_node` voters on loopback serve concurrent
//! clients (linearizable reads, writes, compare-and-set) while a nemesis SIGKILLs the leader's
//! process and restarts it. The history must be linearizable; then all three are SIGKILLed and
//! restarted, and every key must hold exactly what it held before.
//!
//! Set `STRAKE_FAULT_SEED` to replay a seed's choices (timing still varies).

mod common;
mod procs;

use std::time::Duration;

use procs::ProcCluster;
use procs::workload::{
    History, SNAPSHOT_EVERY, Up, acknowledged_keys, check_history, join_clients, read_all, set_up,
    spawn_clients, up_of,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How long clients run and the nemesis strikes.
const WORKLOAD: Duration = Duration::from_secs(10);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_leader_processes_keep_the_history_linearizable() {
    let started = Instant::now();
    let seed = common::seed();
    let mut cluster = ProcCluster::new(&[1, 2, 3], SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    cluster.leader().await;
    let up = up_of(&cluster);
    let history = History::new();
    let until = Instant::now() + WORKLOAD;
    let clients = spawn_clients(seed, &up, &history, until);
    let (mut cluster, kills) = tokio::spawn(nemesis(cluster, up.clone(), seed, until))
        .await
        .expect("nemesis task");
    let tally = join_clients(clients).await;
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
    for key in acknowledged_keys(&history) {
        assert!(
            before[&key].is_some(),
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
    check_history(&history, seed, "kill9");
    eprintln!("whole test {:?}", started.elapsed());
}
