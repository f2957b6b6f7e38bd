//! Reads of the state file: keys, ranges (latest or as of an older revision), history pages and
//! the state-machine metadata. The state machine writes; the [`crate::Store`] and watches read.

use std::collections::BTreeMap;
use std::ops::Bound;

use openraft::{BasicNode, LogId, StoredMembership};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::db::{DbCell, DbResultExt, HISTORY, KV, SM_META, decode, encode};
use crate::error::StoreError;
use crate::raft_types::NodeId;
use crate::types::{KeyValue, RangeRequest, RangeResponse, WatchEvent, prefix_end};

pub(crate) const META_LAST_APPLIED: &str = "last_applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";

/// A key's state as stored in the `kv` table (the key is the table key).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredKv {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl StoredKv {
    pub(crate) fn from_kv(kv: &KeyValue) -> Self {
        Self {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }

    pub(crate) fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// The state machine's bookkeeping, kept in the `sm_meta` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SmMeta {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Latest revision; 1 in a fresh store.
    pub revision: u64,
    /// Oldest revision whose events are still kept: history holds every event with revision >=
    /// this. Ranges can read as of `compacted - 1` or later, watches start at `compacted` or later.
    pub compacted: u64,
}

impl Default for SmMeta {
    fn default() -> Self {
        Self {
            last_applied: None,
            membership: StoredMembership::default(),
            revision: 1,
            compacted: 1,
        }
    }
}

impl SmMeta {
    pub(crate) fn read(
        db: &DbCell,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Self, StoreError> {
        let mut meta = SmMeta::default();
        let get = |name: &'static str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(table
                .get(name)
                .db(db, "read sm_meta")?
                .map(|v| v.value().to_vec()))
        };
        if let Some(bytes) = get(META_LAST_APPLIED)? {
            meta.last_applied = decode(META_LAST_APPLIED, &bytes)?;
        }
        if let Some(bytes) = get(META_MEMBERSHIP)? {
            meta.membership = decode(META_MEMBERSHIP, &bytes)?;
        }
        if let Some(bytes) = get(META_REVISION)? {
            meta.revision = decode(META_REVISION, &bytes)?;
        }
        if let Some(bytes) = get(META_COMPACTED)? {
            meta.compacted = decode(META_COMPACTED, &bytes)?;
        }
        Ok(meta)
    }

    pub(crate) fn write(
        &self,
        db: &DbCell,
        table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ) -> Result<(), StoreError> {
        let entries = [
            (
                META_LAST_APPLIED,
                encode(META_LAST_APPLIED, &self.last_applied)?,
            ),
            (META_MEMBERSHIP, encode(META_MEMBERSHIP, &self.membership)?),
            (META_REVISION, encode(META_REVISION, &self.revision)?),
            (META_COMPACTED, encode(META_COMPACTED, &self.compacted)?),
        ];
        for (name, bytes) in entries {
            table
                .insert(name, bytes.as_slice())
                .db(db, "write sm_meta")?;
        }
        Ok(())
    }
}

/// Reads the metadata in its own read transaction.
pub(crate) fn read_meta(db: &DbCell) -> Result<SmMeta, StoreError> {
    db.with(|d| {
        let txn = d.begin_read().db(db, "begin read")?;
        let table = txn.open_table(SM_META).db(db, "open sm_meta")?;
        SmMeta::read(db, &table)
    })
}

/// The metadata and every live key, from one consistent read: what snapshots and backups carry.
pub(crate) fn read_all(db: &DbCell) -> Result<(SmMeta, Vec<KeyValue>), StoreError> {
    db.with(|d| {
        let txn = d.begin_read().db(db, "begin read")?;
        let meta = SmMeta::read(db, &txn.open_table(SM_META).db(db, "open sm_meta")?)?;
        let table = txn.open_table(KV).db(db, "open kv")?;
        let mut kvs = Vec::new();
        for item in table.iter().db(db, "iterate kv")? {
            let (key, value) = item.db(db, "read kv")?;
            let stored: StoredKv = decode("stored key", value.value())?;
            kvs.push(stored.into_kv(key.value().to_vec()));
        }
        Ok((meta, kvs))
    })
}

/// One key and the revision it was read at.
pub(crate) fn get(db: &DbCell, key: &[u8]) -> Result<(Option<KeyValue>, u64), StoreError> {
    db.with(|d| {
        let txn = d.begin_read().db(db, "begin read")?;
        let meta = SmMeta::read(db, &txn.open_table(SM_META).db(db, "open sm_meta")?)?;
        let table = txn.open_table(KV).db(db, "open kv")?;
        let kv = table.get(key).db(db, "read kv")?;
        let kv = kv
            .map(|v| decode::<StoredKv>("stored key", v.value()).map(|s| s.into_kv(key.to_vec())))
            .transpose()?;
        Ok((kv, meta.revision))
    })
}

