//! The local content store and the pull algorithm.
//!
//! Layout under the root: `blobs/sha256/<hex>` (manifests, indexes, configs; layer blobs
//! only until unpacked), `layers/<hex>/` (one unpacked layer per compressed-layer digest),
//! `refs/<sha256 of the reference>.json` (what a reference resolved to) and `tmp/`.
//! Everything lands by rename after verification, so presence means verified.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::OciError;
use crate::manifest::{
    ConfigFile, Descriptor, ImageConfig, Index, Manifest, ManifestKind, classify_manifest,
    host_architecture, is_image_config, is_supported_layer, select_platform,
};
use crate::reference::{Digest, ImageRef, Reference};
use crate::registry::{Endpoint, MAX_MANIFEST_BYTES, RegistryClient, RegistryConfig};
use crate::unpack::{UnpackError, unpack_layer};

/// Largest image config blob we accept.
const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;
/// Layers downloaded and unpacked at once.
const LAYER_CONCURRENCY: usize = 3;

/// An image available locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference it was pulled (or looked up) by.
    pub reference: ImageRef,
    /// Digest the reference resolved to: the index's digest for multi-platform images,
    /// otherwise the manifest's. Pulling `repository@manifest_digest` yields this image.
    pub manifest_digest: Digest,
    /// Entrypoint, cmd, env, working dir and user from the image config.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first: overlayfs lowerdirs (reverse for the
    /// `lowerdir=` option, which lists the top layer first).
    pub layers: Vec<PathBuf>,
}

/// What a reference resolved to, kept in `refs/`.
#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    manifest_digest: Digest,
    image_manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

