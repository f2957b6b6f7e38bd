//! The pinned Debian kernel package: fetch it with `apt-get download`, verify its sha256, extract it
//! with `dpkg-deb -x`, and generate its `modules.dep` with `depmod -b` (the .deb ships none).
//!
//! Cache layout under the caller's cache directory:
//! - `<package>_<version>_amd64.deb` — the verified package (a cached file that fails verification is
//!   a hard error, never silently replaced);
//! - `<package>_<version>/` — the extracted tree, with a `.strake-extracted` marker holding the
//!   package's sha256, written last;
//! - `.download-*`, `.extract-*` — per-call staging directories, renamed into place atomically so that
//!   concurrent builds sharing a cache never see partial files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Debian package of the pinned kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-6.1.0-56-cloud-amd64";
/// Exact Debian version of [`KERNEL_PACKAGE`].
pub const KERNEL_VERSION: &str = "6.1.192-2";
/// sha256 of `linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb`.
pub const KERNEL_SHA256: &str = "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee";
/// The kernel release (`uname -r`) the package installs.
pub const KERNEL_RELEASE: &str = "6.1.0-56-cloud-amd64";

/// Name of the marker file written into a completely extracted tree.
const EXTRACTED_MARKER: &str = ".strake-extracted";

/// Errors from fetching, verifying or unpacking the kernel package.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file's digest is not the pinned one.
    #[error("sha256 mismatch for {path}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A helper program could not be started or exited with an error.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// `apt-get download` succeeded but did not leave the expected file.
    #[error("apt-get download left no {expected} in {dir} (found: {found:?})")]
    DownloadMissing {
        expected: String,
        dir: PathBuf,
        found: Vec<String>,
    },
    /// The extracted package does not look like the pinned kernel.
    #[error("extracted kernel package at {root} is unusable: {reason}")]
    BadTree { root: PathBuf, reason: String },
    /// No depmod binary was found.
    #[error("depmod not found in /sbin, /usr/sbin or /bin (install kmod)")]
    DepmodMissing,
    /// Filesystem error on a named path.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KernelError {
    let path = path.to_owned();
    move |source| KernelError::Io {
        action,
        path,
        source,
    }
}

/// A kernel package pin. [`PINNED`] is the one Strake ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPackage {
    /// Debian package name.
    pub name: &'static str,
    /// Exact Debian version.
    pub version: &'static str,
    /// Lowercase hex sha256 of the .deb.
    pub sha256: &'static str,
    /// Kernel release (`/lib/modules/<release>`).
    pub release: &'static str,
}

/// The pinned kernel.
pub const PINNED: KernelPackage = KernelPackage {
    name: KERNEL_PACKAGE,
    version: KERNEL_VERSION,
    sha256: KERNEL_SHA256,
    release: KERNEL_RELEASE,
};

impl KernelPackage {
    /// File name `apt-get download` gives the package (an epoch's `:` is encoded as `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.name,
            self.version.replace(':', "%3a")
        )
    }

    fn extracted_dir_name(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// An extracted kernel package with `modules.dep` generated.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// Root of the extracted package.
    pub root: PathBuf,
    /// Kernel release.
    pub release: String,
}

impl KernelTree {
    /// Path of the compressed kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// `/lib/modules/<release>` inside the tree.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String, KernelError> {
    crate::artifact::sha256_file(path).map_err(io_err("hashing", path))
}

/// Checks that `path` hashes to `expected` (hex, case-insensitive).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), KernelError> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(KernelError::ChecksumMismatch {
            path: path.to_owned(),
            expected: expected.to_ascii_lowercase(),
            actual,
        });
    }
    Ok(())
}

/// Returns the path of the verified package in `cache_dir`, downloading it first if absent.
pub fn ensure_package(pkg: &KernelPackage, cache_dir: &Path) -> Result<PathBuf, KernelError> {
    fs::create_dir_all(cache_dir).map_err(io_err("creating", cache_dir))?;
    let deb = cache_dir.join(pkg.deb_file_name());
    if deb.exists() {
        verify_sha256(&deb, pkg.sha256)?;
        tracing::debug!(path = %deb.display(), "reusing cached kernel package");
        return Ok(deb);
    }
    let staging = Staging::new(cache_dir, "download")?;
    let spec = format!("{}={}", pkg.name, pkg.version);
    tracing::info!(package = %spec, "downloading kernel package with apt-get");
    let download = || {
        run(
            Command::new("apt-get")
                .arg("download")
                .arg(&spec)
                .current_dir(&staging.path),
            || "; if apt does not know the version, run `apt-get update`".to_owned(),
        )
    };
    if let Err(first) = download() {
        // A fresh machine's package lists may predate the pinned version (a security update):
        // refresh them once and try again.
        tracing::info!(error = %first, "refreshing apt's package lists and downloading again");
        run(Command::new("apt-get").args(["update", "-qq"]), String::new)?;
        download()?;
    }
    let downloaded = staging.path.join(pkg.deb_file_name());
    if !downloaded.exists() {
        let found = fs::read_dir(&staging.path)
            .map_err(io_err("listing", &staging.path))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        return Err(KernelError::DownloadMissing {
            expected: pkg.deb_file_name(),
            dir: staging.path.clone(),
            found,
        });
    }
    verify_sha256(&downloaded, pkg.sha256)?;
    fs::rename(&downloaded, &deb).map_err(io_err("moving into the cache", &deb))?;
    Ok(deb)
}