/// The keys under a prefix, latest or as of an older revision, with continuation and limit.
pub(crate) fn range(db: &DbCell, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
    db.with(|d| {
        let txn = d.begin_read().db(db, "begin read")?;
        let meta = SmMeta::read(db, &txn.open_table(SM_META).db(db, "open sm_meta")?)?;
        let kv_table = txn.open_table(KV).db(db, "open kv")?;
        let at = req.revision;
        if at > meta.revision {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: meta.revision,
            });
        }
        let end = prefix_end(&req.prefix);
        let lower: Bound<&[u8]> = match &req.start_after {
            Some(after) if after.as_slice() >= req.prefix.as_slice() => {
                Bound::Excluded(after.as_slice())
            }
            _ => Bound::Included(req.prefix.as_slice()),
        };
        let upper: Bound<&[u8]> = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        if let (Bound::Excluded(low), Bound::Excluded(high)) = (lower, upper)
            && low >= high
        {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                revision: meta.revision,
            });
        }
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };

        if at == 0 || at == meta.revision {
            let mut kvs = Vec::new();
            let mut more = false;
            for item in kv_table.range::<&[u8]>((lower, upper)).db(db, "range kv")? {
                let (key, value) = item.db(db, "read kv")?;
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                let stored: StoredKv = decode("stored key", value.value())?;
                kvs.push(stored.into_kv(key.value().to_vec()));
            }
            return Ok(RangeResponse {
                kvs,
                more,
                revision: meta.revision,
            });
        }

        // As of an older revision: the current keys under the prefix, with every later event
        // undone newest first. Needs all events after `at`, i.e. `at + 1 >= compacted`.
        if at + 1 < meta.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: meta.compacted,
            });
        }
        // The keys of the page's range that changed after `at`, with their value at `at`
        // (undone newest first, so the oldest change after `at` decides). Every other key
        // has its current value, so a page reads `limit` current keys plus that history,
        // not the whole prefix.
        let in_range = |key: &[u8]| {
            key.starts_with(&req.prefix)
                && match lower {
                    Bound::Excluded(a) => key > a,
                    Bound::Included(a) => key >= a,
                    Bound::Unbounded => true,
                }
        };
        let mut touched: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let history = txn.open_table(HISTORY).db(db, "open history")?;
        for item in history
            .range((at + 1)..=meta.revision)
            .db(db, "range history")?
            .rev()
        {
            let (_, value) = item.db(db, "read history")?;
            let events: Vec<WatchEvent> = decode("history entry", value.value())?;
            for event in events.iter().rev().filter(|e| in_range(&e.kv.key)) {
                touched.insert(event.kv.key.clone(), event.prev_kv.clone());
            }
        }
        let mut current = kv_table.range::<&[u8]>((lower, upper)).db(db, "range kv")?;
        let mut next_current = || -> Result<Option<(Vec<u8>, KeyValue)>, StoreError> {
            match current.next() {
                None => Ok(None),
                Some(item) => {
                    let (key, value) = item.db(db, "read kv")?;
                    let key = key.value().to_vec();
                    let stored: StoredKv = decode("stored key", value.value())?;
                    Ok(Some((key.clone(), stored.into_kv(key))))
                }
            }
        };
        let mut cur = next_current()?;
        let mut changed = touched.into_iter().peekable();
        let mut kvs = Vec::new();
        let mut more = false;
        loop {
            let from_history = match (&cur, changed.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((ck, _)), Some((hk, _))) => hk <= ck,
            };
            let visible = if from_history {
                let (hk, value) = changed.next().expect("peeked");
                if cur.as_ref().is_some_and(|(ck, _)| *ck == hk) {
                    cur = next_current()?;
                }
                value
            } else {
                let taken = cur.take().map(|(_, kv)| kv);
                cur = next_current()?;
                taken
            };
            if let Some(kv) = visible {
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(kv);
            }
        }
        Ok(RangeResponse {
            kvs,
            more,
            revision: meta.revision,
        })
    })
}

/// Events of consecutive revisions, read in one transaction.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// (revision, its events), ascending.
    pub batches: Vec<(u64, Vec<WatchEvent>)>,
    /// The store's revision when the page was read.
    pub revision: u64,
    /// True if the page holds every event up to `revision`.
    pub complete: bool,
}

/// Reads the events of revisions `from..=current`, at most `max_revisions` of them.
pub(crate) fn read_history(
    db: &DbCell,
    from: u64,
    max_revisions: usize,
) -> Result<HistoryPage, StoreError> {
    db.with(|d| {
        let txn = d.begin_read().db(db, "begin read")?;
        let meta = SmMeta::read(db, &txn.open_table(SM_META).db(db, "open sm_meta")?)?;
        if from < meta.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: meta.compacted,
            });
        }
        let history = txn.open_table(HISTORY).db(db, "open history")?;
        let mut batches = Vec::new();
        let mut complete = true;
        for item in history
            .range(from..=meta.revision.max(from))
            .db(db, "range history")?
        {
            if batches.len() == max_revisions {
                complete = false;
                break;
            }
            let (rev, value) = item.db(db, "read history")?;
            batches.push((rev.value(), decode("history entry", value.value())?));
        }
        Ok(HistoryPage {
            batches,
            revision: meta.revision,
            complete,
        })
    })
}
