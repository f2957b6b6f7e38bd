//! How a control plane becomes a store member: its store node id (kept beside the store for
//! the life of the data), its peer certificate from the cluster CA, and the join through an
//! existing control plane's API (`/strake/v1/store/members`), which answers once this node is
//! a voter, with the keys every control plane shares.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use strake_apiserver::storeadmin::{JoinAnswer, JoinRequest, SHARED_FILES};
use strake_pki::{CertifiedKey, ClusterCa};
use strake_store::PeerTls;

/// The file beside the store holding this node's store id.
const ID_FILE: &str = "store-id";
/// The id of a store made before ids were kept (a lone voter, always 1).
const LEGACY_ID: u64 = 1;

/// The file holding the store id of the node whose data directory is `data_dir`.
pub fn id_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(ID_FILE)
}

/// This node's store id: the kept one, 1 for a store made before ids were kept, or a new
/// random one (kept at once) for a fresh store. Ids are never reused, so a removed member's
/// certificate names an id no member will have again.
pub fn store_id(data_dir: &Path, store_dir: &Path) -> anyhow::Result<u64> {
    let path = id_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .with_context(|| {
                    format!(
                        "{} holds {:?}, not a store node id; the store there cannot be opened as anyone else",
                        path.display(),
                        text.trim()
                    )
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let has_store = std::fs::read_dir(store_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let id = if has_store {
        LEGACY_ID
    } else {
        // Below 2^53 so that every JSON reader keeps it exact.
        (uuid::Uuid::new_v4().as_u64_pair().0 & ((1 << 53) - 1)).max(2)
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Whether every key file the control planes share is in the PKI directory.
pub fn has_shared_files(pki_dir: &Path) -> bool {
    SHARED_FILES.iter().all(|f| pki_dir.join(f).exists())
}

/// The peer certificate of store node `id`, issued now from the cluster CA.
pub fn peer_tls(ca: &ClusterCa, id: u64) -> anyhow::Result<PeerTls> {
    PeerTls::issue(ca, id).context("issuing the store peer certificate")
}

/// Joins store node `id` (listening, reachable at `peer_address`) through the API at
/// `endpoint` (`host:port`), authenticated by its peer certificate, retrying until the cluster
/// answers that it is a voter; writes the shared key files it is given into `pki_dir`
/// (replacing this node's own, which no data depends on yet).
pub async fn join(
    endpoint: &str,
    tls: &PeerTls,
    id: u64,
    peer_address: &str,
    pki_dir: &Path,
) -> anyhow::Result<()> {
    let identity = CertifiedKey {
        cert_pem: tls.cert_pem.clone(),
        key_pem: tls.key_pem.clone(),
    };
    let client = strake_kubeclient::Client::new(
        &format!("https://{endpoint}"),
        &tls.ca_pem,
        Some(&identity),
    )
    .context("building the join client")?;
    let body = serde_json::to_value(JoinRequest {
        id,
        peer_address: peer_address.to_string(),
    })?;
    let mut delay = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let answer = loop {
        match client.post_json("/strake/v1/store/members", &body).await {
            Ok(v) => break serde_json::from_value::<JoinAnswer>(v).context("the join answer")?,
            Err(e) => {
                tracing::warn!(
                    endpoint,
                    error = %e,
                    waited_s = started.elapsed().as_secs(),
                    "joining the store; trying again"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    for name in SHARED_FILES {
        let text = answer
            .files
            .get(*name)
            .with_context(|| format!("the join answer lacks the shared file {name}"))?;
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("the join answer's {name} is not base64"))?
        };
        let path = pki_dir.join(name);
        strake_pki::write_private(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(
        id,
        members = answer.members.members.len(),
        leader = ?answer.members.leader,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "joined the store as a voter"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_new_ones_random_and_old_stores_are_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let first = store_id(dir.path(), &store).unwrap();
        assert!((2..(1 << 53)).contains(&first));
        assert_eq!(store_id(dir.path(), &store).unwrap(), first);

        let old = tempfile::tempdir().unwrap();
        let store = old.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("state.redb"), b"x").unwrap();
        assert_eq!(store_id(old.path(), &store).unwrap(), 1);

        std::fs::write(old.path().join(ID_FILE), "seven\n").unwrap();
        let err = store_id(old.path(), &store).unwrap_err().to_string();
        assert!(err.contains("not a store node id"), "{err}");
    }
}
