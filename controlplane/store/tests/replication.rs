//! Multi-voter replication over the mTLS peer transport, on loopback: election, replication,
//! leader loss, restart catch-up, snapshot install to a late learner, membership changes.

mod support;

use strake_store::{StoreError, TxnResponse};
use support::{Cluster, DEADLINE, eventually};

const NO_SNAPSHOTS: u64 = strake_store::DEFAULT_SNAPSHOT_EVERY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_replicate() {
    let mut cluster = Cluster::new(&[1, 2, 3], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let members = cluster.store(leader).members();
    assert_eq!(
        members.voters.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(members.voters[&2], cluster.members[&2].addr);
    assert!(members.learners.is_empty());

    let mut last = 0;
    for i in 0..10 {
        last = cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    for id in [1, 2, 3] {
        cluster.caught_up(id, last).await;
        for i in 0..10 {
            cluster.assert_holds(id, &format!("k{i}"), &format!("v{i}"));
        }
    }

    // Linearizable reads on the leader go through read-index.
    let (kv, revision) = cluster.store(leader).get(b"k9").await.unwrap();
    assert_eq!(kv.unwrap().value, b"v9");
    assert!(revision >= last);

    // A follower serves writes and linearizable reads too, through the leader.
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let store = cluster.store(follower);
    let written = store.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    assert!(written > last, "revision {written} after {last}");
    // Its own write, at once, in every kind of read on the follower...
    assert_eq!(store.get(b"k").await.unwrap().0.unwrap().value, b"v");
    assert_eq!(store.get_serializable(b"k").unwrap().0.unwrap().value, b"v");
    assert!(store.revision() >= written);
    // ...and on the leader.
    let (kv, _) = cluster.store(leader).get(b"k").await.unwrap();
    assert_eq!(kv.unwrap().mod_revision, written);
    // A write on the leader is seen by the follower's next linearizable read, without waiting.
    cluster
        .store(leader)
        .put(b"k1".to_vec(), b"newer".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get(b"k1").await.unwrap().0.unwrap().value, b"newer");
    // A compare that fails on the leader fails for the follower too (no 409 is lost).
    let stale = store
        .txn(strake_store::Txn {
            compare: vec![strake_store::Compare::ModRevision {
                key: b"k".to_vec(),
                op: strake_store::CmpOp::Equal,
                value: written - 1,
            }],
            success: vec![strake_store::Op::Put {
                key: b"k".to_vec(),
                value: b"lost".to_vec(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!stale.succeeded);
    // Deletes and compaction go through the leader as well.
    assert_eq!(
        store.delete(b"k".to_vec()).await.unwrap().unwrap().value,
        b"v"
    );
    store.compact(written).await.unwrap();
    assert!(matches!(
        store.compact(u64::MAX).await,
        Err(StoreError::FutureRevision { .. })
    ));

    // Watches on a follower see replicated changes.
    let mut watch = store
        .watch(strake_store::WatchRequest {
            prefix: b"w".to_vec(),
            ..Default::default()
        })
        .unwrap();
    let revision = cluster.put("w1", "x").await;
    let event = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("follower watch yields within the deadline")
        .expect("watch open")
        .expect("event");
    assert_eq!(event.kv.key, b"w1");
    assert_eq!(event.kv.mod_revision, revision);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_and_keeps_acknowledged_writes() {
    let mut cluster = Cluster::new(&[1, 2, 3], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3]).await;
    let old = cluster.leader().await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        cluster.put(&format!("a{i}"), &format!("{i}")).await;
        acknowledged.push(format!("a{i}"));
    }
    cluster.stop(old).await;
    // Until they elect another (a lease of 2 s and an election timeout away), the followers
    // still name the stopped leader: a write through one fails naming it, and says the
    // write's fate is unknown.
    let follower = *cluster.running.keys().next().unwrap();
    assert_eq!(cluster.store(follower).leader(), Some(old));
    match cluster
        .store(follower)
        .put(b"x".to_vec(), b"y".to_vec())
        .await
    {
        Err(err @ StoreError::LeaderUnreachable { leader_id, .. }) => {
            assert_eq!(leader_id, old, "{err}");
            assert!(err.to_string().contains("may or may not"), "{err}");
        }
        other => panic!("expected LeaderUnreachable, got {other:?}"),
    }

    let new = cluster.leader().await;
    assert_ne!(new, old);
    for i in 10..20 {
        cluster.put(&format!("a{i}"), &format!("{i}")).await;
        acknowledged.push(format!("a{i}"));
    }
    let leader = cluster.store(new);
    for (i, key) in acknowledged.iter().enumerate() {
        let (kv, _) = leader.get(key.as_bytes()).await.unwrap();
        assert_eq!(
            kv.unwrap_or_else(|| panic!("acknowledged {key} lost"))
                .value,
            i.to_string().as_bytes()
        );
    }
    // A compare-and-set against the new leader sees the latest version.
    let (kv, _) = leader.get(b"a0").await.unwrap();
    let TxnResponse { succeeded, .. } = leader
        .txn(strake_store::Txn {
            compare: vec![strake_store::Compare::ModRevision {
                key: b"a0".to_vec(),
                op: strake_store::CmpOp::Equal,
                value: kv.unwrap().mod_revision,
            }],
            success: vec![strake_store::Op::Put {
                key: b"a0".to_vec(),
                value: b"cas".to_vec(),
            }],
            failure: Vec::new(),
        })
        .await
        .unwrap();
    assert!(succeeded);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_from_its_data_dir() {
    let mut cluster = Cluster::new(&[1, 2, 3], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let before = cluster.put("before", "1").await;
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    cluster.caught_up(follower, before).await;
    cluster.stop(follower).await;

    let mut last = 0;
    for i in 0..10 {
        last = cluster.put(&format!("while-down-{i}"), "x").await;
    }
    cluster.start(&[follower]).await;
    cluster.caught_up(follower, last).await;
    cluster.assert_holds(follower, "before", "1");
    for i in 0..10 {
        cluster.assert_holds(follower, &format!("while-down-{i}"), "x");
    }
    assert_eq!(cluster.store(follower).members().voters.len(), 3);

    // Everyone down, everyone back (opened concurrently): nothing acknowledged is lost.
    cluster.stop_all().await;
    cluster.start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let (kv, _) = cluster.store(leader).get(b"while-down-9").await.unwrap();
    assert_eq!(
        kv.expect("acknowledged key survives a full restart").value,
        b"x"
    );
    cluster.stop_all().await;
}

/// A crash leaves a member's state file behind its log (applies between durable commits are
/// replayed from the log). openraft 0.9 restarts the old leader as leader in the same term, with
/// its commit index at what its state file had applied; its reads must still see every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_with_its_state_behind_its_log_reads_every_write() {
    let mut cluster = Cluster::new(&[1, 2, 3], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3]).await;
    cluster.put("key", "old").await;
    cluster.stop_all().await;
    let dirs: Vec<_> = [1, 2, 3].map(|id| cluster.members[&id].dir.clone()).into();
    let state_file = |id: u64| dirs[id as usize - 1].join("state.redb");
    let saved = cluster.root.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    for id in [1, 2, 3] {
        std::fs::copy(state_file(id), saved.join(format!("{id}.redb"))).unwrap();
    }

    cluster.start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let last = cluster.put("key", "new").await;
    for id in [1, 2, 3] {
        cluster.caught_up(id, last).await;
    }
    cluster.stop_all().await;
    // What a SIGKILL between durable commits leaves: the leader's state file from before.
    std::fs::copy(saved.join(format!("{leader}.redb")), state_file(leader)).unwrap();

    cluster.start(&[1, 2, 3]).await;
    assert_eq!(
        cluster.leader().await,
        leader,
        "the old leader did not resume leading, so this test checks nothing"
    );
    let (kv, revision) = cluster.store(leader).get(b"key").await.unwrap();
    assert_eq!(kv.expect("key is present").value, b"new", "a stale read");
    assert!(
        revision >= last,
        "read at revision {revision}, before {last}"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_learner_catches_up_by_snapshot_and_is_promoted() {
    let mut cluster = Cluster::new(&[1, 2, 3], 20);
    cluster.start(&[1, 2, 3]).await;
    let mut last = 0;
    for i in 0..60 {
        last = cluster.put(&format!("s{i:02}"), &format!("{i}")).await;
    }
    let leader = cluster.leader().await;
    // The leader has snapshotted and purged the log's start: a new member can only get the
    // early entries from a snapshot.
    eventually("the leader to purge its log", || async {
        let metrics = cluster.store(leader).raft_metrics();
        metrics
            .purged
            .map(|p| p.index > 5)
            .unwrap_or(false)
            .then_some(())
    })
    .await;

    cluster.define(4);
    // The learner never snapshots by itself, so a snapshot it holds came from the leader.
    let learner = strake_store::StoreConfig {
        snapshot_every: NO_SNAPSHOTS,
        ..cluster.config(4, true)
    };
    cluster.start_with(4, learner).await;
    assert!(cluster.store(4).members().voters.is_empty());
    let addr = cluster.members[&4].addr.clone();
    cluster
        .store(leader)
        .add_learner(4, addr.clone())
        .await
        .unwrap();
    cluster.caught_up(4, last).await;
    assert!(
        cluster.store(4).raft_metrics().snapshot.is_some(),
        "the learner installed the leader's snapshot"
    );
    for i in 0..60 {
        cluster.assert_holds(4, &format!("s{i:02}"), &i.to_string());
    }
    let members = cluster.store(leader).members();
    assert_eq!(members.learners.get(&4), Some(&addr));

    // A membership change asked of a follower is made by the leader, and a refusal keeps its
    // kind across the hop.
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    assert!(matches!(
        cluster.store(follower).promote(9).await,
        Err(StoreError::Membership { .. })
    ));
    assert!(matches!(
        cluster.store(leader).promote(9).await,
        Err(StoreError::Membership { .. })
    ));
    cluster.store(follower).promote(4).await.unwrap();
    let members = cluster.store(leader).members();
    assert_eq!(
        members.voters.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(members.learners.is_empty());

    // Remove a voter that is not the leader; the rest keep serving.
    let gone = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    cluster.store(leader).remove(gone).await.unwrap();
    let members = cluster.store(leader).members();
    assert!(!members.voters.contains_key(&gone));
    assert_eq!(members.voters.len(), 3);
    // Its certificate no longer gets it anywhere: a write it forwards is refused.
    let refused = cluster
        .store(gone)
        .put(b"/from-removed".to_vec(), b"x".to_vec())
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not a member")),
        "a removed member's write: {refused:?}"
    );
    cluster.stop(gone).await;
    let revision = cluster.put("after-remove", "ok").await;
    cluster.caught_up(4, revision).await;
    cluster.assert_holds(4, "after-remove", "ok");
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_survive_losing_two() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3, 4, 5]).await;
    let first = cluster.put("five", "1").await;
    let leader = cluster.leader().await;
    let other = *[1, 2, 3, 4, 5].iter().find(|id| **id != leader).unwrap();
    cluster.stop(leader).await;
    cluster.stop(other).await;
    let revision = cluster.put("three-left", "1").await;
    assert!(revision > first);
    let new = cluster.leader().await;
    let (kv, _) = cluster.store(new).get(b"five").await.unwrap();
    assert_eq!(kv.expect("acknowledged write survives").value, b"1");
    for id in cluster.running.keys().copied().collect::<Vec<_>>() {
        cluster.caught_up(id, revision).await;
        cluster.assert_holds(id, "three-left", "1");
    }
    cluster.stop_all().await;
}

/// How a control plane joins: a lone voter that listens grows to three voters by
/// `join_member` (asked of the leader, then of a follower that forwards it), refuses a removal
/// that would leave fewer answering voters than a quorum, and shrinks 3 -> 2 -> 1 safely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_voter_grows_by_joins_and_shrinks_only_while_quorum_answers() {
    let mut cluster = Cluster::new(&[1], NO_SNAPSHOTS);
    cluster.start(&[1]).await;
    cluster.put("before-joins", "1").await;
    for (id, ask) in [(2, 1), (3, 2)] {
        cluster.define(id);
        cluster.start_joining(id).await;
        let addr = cluster.members[&id].addr.clone();
        cluster
            .store(ask)
            .join_member(id, addr.clone())
            .await
            .unwrap_or_else(|e| panic!("node {id} joining through node {ask}: {e}"));
        // A retried join (the joiner restarted before it heard the answer) changes nothing.
        cluster.store(ask).join_member(id, addr).await.unwrap();
    }
    let members = cluster.store(3).members();
    assert_eq!(
        members.voters.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(members.learners.is_empty());
    let revision = cluster.put("after-joins", "1").await;
    cluster.caught_up(3, revision).await;
    cluster.assert_holds(3, "before-joins", "1");

    // Stop a follower and wait until the leader has not heard from it for a while.
    let leader = cluster.leader().await;
    let (dead, live) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    cluster.stop(dead).await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    match cluster.store(live).remove(live).await {
        Err(StoreError::Membership { problem }) => assert!(
            problem.contains("do not") && problem.contains("quorum"),
            "{problem}"
        ),
        other => panic!("removing a live voter with another one down: {other:?}"),
    }
    assert_eq!(cluster.store(leader).members().voters.len(), 3);
    // Removing the dead one is safe (3 -> 2), and then one more (2 -> 1).
    cluster.store(live).remove(dead).await.unwrap();
    cluster.store(leader).remove(live).await.unwrap();
    let members = cluster.store(leader).members();
    assert_eq!(members.voters.keys().copied().collect::<Vec<_>>(), [leader]);
    match cluster.store(leader).remove(leader).await {
        Err(StoreError::Membership { problem }) => {
            assert!(problem.contains("no voter"), "{problem}")
        }
        other => panic!("removing the last voter: {other:?}"),
    }
    cluster.stop(live).await;
    cluster.put("alone", "1").await;
    cluster.stop_all().await;
}

/// A store first opened as a single voter without a listener (as every control plane did
/// before joins) records its peer address when it is reopened as a listening lone voter, so
/// members that join can reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_reopened_with_a_listener_records_its_address() {
    let mut cluster = Cluster::new(&[1], NO_SNAPSHOTS);
    let dir = cluster.members[&1].dir.clone();
    let single = strake_store::Store::open(strake_store::StoreConfig::single(1, &dir))
        .await
        .unwrap();
    single.put(b"/kept".to_vec(), b"1".to_vec()).await.unwrap();
    assert_eq!(
        single.members().voters.get(&1).map(String::as_str),
        Some("")
    );
    single.shutdown().await.unwrap();

    cluster.start(&[1]).await;
    let addr = cluster.members[&1].addr.clone();
    assert_eq!(cluster.store(1).members().voters.get(&1), Some(&addr));
    cluster.assert_holds(1, "/kept", "1");
    cluster.define(2);
    cluster.start_joining(2).await;
    let joiner = cluster.members[&2].addr.clone();
    cluster.store(1).join_member(2, joiner).await.unwrap();
    cluster.put("both", "1").await;
    cluster.stop_all().await;
}

/// A leader that hands over (as a control plane does when it stops): another voter leads well
/// within the lease after which a crashed leader would be replaced, writes sent meanwhile
/// through every member are held and then go to the new leader, and none fails or is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_over_without_failing_a_write() {
    let mut cluster = Cluster::new(&[1, 2, 3], NO_SNAPSHOTS);
    cluster.start(&[1, 2, 3]).await;
    let old = cluster.leader().await;
    // A leader hands over once its own election is a lease old (its vote then counts).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let writers: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|id| {
            let store = cluster.store(id).clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..40 {
                    let key = format!("w{id}-{i}");
                    let put = store.put(key.clone().into_bytes(), b"v".to_vec()).await;
                    written.push((key, put));
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                written
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let new = cluster.store(old).hand_over().await;
    let took = started.elapsed();
    eprintln!("leader {old} handed over to {new:?} in {took:?}");
    let new = new.expect("the leader hands over to a voter");
    assert_ne!(new, old);
    assert_eq!(cluster.leader().await, new);
    let mut last = 0;
    for writer in writers {
        for (key, put) in writer.await.unwrap() {
            let revision = put.unwrap_or_else(|e| panic!("{key} failed: {e}"));
            last = last.max(revision);
        }
    }
    for id in [1, 2, 3] {
        cluster.caught_up(id, last).await;
        for writer in 1..=3 {
            for i in 0..40 {
                cluster.assert_holds(id, &format!("w{writer}-{i}"), "v");
            }
        }
    }
    // A follower has nothing to hand over.
    assert_eq!(cluster.store(old).hand_over().await, None);
    cluster.stop_all().await;
}

/// A node joins once the cluster is led by a voter that joined later than the first one. The
/// joiner replays the log from its start, whose first memberships name only the first voter;
/// that must not make it refuse today's leader. (It did: the peer transport checked a sender
/// against the membership the joiner's log had reached, and a log of more than one
/// append-entries batch before the second voter joined left it refusing everyone but the
/// first voter, so it never caught up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_replaying_early_memberships_accepts_todays_leader() {
    let mut cluster = Cluster::new(&[1], NO_SNAPSHOTS);
    cluster.start(&[1]).await;
    // More entries than one append-entries batch carries (openraft sends 300), before anyone
    // else joins.
    for i in 0..400 {
        cluster.put(&format!("early{i}"), "v").await;
    }
    for id in [2, 3] {
        cluster.define(id);
        cluster.start_joining(id).await;
        let addr = cluster.members[&id].addr.clone();
        cluster.store(1).join_member(id, addr).await.unwrap();
    }
    // Node 1 hands the lead to one that was not in the first membership.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let leader = cluster
        .store(1)
        .hand_over()
        .await
        .expect("node 1 hands over");
    assert_ne!(leader, 1);
    cluster.define(4);
    cluster.start_joining(4).await;
    let addr = cluster.members[&4].addr.clone();
    tokio::time::timeout(DEADLINE, cluster.store(leader).join_member(4, addr))
        .await
        .expect("node 4 catches up and joins within the deadline")
        .unwrap();
    let written = cluster.put("late", "1").await;
    cluster.caught_up(4, written).await;
    cluster.assert_holds(4, "early399", "v");
    cluster.stop_all().await;
}
