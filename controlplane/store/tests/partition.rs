//! Fault test with partitions: three `strake_store_node` voters whose peer traffic passes
//! through loopback proxies serve concurrent clients while a nemesis cuts every link to and
//! from the leader, waits for the majority side to elect a new leader, and heals. Clients keep
//! talking to every member, the isolated old leader included. The history must be
//! linearizable, and every acknowledged key readable afterwards.
//!
//! Set `STRAKE_FAULT_SEED` to replay a seed's choices (timing still varies).

mod common;
mod procs;

use std::time::Duration;

use procs::proxy::Proxies;
use procs::workload::{
    History, SNAPSHOT_EVERY, acknowledged_keys, check_history, join_clients, read_all,
    spawn_clients, up_of,
};
use procs::{DEADLINE, ProcCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How long clients run. Elections on the majority side take seconds (split votes), so the
/// nemesis goes on past this until it has struck at least [`MIN_PARTITIONS`] times.
const WORKLOAD: Duration = Duration::from_secs(14);
const MIN_PARTITIONS: usize = 2;

/// Isolates the leader until the others elect a new one, then heals, until `until`.
async fn nemesis(cluster: &ProcCluster, proxies: &Proxies, seed: u64, until: Instant) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = cluster.ids();
    let mut partitions = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1200))).await;
        if Instant::now() >= until && partitions >= MIN_PARTITIONS {
            return partitions;
        }
        let old = cluster.leader().await;
        let cut_at = Instant::now();
        proxies.isolate(old, &ids);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let statuses = cluster.statuses().await;
            let new_leader = statuses
                .iter()
                .any(|(id, s)| *id != old && s.is_leader && s.leader == Some(*id));
            if new_leader {
                eprintln!(
                    "isolated leader {old}; majority elected after {:?}",
                    cut_at.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the majority side elected no leader within {DEADLINE:?} of isolating {old}: {statuses:?}; open links {:?}, {} unidentified connections\n{}",
                proxies.open_links(),
                proxies.unidentified(),
                cluster.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
        proxies.heal();
        partitions += 1;
    }
}

/// Three members whose peer traffic goes through loopback proxies, running and ready.
async fn proxied_cluster() -> (ProcCluster, Proxies) {
    let mut cluster = ProcCluster::new(&[1, 2, 3], SNAPSHOT_EVERY);
    let targets = cluster
        .members
        .iter()
        .map(|(id, m)| (*id, m.peer_addr.clone()))
        .collect();
    let proxies = Proxies::start(&targets).await;
    cluster.advertise = proxies.addrs.clone();
    cluster.spawn_members(&[1, 2, 3]);
    proxies.set_pids(cluster.pids());
    cluster.wait_ready(&[1, 2, 3]).await;
    (cluster, proxies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leaders_keep_the_history_linearizable() {
    let started = Instant::now();
    let seed = common::seed();
    let (mut cluster, proxies) = proxied_cluster().await;
    cluster.leader().await;
    assert_eq!(
        proxies.refused(),
        0,
        "the proxies could not tell the members apart"
    );

    let up = up_of(&cluster);
    let history = History::new();
    let until = Instant::now() + WORKLOAD;
    let clients = spawn_clients(seed, &up, &history, until);
    let partitions = nemesis(&cluster, &proxies, seed, until).await;
    let tally = join_clients(clients).await;
    eprintln!(
        "workload done after {:?}: {partitions} leader partitions, {} connections refused, {tally:?}",
        started.elapsed(),
        proxies.refused()
    );
    assert!(
        proxies.refused() > 0,
        "the partitions refused no connection"
    );
    // Clients waiting on the isolated leader time out, so less gets through than in kill9.
    assert!(
        tally.writes + tally.cas_ok >= 15 && tally.reads >= 15,
        "too little got through to mean anything: {tally:?}"
    );

    cluster.quiesce().await;
    let values = read_all(&cluster, &history).await;
    for key in acknowledged_keys(&history) {
        assert!(
            values[&key].is_some(),
            "{key} had an acknowledged write but reads as absent"
        );
    }
    cluster.kill_all();
    check_history(&history, seed, "partition");
    eprintln!("whole test {:?}", started.elapsed());
}

/// A follower cut off from the others for several leader leases asks for pre-votes nobody
/// grants, so its term stays put; when the partition heals it follows the leader it had,
/// which keeps its place and its term (without the pre-vote round its higher term would
/// depose the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_follower_does_not_depose_the_leader() {
    let (mut cluster, proxies) = proxied_cluster().await;
    let leader = cluster.leader().await;
    let term = cluster.statuses().await[&leader].term;
    assert!(term.is_some(), "the status carries no term");
    let ids = cluster.ids();
    let follower = *ids.iter().find(|id| **id != leader).expect("a follower");

    proxies.isolate(follower, &ids);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let alone = cluster.statuses().await;
    assert_eq!(
        alone[&follower].term,
        term,
        "the cut-off follower's term moved: {alone:?}\n{}",
        cluster.log_tails()
    );
    assert_eq!(alone[&leader].leader, Some(leader), "{alone:?}");
    proxies.heal();

    // It follows the leader again, and the leader stays.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let statuses = cluster.statuses().await;
        if statuses
            .get(&follower)
            .is_some_and(|s| s.leader == Some(leader))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not come back to {leader}: {statuses:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster.statuses().await;
    for (id, s) in &after {
        assert_eq!(
            (s.leader, s.term),
            (Some(leader), term),
            "node {id} after the heal: {after:?}\n{}",
            cluster.log_tails()
        );
    }
    cluster.kill_all();
}
