//! Unpacks one layer blob (tar, tar+gzip or tar+zstd) into its own directory in the form
//! overlayfs expects for a lowerdir: OCI whiteouts become 0/0 character devices, opaque
//! markers become `trusted.overlay.opaque=y`. The result appears atomically or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use crate::reference::Digest;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The compressed stream or the tar structure is damaged or truncated.
    #[error("corrupt layer data: {0}")]
    Corrupt(String),

    /// An entry (or a hard link target) would land outside the layer directory.
    #[error("entry {path:?} escapes the layer directory ({reason})")]
    PathTraversal { path: String, reason: &'static str },

    /// An entry is well-formed tar but cannot be represented (bad type, bad owner, ...).
    #[error("entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },

    /// The uncompressed tar does not hash to the config's `diff_id`.
    #[error("uncompressed layer digest mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },

    /// Writing the unpacked tree failed.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

fn nix_err(path: &Path) -> impl FnOnce(nix::Error) -> UnpackError + '_ {
    move |errno| UnpackError::Io {
        path: path.to_owned(),
        source: io::Error::from(errno),
    }
}

fn corrupt(context: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |e| UnpackError::Corrupt(format!("{context}: {e}"))
}

/// Unpacks the layer blob at `blob` into `dest`, which must not exist yet.
///
/// The tree is built in a sibling temporary directory and renamed into place, so `dest`
/// either holds the complete layer or does not exist. Compression is detected from the
/// blob's magic bytes. Returns the digest of the uncompressed tar (the layer's diff_id),
/// and fails with [`UnpackError::DiffIdMismatch`] if it differs from `expected_diff_id`.
/// If `dest` appears concurrently (another unpack of the same layer won), that one is kept.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
) -> Result<Digest, UnpackError> {
    let tmp = temp_sibling(dest);
    let result = unpack_into(blob, &tmp, expected_diff_id);
    let diff_id = match result {
        Ok(diff_id) => diff_id,
        Err(e) => {
            remove_tree(&tmp);
            return Err(e);
        }
    };
    match fs::rename(&tmp, dest) {
        Ok(()) => Ok(diff_id),
        Err(e) if dest.is_dir() => {
            tracing::debug!(dest = %dest.display(), error = %e, "layer unpacked concurrently; keeping existing copy");
            remove_tree(&tmp);
            Ok(diff_id)
        }
        Err(e) => {
            remove_tree(&tmp);
            Err(io_err(dest)(e))
        }
    }
}

fn remove_tree(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove partial layer directory");
    }
}

fn temp_sibling(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(
        ".tmp-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a blob and wraps it in the decompressor its magic bytes call for.
fn open_decompressed(blob: &Path) -> Result<Box<dyn Read>, UnpackError> {
    let file = File::open(blob).map_err(io_err(blob))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let magic = reader.fill_buf().map_err(io_err(blob))?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(corrupt("zstd"))?)
    } else {
        Box::new(reader)
    })
}

fn unpack_into(
    blob: &Path,
    root: &Path,
    expected_diff_id: Option<&Digest>,
) -> Result<Digest, UnpackError> {
    fs::create_dir(root).map_err(io_err(root))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_err(root))?;
    let reader = HashingReader {
        inner: open_decompressed(blob)?,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        root: root.to_owned(),
        dir_times: Vec::new(),
    };
    for entry in archive.entries().map_err(corrupt("reading tar"))? {
        let mut entry = entry.map_err(corrupt("reading tar header"))?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish()?;
    // The tar reader stops at the end-of-archive marker; hash the padding after it too.
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink()).map_err(corrupt("reading past end of tar"))?;
    let actual = Digest::from_hasher(reader.hasher);
    if let Some(expected) = expected_diff_id
        && *expected != actual
    {
        return Err(UnpackError::DiffIdMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    Ok(actual)
}

/// Turns a tar path into a relative path with no `..`; leading `/` and `.` are dropped.
fn sanitize(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::PathTraversal {
                    path: path.display().to_string(),
                    reason: "contains '..'",
                });
            }
        }
    }
    Ok(out)
}

struct Unpacker {
    root: PathBuf,
    /// Directory mtimes, applied last because creating children changes them.
    dir_times: Vec<(PathBuf, u64)>,
}

