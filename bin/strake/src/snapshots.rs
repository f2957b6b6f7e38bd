//! Scheduled snapshots of the store onto STATE, with retention (as k3s takes them, every 12
//! hours keeping 5 by default). Every control plane takes its own, so any surviving disk holds
//! a recent one; each is a backup holding every write acknowledged before it was taken, with
//! the cluster's keys and CA attached, which `strakectl store restore` starts a new cluster
//! from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strake_store::Store;

/// How the files are named: `store-<unix seconds>-r<revision>.snapshot`.
const PREFIX: &str = "store-";
const SUFFIX: &str = ".snapshot";

/// The snapshots in `dir`, oldest first (by the time in their names).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
            let secs = stem.split_once("-r")?.0.parse::<u64>().ok()?;
            Some((secs, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Deletes the oldest snapshots in `dir` beyond the newest `keep`; other files are left alone.
pub fn prune(dir: &Path, keep: usize) -> Vec<PathBuf> {
    let all = list(dir);
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for path in all.into_iter().take(excess) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing an old store snapshot")
            }
        }
    }
    removed
}

/// Takes one snapshot (with the files of `pki_dir` a backup carries) into `dir` now and prunes
/// to `keep`.
pub async fn take(
    store: &Store,
    pki_dir: &Path,
    dir: &Path,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let tmp = dir.join(format!(".taking-{secs}"));
    let info = strake_apiserver::storeadmin::take_backup(store, pki_dir, &tmp)
        .await
        .context("taking a snapshot of the store")?;
    let path = dir.join(format!("{PREFIX}{secs}-r{}{SUFFIX}", info.revision));
    std::fs::rename(&tmp, &path).with_context(|| format!("naming {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        revision = info.revision,
        keys = info.keys,
        bytes = info.bytes,
        "took a scheduled store snapshot"
    );
    prune(dir, keep);
    Ok(path)
}

/// Takes a snapshot every `every`, keeping the newest `keep`.
pub fn schedule(store: Store, pki_dir: PathBuf, dir: PathBuf, every: Duration, keep: usize) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = take(&store, &pki_dir, &dir, keep).await {
                tracing::warn!(error = %format!("{e:#}"), "a scheduled store snapshot failed; the next is due in {every:?}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for (secs, rev) in [(300, 9), (100, 2), (200, 5), (1000, 12)] {
            std::fs::write(
                dir.path().join(format!("store-{secs}-r{rev}.snapshot")),
                b"x",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("manual.snapshot"), b"mine").unwrap();
        std::fs::write(dir.path().join(".taking-5"), b"partial").unwrap();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(list(dir.path())),
            [
                "store-100-r2.snapshot",
                "store-200-r5.snapshot",
                "store-300-r9.snapshot",
                "store-1000-r12.snapshot"
            ]
        );
        assert_eq!(
            names(prune(dir.path(), 2)),
            ["store-100-r2.snapshot", "store-200-r5.snapshot"]
        );
        assert_eq!(list(dir.path()).len(), 2);
        assert!(dir.path().join("manual.snapshot").exists());
        assert!(dir.path().join(".taking-5").exists());
    }
}
