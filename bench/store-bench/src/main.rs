//! store-bench: the side-by-side benchmark of the Strake store against etcd 3.4 (issue 3).
//! It starts three Strake voters (in-process, mTLS on loopback) and three etcd members (child
//! processes), both with fsync on, runs the same puts and linearizable gets against each
//! leader, each reached the way its own clients reach it (the Strake store through its Rust
//! API; etcd through its native gRPC API, all calls multiplexed on one HTTP/2 connection as
//! with clientv3), prints throughput and p50/p99 latency with the ratios, and measures the RSS
//! of one member holding 100,000 keys.
//! Run on demand: `cargo run --release -p store-bench [-- --ops N]`. It touches only its own
//! temp dir (under /var/tmp, on disk) and its own child processes.

mod etcd;
mod load;
mod strake;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use load::{Kind, Stats, Target, Workload};

/// How long a cluster may take to elect a leader.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
const VALUE_SIZE: usize = 256;
const RSS_BATCH: usize = 100;
const USAGE: &str = "usage: store-bench [--ops N] [--rss-keys N]\n  \
    --ops N       puts with 1 client and gets with 1 client (default 2000); \
    the 64-client runs do 10*N\n  \
    --rounds R    split each workload into R rounds, alternating the systems, so background \
    load on the machine hits both alike (default 5)\n  \
    --rss-keys N  keys held by the member whose RSS is measured (default 100000)\n  \
    --only SYSTEM run only strake or only etcd, skipping the RSS figures (for profiling one side)\n  \
    --workload W  run only workload W (put1, put64, get1 or get64; a get also runs put64, which \
    writes the keys it reads), skipping the RSS figures";

