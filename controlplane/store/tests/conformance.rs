//! openraft's storage conformance suite, run against the redb log store and state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use strake_store::raft::{LogStore, NodeId, StateMachine, TypeConfig, open_storage};
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm) = open_storage(dir.path(), 0).expect("open storage in a fresh temp dir");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(err) = Suite::test_all(RedbBuilder) {
        panic!("storage conformance suite failed: {err}");
    }
}
