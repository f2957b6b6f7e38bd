//! etcd 3.4 members as child processes, and a small client of their native gRPC API: the
//! `etcdserverpb.KV` and `etcdserverpb.Maintenance` services over one cleartext HTTP/2
//! connection per client, multiplexing every concurrent call, as clientv3 (and so
//! kube-apiserver) talks to etcd. The gRPC framing ([`grpc`]) and the protobuf messages
//! ([`proto`]) are written by hand for the few calls the benchmark makes.

mod grpc;
mod proto;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use grpc::GrpcCode;
use proto::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse,
};

use crate::{BenchError, READY_DEADLINE, free_port};

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";

/// Where Debian's `etcd-server` package puts the binary.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
const POLL: Duration = Duration::from_millis(100);

/// Installs Debian's `etcd-server` with apt-get if [`ETCD_BIN`] is missing.
pub fn ensure_installed() -> Result<(), BenchError> {
    if Path::new(ETCD_BIN).exists() {
        return Ok(());
    }
    eprintln!("{ETCD_BIN} is missing; running apt-get install -y etcd-server");
    let status = Command::new("apt-get")
        .args(["install", "-y", "etcd-server"])
        .status()
        .map_err(|source| BenchError::Io {
            what: "running apt-get".into(),
            source,
        })?;
    if !status.success() || !Path::new(ETCD_BIN).exists() {
        return Err(BenchError::EtcdMissing(format!(
            "apt-get install -y etcd-server exited with {status} (it needs root)"
        )));
    }
    Ok(())
}

/// One running etcd member; killed (and reaped) on drop.
pub struct Member {
    pub name: String,
    pub client_url: String,
    log: PathBuf,
    child: Child,
}

impl Member {
    /// The member's VmRSS in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
            what: format!("reading {path}"),
            source,
        })?;
        crate::vm_rss_kib(&status)
            .ok_or_else(|| BenchError::Parse(format!("no VmRSS line in {path}")))
    }

    /// Fails, with the tail of its log, if the process has exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(BenchError::EtcdExited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log_tail: tail.join("\n"),
                })
            }
            Err(source) => Err(BenchError::Io {
                what: format!("waiting on etcd member {}", self.name),
                source,
            }),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An etcd cluster of `size` members on loopback, each with its own data dir under `root`.
pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts the members (fsync on, as etcd always does unless `--unsafe-no-fsync`).
    pub fn start(root: &Path, size: usize) -> Result<Cluster, BenchError> {
        let peers: Vec<(String, u16, u16)> = (0..size)
            .map(|i| Ok((format!("m{i}"), free_port()?, free_port()?)))
            .collect::<Result<_, BenchError>>()?;
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, peer, _)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (name, peer_port, client_port) in peers {
            let data_dir = root.join(&name);
            let log = root.join(format!("{name}.log"));
            let log_file = File::create(&log).map_err(|source| BenchError::Io {
                what: format!("creating {}", log.display()),
                source,
            })?;
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let client_url = format!("http://127.0.0.1:{client_port}");
            let child = Command::new(ETCD_BIN)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "strake-bench"])
                .args(["--quota-backend-bytes", "8589934592"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|source| BenchError::Io {
                    what: format!("starting {ETCD_BIN} for member {name}"),
                    source,
                })?;
            members.push(Member {
                name,
                client_url,
                log,
                child,
            });
        }
        Ok(Cluster { members })
    }

    /// Waits until every member reports the same leader; returns a client of the leader.
    pub async fn leader(&mut self) -> Result<Client, BenchError> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            for member in &mut self.members {
                member.check_alive()?;
            }
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BenchError::NotReady(format!(
                    "etcd members did not agree on a leader within {READY_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn agreed_leader(&self) -> Option<Client> {
        let mut leaders = Vec::new();
        let mut leader_client = None;
        for member in &self.members {
            let client = Client::new(&member.client_url).await.ok()?;
            let status = client.status().await.ok()?;
            if status.leader == 0 {
                return None;
            }
            if status.member_id == status.leader {
                leader_client = Some(client);
            }
            leaders.push(status.leader);
        }
        let agreed = leaders.windows(2).all(|w| w[0] == w[1]);
        if agreed { leader_client } else { None }
    }
}

/// What a member says of itself and the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The member it believes leads; 0 while there is no leader.
    pub leader: u64,
}

/// A gRPC client of one member: one HTTP/2 connection, shared by all clones, each call a stream.
#[derive(Clone)]
pub struct Client {
    channel: grpc::Channel,
}

impl Client {
    /// Connects to a member's client URL (`http://host:port`).
    pub async fn new(url: &str) -> Result<Client, BenchError> {
        Ok(Client {
            channel: grpc::Channel::connect(url).await?,
        })
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), BenchError> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let _: PutResponse = self.channel.unary(PUT, &request).await?;
        Ok(())
    }

    /// Puts all pairs in one transaction.
    pub async fn put_all(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BenchError> {
        let request = TxnRequest {
            success: pairs
                .iter()
                .map(|(key, value)| RequestOp {
                    request_put: Some(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                    }),
                })
                .collect(),
        };
        let response: TxnResponse = self.channel.unary(TXN, &request).await?;
        if !response.succeeded {
            return Err(BenchError::EtcdRpc {
                rpc: TXN,
                detail: format!(
                    "a transaction of {} puts without compares answered succeeded: false",
                    pairs.len()
                ),
            });
        }
        Ok(())
    }

    /// A linearizable (`serializable: false`) get.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BenchError> {
        let request = RangeRequest {
            key: key.to_vec(),
            serializable: false,
        };
        let response: RangeResponse = self.channel.unary(RANGE, &request).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// The member's own ID and the leader it knows of.
    pub async fn status(&self) -> Result<MemberStatus, BenchError> {
        let response: StatusResponse = self.channel.unary(STATUS, &StatusRequest {}).await?;
        let header = response.header.ok_or_else(|| BenchError::EtcdRpc {
            rpc: STATUS,
            detail: "the response has no header, so no member ID".into(),
        })?;
        Ok(MemberStatus {
            member_id: header.member_id,
            leader: response.leader,
        })
    }
}
