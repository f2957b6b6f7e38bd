//! One store member as its own process, for fault tests that kill it with SIGKILL.
//!
//! Usage: `strake_store_node --id N --data DIR --listen IP:PORT --client IP:PORT
//! --tls-dir DIR [--advertise IP:PORT] [--peer ID=IP:PORT]... [--snapshot-every N]`
//!
//! `--tls-dir` holds `ca.pem`, `cert.pem` and `key.pem`. Once the member is open it serves a
//! line protocol on the loopback `--client` address, one request per line, one answer per line
//! (keys and values are single words):
//!
//! - `GET key` → `VALUE mod_revision value` | `ABSENT` (linearizable read)
//! - `PUT key value` → `OK revision`
//! - `CAS key mod_revision value` → `OK revision` | `FAILED` (put if the key's mod_revision is
//!   still `mod_revision`; 0 means absent)
//! - `STATUS` → `STATUS leader state last_log_index last_applied term` (`-` for unknown)
//!
//! Errors answer `ERR NOTLEADER leader` (`-` if unknown) or `ERR OTHER message`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use strake_store::raft::NodeId;
use strake_store::{CmpOp, Compare, Op, PeerTls, Store, StoreConfig, StoreError, Txn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Args {
    id: NodeId,
    data: PathBuf,
    listen: String,
    advertise: Option<String>,
    client: SocketAddr,
    tls_dir: PathBuf,
    peers: Vec<(NodeId, String)>,
    snapshot_every: Option<u64>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, NodeError> {
    let usage = |problem: String| NodeError::Usage(problem);
    let (mut id, mut data, mut listen, mut client, mut tls_dir) = (None, None, None, None, None);
    let mut peers = Vec::new();
    let mut snapshot_every = None;
    let mut advertise = None;
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--id" => id = Some(value.parse().map_err(|e| usage(format!("--id: {e}")))?),
            "--data" => data = Some(PathBuf::from(value)),
            "--listen" => listen = Some(value),
            "--advertise" => advertise = Some(value),
            "--client" => {
                client = Some(value.parse().map_err(|e| usage(format!("--client: {e}")))?);
            }
            "--tls-dir" => tls_dir = Some(PathBuf::from(value)),
            "--peer" => {
                let (peer, addr) = value
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--peer {value:?} is not ID=IP:PORT")))?;
                let peer = peer
                    .parse()
                    .map_err(|e| usage(format!("--peer {value:?}: {e}")))?;
                peers.push((peer, addr.to_owned()));
            }
            "--snapshot-every" => {
                snapshot_every = Some(
                    value
                        .parse()
                        .map_err(|e| usage(format!("--snapshot-every: {e}")))?,
                );
            }
            other => return Err(usage(format!("unknown flag {other}"))),
        }
    }
    let missing = |flag: &str| usage(format!("{flag} is required"));
    Ok(Args {
        id: id.ok_or_else(|| missing("--id"))?,
        data: data.ok_or_else(|| missing("--data"))?,
        listen: listen.ok_or_else(|| missing("--listen"))?,
        advertise,
        client: client.ok_or_else(|| missing("--client"))?,
        tls_dir: tls_dir.ok_or_else(|| missing("--tls-dir"))?,
        peers,
        snapshot_every,
    })
}

fn read_pem(dir: &std::path::Path, name: &str) -> Result<String, NodeError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| NodeError::Read { path, source })
}

async fn run(args: Args) -> Result<(), NodeError> {
    let tls = PeerTls {
        ca_pem: read_pem(&args.tls_dir, "ca.pem")?,
        cert_pem: read_pem(&args.tls_dir, "cert.pem")?,
        key_pem: read_pem(&args.tls_dir, "key.pem")?,
    };
    let mut cfg = StoreConfig::cluster(args.id, &args.data, args.listen, args.peers, tls);
    cfg.advertise_addr = args.advertise;
    if let Some(every) = args.snapshot_every {
        cfg.snapshot_every = every;
    }
    let listener = TcpListener::bind(args.client)
        .await
        .map_err(|source| NodeError::Listen {
            addr: args.client,
            source,
        })?;
    let store = Store::open(cfg).await?;
    eprintln!("node {} ready, clients on {}", args.id, args.client);
    loop {
        let (conn, _) = listener
            .accept()
            .await
            .map_err(|source| NodeError::Listen {
                addr: args.client,
                source,
            })?;
        tokio::spawn(serve(store.clone(), conn));
    }
}

async fn serve(store: Store, conn: TcpStream) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut answer = answer(&store, &line).await;
        answer.push('\n');
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn error_line(err: StoreError) -> String {
    match err {
        StoreError::NotLeader { leader_id, .. } => format!(
            "ERR NOTLEADER {}",
            leader_id.map_or_else(|| "-".to_owned(), |id| id.to_string())
        ),
        other => format!("ERR OTHER {}", other.to_string().replace('\n', " ")),
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

async fn answer(store: &Store, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["GET", key] => match store.get(key.as_bytes()).await {
            Ok((Some(kv), _)) => format!(
                "VALUE {} {}",
                kv.mod_revision,
                String::from_utf8_lossy(&kv.value)
            ),
            Ok((None, _)) => "ABSENT".to_owned(),
            Err(err) => error_line(err),
        },
        ["PUT", key, value] => {
            match store
                .put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
                .await
            {
                Ok(revision) => format!("OK {revision}"),
                Err(err) => error_line(err),
            }
        }
        ["CAS", key, mod_revision, value] => {
            let Ok(mod_revision) = mod_revision.parse() else {
                return format!("ERR OTHER mod_revision {mod_revision:?} is not a number");
            };
            let txn = Txn {
                compare: vec![Compare::ModRevision {
                    key: key.as_bytes().to_vec(),
                    op: CmpOp::Equal,
                    value: mod_revision,
                }],
                success: vec![Op::Put {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                }],
                failure: Vec::new(),
            };
            match store.txn(txn).await {
                Ok(response) if response.succeeded => format!("OK {}", response.revision),
                Ok(_) => "FAILED".to_owned(),
                Err(err) => error_line(err),
            }
        }
        ["STATUS"] => {
            let metrics = store.raft_metrics();
            format!(
                "STATUS {} {:?} {} {} {}",
                opt(metrics.current_leader),
                metrics.state,
                opt(metrics.last_log_index),
                opt(metrics.last_applied.map(|id| id.index)),
                metrics.current_term,
            )
        }
        _ => format!("ERR OTHER cannot parse request {line:?}"),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("strake_store_node: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("strake_store_node: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Serve from a worker task, not from the main thread's block_on.
    match runtime.block_on(runtime.spawn(run(args))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strake_store_node: the node task failed: {err}");
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("strake_store_node: {err}");
            ExitCode::FAILURE
        }
    }
}
