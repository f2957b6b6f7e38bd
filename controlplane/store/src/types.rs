//! The public data model of the keyspace: key-values, range reads, transactions and watch events.
//!
//! These types travel through the raft log (postcard), so changing a field changes the on-disk
//! format of log entries and snapshots.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Largest value accepted by a put (1.5 MiB, the same bound etcd uses for a request).
pub const MAX_VALUE_SIZE: usize = 1536 * 1024;
/// Largest key accepted by any operation.
pub const MAX_KEY_SIZE: usize = 4 * 1024;
/// Most operations (compares + ops of both branches) one transaction may carry.
pub const MAX_TXN_OPS: usize = 128;
/// Largest total of key and value bytes one transaction may carry.
pub const MAX_TXN_BYTES: usize = 3 * 1024 * 1024;

/// One key as stored, with its MVCC bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (after its last delete).
    pub create_revision: u64,
    /// Revision of the last put (or, in a delete event, of the delete).
    pub mod_revision: u64,
    /// Number of puts since creation; a delete resets it to 0.
    pub version: u64,
}

/// A read of every key starting with `prefix`, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Key prefix; an empty prefix reads the whole keyspace.
    pub prefix: Vec<u8>,
    /// Continuation: only keys strictly greater than this one are returned.
    pub start_after: Option<Vec<u8>>,
    /// Maximum number of keys returned; 0 means no limit.
    pub limit: usize,
    /// 0 reads the latest state; otherwise the keyspace as of that revision, which must not be
    /// compacted and must not lie in the future.
    pub revision: u64,
}

/// Result of a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// True if more keys matched than `limit` allowed to return.
    pub more: bool,
    /// The store's revision when the read was served (the header revision).
    pub revision: u64,
}

/// Comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    /// Evaluates `actual <op> expected`.
    pub fn holds(self, actual: u64, expected: u64) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

/// A guard of a [`Txn`]. An absent key has mod_revision, create_revision and version 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    ModRevision { key: Vec<u8>, op: CmpOp, value: u64 },
    CreateRevision { key: Vec<u8>, op: CmpOp, value: u64 },
    Version { key: Vec<u8>, op: CmpOp, value: u64 },
}

impl Compare {
    pub fn key(&self) -> &[u8] {
        match self {
            Compare::ModRevision { key, .. }
            | Compare::CreateRevision { key, .. }
            | Compare::Version { key, .. } => key,
        }
    }

    /// Evaluates this compare against the current state of its key.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match self {
            Compare::ModRevision { op, value, .. } => {
                op.holds(current.map_or(0, |kv| kv.mod_revision), *value)
            }
            Compare::CreateRevision { op, value, .. } => {
                op.holds(current.map_or(0, |kv| kv.create_revision), *value)
            }
            Compare::Version { op, value, .. } => {
                op.holds(current.map_or(0, |kv| kv.version), *value)
            }
        }
    }
}

/// One operation of a [`Txn`] branch. Operations run in order and see earlier writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    Get { key: Vec<u8> },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key,
        }
    }
}

/// An atomic compare-and-swap: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What one [`Op`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put {
        prev: Option<KeyValue>,
        kv: KeyValue,
    },
    Delete {
        prev: Option<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
}

/// Result of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held (so `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: bumped by one if it changed anything.
    pub revision: u64,
    /// One result per op of the branch that ran.
    pub results: Vec<OpResult>,
}

/// Subscription to changes of keys under a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub prefix: Vec<u8>,
    /// Deliver every event with revision >= this; 0 means only changes after the call.
    pub start_revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key. Events of one revision share it and keep their order in the txn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: u64,
    pub kind: EventKind,
    /// The new state; for a delete: the key, `mod_revision` = the delete's revision, the rest 0.
    pub kv: KeyValue,
    /// The key's state before this event, if it existed.
    pub prev_kv: Option<KeyValue>,
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(StoreError::KeyTooLarge {
            size: key.len(),
            max: MAX_KEY_SIZE,
        });
    }
    Ok(())
}