/// Everything that can stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("etcd is not available: {0}")]
    EtcdMissing(String),
    #[error("etcd member {name} exited ({status}); its log ends with:\n{log_tail}")]
    EtcdExited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("connecting to etcd at {url}: {detail}")]
    EtcdConnect { url: String, detail: String },
    /// A gRPC call to etcd that failed in transport, framing or decoding.
    #[error("etcd {rpc}: {detail}")]
    EtcdRpc { rpc: &'static str, detail: String },
    /// A gRPC call that etcd answered with a status other than OK.
    #[error("etcd {rpc} failed with gRPC status {code}: {message}")]
    EtcdStatus {
        rpc: &'static str,
        code: etcd::GrpcCode,
        message: String,
    },
    #[error("Strake store: {0}")]
    Store(#[from] strake_store::StoreError),
    #[error("cluster CA: {0}")]
    Pki(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("unexpected data: {0}")]
    Parse(String),
    #[error("wrong value read back: {0}")]
    Mismatch(String),
    #[error("RSS child process: {0}")]
    Child(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| BenchError::Io {
        what: "binding 127.0.0.1:0 to pick a port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| BenchError::Io {
            what: "reading a bound port".into(),
            source,
        })
}

/// The VmRSS figure (KiB) of a /proc/<pid>/status text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The i-th key of the RSS measurement.
pub fn rss_key(i: usize) -> Vec<u8> {
    format!("rss/{i:08}").into_bytes()
}

struct Options {
    ops: usize,
    /// Each workload runs in this many slices, alternating between the systems.
    rounds: usize,
    rss_keys: usize,
    rss_child: Option<PathBuf>,
    /// Only this system ("strake" or "etcd"), for profiling one side; no ratios then.
    only: Option<&'static str>,
    /// Only this workload (a name in [`WORKLOADS`]), for profiling it.
    workload: Option<&'static str>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, BenchError> {
    let mut opts = Options {
        ops: 2_000,
        rounds: 5,
        rss_keys: 100_000,
        rss_child: None,
        only: None,
        workload: None,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| BenchError::Usage(format!("{name} needs a value")))
        };
        let count = |name: &str, v: String| -> Result<usize, BenchError> {
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(BenchError::Usage(format!(
                    "{name} wants a positive count, not {v:?}"
                ))),
            }
        };
        match arg.as_str() {
            "--ops" => opts.ops = count("--ops", value("--ops")?)?,
            "--rounds" => opts.rounds = count("--rounds", value("--rounds")?)?,
            "--rss-keys" => opts.rss_keys = count("--rss-keys", value("--rss-keys")?)?,
            "--rss-child" => opts.rss_child = Some(value("--rss-child")?.into()),
            "--workload" => {
                let name = value("--workload")?;
                opts.workload =
                    Some(WORKLOADS.into_iter().find(|w| *w == name).ok_or_else(|| {
                        BenchError::Usage(format!(
                            "--workload wants one of {WORKLOADS:?}, not {name:?}"
                        ))
                    })?);
            }
            "--only" => {
                opts.only = Some(match value("--only")?.as_str() {
                    "strake" => "strake",
                    "etcd" => "etcd",
                    other => {
                        return Err(BenchError::Usage(format!(
                            "--only wants strake or etcd, not {other:?}"
                        )));
                    }
                });
            }
            other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    if opts.rounds > opts.ops {
        return Err(BenchError::Usage(format!(
            "--rounds {} is more than --ops {}: every round needs an op",
            opts.rounds, opts.ops
        )));
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|opts| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| BenchError::Io {
                what: "building the tokio runtime".into(),
                source,
            })?;
        match &opts.rss_child {
            Some(dir) => runtime
                .block_on(strake::rss_child(dir, opts.rss_keys, VALUE_SIZE, RSS_BATCH))
                .map(|kib| println!("VmRSS {kib}")),
            None => runtime.block_on(bench(&opts)),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The ops of round `round` out of `rounds` of a workload of `ops` ops.
fn round_ops(ops: usize, rounds: usize, round: usize) -> std::ops::Range<usize> {
    ops * round / rounds..ops * (round + 1) / rounds
}

/// Short names of the workloads, in the order they run.
const WORKLOADS: [&str; 4] = ["put1", "put64", "get1", "get64"];

/// The workloads to run: all, or `only` and what it needs (the gets read put64's keys).
fn workloads(ops: usize, only: Option<&str>) -> Vec<Workload> {
    let put64 = "bench/put64/".to_owned();
    let w = |label: &str, kind, prefix: &str, clients, ops| Workload {
        label: label.into(),
        kind,
        prefix: prefix.into(),
        clients,
        ops,
    };
    vec![
        w("put, 1 client", Kind::Put, "bench/put1/", 1, ops),
        w("put, 64 clients", Kind::Put, &put64, 64, 10 * ops),
        w(
            "get, 1 client",
            Kind::Get { keys: 10 * ops },
            &put64,
            1,
            ops,
        ),
        w(
            "get, 64 clients",
            Kind::Get { keys: 10 * ops },
            &put64,
            64,
            10 * ops,
        ),
    ]
    .into_iter()
    .zip(WORKLOADS)
    .filter(|(_, name)| {
        only.is_none_or(|o| o == *name || (o.starts_with("get") && *name == "put64"))
    })
    .map(|(workload, _)| workload)
    .collect()
}

async fn bench(opts: &Options) -> Result<(), BenchError> {
    etcd::ensure_installed()?;
    // Declared first so it is removed last, after the voters and etcd children are gone.
    let root = tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir_in("/var/tmp")
        .map_err(|source| BenchError::Io {
            what: "creating a temp dir in /var/tmp".into(),
            source,
        })?;
    std::fs::create_dir_all(root.path().join("etcd")).map_err(|source| BenchError::Io {
        what: "creating the etcd dir".into(),
        source,
    })?;
    eprintln!(
        "starting 3 Strake voters and 3 etcd members under {}",
        root.path().display()
    );
    let mut etcd_cluster = etcd::Cluster::start(&root.path().join("etcd"), 3)?;
    let stores = strake::start_cluster(&root.path().join("strake"), 3).await?;
    let targets = [
        Target::Strake(strake::leader(&stores).await?),
        Target::Etcd(etcd_cluster.leader().await?),
    ];
    let value = vec![b'x'; VALUE_SIZE];
    let mut rows: Vec<(String, &'static str, Stats)> = Vec::new();
    let active: Vec<&Target> = targets
        .iter()
        .filter(|t| opts.only.is_none_or(|o| o == t.name()))
        .collect();
    for workload in workloads(opts.ops, opts.workload) {
        for target in &active {
            let warmup = Workload {
                kind: Kind::Put,
                prefix: "warmup/".into(),
                ..workload.clone()
            };
            load::run(target, &warmup, 0..2 * workload.clients, &value).await?;
        }
        // Round by round, the systems taking turns to go first, so background load on the
        // machine hits both alike.
        let mut samples: Vec<Vec<load::Sample>> = active.iter().map(|_| Vec::new()).collect();
        for round in 0..opts.rounds {
            let ops = round_ops(workload.ops, opts.rounds, round);
            let mut order: Vec<usize> = (0..active.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                samples[i].push(load::run(active[i], &workload, ops.clone(), &value).await?);
            }
        }
        for (target, samples) in active.iter().zip(samples) {
            eprintln!("{:<16} {:<6} done", workload.label, target.name());
            rows.push((workload.label.clone(), target.name(), Stats::of(samples)));
        }
    }
    drop(targets);
    for store in stores {
        store.shutdown().await?;
    }
    drop(etcd_cluster);
    if opts.only.is_some() || opts.workload.is_some() {
        print_table(&rows);
        return Ok(());
    }

    eprintln!("measuring RSS with {} keys", opts.rss_keys);
    let strake_rss = strake_rss(&root.path().join("rss-strake"), opts.rss_keys).await?;
    let etcd_rss = etcd_rss(&root.path().join("rss-etcd"), opts.rss_keys).await?;
    print_table(&rows);
    println!(
        "\nRSS of one member holding {} keys of {VALUE_SIZE} B: strake {:.1} MiB, etcd {:.1} MiB \
         (strake/etcd {:.2})",
        opts.rss_keys,
        strake_rss as f64 / 1024.0,
        etcd_rss as f64 / 1024.0,
        strake_rss as f64 / etcd_rss as f64
    );
    Ok(())
}

/// Re-executes this binary in `--rss-child` mode so the voter has a process of its own.
async fn strake_rss(dir: &Path, keys: usize) -> Result<u64, BenchError> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        what: "finding this executable".into(),
        source,
    })?;
    let output = tokio::process::Command::new(exe)
        .arg("--rss-child")
        .arg(dir)
        .args(["--rss-keys", &keys.to_string()])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| BenchError::Io {
            what: "running the RSS child".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(BenchError::Child(format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS ")?.trim().parse().ok())
        .ok_or_else(|| BenchError::Child(format!("printed no VmRSS line: {stdout:?}")))
}

/// Starts a lone etcd member, writes the same keys in the same batches, and reads its RSS.
async fn etcd_rss(dir: &Path, keys: usize) -> Result<u64, BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mut member = etcd::Cluster::start(dir, 1)?;
    let client = member.leader().await?;
    let value = vec![b'v'; VALUE_SIZE];
    for start in (0..keys).step_by(RSS_BATCH) {
        let pairs: Vec<_> = (start..keys.min(start + RSS_BATCH))
            .map(|i| (rss_key(i), value.clone()))
            .collect();
        client.put_all(&pairs).await?;
    }
    if client.get(&rss_key(keys - 1)).await?.is_none() {
        return Err(BenchError::Mismatch(
            "the last etcd RSS key is missing".into(),
        ));
    }
    member.members[0].rss_kib()
}

fn print_table(rows: &[(String, &'static str, Stats)]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\n{:<16} | {:<6} | {:>9} | {:>7} | {:>7} | {:>6}",
        "workload", "system", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    println!("{}", "-".repeat(67));
    for (label, system, s) in rows {
        println!(
            "{label:<16} | {system:<6} | {:>9.0} | {:>7.2} | {:>7.2} | {:>6}",
            s.ops_per_sec,
            ms(s.p50),
            ms(s.p99),
            s.errors
        );
    }
    for (label, system, s) in rows {
        if let Some(e) = &s.first_error {
            println!("first error of {label} on {system}: {e}");
        }
    }
    println!(
        "\n{:<16} | {:>17} | {:>22} | {:>21}",
        "workload", "strake/etcd ops/s", "per round (min-max)", "strake p99 / etcd p99"
    );
    println!("{}", "-".repeat(86));
    for (label, _, strake) in rows.iter().filter(|(_, system, _)| *system == "strake") {
        let etcd = rows
            .iter()
            .find(|(l, system, _)| l == label && *system == "etcd");
        if let Some((_, _, etcd)) = etcd {
            let per_round: Vec<f64> = strake
                .rounds
                .iter()
                .zip(&etcd.rounds)
                .map(|(s, e)| s / e)
                .collect();
            let min = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let max = per_round.iter().copied().fold(0.0, f64::max);
            println!(
                "{label:<16} | {:>16.2}x | {:>10.2}x - {:>8.2}x | {:>20.2}x",
                strake.ops_per_sec / etcd.ops_per_sec,
                min,
                max,
                strake.p99.as_secs_f64() / etcd.p99.as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let opts = parse_args(args(&["--ops", "50", "--rss-keys", "10"])).unwrap();
        assert_eq!((opts.ops, opts.rss_keys, opts.rss_child), (50, 10, None));
        assert_eq!(
            parse_args(args(&["--only", "etcd"])).unwrap().only,
            Some("etcd")
        );
        assert!(matches!(
            parse_args(args(&["--only", "zookeeper"])),
            Err(BenchError::Usage(_))
        ));
        assert!(matches!(
            parse_args(args(&["--workload", "put2"])),
            Err(BenchError::Usage(_))
        ));
        assert!(matches!(
            parse_args(args(&["--ops", "0"])),
            Err(BenchError::Usage(_))
        ));
        assert!(matches!(
            parse_args(args(&["--ops"])),
            Err(BenchError::Usage(_))
        ));
        assert!(matches!(
            parse_args(args(&["--bogus"])),
            Err(BenchError::Usage(_))
        ));
        assert_eq!(parse_args(args(&[])).unwrap().rounds, 5);
        assert_eq!(parse_args(args(&["--rounds", "3"])).unwrap().rounds, 3);
        assert!(matches!(
            parse_args(args(&["--ops", "2", "--rounds", "3"])),
            Err(BenchError::Usage(_))
        ));
    }

    #[test]
    fn rounds_split_the_ops_without_gaps() {
        let rounds: Vec<_> = (0..3).map(|r| round_ops(10, 3, r)).collect();
        assert_eq!(rounds, vec![0..3, 3..6, 6..10]);
        assert_eq!(round_ops(7, 1, 0), 0..7);
    }

    #[test]
    fn one_workload_runs_with_what_it_reads() {
        let opts = parse_args(args(&["--workload", "get1"])).unwrap();
        assert_eq!(opts.workload, Some("get1"));
        let labels =
            |only| -> Vec<String> { workloads(10, only).into_iter().map(|w| w.label).collect() };
        assert_eq!(labels(Some("get1")), ["put, 64 clients", "get, 1 client"]);
        assert_eq!(labels(Some("put1")), ["put, 1 client"]);
        assert_eq!(labels(None).len(), WORKLOADS.len());
    }

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t   5120 kB\nThreads:\t2\n";
        assert_eq!(vm_rss_kib(status), Some(5120));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }
}
