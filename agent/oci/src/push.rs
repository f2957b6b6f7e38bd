//! Pushes an image built with [`crate::LayerBuilder`] to a plain-HTTP registry: monolithic
//! blob uploads (POST, then PUT `?digest=`), then an OCI image manifest under a tag.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use crate::builder::Layer;
use crate::error::OciError;
use crate::manifest::{
    ConfigFile, Descriptor, ImageConfig, Manifest, OCI_CONFIG, OCI_MANIFEST, RootFs,
    host_architecture,
};
use crate::reference::{Digest, ImageRef, Reference};
use crate::registry::error_from_response;

/// Pushes `layers` (bottom first) and an image config built from `config` to
/// `http://<registry>/v2/<repository>`, tagged `tag`. Returns the manifest digest.
pub async fn push_image(
    registry: &str,
    repository: &str,
    tag: &str,
    layers: Vec<Layer>,
    config: ImageConfig,
) -> Result<Digest, OciError> {
    // Validates the three names together the way a puller will parse them.
    let image = ImageRef::parse(&format!("{registry}/{repository}:{tag}"))?;
    if image.registry != registry
        || image.repository != repository
        || image.reference != Reference::Tag(tag.to_owned())
    {
        return Err(OciError::InvalidReference {
            input: format!("{registry}/{repository}:{tag}"),
            reason: "registry must be host[:port] and the repository fully qualified".to_owned(),
        });
    }
    let pusher = Pusher {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|e| OciError::transport("(client setup)", &e))?,
        base: format!("http://{registry}/v2/{repository}"),
        image: image.to_string(),
    };

    let config_blob = ConfigFile {
        architecture: host_architecture().to_owned(),
        os: "linux".to_owned(),
        config: Some(config.to_container_config()),
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
    };
    let config_bytes =
        Bytes::from(
            serde_json::to_vec(&config_blob).map_err(|e| OciError::InvalidManifest {
                image: pusher.image.clone(),
                what: "image config",
                message: e.to_string(),
            })?,
        );
    let config_desc = Descriptor {
        media_type: OCI_CONFIG.to_owned(),
        digest: Digest::of(&config_bytes),
        size: config_bytes.len() as u64,
        platform: None,
    };
    pusher
        .upload_blob(&config_desc.digest, config_bytes)
        .await?;

    let mut layer_descs = Vec::with_capacity(layers.len());
    for layer in layers {
        layer_descs.push(Descriptor {
            media_type: layer.media_type.to_owned(),
            digest: layer.digest.clone(),
            size: layer.bytes.len() as u64,
            platform: None,
        });
        pusher.upload_blob(&layer.digest, layer.bytes).await?;
    }

    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config: config_desc,
        layers: layer_descs,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::InvalidManifest {
        image: pusher.image.clone(),
        what: "manifest",
        message: e.to_string(),
    })?;
    let digest = Digest::of(&manifest_bytes);
    let url = format!("{}/manifests/{tag}", pusher.base);
    let response = pusher
        .http
        .put(&url)
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest_bytes)
        .send()
        .await
        .map_err(|e| OciError::transport(&url, &e))?;
    if !response.status().is_success() {
        return Err(error_from_response(&pusher.image, response).await);
    }
    if let Some(echoed) = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok())
        && echoed != digest
    {
        return Err(OciError::DigestMismatch {
            what: format!("manifest pushed to {}", pusher.image),
            expected: digest,
            actual: echoed,
        });
    }
    Ok(digest)
}

struct Pusher {
    http: reqwest::Client,
    /// `http://host:port/v2/<repository>`
    base: String,
    /// For error messages.
    image: String,
}

impl Pusher {
    /// Uploads one blob unless the registry already has it.
    async fn upload_blob(&self, digest: &Digest, bytes: Bytes) -> Result<(), OciError> {
        let blob_url = format!("{}/blobs/{digest}", self.base);
        let head = self
            .http
            .head(&blob_url)
            .send()
            .await
            .map_err(|e| OciError::transport(&blob_url, &e))?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }

        let start_url = format!("{}/blobs/uploads/", self.base);
        let started = self
            .http
            .post(&start_url)
            .send()
            .await
            .map_err(|e| OciError::transport(&start_url, &e))?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(error_from_response(&self.image, started).await);
        }
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Registry {
                image: self.image.clone(),
                status: started.status().as_u16(),
                message: "upload started without a Location header".to_owned(),
            })?;
        // Location may be absolute or relative to the request.
        let mut upload_url = started
            .url()
            .join(location)
            .map_err(|e| OciError::Registry {
                image: self.image.clone(),
                status: started.status().as_u16(),
                message: format!("bad upload Location {location:?}: {e}"),
            })?;
        upload_url
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());

        let finished = self
            .http
            .put(upload_url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(|e| OciError::transport(upload_url.as_str(), &e))?;
        if finished.status() != StatusCode::CREATED {
            return Err(error_from_response(&self.image, finished).await);
        }
        Ok(())
    }
}
