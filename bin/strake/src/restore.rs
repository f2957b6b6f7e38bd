//! Restoring the cluster from a backup, on a fresh control plane. `strakectl store restore`
//! hands the backup to the node's machine API, which checks it ([`check`]), stages it on STATE
//! ([`stage`]) and restarts the control plane. Starting, the control plane finds it staged
//! ([`prepare`]): it moves what it held aside (never deleting it), installs the backup's keys
//! and CA, and starts a new one-member store from the backup, which the other control planes
//! then join as they would any cluster.

use std::path::{Path, PathBuf};

use anyhow::Context;
use strake_store::BackupContents;

/// Where a staged backup waits, under the data directory.
const STAGED: &str = "restore/staged.backup";

/// The staged backup's path under `data_dir`.
pub fn staged_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STAGED)
}

/// Checks that `bytes` is a whole backup that brings a cluster back (the keyspace, and the
/// cluster's keys and CA attached), and says what it holds.
pub fn check(bytes: &[u8]) -> Result<BackupContents, String> {
    let contents =
        strake_store::read_backup(Path::new("the backup"), bytes).map_err(|e| e.to_string())?;
    strake_apiserver::storeadmin::check_backup_files(&contents.attachments)
        .map_err(|e| format!("the backup cannot be restored: {e}"))?;
    let ca = |name: &str| String::from_utf8_lossy(&contents.attachments[name]).into_owned();
    let ca = strake_pki::ClusterCa {
        ca: strake_pki::CertifiedKey {
            cert_pem: ca(strake_pki::CA_CERT),
            key_pem: ca(strake_pki::CA_KEY),
        },
    };
    // Issuing a certificate proves both the certificate and its key.
    ca.issue_client("strake-restore-check", &[], time::Duration::minutes(1))
        .map_err(|e| format!("the backup's cluster CA is unusable: {e}"))?;
    Ok(contents)
}

/// The cluster CA certificate a backup carries (PEM).
pub fn ca_cert(contents: &BackupContents) -> String {
    String::from_utf8_lossy(&contents.attachments[strake_pki::CA_CERT]).into_owned()
}

