//! Strake store voters: an in-process three-voter cluster over loopback mTLS, and the
//! single-voter child process whose RSS is measured.

use std::path::Path;

use strake_pki::ClusterCa;
use strake_store::{Op, PeerTls, Store, StoreConfig, Txn};

use crate::{BenchError, free_port};

/// Opens `size` voters concurrently (each with a data dir under `root`) and returns them all;
/// [`Store::open`] returns once a leader is known.
pub async fn start_cluster(root: &Path, size: u64) -> Result<Vec<Store>, BenchError> {
    let ca = ClusterCa::generate("store-bench").map_err(|e| BenchError::Pki(e.to_string()))?;
    let ids: Vec<u64> = (1..=size).collect();
    let addrs: Vec<String> = ids
        .iter()
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect::<Result<_, BenchError>>()?;
    let mut opens = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let peers = ids
            .iter()
            .zip(&addrs)
            .filter(|(other, _)| *other != id)
            .map(|(other, addr)| (*other, addr.clone()))
            .collect();
        let tls = PeerTls::issue(&ca, *id)?;
        let cfg = StoreConfig::cluster(
            *id,
            root.join(format!("voter-{id}")),
            addrs[i].clone(),
            peers,
            tls,
        );
        opens.push(Store::open(cfg));
    }
    let opened = tokio::time::timeout(crate::READY_DEADLINE, futures::future::join_all(opens))
        .await
        .map_err(|_| BenchError::NotReady("Strake voters did not open in time".into()))?;
    opened.into_iter().map(|r| r.map_err(Into::into)).collect()
}

/// The voter that currently leads, once all voters agree on it.
pub async fn leader(stores: &[Store]) -> Result<Store, BenchError> {
    let deadline = tokio::time::Instant::now() + crate::READY_DEADLINE;
    loop {
        let leaders: Vec<Option<u64>> = stores.iter().map(Store::leader).collect();
        if let Some(Some(id)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*id))
            && let Some(store) = stores.iter().find(|s| s.node_id() == *id)
        {
            return Ok(store.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::NotReady(format!(
                "Strake voters did not agree on a leader: {leaders:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Body of the `--rss-child DIR` mode: opens one voter in `dir`, writes `keys` keys of
/// `value_size` bytes in transactions of `batch`, and returns its own VmRSS in KiB.
pub async fn rss_child(
    dir: &Path,
    keys: usize,
    value_size: usize,
    batch: usize,
) -> Result<u64, BenchError> {
    let store = Store::open(StoreConfig::single(1, dir)).await?;
    let value = vec![b'v'; value_size];
    for start in (0..keys).step_by(batch) {
        let success = (start..keys.min(start + batch))
            .map(|i| Op::Put {
                key: crate::rss_key(i),
                value: value.clone(),
            })
            .collect();
        store
            .txn(Txn {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            })
            .await?;
    }
    let (kv, _) = store.get(&crate::rss_key(keys - 1)).await?;
    if kv.is_none() {
        return Err(BenchError::Mismatch("the last RSS key is missing".into()));
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| BenchError::Io {
        what: "reading /proc/self/status".into(),
        source,
    })?;
    let rss = crate::vm_rss_kib(&status)
        .ok_or_else(|| BenchError::Parse("no VmRSS line in /proc/self/status".into()))?;
    store.shutdown().await?;
    Ok(rss)
}
