//! Writing output files: atomically (temp file + rename, so a reader never sees half an artifact) and
//! with their digest and size recorded for the manifest.

use std::fs;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// Digest and size of one output file, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// File name inside the output directory.
    pub file: String,
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl ArtifactInfo {
    /// Hashes the file at `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            file,
            sha256: sha256_file(path)?,
            size: fs::metadata(path)?.len(),
        })
    }
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Temporary path next to `dest`, unique per process.
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `dest` by letting `fill` write a temporary file beside it, then renaming it into place.
/// On any error the temporary file is removed and `dest` is left untouched.
pub fn write_atomically<T>(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let tmp = temp_path(dest);
    let result = (|| {
        let file = fs::File::create(&tmp).map_err(ImageError::io("creating", &tmp))?;
        let mut out = BufWriter::new(file);
        let value = fill(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| ImageError::io("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(ImageError::io("syncing", &tmp))?;
        fs::rename(&tmp, dest).map_err(ImageError::io("renaming into place", dest))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies `src` to `dest` atomically.
pub fn copy_atomically(src: &Path, dest: &Path) -> Result<(), ImageError> {
    write_atomically(dest, |out| {
        let mut input = fs::File::open(src).map_err(ImageError::io("opening", src))?;
        io::copy(&mut input, out).map_err(ImageError::io("copying", src))?;
        Ok(())
    })
}
