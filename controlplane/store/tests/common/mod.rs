//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use strake_store::{Store, StoreConfig, StoreError, WatchEvent, WatchStream};

/// Deadline for any single awaited step in a test.
pub const STEP: Duration = Duration::from_secs(20);

pub async fn open(dir: &Path) -> Store {
    tokio::time::timeout(STEP, Store::open(StoreConfig::single(1, dir)))
        .await
        .expect("store opens within the deadline")
        .expect("store opens")
}

pub async fn next_item(watch: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(STEP, watch.next())
        .await
        .expect("watch yields within the deadline")
}

pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match next_item(watch).await {
        Some(Ok(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

pub fn key(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The fault tests' random seed: `STRAKE_FAULT_SEED` if set (to replay a run's choices),
/// else the clock; printed either way.
pub fn seed() -> u64 {
    let seed = std::env::var("STRAKE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fault test seed: {seed} (STRAKE_FAULT_SEED={seed} to replay)");
    seed
}
