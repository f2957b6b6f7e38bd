//! The search for one register: just-in-time linearization over a dancing-links list of call
//! and return events, with memoized configurations.
//!
//! Unknown outcomes have no return event, so they never force a backtrack; leaving one
//! unlinearized to the end is the same as it never having taken effect. The search tries
//! operations with known outcomes first and unknown ones only when stuck, and it prunes a
//! configuration when one with the same linearized known operations and register state, but a
//! subset of its unknown operations, was already explored: everything the larger one can still
//! do, the smaller one can too (its extra unknown operations can always go last).
//!
//! For the same reason an unknown write (or delete) is only linearized right after a known
//! operation: in a run of unknown operations between two known ones, whatever precedes a write
//! is overwritten by it, so a linearization that leaves those earlier ones out exists whenever
//! one with them does. Without this rule, each pending unknown write would double the
//! configurations to explore when the search is stuck.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Call, Operation, Outcome, Tick};

/// Interned value id of the absent register.
const ABSENT: u32 = 0;
/// Register values kept for a violation report.
const MAX_REPORTED_VALUES: usize = 8;
/// The list's sentinel entry: its head and its tail.
const SENTINEL: usize = 0;

pub(super) enum Verdict<V> {
    Linearizable { explored: u64 },
    Violation(Found<V>),
    GaveUp { explored: u64 },
}

pub(super) struct Found<V> {
    pub index: usize,
    pub possible_values: Vec<Option<V>>,
    pub longest_prefix: usize,
}

/// An operation's effect on the register, over interned values.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Read(u32),
    /// A write, or a delete (a write of [`ABSENT`]).
    Write(u32),
    CasDone {
        expected: u32,
        new: u32,
    },
    CasFailed {
        expected: u32,
    },
    /// A compare-and-set with no answer. Linearizing it where the compare fails changes
    /// nothing, so it is only worth trying where the compare holds.
    CasUnknown {
        expected: u32,
        new: u32,
    },
}

impl Effect {
    /// The register's state after this operation takes effect in `state`, if it can.
    fn step(self, state: u32) -> Option<u32> {
        match self {
            Effect::Read(seen) => (state == seen).then_some(state),
            Effect::Write(value) => Some(value),
            Effect::CasDone { expected, new } | Effect::CasUnknown { expected, new } => {
                (state == expected).then_some(new)
            }
            Effect::CasFailed { expected } => (state != expected).then_some(state),
        }
    }
}

struct Op {
    /// Position in the caller's history.
    index: usize,
    effect: Effect,
    known: bool,
    /// Bit of this operation in the known or the unknown set.
    slot: usize,
    completed: Tick,
}

struct Interner<'a, V> {
    ids: HashMap<&'a V, u32>,
    values: Vec<&'a V>,
}

impl<'a, V: Eq + Hash> Interner<'a, V> {
    fn id(&mut self, value: Option<&'a V>) -> u32 {
        let Some(value) = value else {
            return ABSENT;
        };
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        self.values.push(value);
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.ids.insert(value, id);
        id
    }

    fn value(&self, id: u32) -> Option<&'a V> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.values.get(index).copied()
    }
}

fn words(bits: usize) -> usize {
    bits.div_ceil(64)
}