/// Stages the checked backup `bytes` under `data_dir` for the control plane's next start.
pub fn stage(data_dir: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let path = staged_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    strake_pki::write_private(&path, bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A staged backup the control plane is about to restore.
pub struct Staged {
    pub path: PathBuf,
    pub contents: BackupContents,
    /// Where what the node held before went.
    pub aside: PathBuf,
}

/// Before the control plane opens its store: with a backup staged under `data_dir`, moves the
/// store (`store_dir`), its id and the PKI directory aside, into
/// `<data_dir>/before-restore-<unix seconds>`, and writes the backup's keys and CA into
/// `pki_dir`. The caller then restores the store from it and calls [`finish`].
///
/// A staged file that is not a usable backup is renamed `*.rejected` and refused, leaving the
/// node's own data where it was.
pub fn prepare(
    data_dir: &Path,
    store_dir: &Path,
    pki_dir: &Path,
) -> anyhow::Result<Option<Staged>> {
    let path = staged_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let contents = match check(&bytes) {
        Ok(c) => c,
        Err(problem) => {
            let rejected = path.with_extension("rejected");
            let _ = std::fs::rename(&path, &rejected);
            anyhow::bail!(
                "the backup staged for restore is refused ({problem}); it is kept as {} and this control plane starts from its own data",
                rejected.display()
            );
        }
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let aside = data_dir.join(format!("before-restore-{secs}"));
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for from in [
        store_dir.to_path_buf(),
        crate::membership::id_path(data_dir),
        pki_dir.to_path_buf(),
    ] {
        if from.exists() {
            let Some(name) = from.file_name() else {
                continue;
            };
            let to = aside.join(name);
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    std::fs::create_dir_all(pki_dir).with_context(|| format!("creating {}", pki_dir.display()))?;
    for (name, bytes) in &contents.attachments {
        // Names were checked against the backup's fixed list: none holds a path.
        let file = pki_dir.join(name);
        strake_pki::write_private(&file, bytes)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    tracing::info!(
        revision = contents.revision,
        keys = contents.keys,
        aside = %aside.display(),
        "restoring the store from a staged backup; what this node held is kept aside"
    );
    Ok(Some(Staged {
        path,
        contents,
        aside,
    }))
}

/// After the store was restored from `staged`: the staged file is done with.
pub fn finish(staged: &Staged) {
    if let Err(e) = std::fs::remove_file(&staged.path) {
        tracing::warn!(path = %staged.path.display(), error = %e, "removing the restored backup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A backup file as a control plane writes it: a one-key store, with `files` attached.
    async fn backup(dir: &Path, files: BTreeMap<String, Vec<u8>>) -> Vec<u8> {
        let store =
            strake_store::Store::open(strake_store::StoreConfig::single(1, dir.join("source")))
                .await
                .unwrap();
        store
            .put(b"/registry/x".to_vec(), b"1".to_vec())
            .await
            .unwrap();
        let path = dir.join("b.backup");
        store.backup_with(&path, files).await.unwrap();
        store.shutdown().await.unwrap();
        std::fs::read(path).unwrap()
    }

    fn cluster_files() -> BTreeMap<String, Vec<u8>> {
        let ca = strake_pki::ClusterCa::generate("t").unwrap();
        strake_apiserver::storeadmin::BACKUP_FILES
            .iter()
            .map(|name| {
                let bytes = match *name {
                    strake_pki::CA_CERT => ca.ca.cert_pem.clone().into_bytes(),
                    strake_pki::CA_KEY => ca.ca.key_pem.clone().into_bytes(),
                    other => format!("the cluster's {other}").into_bytes(),
                };
                (name.to_string(), bytes)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_staged_backup_replaces_the_store_and_keys_keeping_the_old_aside() {
        let dir = tempfile::tempdir().unwrap();
        let files = cluster_files();
        let bytes = backup(dir.path(), files.clone()).await;
        let contents = check(&bytes).unwrap();
        assert_eq!(contents.keys, 1);

        let data = dir.path().join("data");
        let (store, pki) = (data.join("store"), data.join("pki"));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("state.redb"), b"old").unwrap();
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("ca.crt"), b"old ca").unwrap();
        std::fs::write(crate::membership::id_path(&data), "7\n").unwrap();

        assert!(prepare(&data, &store, &pki).unwrap().is_none());
        stage(&data, &bytes).unwrap();
        let staged = prepare(&data, &store, &pki).unwrap().unwrap();
        assert_eq!(staged.contents.revision, contents.revision);
        assert!(!store.exists(), "the store is moved aside");
        assert!(!crate::membership::id_path(&data).exists());
        assert_eq!(
            std::fs::read(staged.aside.join("store/state.redb")).unwrap(),
            b"old"
        );
        assert_eq!(
            std::fs::read(staged.aside.join("pki/ca.crt")).unwrap(),
            b"old ca"
        );
        for (name, bytes) in &files {
            assert_eq!(&std::fs::read(pki.join(name)).unwrap(), bytes, "{name}");
        }
        finish(&staged);
        assert!(!staged_path(&data).exists());
    }

    #[tokio::test]
    async fn backups_without_the_keys_or_damaged_are_refused_and_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bare = backup(dir.path(), BTreeMap::new()).await;
        let err = check(&bare).unwrap_err();
        assert!(err.contains("lacks the cluster's"), "{err}");

        let mut damaged = backup(&dir.path().join("2"), cluster_files()).await;
        let n = damaged.len();
        damaged[n / 2] ^= 1;
        assert!(check(&damaged).unwrap_err().contains("checksum"));

        let data = dir.path().join("data");
        let (store, pki) = (data.join("store"), data.join("pki"));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("state.redb"), b"old").unwrap();
        stage(&data, &damaged).unwrap();
        let err = format!("{:#}", prepare(&data, &store, &pki).err().unwrap());
        assert!(err.contains("refused") && err.contains("rejected"), "{err}");
        assert!(store.join("state.redb").exists(), "the store stays");
        assert!(!staged_path(&data).exists());
        // The next start is an ordinary one.
        assert!(prepare(&data, &store, &pki).unwrap().is_none());
    }
}
