//! The store seam between the registry and whatever persists objects: an etcd-like keyspace
//! (revisions, range reads at a revision, compare-and-swap writes, watch from a revision).
//! [`RaftStore`] puts it on the replicated store; [`MemoryStore`] keeps it in memory for tests;
//! [`Encrypted`] seals chosen resources' values over either (encryption at rest).
//! Both pass the one [`conformance`] suite.

pub mod conformance;
mod encrypted;
mod memory;
mod raft;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use encrypted::{Encrypted, EncryptionConfig};
pub use memory::MemoryStore;
pub use raft::RaftStore;

/// One stored object: its key, its bytes and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the write that produced this value (the object's resourceVersion).
    pub revision: u64,
}

/// A page of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Stored>,
    /// More keys matched than the limit allowed.
    pub more: bool,
    /// The revision the read was served at.
    pub revision: u64,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: Vec<u8>,
    pub revision: u64,
    /// The new value (puts only).
    pub value: Option<Vec<u8>>,
    /// The value before this change, if the key existed.
    pub prev: Option<Stored>,
}

/// A key written along with another in one atomic write ([`ObjectStore::write_with`]): it
/// must still be at `expected`, or absent when `expected` is 0 (a quota's status, charged with
/// the object it counts; a claim on a value, made with the object holding it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub expected: u64,
}

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("key not found")]
    NotFound,
    #[error("key already exists")]
    AlreadyExists,
    #[error("key was modified: its current revision is {current}")]
    Conflict { current: u64 },
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: u64, current: u64 },
    #[error("object is {size} bytes once stored, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("a key written with this one was modified: its current revision is {current:?}")]
    GuardFailed { key: Vec<u8>, current: Option<u64> },
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Internal(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The keyspace the registry persists objects in. Every method documents the invariant every
/// implementation keeps; [`conformance::run`] checks them.
pub trait ObjectStore: Send + Sync + 'static {
    /// The key's current value, or `None`.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StorageResult<Option<Stored>>>;

    /// Keys under `prefix` in key order, strictly after `start_after`, at most `limit` (0: all),
    /// as of `revision` (0: now). A compacted revision fails with `Compacted`, a future one with
    /// `FutureRevision`.
    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: Option<&'a [u8]>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'a, StorageResult<Page>>;

    /// Writes a key that must not exist (`AlreadyExists` otherwise).
    fn create(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, StorageResult<Stored>>;

    /// Overwrites a key whose revision is `expected` (`NotFound`, or `Conflict` with the current).
    fn update(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'_, StorageResult<Stored>>;

    /// Creates `key` (`expected` None) or updates it at `expected`, and writes every guard at its
    /// own expected revision, in one revision: all or none. The key fails as `create` or
    /// `update` would; a guard that moved fails with `GuardFailed`, naming it.
    fn write_with(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: Option<u64>,
        guards: Vec<Guard>,
    ) -> BoxFuture<'_, StorageResult<Stored>>;

    /// Deletes a key, if its revision is `expected` when given. Returns the delete's revision.
    fn delete(&self, key: Vec<u8>, expected: Option<u64>) -> BoxFuture<'_, StorageResult<u64>>;

    /// Changes under `prefix` with revision >= `from` (0: only changes after this call), in
    /// revision order, each exactly once. A compacted `from` fails with `Compacted`.
    fn watch(
        &self,
        prefix: Vec<u8>,
        from: u64,
    ) -> StorageResult<BoxStream<'static, StorageResult<Change>>>;

    /// The current revision.
    fn revision(&self) -> BoxFuture<'_, StorageResult<u64>>;

    /// Drops history before `revision`; reads and watches before it then fail with `Compacted`.
    fn compact(&self, revision: u64) -> BoxFuture<'_, StorageResult<()>>;
}