/// A content store rooted at one directory, owned by one process.
pub struct ImageStore {
    root: PathBuf,
    client: RegistryClient,
    /// Serializes work on the same layer between concurrent pulls.
    layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    tmp_counter: AtomicU64,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and clears leftovers of interrupted
    /// pulls. Only one process may use a root at a time.
    pub fn open(root: &Path, cfg: RegistryConfig) -> Result<ImageStore, OciError> {
        for dir in ["blobs/sha256", "layers", "refs", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| OciError::io(&path, e))?;
        }
        let store = ImageStore {
            root: root.to_owned(),
            client: RegistryClient::new(cfg)?,
            layer_locks: Mutex::new(HashMap::new()),
            tmp_counter: AtomicU64::new(0),
        };
        store.sweep_leftovers()?;
        Ok(store)
    }

    fn sweep_leftovers(&self) -> Result<(), OciError> {
        for (dir, only_tmp_prefix) in [
            (self.root.join("tmp"), false),
            (self.root.join("layers"), true),
        ] {
            let entries = std::fs::read_dir(&dir).map_err(|e| OciError::io(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| OciError::io(&dir, e))?;
                if only_tmp_prefix && !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let path = entry.path();
                let removed = if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| OciError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn layer_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.hex())
    }

    fn ref_path(&self, image: &ImageRef) -> PathBuf {
        let key = Digest::of(image.to_string().as_bytes());
        self.root.join("refs").join(format!("{}.json", key.hex()))
    }

    fn tmp_path(&self, label: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{label}-{}-{n}", std::process::id()))
    }

    /// Pulls `image`, trying configured mirrors before the registry itself. Idempotent:
    /// blobs and layers already present are reused, and a digest reference that is
    /// complete locally needs no network at all.
    pub async fn pull(&self, image: &ImageRef) -> Result<PulledImage, OciError> {
        if matches!(image.reference, Reference::Digest(_))
            && let Some(pulled) = self.lookup(image)?
        {
            return Ok(pulled);
        }
        let mut endpoints = self.client.endpoints(&image.registry);
        let upstream = endpoints.pop();
        for mirror in &endpoints {
            match self.pull_from(mirror, image).await {
                Ok(pulled) => return Ok(pulled),
                Err(e) => {
                    tracing::warn!(image = %image, mirror = %mirror.base, error = %e, "mirror failed; trying next endpoint");
                }
            }
        }
        match upstream {
            Some(upstream) => self.pull_from(&upstream, image).await,
            None => Err(OciError::Unsupported {
                image: image.to_string(),
                message: "no endpoint configured".to_owned(),
            }),
        }
    }

    async fn pull_from(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
    ) -> Result<PulledImage, OciError> {
        tracing::info!(image = %image, endpoint = %endpoint.base, "pulling image");
        let (top_digest, manifest_digest, manifest) = self.resolve(endpoint, image).await?;
        let unsupported = |message: String| OciError::Unsupported {
            image: image.to_string(),
            message,
        };
        if !is_image_config(&manifest.config.media_type) {
            return Err(unsupported(format!(
                "not a container image (config media type {:?})",
                manifest.config.media_type
            )));
        }
        if let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| !is_supported_layer(&l.media_type))
        {
            return Err(unsupported(format!(
                "layer {} has unsupported media type {:?}",
                layer.digest, layer.media_type
            )));
        }
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(OciError::TooLarge {
                what: format!("image config of {image}"),
                limit: MAX_CONFIG_BYTES,
            });
        }
        self.ensure_blob(endpoint, image, &manifest.config).await?;
        let config = self.read_config(image, &manifest.config.digest)?;
        if config.os != "linux" || config.architecture != host_architecture() {
            return Err(unsupported(format!(
                "image is for {}/{}, this node is linux/{}",
                config.os,
                config.architecture,
                host_architecture()
            )));
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(OciError::InvalidManifest {
                image: image.to_string(),
                what: "image config",
                message: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        // The futures are built eagerly into a Vec: a lazy `map` closure over borrowed
        // iterators makes the pull future's `Send` bound unprovable for `tokio::spawn` callers.
        let pending: Vec<_> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(desc, diff_id)| self.ensure_layer(endpoint, image, desc, diff_id))
            .collect();
        let layers: Vec<PathBuf> = futures::stream::iter(pending)
            .buffered(LAYER_CONCURRENCY)
            .try_collect()
            .await?;
        let record = RefRecord {
            reference: image.to_string(),
            manifest_digest: top_digest.clone(),
            image_manifest: manifest_digest,
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| OciError::CorruptStore {
            path: self.ref_path(image),
            message: e.to_string(),
        })?;
        self.write_atomic(&self.ref_path(image), &json)?;
        Ok(PulledImage {
            reference: image.clone(),
            manifest_digest: top_digest,
            config: ImageConfig::from_container_config(config.config),
            layers,
        })
    }

    /// Fetches the reference's manifest, descending through an index to our platform.
    /// Returns (digest the reference names, digest of the image manifest, the manifest).
    async fn resolve(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
    ) -> Result<(Digest, Digest, Manifest), OciError> {
        let expected = match &image.reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => None,
        };
        let (top_digest, kind, body) = self
            .fetch_manifest(
                endpoint,
                image,
                image.reference.as_str(),
                expected.as_ref(),
                None,
            )
            .await?;
        match kind {
            ManifestKind::Manifest => {
                let manifest = parse_manifest::<Manifest>(image, "manifest", &body)?;
                check_schema_version(image, manifest.schema_version)?;
                Ok((top_digest.clone(), top_digest, manifest))
            }
            ManifestKind::Index => {
                let index = parse_manifest::<Index>(image, "image index", &body)?;
                check_schema_version(image, index.schema_version)?;
                let desc = select_platform(&index).ok_or_else(|| OciError::Unsupported {
                    image: image.to_string(),
                    message: format!(
                        "no manifest for linux/{} in the image index",
                        host_architecture()
                    ),
                })?;
                let (digest, kind, body) = self
                    .fetch_manifest(
                        endpoint,
                        image,
                        desc.digest.as_str(),
                        Some(&desc.digest),
                        Some(desc.size),
                    )
                    .await?;
                if kind != ManifestKind::Manifest {
                    return Err(OciError::Unsupported {
                        image: image.to_string(),
                        message: "nested image indexes are not supported".to_owned(),
                    });
                }
                let manifest = parse_manifest::<Manifest>(image, "manifest", &body)?;
                check_schema_version(image, manifest.schema_version)?;
                Ok((top_digest, digest, manifest))
            }
        }
    }

    /// Fetches one manifest document, verifies it against the digest we asked for (or the
    /// registry's Docker-Content-Digest), and stores it as a blob.
    async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, ManifestKind, Vec<u8>), OciError> {
        let (body, content_type, header_digest) = self
            .client
            .fetch_manifest(endpoint, image, reference)
            .await?;
        let actual = Digest::of(&body);
        let what = format!("manifest {reference} of {image}");
        if let Some(expected) = expected.or(header_digest.as_ref())
            && *expected != actual
        {
            return Err(OciError::DigestMismatch {
                what,
                expected: expected.clone(),
                actual,
            });
        }
        if let Some(size) = expected_size
            && size != body.len() as u64
        {
            return Err(OciError::SizeMismatch {
                what,
                expected: size,
                actual: body.len() as u64,
            });
        }
        let kind = classify_manifest(content_type.as_deref(), &body).map_err(|message| {
            OciError::Unsupported {
                image: image.to_string(),
                message,
            }
        })?;
        self.write_atomic(&self.blob_path(&actual), &body)?;
        Ok((actual, kind, body))
    }

    async fn ensure_blob(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> Result<PathBuf, OciError> {
        let path = self.blob_path(&desc.digest);
        if !path.exists() {
            let tmp = self.tmp_path(desc.digest.hex());
            self.client
                .download_blob(endpoint, image, desc, &tmp, &path)
                .await?;
        }
        Ok(path)
    }

    /// Reads and re-verifies a config blob (configs are small; a damaged one is dropped so
    /// the next pull fetches it again).
    fn read_config(&self, image: &ImageRef, digest: &Digest) -> Result<ConfigFile, OciError> {
        let path = self.blob_path(digest);
        let bytes = read_bounded(&path, MAX_CONFIG_BYTES)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            let _ = std::fs::remove_file(&path);
            return Err(OciError::CorruptStore {
                path,
                message: format!("content hashes to {actual}"),
            });
        }
        parse_manifest::<ConfigFile>(image, "image config", &bytes)
    }

    async fn ensure_layer(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        desc: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, OciError> {
        let lock = self.layer_lock(&desc.digest);
        let result = {
            let _guard = lock.lock().await;
            self.ensure_layer_locked(endpoint, image, desc, diff_id)
                .await
        };
        let mut locks = self
            .layer_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else is waiting on this layer.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&desc.digest);
        }
        result
    }

    fn layer_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.layer_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    async fn ensure_layer_locked(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        desc: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, OciError> {
        let dir = self.layer_path(&desc.digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.ensure_blob(endpoint, image, desc).await?;
        tracing::debug!(layer = %desc.digest, "unpacking layer");
        let (blob_for_task, dir_for_task, diff_id) = (blob.clone(), dir.clone(), diff_id.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            unpack_layer(&blob_for_task, &dir_for_task, Some(&diff_id))
        })
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => OciError::Cancelled {
                what: format!("unpacking layer {}", desc.digest),
            },
        })?;
        // The unpacked tree is the durable form; the compressed blob only costs space now.
        // A blob whose content is bad is dropped too, so a re-push can be pulled.
        let drop_blob = unpacked.is_ok()
            || matches!(
                unpacked,
                Err(UnpackError::Corrupt(_) | UnpackError::DiffIdMismatch { .. })
            );
        if drop_blob
            && let Err(e) = std::fs::remove_file(&blob)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(blob = %blob.display(), error = %e, "cannot remove layer blob");
        }
        unpacked.map_err(|source| OciError::Layer {
            digest: desc.digest.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// The locally stored image for `image`, if a previous pull completed and all of its
    /// parts are still present. Never touches the network.
    pub fn lookup(&self, image: &ImageRef) -> Result<Option<PulledImage>, OciError> {
        let path = self.ref_path(image);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::io(&path, e)),
        };
        let record: RefRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable image record");
                return Ok(None);
            }
        };
        if record.reference != image.to_string() || !self.blob_path(&record.config).exists() {
            return Ok(None);
        }
        let config = match self.read_config(image, &record.config) {
            Ok(config) => config,
            Err(OciError::CorruptStore { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let layers: Vec<PathBuf> = record.layers.iter().map(|d| self.layer_path(d)).collect();
        if !layers.iter().all(|l| l.is_dir()) {
            return Ok(None);
        }
        Ok(Some(PulledImage {
            reference: image.clone(),
            manifest_digest: record.manifest_digest,
            config: ImageConfig::from_container_config(config.config),
            layers,
        }))
    }

    /// Writes `bytes` to `dest` via a synced temporary file and a rename.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), OciError> {
        use std::io::Write as _;
        let tmp = self.tmp_path("write");
        let result = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .map_err(|e| OciError::io(&tmp, e))
            .and_then(|()| std::fs::rename(&tmp, dest).map_err(|e| OciError::io(dest, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn check_schema_version(image: &ImageRef, version: u32) -> Result<(), OciError> {
    if version == 2 {
        Ok(())
    } else {
        Err(OciError::Unsupported {
            image: image.to_string(),
            message: format!("manifest schemaVersion {version} (only 2 is supported)"),
        })
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, OciError> {
    let len = std::fs::metadata(path)
        .map_err(|e| OciError::io(path, e))?
        .len();
    if len > limit {
        return Err(OciError::TooLarge {
            what: path.display().to_string(),
            limit,
        });
    }
    std::fs::read(path).map_err(|e| OciError::io(path, e))
}

fn parse_manifest<T: serde::de::DeserializeOwned>(
    image: &ImageRef,
    what: &'static str,
    body: &[u8],
) -> Result<T, OciError> {
    debug_assert!(body.len() as u64 <= MAX_MANIFEST_BYTES.max(MAX_CONFIG_BYTES));
    serde_json::from_slice(body).map_err(|e| OciError::InvalidManifest {
        image: image.to_string(),
        what,
        message: e.to_string(),
    })
}
