//! The one error type of the store. Messages name the file, key or revision involved.

use std::path::PathBuf;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{Fatal, InitializeError, QuorumNotEnough};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store config: {problem}")]
    Config { problem: String },

    #[error("invalid store config: {field}: {problem}")]
    InvalidConfig { field: String, problem: String },

    #[error("cannot listen for raft peers on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("peer TLS: {problem}")]
    PeerTls { problem: String },

    #[error("invalid peer address {addr:?}: {problem}")]
    InvalidPeerAddr { addr: String, problem: String },

    #[error("membership change refused: {problem}")]
    Membership { problem: String },

    #[error(
        "learner {node_id} was added but did not catch up with the leader within {waited:?}; it stays a learner"
    )]
    LearnerLagging { node_id: u64, waited: Duration },

    #[error("backup file {path} is unusable: {problem}")]
    CorruptBackup { path: PathBuf, problem: String },

    #[error(
        "cannot restore into {path}: the directory is not empty (a restore only creates a new data directory)"
    )]
    RestoreTargetNotEmpty { path: PathBuf },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot open database file {path}: {source}")]
    OpenDatabase {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },

    #[error("database file {path} is corrupt: {problem}")]
    CorruptFile { path: PathBuf, problem: String },

    #[error(
        "data directory is incomplete: {present} exists but {missing} is missing; refusing to reinitialize (restore from a backup or remove the directory)"
    )]
    IncompleteDataDir { present: PathBuf, missing: PathBuf },

    #[error(
        "database file {path} belongs to node {stored}, but this node is configured as {configured}"
    )]
    NodeIdMismatch {
        path: PathBuf,
        stored: u64,
        configured: u64,
    },

    #[error("database {path}: {op}: {source}")]
    Database {
        path: PathBuf,
        op: &'static str,
        source: Box<redb::Error>,
    },

    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },

    #[error("keys must not be empty")]
    EmptyKey,

    #[error("key is {size} bytes, more than the limit of {max}")]
    KeyTooLarge { size: usize, max: usize },

    #[error("value for key {key:?} is {size} bytes, more than the limit of {max}")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },

    #[error("transaction has {ops} compares and operations, more than the limit of {max}")]
    TooManyOps { ops: usize, max: usize },

    #[error("transaction carries {size} bytes of keys and values, more than the limit of {max}")]
    TxnTooLarge { size: usize, max: usize },

    #[error("transaction writes key {key:?} more than once in one branch")]
    DuplicateKeyInTxn { key: String },

    #[error(
        "revision {requested} has been compacted; the oldest available revision is {compacted}"
    )]
    Compacted { requested: u64, compacted: u64 },

    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: u64, current: u64 },

    #[error("this node is not the raft leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },

    #[error(
        "this node has applied its raft log only up to {applied:?}, and a linearizable read needs {needed}; it is catching up"
    )]
    CatchingUp { needed: u64, applied: Option<u64> },

    #[error(
        "cannot reach the leader (node {leader_id} at {leader_addr}) to forward to it: {problem} (a forwarded write may or may not have been applied)"
    )]
    LeaderUnreachable {
        leader_id: u64,
        leader_addr: String,
        problem: String,
    },

    #[error("the leader (node {leader_id}) failed a forwarded request: {problem}")]
    Forwarded { leader_id: u64, problem: String },

    #[error("raft quorum unavailable: {0}")]
    NoQuorum(#[source] Box<QuorumNotEnough<u64>>),

    #[error("raft cannot initialize the cluster: {0}")]
    Initialize(#[source] Box<InitializeError<u64, BasicNode>>),

    #[error("store did not become ready within {waited:?}: {detail}")]
    StartupTimeout { waited: Duration, detail: String },

    #[error("raft stopped: {0}")]
    Raft(#[source] Box<Fatal<u64>>),

    #[error("the store is shut down")]
    Stopped,

    #[error(
        "disk full: {problem}; writes fail until space is freed (a write that was under way may still be applied then)"
    )]
    DiskFull { problem: String },

    #[error(
        "the raft log could not be synced to disk, so this node takes no more writes: {problem}"
    )]
    LogSync { problem: String },

    #[error(
        "a write to the state file failed, so this node serves no reads and applies no writes until it is restarted: {problem}"
    )]
    StateFailed { problem: String },

    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Fatal<u64>> for StoreError {
    fn from(err: Fatal<u64>) -> Self {
        match err {
            Fatal::Stopped => StoreError::Stopped,
            other => StoreError::Raft(Box::new(other)),
        }
    }
}
