//! The OCI / Docker v2 documents we read and write: indexes, manifests, image configs,
//! plus the media-type rules that decide what we accept.

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDIST_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";

/// The `Accept` header for manifest requests, most preferred first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A reference to a blob or manifest by digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform an index entry is built for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or Docker v2 schema 2 manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image config blob (only the parts a runtime needs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigFile {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// `config` inside the image config blob; field names are Docker's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `rootfs` inside the image config blob: the uncompressed layer digests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// What a container needs from an image config. Empty vectors mean "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl ImageConfig {
    pub(crate) fn from_container_config(config: Option<ContainerConfig>) -> ImageConfig {
        let config = config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            working_dir: non_empty(config.working_dir),
            user: non_empty(config.user),
        }
    }

    pub(crate) fn to_container_config(&self) -> ContainerConfig {
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        ContainerConfig {
            entrypoint: non_empty(&self.entrypoint),
            cmd: non_empty(&self.cmd),
            env: non_empty(&self.env),
            working_dir: self.working_dir.clone(),
            user: self.user.clone(),
        }
    }
}

/// What kind of manifest document a response holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Index,
    Manifest,
}

/// Decides what a manifest response is, from its Content-Type, then the document's own
/// `mediaType`, then its shape. `Err` carries a message for unsupported kinds (schema 1).
pub fn classify_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ManifestKind, String> {
    let by_type = |media_type: &str| match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Ok(ManifestKind::Index)),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Ok(ManifestKind::Manifest)),
        t if t.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Some(Err(format!(
                "Docker schema 1 manifests ({t}) are not supported; re-push the image with a current client"
            )))
        }
        _ => None,
    };
    if let Some(kind) = content_type
        .map(|ct| ct.split(';').next().unwrap_or_default().trim())
        .and_then(by_type)
    {
        return kind;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(kind) = probe.media_type.as_deref().and_then(by_type) {
        return kind;
    }
    match (probe.manifests.is_some(), probe.layers.is_some()) {
        (true, false) => Ok(ManifestKind::Index),
        (false, true) => Ok(ManifestKind::Manifest),
        _ => Err(format!(
            "unrecognized manifest media type {:?}",
            content_type
                .or(probe.media_type.as_deref())
                .unwrap_or("(none)")
        )),
    }
}

/// The OCI name of the architecture this binary runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks the linux manifest for our architecture from an index.
pub fn select_platform(index: &Index) -> Option<&Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == host_architecture())
            && matches!(
                d.media_type.as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST
            )
    })
}

/// Whether a config media type denotes a container image (not some other OCI artifact).
pub fn is_image_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// Whether we can unpack a layer of this media type. Compression is sniffed from the
/// content itself when unpacking, so this only rules out foreign kinds (e.g. encrypted).
pub fn is_supported_layer(media_type: &str) -> bool {
    match media_type {
        OCI_LAYER_TAR
        | OCI_LAYER_GZIP
        | OCI_LAYER_ZSTD
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER_GZIP => true,
        t => t
            .strip_prefix(OCI_NONDIST_PREFIX)
            .is_some_and(|rest| matches!(rest, "" | "+gzip" | "+zstd")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str, arch: &str, os: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: Digest::of(format!("{arch}{os}").as_bytes()),
            size: 1,
            platform: Some(Platform {
                architecture: arch.to_owned(),
                os: os.to_owned(),
                variant: None,
            }),
        }
    }

    #[test]
    fn classifies_by_header_then_body() {
        assert_eq!(
            classify_manifest(Some(OCI_INDEX), b""),
            Ok(ManifestKind::Index)
        );
        assert_eq!(
            classify_manifest(
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                b""
            ),
            Ok(ManifestKind::Manifest)
        );
        let body = format!(r#"{{"mediaType":"{DOCKER_LIST}","manifests":[]}}"#);
        assert_eq!(
            classify_manifest(Some("application/json"), body.as_bytes()),
            Ok(ManifestKind::Index)
        );
        assert_eq!(
            classify_manifest(None, br#"{"layers":[],"config":{}}"#),
            Ok(ManifestKind::Manifest)
        );
        assert!(
            classify_manifest(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b""
            )
            .unwrap_err()
            .contains("schema 1")
        );
        assert!(classify_manifest(None, b"{}").is_err());
        assert!(classify_manifest(None, b"<html>").is_err());
    }

    #[test]
    fn selects_linux_host_arch() {
        let index = Index {
            schema_version: 2,
            manifests: vec![
                descriptor(OCI_MANIFEST, "arm", "linux"),
                descriptor(OCI_MANIFEST, host_architecture(), "windows"),
                descriptor("application/vnd.in-toto+json", host_architecture(), "linux"),
                descriptor(DOCKER_MANIFEST, host_architecture(), "linux"),
            ],
        };
        assert_eq!(select_platform(&index), Some(&index.manifests[3]));
        let none = Index {
            schema_version: 2,
            manifests: vec![descriptor(OCI_MANIFEST, "s390x-nope", "linux")],
        };
        assert_eq!(select_platform(&none), None);
    }

    #[test]
    fn layer_and_config_media_types() {
        for ok in [
            OCI_LAYER_TAR,
            OCI_LAYER_GZIP,
            OCI_LAYER_ZSTD,
            DOCKER_LAYER_GZIP,
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ] {
            assert!(is_supported_layer(ok), "{ok}");
        }
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+encrypted",
            "application/octet-stream",
            "",
        ] {
            assert!(!is_supported_layer(bad), "{bad}");
        }
        assert!(is_image_config(OCI_CONFIG) && is_image_config(DOCKER_CONFIG));
        assert!(!is_image_config("application/vnd.cncf.helm.config.v1+json"));
    }

    #[test]
    fn image_config_round_trips_through_container_config() {
        let config = ImageConfig {
            entrypoint: vec!["/bin/sh".into()],
            cmd: vec![],
            env: vec!["PATH=/bin".into()],
            working_dir: Some("/".into()),
            user: None,
        };
        let json = serde_json::to_string(&config.to_container_config()).unwrap();
        assert_eq!(
            json,
            r#"{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"],"WorkingDir":"/"}"#
        );
        let back: ContainerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(ImageConfig::from_container_config(Some(back)), config);
        let nulls: ContainerConfig = serde_json::from_str(r#"{"Cmd":null,"User":""}"#).unwrap();
        assert_eq!(
            ImageConfig::from_container_config(Some(nulls)),
            ImageConfig::default()
        );
    }
}