/// Extracts the verified package `deb` under `cache_dir` (once) and generates `modules.dep`.
pub fn ensure_extracted(
    pkg: &KernelPackage,
    deb: &Path,
    cache_dir: &Path,
) -> Result<KernelTree, KernelError> {
    let root = cache_dir.join(pkg.extracted_dir_name());
    let tree = KernelTree {
        root: root.clone(),
        release: pkg.release.to_owned(),
    };
    if extraction_complete(&root, pkg) {
        tracing::debug!(root = %root.display(), "reusing extracted kernel tree");
        return Ok(tree);
    }
    if root.exists() {
        tracing::warn!(root = %root.display(), "removing incomplete or stale kernel tree");
        fs::remove_dir_all(&root).map_err(io_err("removing", &root))?;
    }
    let staging = Staging::new(cache_dir, "extract")?;
    tracing::info!(deb = %deb.display(), "extracting kernel package");
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&staging.path),
        String::new,
    )?;
    let staged = KernelTree {
        root: staging.path.clone(),
        release: pkg.release.to_owned(),
    };
    check_tree(&staged)?;
    let depmod = find_depmod()?;
    run(
        Command::new(depmod)
            .arg("-b")
            .arg(&staging.path)
            .arg(pkg.release),
        String::new,
    )?;
    let marker = staging.path.join(EXTRACTED_MARKER);
    fs::write(&marker, pkg.sha256).map_err(io_err("writing", &marker))?;
    if let Err(err) = fs::rename(&staging.path, &root) {
        // A concurrent build may have won the race; its tree is as good as ours.
        if !extraction_complete(&root, pkg) {
            return Err(KernelError::Io {
                action: "moving into the cache",
                path: root,
                source: err,
            });
        }
    }
    Ok(tree)
}

fn extraction_complete(root: &Path, pkg: &KernelPackage) -> bool {
    fs::read_to_string(root.join(EXTRACTED_MARKER)).is_ok_and(|m| m.trim() == pkg.sha256)
}

/// Checks that the extracted package holds exactly the pinned release and its kernel image.
fn check_tree(tree: &KernelTree) -> Result<(), KernelError> {
    let bad = |reason: String| KernelError::BadTree {
        root: tree.root.clone(),
        reason,
    };
    let modules = tree.root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .map_err(|e| bad(format!("cannot list lib/modules: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    releases.sort();
    if releases != [tree.release.as_str()] {
        return Err(bad(format!(
            "expected only release {} in lib/modules, found {releases:?}",
            tree.release
        )));
    }
    if !tree.vmlinuz().is_file() {
        return Err(bad(format!("missing {}", tree.vmlinuz().display())));
    }
    if !tree.modules_dir().join("modules.builtin").is_file() {
        return Err(bad("missing modules.builtin".to_owned()));
    }
    Ok(())
}

fn find_depmod() -> Result<PathBuf, KernelError> {
    [
        "/sbin/depmod",
        "/usr/sbin/depmod",
        "/bin/depmod",
        "/usr/bin/depmod",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or(KernelError::DepmodMissing)
}

/// Runs a command to completion; on failure the error carries its status and stderr, plus `hint()`.
fn run(cmd: &mut Command, hint: impl FnOnce() -> String) -> Result<(), KernelError> {
    let command = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| KernelError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(KernelError::Command {
            command,
            detail: format!("{}: {}{}", output.status, stderr.trim(), hint()),
        });
    }
    Ok(())
}

/// A uniquely named directory under the cache, removed on drop unless renamed away.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(cache_dir: &Path, kind: &str) -> Result<Self, KernelError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = cache_dir.join(format!(".{kind}-{}-{n}", std::process::id()));
        if path.exists() {
            // Left over from a crashed process that had our pid.
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        }
        fs::create_dir(&path).map_err(io_err("creating", &path))?;
        Ok(Self { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.path.exists()
            && let Err(err) = fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %err, "could not remove staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_name_encodes_epochs() {
        assert_eq!(
            PINNED.deb_file_name(),
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
        );
        let with_epoch = KernelPackage {
            version: "1:2.3-4",
            ..PINNED
        };
        assert_eq!(
            with_epoch.deb_file_name(),
            "linux-image-6.1.0-56-cloud-amd64_1%3a2.3-4_amd64.deb"
        );
    }

    #[test]
    fn pin_is_consistent() {
        assert!(KERNEL_PACKAGE.ends_with(KERNEL_RELEASE));
        assert_eq!(KERNEL_SHA256.len(), 64);
        assert!(
            KERNEL_SHA256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn verify_names_both_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, b"abc").expect("write");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&file, abc).expect("matches");
        verify_sha256(&file, &abc.to_ascii_uppercase()).expect("case-insensitive");
        let err = verify_sha256(&file, KERNEL_SHA256).expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains(KERNEL_SHA256) && text.contains(abc), "{text}");
    }
}
