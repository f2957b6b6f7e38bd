//! The load generator: N concurrent clients draining a shared op counter against one system,
//! recording every op's latency.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use strake_store::Store;

use crate::{BenchError, etcd};

/// The system under load, reached the way its clients reach it: the Strake store through its
/// Rust API on the leader, etcd through its native gRPC API on the leader (one HTTP/2
/// connection shared by all concurrent clients, each call a stream, as clientv3 does).
#[derive(Clone)]
pub enum Target {
    Strake(Store),
    Etcd(etcd::Client),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Strake(_) => "strake",
            Target::Etcd(_) => "etcd",
        }
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), BenchError> {
        match self {
            Target::Strake(store) => store.put(key, value).await.map(drop).map_err(Into::into),
            Target::Etcd(client) => client.put(&key, &value).await,
        }
    }

    /// A linearizable get (read-index on Strake, `serializable: false` on etcd).
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BenchError> {
        match self {
            Target::Strake(store) => Ok(store.get(key).await?.0.map(|kv| kv.value)),
            Target::Etcd(client) => client.get(key).await,
        }
    }
}

/// What one client op does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Put `value` under `{prefix}{i}` for op i.
    Put,
    /// Get `{prefix}{i % keys}` (which must hold `value`), for keys written by an earlier `Put`.
    Get { keys: usize },
}

/// One workload: `ops` ops of `kind` spread over `clients` concurrent clients.
#[derive(Debug, Clone)]
pub struct Workload {
    pub label: String,
    pub kind: Kind,
    pub prefix: String,
    pub clients: usize,
    pub ops: usize,
}

/// Throughput and latency of a workload's successful ops over all its rounds, and what failed.
#[derive(Debug, Clone)]
pub struct Stats {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The throughput of each round on its own.
    pub rounds: Vec<f64>,
    /// Ops that returned an error (not retried, not in the latencies).
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Stats {
    /// Combines the rounds of one system: ops over the time they all took, percentiles over
    /// every op.
    pub fn of(samples: Vec<Sample>) -> Stats {
        let elapsed: Duration = samples.iter().map(|s| s.elapsed).sum();
        let rounds = samples.iter().map(Sample::ops_per_sec).collect();
        let mut latencies = Vec::new();
        let (mut errors, mut first_error) = (0, None);
        for sample in samples {
            latencies.extend(sample.latencies);
            errors += sample.errors;
            first_error = first_error.or(sample.first_error);
        }
        latencies.sort_unstable();
        Stats {
            ops_per_sec: rate(latencies.len(), elapsed),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            rounds,
            errors,
            first_error,
        }
    }
}

/// One round of a workload on one system.
#[derive(Debug, Default)]
pub struct Sample {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: usize,
    first_error: Option<String>,
}

impl Sample {
    fn ops_per_sec(&self) -> f64 {
        rate(self.latencies.len(), self.elapsed)
    }
}

fn rate(ops: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    ops as f64 / elapsed.as_secs_f64()
}

/// What one client recorded.
#[derive(Default)]
struct Record {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

async fn one_op(target: &Target, w: &Workload, i: usize, value: &[u8]) -> Result<(), BenchError> {
    match w.kind {
        Kind::Put => target.put(key(&w.prefix, i), value.to_vec()).await,
        Kind::Get { keys } => {
            let k = key(&w.prefix, i % keys);
            let got = target.get(&k).await?;
            if got.as_deref() == Some(value) {
                return Ok(());
            }
            Err(BenchError::Mismatch(format!(
                "{} returned {:?} bytes for {}",
                target.name(),
                got.map(|v| v.len()),
                String::from_utf8_lossy(&k)
            )))
        }
    }
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}{i:08}").into_bytes()
}

/// Runs ops `ops` of `workload` against `target`. Failed ops are counted and skipped; a get
/// that returns anything but the value that was put aborts the run.
pub async fn run(
    target: &Target,
    workload: &Workload,
    ops: Range<usize>,
    value: &[u8],
) -> Result<Sample, BenchError> {
    let next = Arc::new(AtomicUsize::new(ops.start));
    let end = ops.end;
    let value: Arc<[u8]> = value.into();
    let started = Instant::now();
    let clients = (0..workload.clients).map(|_| {
        let (target, next, value, w) = (
            target.clone(),
            next.clone(),
            value.clone(),
            workload.clone(),
        );
        tokio::spawn(async move {
            let mut record = Record::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, BenchError>(record);
                }
                let op_started = Instant::now();
                match one_op(&target, &w, i, &value).await {
                    Ok(()) => record.latencies.push(op_started.elapsed()),
                    // A wrong value is a correctness failure, not a slow op: stop everything.
                    Err(e @ BenchError::Mismatch(_)) => return Err(e),
                    Err(e) => {
                        record.errors += 1;
                        record.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        })
    });
    let mut sample = Sample {
        latencies: Vec::with_capacity(ops.len()),
        ..Sample::default()
    };
    for joined in futures::future::join_all(clients.collect::<Vec<_>>()).await {
        let record = joined.map_err(|e| BenchError::Internal(format!("client task: {e}")))??;
        sample.latencies.extend(record.latencies);
        sample.errors += record.errors;
        sample.first_error = sample.first_error.or(record.first_error);
    }
    sample.elapsed = started.elapsed();
    Ok(sample)
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn rounds_combine_over_their_total_time() {
        let sample = |ms: &[u64], elapsed_ms: u64| Sample {
            latencies: ms.iter().copied().map(Duration::from_millis).collect(),
            elapsed: Duration::from_millis(elapsed_ms),
            ..Sample::default()
        };
        let stats = Stats::of(vec![sample(&[1, 2, 3, 4], 1000), sample(&[10; 4], 3000)]);
        assert_eq!(stats.ops_per_sec, 2.0);
        assert_eq!(stats.rounds, vec![4.0, 4.0 / 3.0]);
        assert_eq!(stats.p50, Duration::from_millis(4));
        assert_eq!(stats.p99, Duration::from_millis(10));
        assert_eq!(Stats::of(vec![Sample::default()]).ops_per_sec, 0.0);
    }
}
