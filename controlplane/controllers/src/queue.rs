//! The work queue between caches and reconcilers. A key waits in the queue at most once (adds
//! coalesce), is handed to one worker at a time (a key added while it is being reconciled is
//! queued again when the worker is done), can be delayed (`add_after`), and failing keys back
//! off exponentially per key (`add_rate_limited`), as client-go's rate-limited queue does.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key exponential back-off: `base * 2^failures`, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5),
            max: Duration::from_secs(300),
        }
    }
}

struct State<T> {
    ready: VecDeque<T>,
    queued: HashSet<T>,
    active: HashSet<T>,
    /// Keys added while active: queued again when done.
    again: HashSet<T>,
    delayed: BTreeMap<(Instant, u64), T>,
    due: HashMap<T, (Instant, u64)>,
    failures: HashMap<T, u32>,
    seq: u64,
}

pub struct Queue<T> {
    state: Mutex<State<T>>,
    wake: Notify,
    backoff: Backoff,
}

impl<T: Clone + Eq + Hash + Send> Default for Queue<T> {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl<T: Clone + Eq + Hash + Send> Queue<T> {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                delayed: BTreeMap::new(),
                due: HashMap::new(),
                failures: HashMap::new(),
                seq: 0,
            }),
            wake: Notify::new(),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: T) {
        let mut s = self.lock();
        Self::enqueue(&mut s, key);
        drop(s);
        self.wake.notify_one();
    }

    fn enqueue(s: &mut State<T>, key: T) {
        if let Some(at) = s.due.remove(&key) {
            s.delayed.remove(&at);
        }
        if s.active.contains(&key) {
            s.again.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
        }
    }

    /// Adds `key` once `delay` has passed; an earlier pending add wins.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.queued.contains(&key) {
            return;
        }
        if let Some(&(when, seq)) = s.due.get(&key) {
            if when <= at {
                return;
            }
            s.delayed.remove(&(when, seq));
        }
        s.seq += 1;
        let slot = (at, s.seq);
        s.delayed.insert(slot, key.clone());
        s.due.insert(key, slot);
        drop(s);
        self.wake.notify_one();
    }

    /// Adds `key` after its back-off, which doubles with each call until [`forget`](Self::forget).
    pub fn add_rate_limited(&self, key: T) {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            let d = self
                .backoff
                .base
                .saturating_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
                .min(self.backoff.max);
            *n = n.saturating_add(1);
            d
        };
        self.add_after(key, delay);
    }

    /// Clears `key`'s back-off.
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to work on; the caller owns it until [`done`](Self::done).
    pub async fn next(&self) -> T {
        loop {
            let notified = self.wake.notified();
            let deadline = {
                let mut s = self.lock();
                let now = Instant::now();
                while let Some((&slot, _)) = s.delayed.first_key_value() {
                    if slot.0 > now {
                        break;
                    }
                    let key = s.delayed.remove(&slot).expect("present");
                    s.due.remove(&key);
                    Self::enqueue(&mut s, key);
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        self.wake.notify_one();
                    }
                    return key;
                }
                s.delayed.first_key_value().map(|(slot, _)| slot.0)
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Ends work on `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &T) {
        let mut s = self.lock();
        s.active.remove(key);
        if s.again.remove(key) {
            Self::enqueue(&mut s, key.clone());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Hands keys that were being worked on back to the queue: workers that held them were
    /// stopped (a controller that lost its lease) and will never call [`done`](Self::done).
    pub fn requeue_active(&self) {
        let mut s = self.lock();
        let active: Vec<T> = s.active.drain().collect();
        s.again.clear();
        for k in active {
            Self::enqueue(&mut s, k);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Keys waiting now (not delayed, not active).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn adds_coalesce_and_active_keys_come_back_once() {
        let q: Queue<&str> = Queue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1, "an active key is not handed out twice");
        assert_eq!(q.next().await, "b");
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.len(), 1, "re-added while active: queued once more");
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_and_backoff() {
        let q: Queue<&str> = Queue::new(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        });
        let t0 = Instant::now();
        q.add_after("late", Duration::from_secs(5));
        q.add_after("early", Duration::from_secs(1));
        q.add_after("late", Duration::from_secs(9));
        assert_eq!(q.next().await, "early");
        assert_eq!(t0.elapsed().as_secs(), 1);
        q.done(&"early");
        assert_eq!(q.next().await, "late");
        assert_eq!(t0.elapsed().as_secs(), 5, "the earlier of two delays wins");
        q.done(&"late");

        let delays: Vec<u128> = {
            let mut out = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                q.add_rate_limited("f");
                assert_eq!(q.next().await, "f");
                q.done(&"f");
                out.push(t.elapsed().as_millis());
            }
            out
        };
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        q.forget(&"f");
        let t = Instant::now();
        q.add_rate_limited("f");
        q.next().await;
        assert_eq!(t.elapsed().as_millis(), 10, "forget resets the back-off");
    }

    #[tokio::test(start_paused = true)]
    async fn an_add_cancels_a_delay() {
        let q: Queue<&str> = Queue::default();
        q.add_after("k", Duration::from_secs(60));
        q.add("k");
        assert_eq!(q.next().await, "k");
        q.done(&"k");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(q.is_empty(), "the delayed copy was dropped");
    }
}
