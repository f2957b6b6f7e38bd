use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

type Op = Operation<&'static str, &'static str>;

fn op(
    client: usize,
    key: &'static str,
    call: Call<&'static str>,
    outcome: Outcome<&'static str>,
    invoked: Tick,
    completed: Tick,
) -> Op {
    Operation {
        client,
        key,
        call,
        outcome,
        invoked,
        completed,
    }
}

fn write(client: usize, key: &'static str, v: &'static str, from: Tick, to: Tick) -> Op {
    op(client, key, Call::Write(v), Outcome::Done, from, to)
}

fn read(client: usize, key: &'static str, seen: Option<&'static str>, from: Tick, to: Tick) -> Op {
    op(client, key, Call::Read, Outcome::Read(seen), from, to)
}

fn cas(
    client: usize,
    key: &'static str,
    expected: Option<&'static str>,
    new: &'static str,
    outcome: Outcome<&'static str>,
    from: Tick,
    to: Tick,
) -> Op {
    op(client, key, Call::Cas { expected, new }, outcome, from, to)
}

fn violation(history: &[Op]) -> Violation<&'static str, &'static str> {
    match check(history) {
        Err(CheckError::NotLinearizable(v)) => *v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_history_with_every_kind_of_operation_is_linearizable() {
    let history = [
        read(0, "a", None, 0, 1),
        write(0, "a", "1", 2, 3),
        read(1, "a", Some("1"), 4, 5),
        cas(1, "a", Some("1"), "2", Outcome::Done, 6, 7),
        cas(0, "a", Some("1"), "3", Outcome::CasFailed, 8, 9),
        read(0, "a", Some("2"), 10, 11),
        op(1, "a", Call::Delete, Outcome::Done, 12, 13),
        cas(0, "a", None, "4", Outcome::Done, 14, 15),
        read(1, "a", Some("4"), 16, 17),
    ];
    let summary = check(&history).unwrap();
    assert_eq!(summary.keys, 1);
    assert_eq!(summary.operations, 9);
    assert_eq!(summary.unknown, 0);
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // Two overlapping writes; readers overlapping both may see either, and a later reader
    // pins the order: "1" then "2".
    let history = [
        write(0, "a", "1", 0, 10),
        write(1, "a", "2", 1, 9),
        read(2, "a", Some("1"), 2, 4),
        read(2, "a", Some("2"), 5, 6),
        read(3, "a", Some("2"), 11, 12),
        // A CAS concurrent with a write can see the older value.
        write(0, "b", "x", 0, 5),
        cas(1, "b", None, "y", Outcome::Done, 1, 6),
        read(2, "b", Some("x"), 7, 8),
    ];
    check(&history).unwrap();
}

#[test]
fn a_stale_read_is_reported_with_its_key_and_operation() {
    let history = [
        write(0, "k1", "old", 0, 1),
        write(0, "k2", "fine", 0, 1),
        write(1, "k1", "new", 2, 3),
        read(2, "k2", Some("fine"), 4, 5),
        read(2, "k1", Some("old"), 4, 5),
    ];
    let v = violation(&history);
    assert_eq!(v.key, "k1");
    assert_eq!(v.index, 4);
    assert_eq!(v.operation, history[4]);
    assert_eq!(v.possible_values, vec![Some("new")]);
    let message = CheckError::NotLinearizable(Box::new(v)).to_string();
    assert!(
        message.contains("\"k1\"") && message.contains("read"),
        "{message}"
    );
}

#[test]
fn a_lost_acknowledged_write_is_reported() {
    let history = [
        write(0, "k", "1", 0, 1),
        write(1, "k", "2", 2, 3),
        // Concurrent with nothing: must see "2", sees "1" as if the write were lost.
        read(2, "k", Some("1"), 10, 11),
        read(0, "other", None, 0, 100),
    ];
    let v = violation(&history);
    assert_eq!((v.key, v.index), ("k", 2));
    assert_eq!(v.possible_values, vec![Some("2")]);

    let vanished = [write(0, "k", "1", 0, 1), read(1, "k", None, 2, 3)];
    let v = violation(&vanished);
    assert_eq!((v.key, v.index), ("k", 1));
}

#[test]
fn an_impossible_cas_is_reported() {
    let succeeded_on_wrong_value = [
        write(0, "c", "1", 0, 1),
        cas(1, "c", Some("0"), "2", Outcome::Done, 2, 3),
    ];
    let v = violation(&succeeded_on_wrong_value);
    assert_eq!((v.key, v.index), ("c", 1));
    assert_eq!(v.possible_values, vec![Some("1")]);

    let failed_on_right_value = [
        write(0, "c", "1", 0, 1),
        cas(1, "c", Some("1"), "2", Outcome::CasFailed, 2, 3),
    ];
    let v = violation(&failed_on_right_value);
    assert_eq!((v.key, v.index), ("c", 1));

    // Two CAS from the same expected value cannot both succeed.
    let double = [
        write(0, "c", "1", 0, 1),
        cas(1, "c", Some("1"), "2", Outcome::Done, 2, 5),
        cas(2, "c", Some("1"), "3", Outcome::Done, 2, 5),
    ];
    let v = violation(&double);
    assert_eq!(v.key, "c");
    assert!(v.index == 1 || v.index == 2, "{v}");
}

#[test]
fn unknown_outcomes_may_take_effect_late_or_never() {
    let unknown_write = |v, from| op(0, "u", Call::Write(v), Outcome::Unknown, from, 0);
    // Observed long after the client gave up.
    check(&[
        unknown_write("1", 0),
        read(1, "u", None, 1, 2),
        read(1, "u", Some("1"), 50, 51),
    ])
    .unwrap();
    // Never observed.
    check(&[unknown_write("1", 0), read(1, "u", None, 50, 51)]).unwrap();
    // But not before it was invoked.
    let v = violation(&[read(1, "u", Some("1"), 0, 1), unknown_write("1", 5)]);
    assert_eq!(v.index, 0);
    // An unknown CAS takes effect only where its compare holds.
    let unknown_cas = op(
        0,
        "u",
        Call::Cas {
            expected: Some("1"),
            new: "2",
        },
        Outcome::Unknown,
        3,
        0,
    );
    check(&[
        write(1, "u", "1", 0, 1),
        unknown_cas.clone(),
        read(1, "u", Some("2"), 10, 11),
    ])
    .unwrap();
    let v = violation(&[
        write(1, "u", "0", 0, 1),
        unknown_cas,
        read(1, "u", Some("2"), 10, 11),
    ]);
    assert_eq!(v.index, 2);
    // Unanswered reads say nothing.
    check(&[
        write(1, "u", "1", 0, 1),
        op(0, "u", Call::Read, Outcome::Unknown, 2, 0),
    ])
    .unwrap();
}

#[test]
fn many_unobserved_unknown_writes_do_not_blow_up_the_search() {
    let mut history = Vec::new();
    let values: Vec<&'static str> = (0..200)
        .map(|i| &*Box::leak(format!("v{i}").into_boxed_str()))
        .collect();
    for (i, v) in values.iter().enumerate() {
        let t = i as Tick * 10;
        history.push(op(0, "k", Call::Write(v), Outcome::Unknown, t, 0));
        history.push(write(1, "k", v, t + 1, t + 2));
        history.push(read(2, "k", Some(v), t + 3, t + 4));
    }
    // Each value is written twice here (once unknown); still linearizable.
    let summary = check(&history).unwrap();
    assert!(summary.explored < 10_000, "{summary:?}");
}

#[test]
fn unknown_writes_observed_out_of_order_are_found_without_blowing_up() {
    // Forty writes nobody heard back from, all pending from the start; later reads observe
    // them one by one, newest first. Each read needs exactly one of them linearized right
    // before it.
    let values: Vec<&'static str> = (0..40)
        .map(|i| &*Box::leak(format!("u{i}").into_boxed_str()))
        .collect();
    let mut history: Vec<Op> = values
        .iter()
        .map(|v| op(0, "k", Call::Write(v), Outcome::Unknown, 0, 0))
        .collect();
    for (i, v) in values.iter().rev().enumerate() {
        let t = 10 + i as Tick * 2;
        history.push(read(1, "k", Some(v), t, t + 1));
    }
    let summary = check(&history).unwrap();
    assert!(summary.explored < 10_000, "{summary:?}");

    // The same with a final read of a value nobody wrote: refused, just as quickly.
    history.push(read(1, "k", Some("never"), 1000, 1001));
    let v = violation(&history);
    assert_eq!(v.index, history.len() - 1);
}

#[test]
fn malformed_operations_are_refused() {
    let bad = [op(0, "k", Call::Write("1"), Outcome::Read(None), 0, 1)];
    assert!(matches!(
        check(&bad),
        Err(CheckError::Malformed { index: 0, .. })
    ));
    let backwards = [write(0, "k", "1", 5, 4)];
    assert!(matches!(
        check(&backwards),
        Err(CheckError::Malformed { index: 0, .. })
    ));
}

#[test]
fn the_exploration_limit_makes_a_search_inconclusive() {
    let history: Vec<Op> = (0..20)
        .map(|i| write(i, "k", "same", 0, 100))
        .chain([read(0, "k", Some("other"), 101, 102)])
        .collect();
    assert!(matches!(
        check_with_limit(&history, 5),
        Err(CheckError::Inconclusive { key: "k", .. })
    ));
}

/// A random history from a simulated linearizable register store: every operation takes
/// effect at a random point inside its interval (unknown ones maybe never).
fn simulated(seed: u64, clients: usize, per_client: usize) -> Vec<Operation<u8, u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned = Vec::new();
    let mut next_value = 0u32;
    for client in 0..clients {
        let mut t: Tick = rng.gen_range(0..10);
        for _ in 0..per_client {
            let key = rng.gen_range(0..5u8);
            let invoked = t;
            let point = invoked + rng.gen_range(1..20);
            let completed = point + rng.gen_range(1..20);
            t = completed + rng.gen_range(1..5);
            next_value += 1;
            let call = match rng.gen_range(0..10) {
                0..=3 => Call::Read,
                4..=6 => Call::Write(next_value),
                7 => Call::Delete,
                _ => Call::Cas {
                    expected: rng.gen_bool(0.8).then(|| rng.gen_range(0..next_value)),
                    new: next_value,
                },
            };
            let unknown = rng.gen_bool(0.03);
            let applies = !unknown || rng.gen_bool(0.5);
            planned.push((
                point, client, key, call, invoked, completed, unknown, applies,
            ));
        }
    }
    planned.sort_by_key(|p| p.0);
    let mut registers: BTreeMap<u8, u32> = BTreeMap::new();
    let mut history = Vec::new();
    for (_, client, key, call, invoked, completed, unknown, applies) in planned {
        let current = registers.get(&key).copied();
        let outcome = match &call {
            Call::Read => Outcome::Read(current),
            Call::Write(v) => {
                if applies {
                    registers.insert(key, *v);
                }
                Outcome::Done
            }
            Call::Delete => {
                if applies {
                    registers.remove(&key);
                }
                Outcome::Done
            }
            Call::Cas { expected, new } => {
                if current == *expected {
                    if applies {
                        registers.insert(key, *new);
                    }
                    Outcome::Done
                } else {
                    Outcome::CasFailed
                }
            }
        };
        let outcome = if unknown { Outcome::Unknown } else { outcome };
        history.push(Operation {
            client,
            key,
            call,
            outcome,
            invoked,
            completed,
        });
    }
    history
}

#[test]
fn thousands_of_concurrent_operations_check_quickly() {
    for seed in 0..4 {
        let history = simulated(seed, 6, 600);
        let summary = check(&history).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(summary.keys, 5);
        // Close to one configuration per operation: no exponential wandering.
        assert!(
            summary.explored < 20 * history.len() as u64,
            "seed {seed}: {summary:?}"
        );
    }
}

#[test]
fn one_corrupted_read_in_a_long_history_is_found() {
    let mut history = simulated(7, 6, 600);
    // Make a late read of a key that was written return a value it never held.
    let index = history
        .iter()
        .rposition(|op| matches!(op.outcome, Outcome::Read(Some(_))))
        .unwrap();
    history[index].outcome = Outcome::Read(Some(u32::MAX));
    match check(&history) {
        Err(CheckError::NotLinearizable(v)) => {
            assert_eq!(v.index, index);
            assert_eq!(v.key, history[index].key);
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn the_recorder_orders_operations_and_records_abandoned_ones_as_unknown() {
    let recorder: Recorder<&str, &str> = Recorder::new();
    let first = recorder.begin(0, "k", Call::Write("1"));
    first.finish(Outcome::Done);
    let abandoned = recorder.begin(1, "k", Call::Write("2"));
    let second = recorder.begin(0, "k", Call::Read);
    second.finish(Outcome::Read(Some("2")));
    drop(abandoned);
    let history = recorder.history();
    assert_eq!(history.len(), 3);
    assert!(history[0].completed < history[1].invoked);
    assert_eq!(history[2].outcome, Outcome::Unknown);
    assert!(history[2].invoked < history[1].invoked);
    check(&history).unwrap();
}
