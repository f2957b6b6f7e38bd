//! `manifest.json`: what went into an image and what came out, with digests. It holds no timestamps
//! or host paths, so it is as reproducible as the artifacts it describes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ImageError;
pub use crate::artifact::ArtifactInfo;

/// Version of the manifest format; bumped on incompatible changes.
pub const MANIFEST_FORMAT: u32 = 1;
/// File name of the manifest in the output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The kernel an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Debian package name.
    pub package: String,
    /// Debian package version.
    pub version: String,
    /// Kernel release (`uname -r`).
    pub release: String,
    /// sha256 of the .deb.
    pub package_sha256: String,
}

/// One module shipped in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Canonical module name.
    pub name: String,
    /// Path relative to `/lib/modules/<release>/`.
    pub path: String,
    /// Size of the module file in bytes.
    pub size: u64,
}

/// How the initramfs was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsInfo {
    /// zstd compression level.
    pub zstd_level: i32,
    /// Size of the cpio archive before compression.
    pub uncompressed_size: u64,
    /// mtime of every entry.
    pub mtime: u32,
    /// Compression of the shipped `.ko` files as the kernel package ships them (`none`, `xz`, …).
    pub module_compression: Vec<String>,
}

/// Contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Version of Strake (the workspace version).
    pub strake_version: String,
    /// sha256 of the strake binary used as `/init`.
    pub strake_sha256: String,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The initramfs build parameters.
    pub initramfs: InitramfsInfo,
    /// Shipped modules, sorted by path.
    pub modules: Vec<ModuleInfo>,
    /// Requested modules that are built into the kernel.
    pub builtin_modules: Vec<String>,
    /// Optional requested modules this kernel does not have.
    pub absent_optional_modules: Vec<String>,
    /// Output files by kind (`vmlinuz`, `initramfs`, and later `uki`, `iso`, …).
    pub artifacts: BTreeMap<String, ArtifactInfo>,
}

impl Manifest {
    /// Serialises to pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<String, ImageError> {
        let mut text = serde_json::to_string_pretty(self).map_err(ImageError::Manifest)?;
        text.push('\n');
        Ok(text)
    }

    /// Reads a manifest written by [`crate::build`].
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(ImageError::io("reading", path))?;
        serde_json::from_str(&text).map_err(ImageError::Manifest)
    }
}