/// Ownership, mode and extended attributes of one tar entry.
struct EntryMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw_path = entry.path().map_err(corrupt("entry path"))?.into_owned();
        let rel = sanitize(&raw_path)?;
        let shown = rel.display().to_string();
        let meta = read_meta(entry, &shown)?;

        if rel.as_os_str().is_empty() {
            // "./" describes the layer root itself.
            if !kind.is_dir() {
                return Err(bad(&shown, "the archive root must be a directory"));
            }
            self.apply_meta(&self.root.clone(), &meta, false)?;
            self.dir_times.push((self.root.clone(), meta.mtime));
            return Ok(());
        }

        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&rel, &name, hidden);
        }

        let parent = self.ensure_parent(&rel)?;
        let path = parent.join(rel.file_name().unwrap_or_default());
        match kind {
            EntryType::Directory => {
                if !clear_for(&path, true)? {
                    fs::create_dir(&path).map_err(io_err(&path))?;
                }
                self.apply_meta(&path, &meta, false)?;
                self.dir_times.push((path, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                clear_for(&path, false)?;
                write_file(entry, &path)?;
                self.apply_meta(&path, &meta, false)?;
                set_mtime(&path, meta.mtime)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt("symlink target"))?
                    .ok_or_else(|| bad(&shown, "symlink without a target"))?;
                clear_for(&path, false)?;
                std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
                self.apply_meta(&path, &meta, true)?;
                set_mtime(&path, meta.mtime)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt("hard link target"))?
                    .ok_or_else(|| bad(&shown, "hard link without a target"))?;
                let source = self.existing_inside(&sanitize(&target)?)?;
                clear_for(&path, false)?;
                fs::hard_link(&source, &path).map_err(io_err(&path))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header
                    .device_major()
                    .map_err(corrupt("device major"))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(corrupt("device minor"))?
                    .unwrap_or(0);
                clear_for(&path, false)?;
                mknod(
                    &path,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    makedev(major.into(), minor.into()),
                )
                .map_err(nix_err(&path))?;
                self.apply_meta(&path, &meta, false)?;
                set_mtime(&path, meta.mtime)?;
            }
            other => {
                return Err(bad(
                    &shown,
                    &format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// `.wh.<name>` hides `<name>` from lower layers; `.wh..wh..opq` hides all of the
    /// directory's lower contents. Other `.wh..wh.*` names are aufs bookkeeping: skipped.
    fn whiteout(&mut self, rel: &Path, name: &str, hidden: &str) -> Result<(), UnpackError> {
        let parent = self.ensure_parent(rel)?;
        if name == OPAQUE_MARKER {
            return xattr::set(&parent, OVERLAY_OPAQUE_XATTR, b"y").map_err(io_err(&parent));
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            return Ok(());
        }
        if hidden.is_empty() {
            return Err(bad(&rel.display().to_string(), "whiteout without a name"));
        }
        let path = parent.join(hidden);
        clear_for(&path, false)?;
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(nix_err(&path))
    }

    /// Creates the missing parent directories of `rel` (mode 0755, root-owned) and returns
    /// the parent's absolute path. A symlink on the way is refused: following it could
    /// lead outside the layer.
    fn ensure_parent(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let mut current = self.root.clone();
        let Some(parent) = rel.parent() else {
            return Ok(current);
        };
        for component in parent.components() {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::PathTraversal {
                        path: rel.display().to_string(),
                        reason: "a parent directory is a symlink",
                    });
                }
                Ok(_) => {
                    return Err(bad(
                        &rel.display().to_string(),
                        "a parent path is not a directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current).map_err(io_err(&current))?;
                    fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(&current))?;
                }
                Err(e) => return Err(io_err(&current)(e)),
            }
        }
        Ok(current)
    }

    /// Resolves a hard-link target that must already exist in this layer, without
    /// following symlinks on the way.
    fn existing_inside(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let shown = rel.display().to_string();
        let mut current = self.root.clone();
        let count = rel.components().count();
        for (i, component) in rel.components().enumerate() {
            current.push(component);
            let m = fs::symlink_metadata(&current).map_err(|_| {
                bad(
                    &shown,
                    "hard link target does not exist earlier in the layer",
                )
            })?;
            let last = i + 1 == count;
            if !last && !m.is_dir() {
                return Err(UnpackError::PathTraversal {
                    path: shown,
                    reason: "hard link target passes through a non-directory",
                });
            }
            if last && m.is_dir() {
                return Err(bad(&shown, "hard link target is a directory"));
            }
        }
        if count == 0 {
            return Err(bad(&shown, "hard link to the layer root"));
        }
        Ok(current)
    }

    fn apply_meta(
        &self,
        path: &Path,
        meta: &EntryMeta,
        is_symlink: bool,
    ) -> Result<(), UnpackError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(io_err(path))?;
        if !is_symlink {
            // After chown, which clears set-id bits.
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
                .map_err(io_err(path))?;
        }
        for (name, value) in &meta.xattrs {
            xattr::set(path, name, value).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            set_mtime(&path, mtime)?;
        }
        Ok(())
    }
}

fn bad(path: &str, reason: &str) -> UnpackError {
    UnpackError::BadEntry {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
) -> Result<EntryMeta, UnpackError> {
    let header = entry.header();
    let id = |value: io::Result<u64>, what: &str| -> Result<u32, UnpackError> {
        let value = value.map_err(corrupt(what))?;
        u32::try_from(value).map_err(|_| bad(shown, &format!("{what} {value} out of range")))
    };
    let uid = id(header.uid(), "uid")?;
    let gid = id(header.gid(), "gid")?;
    let mode = header.mode().map_err(corrupt("mode"))?;
    let mtime = header.mtime().map_err(corrupt("mtime"))?;
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(corrupt("pax header"))? {
        for extension in extensions {
            let extension = extension.map_err(corrupt("pax header"))?;
            let Ok(key) = extension.key() else { continue };
            if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX)
                && allowed_xattr(name)
            {
                xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
            }
        }
    }
    Ok(EntryMeta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// Only attributes an image may legitimately carry. `trusted.*` in particular is refused:
/// `trusted.overlay.*` would let a layer steer overlayfs (redirects, metacopy).
fn allowed_xattr(name: &str) -> bool {
    name == "security.capability" || name.starts_with("user.")
}

/// Makes room for a new entry at `path`. Returns true when `path` is an existing directory
/// that was kept because `keep_dir` was set; anything else there is removed.
fn clear_for(path: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(true),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path)
            .map(|()| false)
            .map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map(|()| false).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn write_file(data: &mut impl Read, path: &Path) -> Result<(), UnpackError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = data.read(&mut buf).map_err(corrupt("file data"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io_err(path))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> Result<(), UnpackError> {
    let seconds = i64::try_from(mtime).unwrap_or(i64::MAX);
    let time = TimeSpec::new(seconds, 0);
    utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink).map_err(nix_err(path))
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