fn set(bits: &mut [u64], slot: usize, on: bool) {
    let mask = 1u64 << (slot % 64);
    if on {
        bits[slot / 64] |= mask;
    } else {
        bits[slot / 64] &= !mask;
    }
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

/// One linearized operation on the search stack.
struct Frame {
    op: usize,
    state_before: u32,
    /// The pass (0: known outcomes, 1: unknown ones) it was linearized in.
    pass: u8,
}

struct Search {
    ops: Vec<Op>,
    /// Per list entry: its operation and whether it is that operation's return.
    entry_op: Vec<usize>,
    entry_is_return: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_entry: Vec<usize>,
    return_entry: Vec<Option<usize>>,
    known: Vec<u64>,
    unknown: Vec<u64>,
    /// (linearized known ops, state) -> minimal sets of linearized unknown ops explored.
    seen: HashMap<(Vec<u64>, u32), Vec<Vec<u64>>>,
    explored: u64,
}

impl Search {
    fn new(ops: Vec<Op>, invoked: &[Tick], known_count: usize, unknown_count: usize) -> Self {
        let mut events: Vec<(Tick, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((invoked[i], false, i));
            if op.known {
                events.push((op.completed, true, i));
            }
        }
        // At equal ticks calls sort before returns: such operations count as concurrent.
        events.sort_unstable();
        let len = events.len() + 1;
        let mut search = Search {
            entry_op: vec![usize::MAX; len],
            entry_is_return: vec![false; len],
            next: (0..len).map(|i| (i + 1) % len).collect(),
            prev: (0..len).map(|i| (i + len - 1) % len).collect(),
            call_entry: vec![SENTINEL; ops.len()],
            return_entry: vec![None; ops.len()],
            known: vec![0; words(known_count)],
            unknown: vec![0; words(unknown_count)],
            seen: HashMap::new(),
            explored: 0,
            ops,
        };
        for (position, (_, is_return, op)) in events.into_iter().enumerate() {
            let entry = position + 1;
            search.entry_op[entry] = op;
            search.entry_is_return[entry] = is_return;
            if is_return {
                search.return_entry[op] = Some(entry);
            } else {
                search.call_entry[op] = entry;
            }
        }
        search
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Undoes [`Search::unlink`]; undos must come in the reverse order of the unlinks.
    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    fn mark(&mut self, op: usize, on: bool) {
        let Op { known, slot, .. } = self.ops[op];
        let bits = if known {
            &mut self.known
        } else {
            &mut self.unknown
        };
        set(bits, slot, on);
    }

    /// Records the configuration reached; false if it (or one that dominates it) was explored.
    fn first_visit(&mut self, state: u32) -> bool {
        let sets = self.seen.entry((self.known.clone(), state)).or_default();
        if sets
            .iter()
            .any(|explored| is_subset(explored, &self.unknown))
        {
            return false;
        }
        sets.retain(|explored| !is_subset(&self.unknown, explored));
        sets.push(self.unknown.clone());
        self.explored += 1;
        true
    }
}

/// Blocking operation seen furthest in the history, for the report.
struct Blocker {
    op: usize,
    states: Vec<u32>,
}

pub(super) fn check_register<K, V: Eq + Hash + Clone>(
    history: &[Operation<K, V>],
    indices: &[usize],
    limit: u64,
) -> Verdict<V> {
    let mut values = Interner {
        ids: HashMap::new(),
        values: Vec::new(),
    };
    let mut ops = Vec::with_capacity(indices.len());
    let mut invoked = Vec::with_capacity(indices.len());
    let (mut known_count, mut unknown_count) = (0, 0);
    for &index in indices {
        let op = &history[index];
        let known = op.outcome != Outcome::Unknown;
        let effect = match (&op.call, &op.outcome) {
            (Call::Read, Outcome::Read(seen)) => Effect::Read(values.id(seen.as_ref())),
            // A read nobody heard back from changed nothing.
            (Call::Read, _) => continue,
            (Call::Write(value), _) => Effect::Write(values.id(Some(value))),
            (Call::Delete, _) => Effect::Write(ABSENT),
            (Call::Cas { expected, new }, Outcome::Done) => Effect::CasDone {
                expected: values.id(expected.as_ref()),
                new: values.id(Some(new)),
            },
            (Call::Cas { expected, .. }, Outcome::CasFailed) => Effect::CasFailed {
                expected: values.id(expected.as_ref()),
            },
            (Call::Cas { expected, new }, _) => Effect::CasUnknown {
                expected: values.id(expected.as_ref()),
                new: values.id(Some(new)),
            },
        };
        let counter = if known {
            &mut known_count
        } else {
            &mut unknown_count
        };
        let slot = *counter;
        *counter += 1;
        ops.push(Op {
            index,
            effect,
            known,
            slot,
            completed: op.completed,
        });
        invoked.push(op.invoked);
    }

    let mut search = Search::new(ops, &invoked, known_count, unknown_count);
    let mut remaining_known = known_count;
    let mut state = ABSENT;
    let mut stack: Vec<Frame> = Vec::new();
    let mut longest_prefix = 0;
    let mut blocker: Option<Blocker> = None;
    // Where the walk stands: the pass and the next list entry to look at.
    let mut pass = 0u8;
    let mut entry = search.next[SENTINEL];
    search.first_visit(state);
    loop {
        if remaining_known == 0 {
            return Verdict::Linearizable {
                explored: search.explored,
            };
        }
        if search.explored > limit {
            return Verdict::GaveUp {
                explored: search.explored,
            };
        }
        if entry == SENTINEL || search.entry_is_return[entry] {
            // Every operation that could take effect before this return has been tried.
            if pass == 0 {
                pass = 1;
                entry = search.next[SENTINEL];
                continue;
            }
            if entry != SENTINEL {
                let op = search.entry_op[entry];
                let completed = search.ops[op].completed;
                match &mut blocker {
                    Some(b) if b.op == op => {
                        if !b.states.contains(&state) && b.states.len() < MAX_REPORTED_VALUES {
                            b.states.push(state);
                        }
                    }
                    Some(b) if search.ops[b.op].completed >= completed => {}
                    _ => {
                        blocker = Some(Blocker {
                            op,
                            states: vec![state],
                        });
                    }
                }
            }
            let Some(frame) = stack.pop() else {
                let blocker = blocker.unwrap_or(Blocker {
                    op: search.entry_op[search.next[SENTINEL]],
                    states: vec![state],
                });
                return Verdict::Violation(Found {
                    index: search.ops[blocker.op].index,
                    possible_values: blocker
                        .states
                        .iter()
                        .map(|id| values.value(*id).cloned())
                        .collect(),
                    longest_prefix,
                });
            };
            let call = search.call_entry[frame.op];
            if let Some(ret) = search.return_entry[frame.op] {
                search.relink(ret);
            }
            search.relink(call);
            search.mark(frame.op, false);
            if search.ops[frame.op].known {
                remaining_known += 1;
            }
            state = frame.state_before;
            pass = frame.pass;
            entry = search.next[call];
            continue;
        }
        let op = search.entry_op[entry];
        let wanted = search.ops[op].known == (pass == 0)
            && (search.ops[op].known
                || !matches!(search.ops[op].effect, Effect::Write(_))
                || stack.last().is_none_or(|top| search.ops[top.op].known));
        if wanted && let Some(after) = search.ops[op].effect.step(state) {
            search.mark(op, true);
            if search.first_visit(after) {
                stack.push(Frame {
                    op,
                    state_before: state,
                    pass,
                });
                longest_prefix = longest_prefix.max(stack.len());
                search.unlink(entry);
                if let Some(ret) = search.return_entry[op] {
                    search.unlink(ret);
                }
                if search.ops[op].known {
                    remaining_known -= 1;
                }
                state = after;
                pass = 0;
                entry = search.next[SENTINEL];
                continue;
            }
            search.mark(op, false);
        }
        entry = search.next[entry];
    }
}