impl Txn {
    /// Bytes of keys and values this transaction carries.
    pub(crate) fn payload_bytes(&self) -> usize {
        let ops = self.success.iter().chain(&self.failure);
        let written: usize = ops
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                other => other.key().len(),
            })
            .sum();
        written + self.compare.iter().map(|c| c.key().len()).sum::<usize>()
    }

    /// Checks the bounds every transaction must meet before it is proposed to raft.
    pub fn validate(&self) -> Result<(), StoreError> {
        let ops = self.compare.len() + self.success.len() + self.failure.len();
        if ops > MAX_TXN_OPS {
            return Err(StoreError::TooManyOps {
                ops,
                max: MAX_TXN_OPS,
            });
        }
        let mut bytes = 0usize;
        for cmp in &self.compare {
            check_key(cmp.key())?;
            bytes += cmp.key().len();
        }
        for branch in [&self.success, &self.failure] {
            let mut written: Vec<&[u8]> = Vec::new();
            for op in branch {
                check_key(op.key())?;
                bytes += op.key().len();
                if let Op::Put { key, value } = op
                    && value.len() > MAX_VALUE_SIZE
                {
                    return Err(StoreError::ValueTooLarge {
                        key: String::from_utf8_lossy(key).into_owned(),
                        size: value.len(),
                        max: MAX_VALUE_SIZE,
                    });
                }
                if let Op::Put { value, .. } = op {
                    bytes += value.len();
                }
                if matches!(op, Op::Put { .. } | Op::Delete { .. }) {
                    if written.contains(&op.key()) {
                        return Err(StoreError::DuplicateKeyInTxn {
                            key: String::from_utf8_lossy(op.key()).into_owned(),
                        });
                    }
                    written.push(op.key());
                }
            }
        }
        if bytes > MAX_TXN_BYTES {
            return Err(StoreError::TxnTooLarge {
                size: bytes,
                max: MAX_TXN_BYTES,
            });
        }
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (empty prefix or all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, len: usize) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value: vec![7; len],
        }
    }

    #[test]
    fn validate_refuses_oversized_value_naming_the_key() {
        let txn = Txn {
            success: vec![put("/a", MAX_VALUE_SIZE + 1)],
            ..Txn::default()
        };
        let err = txn.validate().unwrap_err();
        assert!(
            matches!(err, StoreError::ValueTooLarge { ref key, .. } if key == "/a"),
            "{err}"
        );
        let ok = Txn {
            success: vec![put("/a", MAX_VALUE_SIZE)],
            ..Txn::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn validate_refuses_duplicate_writes_and_empty_keys() {
        let dup = Txn {
            success: vec![
                put("/a", 1),
                Op::Delete {
                    key: b"/a".to_vec(),
                },
            ],
            ..Txn::default()
        };
        assert!(matches!(
            dup.validate(),
            Err(StoreError::DuplicateKeyInTxn { .. })
        ));
        let reads = Txn {
            success: vec![
                put("/a", 1),
                Op::Get {
                    key: b"/a".to_vec(),
                },
            ],
            failure: vec![put("/a", 1)],
            ..Txn::default()
        };
        reads.validate().unwrap();
        let empty = Txn {
            success: vec![put("", 1)],
            ..Txn::default()
        };
        assert!(matches!(empty.validate(), Err(StoreError::EmptyKey)));
    }

    #[test]
    fn validate_bounds_ops_and_total_bytes() {
        let many = Txn {
            success: (0..=MAX_TXN_OPS)
                .map(|i| put(&format!("/k{i}"), 1))
                .collect(),
            ..Txn::default()
        };
        assert!(matches!(
            many.validate(),
            Err(StoreError::TooManyOps { .. })
        ));
        let big = Txn {
            success: (0..3)
                .map(|i| put(&format!("/k{i}"), MAX_VALUE_SIZE))
                .collect(),
            ..Txn::default()
        };
        assert!(matches!(
            big.validate(),
            Err(StoreError::TxnTooLarge { .. })
        ));
    }

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"/a"), Some(b"/b".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn compare_treats_absent_key_as_zero() {
        let cmp = Compare::Version {
            key: b"/a".to_vec(),
            op: CmpOp::Equal,
            value: 0,
        };
        assert!(cmp.holds(None));
        let kv = KeyValue {
            key: b"/a".to_vec(),
            value: vec![],
            create_revision: 2,
            mod_revision: 5,
            version: 3,
        };
        assert!(!cmp.holds(Some(&kv)));
        let cmp = Compare::ModRevision {
            key: b"/a".to_vec(),
            op: CmpOp::Less,
            value: 6,
        };
        assert!(cmp.holds(Some(&kv)));
    }
}
