//! Builds deterministic image layers from in-memory files, for tests and for loading images
//! into an air-gapped registry. Same inputs, same bytes, same digests.

use std::io::Write;

use bytes::Bytes;
use tar::{EntryType, Header};

use crate::error::OciError;
use crate::manifest::{OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD};
use crate::reference::Digest;

/// How [`LayerBuilder::finish`] compresses the tar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob as pushed (compressed unless [`LayerCompression::None`]).
    pub bytes: Bytes,
    /// sha256 of the uncompressed tar (goes into the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of `bytes` (the blob's name in the registry).
    pub digest: Digest,
    /// OCI layer media type matching the compression.
    pub media_type: &'static str,
}

/// Accumulates tar entries in insertion order. Every entry gets the same mtime (0 unless
/// set) and the current owner (root unless set), so output is reproducible.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    compression: LayerCompression,
    mtime: u64,
    uid: u64,
    gid: u64,
}

impl LayerBuilder {
    pub fn new(compression: LayerCompression) -> LayerBuilder {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        LayerBuilder {
            tar,
            compression,
            mtime: 0,
            uid: 0,
            gid: 0,
        }
    }

    /// Modification time (seconds since the epoch) for entries added after this call.
    pub fn set_mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// Numeric owner for entries added after this call.
    pub fn set_owner(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.uid = uid.into();
        self.gid = gid.into();
        self
    }

    fn header(&self, kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(self.uid);
        header.set_gid(self.gid);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }

    fn failed(path: &str, e: std::io::Error) -> OciError {
        OciError::InvalidLayerEntry {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    /// A regular file. `mode` is the permission bits, e.g. `0o755`.
    pub fn add_file(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<&mut Self, OciError> {
        let mut header = self.header(EntryType::Regular, mode, contents.len() as u64);
        self.tar
            .append_data(&mut header, path, contents)
            .map_err(|e| Self::failed(path, e))?;
        Ok(self)
    }

    /// A directory.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, OciError> {
        let mut header = self.header(EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut header, path, std::io::empty())
            .map_err(|e| Self::failed(path, e))?;
        Ok(self)
    }

    /// A symbolic link at `path` pointing to `target` (stored verbatim).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, OciError> {
        let mut header = self.header(EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, path, target)
            .map_err(|e| Self::failed(path, e))?;
        Ok(self)
    }

    /// A hard link at `path` to `target`, an earlier entry of this layer.
    pub fn add_hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self, OciError> {
        let mut header = self.header(EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut header, path, target)
            .map_err(|e| Self::failed(path, e))?;
        Ok(self)
    }

    /// An OCI whiteout deleting `path` from the layers below.
    pub fn add_whiteout(&mut self, path: &str) -> Result<&mut Self, OciError> {
        let (dir, name) = split_last(path);
        let marker = format!("{dir}.wh.{name}");
        self.add_file(&marker, b"", 0o644)
    }

    /// An opaque marker: directory `dir` hides everything below it from lower layers.
    pub fn add_opaque_marker(&mut self, dir: &str) -> Result<&mut Self, OciError> {
        let dir = dir.trim_end_matches('/');
        let marker = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.add_file(&marker, b"", 0o644)
    }

    /// Closes the tar, compresses it and computes both digests.
    pub fn finish(self) -> Result<Layer, OciError> {
        let tar = self
            .tar
            .into_inner()
            .map_err(|e| Self::failed("(end of archive)", e))?;
        let diff_id = Digest::of(&tar);
        let (bytes, media_type) = match self.compression {
            LayerCompression::None => (tar, OCI_LAYER_TAR),
            LayerCompression::Gzip => {
                let mut encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::default());
                encoder
                    .write_all(&tar)
                    .and_then(|()| encoder.try_finish())
                    .map_err(|e| Self::failed("(gzip)", e))?;
                (
                    encoder.finish().map_err(|e| Self::failed("(gzip)", e))?,
                    OCI_LAYER_GZIP,
                )
            }
            LayerCompression::Zstd => (
                zstd::encode_all(tar.as_slice(), 3).map_err(|e| Self::failed("(zstd)", e))?,
                OCI_LAYER_ZSTD,
            ),
        };
        Ok(Layer {
            digest: Digest::of(&bytes),
            bytes: Bytes::from(bytes),
            diff_id,
            media_type,
        })
    }
}

/// Splits `a/b/c` into (`a/b/`, `c`).
fn split_last(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(compression: LayerCompression) -> Layer {
        let mut b = LayerBuilder::new(compression);
        b.add_dir("etc", 0o755).unwrap();
        b.add_file("etc/hostname", b"strake\n", 0o644).unwrap();
        b.add_symlink("bin/sh", "busybox").unwrap();
        b.add_whiteout("var/old").unwrap();
        b.add_opaque_marker("opt/").unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn output_is_deterministic_and_digests_match() {
        for compression in [
            LayerCompression::None,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
        ] {
            let a = sample(compression);
            let b = sample(compression);
            assert_eq!(a.bytes, b.bytes);
            assert_eq!(a.digest, Digest::of(&a.bytes));
            assert_eq!(a.diff_id, b.diff_id);
        }
        let plain = sample(LayerCompression::None);
        assert_eq!(plain.digest, plain.diff_id);
        assert_eq!(sample(LayerCompression::Gzip).diff_id, plain.diff_id);
        assert_eq!(sample(LayerCompression::Zstd).media_type, OCI_LAYER_ZSTD);
    }

    #[test]
    fn whiteout_names() {
        let layer = sample(LayerCompression::None);
        let mut archive = tar::Archive::new(&layer.bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/hostname",
                "bin/sh",
                "var/.wh.old",
                "opt/.wh..wh..opq"
            ]
        );
    }

    #[test]
    fn rejects_parent_components() {
        let mut b = LayerBuilder::new(LayerCompression::None);
        assert!(matches!(
            b.add_file("../escape", b"x", 0o644),
            Err(OciError::InvalidLayerEntry { .. })
        ));
    }
}
