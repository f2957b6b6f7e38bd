//! A leader that still holds its connections but never answers (its process is SIGSTOPped):
//! a write forwarded to it by a follower fails within the forward timeout as
//! `LeaderUnreachable`, the other two elect a new leader and take writes, and the old leader
//! catches up once it runs again.

mod procs;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procs::workload::SNAPSHOT_EVERY;
use procs::{DEADLINE, ProcCluster, Reply, call_once};
use tokio::time::Instant;

/// Longer than the forward timeout (10 s) with room for a loaded machine.
const FORWARD_ANSWERED_WITHIN: Duration = Duration::from_secs(40);

fn signal(cluster: &ProcCluster, id: u64, signal: Signal) {
    let pid = cluster
        .pids()
        .into_iter()
        .find_map(|(pid, member)| (member == id).then_some(pid))
        .expect("the member runs");
    kill(Pid::from_raw(pid as i32), signal).expect("signal the member");
}

/// Sends `request` to member `id` until it answers `OK`, for up to [`DEADLINE`].
async fn until_ok(cluster: &ProcCluster, id: u64, request: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = call_once(cluster.client_addr(id), request, DEADLINE).await;
        if let Some(Reply::Ok(revision)) = reply {
            return revision;
        }
        assert!(
            Instant::now() < deadline,
            "member {id} did not take {request:?} within {DEADLINE:?}; last answer {reply:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_leader_that_never_answers_fails_and_the_rest_go_on() {
    let mut cluster = ProcCluster::new(&[1, 2, 3], SNAPSHOT_EVERY);
    cluster.start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let other = *[1, 2, 3]
        .iter()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    until_ok(&cluster, follower, "PUT k before").await;

    signal(&cluster, leader, Signal::SIGSTOP);
    let started = Instant::now();
    let reply = call_once(
        cluster.client_addr(follower),
        "PUT k during",
        FORWARD_ANSWERED_WITHIN,
    )
    .await;
    let waited = started.elapsed();
    eprintln!(
        "leader {leader} stopped; the write through {follower} answered after {waited:?}: {reply:?}"
    );
    match &reply {
        Some(Reply::Other(line)) => assert!(
            line.contains("cannot reach the leader")
                && line.contains(&format!("node {leader}"))
                && line.contains("may or may not have been applied"),
            "{line}"
        ),
        // The follower may have heard of a new leader first on a slow machine; then the
        // write went there and must have succeeded.
        Some(Reply::Ok(_)) => {}
        other => panic!("after {waited:?}: {other:?}\n{}", cluster.log_tails()),
    }

    // The other two elect a leader among themselves and take writes through either.
    let written = until_ok(&cluster, follower, "PUT k after").await;
    until_ok(&cluster, other, "PUT k2 after").await;

    // The old leader runs again, steps down, and serves what was written meanwhile.
    signal(&cluster, leader, Signal::SIGCONT);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match call_once(cluster.client_addr(leader), "GET k", DEADLINE).await {
            Some(Reply::Value {
                mod_revision,
                value,
            }) if mod_revision >= written => {
                assert_eq!(value, "after");
                break;
            }
            reply => assert!(
                Instant::now() < deadline,
                "the old leader did not catch up within {DEADLINE:?}: {reply:?}\n{}",
                cluster.log_tails()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_ok(&cluster, leader, "PUT k last").await;
}
