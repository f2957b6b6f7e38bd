//! The raft store passes the same storage conformance suite as the memory store.

use strake_apimachinery::storage::{RaftStore, conformance};

#[tokio::test]
async fn the_raft_store_passes_the_storage_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = strake_store::Store::open(strake_store::StoreConfig::single(
        1,
        dir.path().join("store"),
    ))
    .await
    .unwrap();
    conformance::run(&RaftStore::new(store.clone())).await;
    store.shutdown().await.unwrap();
}
