//! Leaving the initramfs: the kernel's `rootfs` cannot be pivoted away from, so container runtimes
//! (libcontainer's pivot_root) fail on it. When `/` is that rootfs, init copies the tree into a
//! fresh tmpfs, deleting each original right after copying it (so memory peaks at one file, not
//! one tree), then moves the tmpfs onto `/` and chroots into it, like busybox's switch_root.
//! `/init` and `/bin/strake` exist in the new root because everything was copied.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};

use crate::sys::RootSwitcher;

/// statfs magic of ramfs (the initramfs when the kernel has no tmpfs rootfs).
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// statfs magic of tmpfs.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Where the new root tmpfs is assembled before it is moved onto `/`.
pub const NEW_ROOT: &str = "/.strake-root";

/// Errors leaving the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("statfs /: {0}")]
    Statfs(Errno),
    #[error("{op}: {errno}")]
    Sys { op: &'static str, errno: Errno },
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
    #[error("moving {path} into the new root: {source}")]
    Copy {
        path: String,
        source: std::io::Error,
    },
}

/// The filesystem type of the visible `/` mount in a mountinfo table (the last entry mounted on
/// `/` wins).
pub fn root_fstype(mountinfo: &str) -> Option<&str> {
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4) == Some(&"/") {
            found = fields.get(sep + 1).copied();
        }
    }
    found
}

/// What [`move_tree`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MoveStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Entries on other filesystems (mount points), left alone.
    pub skipped_mounts: u64,
}

/// Moves every entry under `src` into `dst` (copy, then delete the original), not crossing into
/// other filesystems and skipping `skip` (the destination itself when it lives under `src`).
/// Preserves modes, ownership, symlinks, hard links, device nodes and fifos.
pub fn move_tree(src: &Path, dst: &Path, skip: &Path) -> Result<MoveStats, SwitchRootError> {
    let dev = std::fs::symlink_metadata(src).map_err(copy_err(src))?.dev();
    let mut stats = MoveStats::default();
    let mut hardlinks = HashMap::new();
    move_dir_contents(src, dst, skip, dev, &mut stats, &mut hardlinks)?;
    Ok(stats)
}

fn copy_err(path: &Path) -> impl Fn(std::io::Error) -> SwitchRootError + '_ {
    move |source| SwitchRootError::Copy {
        path: path.display().to_string(),
        source,
    }
}

fn move_dir_contents(
    src: &Path,
    dst: &Path,
    skip: &Path,
    dev: u64,
    stats: &mut MoveStats,
    hardlinks: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), SwitchRootError> {
    for entry in std::fs::read_dir(src).map_err(copy_err(src))? {
        let entry = entry.map_err(copy_err(src))?;
        let from = entry.path();
        if from == skip {
            continue;
        }
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from).map_err(copy_err(&from))?;
        if meta.dev() != dev {
            stats.skipped_mounts += 1;
            continue;
        }
        let ft = meta.file_type();
        let err = copy_err(&from);
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(&err)?;
            move_dir_contents(&from, &to, skip, dev, stats, hardlinks)?;
            set_owner_and_mode(&to, &meta).map_err(&err)?;
            // A directory still holding a mount point cannot go; that is fine.
            let _ = std::fs::remove_dir(&from);
            stats.dirs += 1;
            continue;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(&err)?;
            std::os::unix::fs::symlink(&target, &to).map_err(&err)?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(&err)?;
            stats.links += 1;
        } else if let Some(first) = hardlinks.get(&(meta.dev(), meta.ino())) {
            // Looked up whatever the current link count: deleting the first name lowered it.
            std::fs::hard_link(first, &to).map_err(&err)?;
            stats.links += 1;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(&err)?;
            set_owner_and_mode(&to, &meta).map_err(&err)?;
            if meta.nlink() > 1 {
                hardlinks.insert((meta.dev(), meta.ino()), to.clone());
            }
            stats.files += 1;
            stats.bytes += meta.len();
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&to, kind, perm, meta.rdev()).map_err(|e| err(e.into()))?;
            set_owner_and_mode(&to, &meta).map_err(&err)?;
            stats.files += 1;
        }
        // Sockets are not copied (nothing listens yet); every other entry is deleted now.
        std::fs::remove_file(&from).map_err(&err)?;
    }
    Ok(())
}

fn set_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    // chown clears setuid bits: set the mode afterwards.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
}

/// The real switcher, working on `/`.
#[derive(Debug, Default)]
pub struct LinuxRootSwitcher;

fn sys(op: &'static str) -> impl Fn(Errno) -> SwitchRootError {
    move |errno| SwitchRootError::Sys { op, errno }
}

impl RootSwitcher for LinuxRootSwitcher {
    fn root_is_initramfs(&mut self) -> Result<bool, SwitchRootError> {
        let fs = nix::sys::statfs::statfs("/").map_err(SwitchRootError::Statfs)?;
        #[allow(clippy::unnecessary_cast)] // fs_type_t differs between architectures
        let magic = fs.filesystem_type().0 as i64;
        if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
            return Ok(false);
        }
        // tmpfs could also be a root we already switched to: only the kernel's `rootfs` counts.
        let _ = std::fs::create_dir("/proc");
        nix::mount::mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(sys("mounting /proc to read mountinfo"))?;
        let info = std::fs::read_to_string("/proc/self/mountinfo");
        nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH)
            .map_err(sys("unmounting /proc"))?;
        let info = info.map_err(SwitchRootError::Mountinfo)?;
        Ok(root_fstype(&info) == Some("rootfs"))
    }

    fn switch_root(&mut self) -> Result<(), SwitchRootError> {
        let new_root = Path::new(NEW_ROOT);
        std::fs::create_dir(new_root).map_err(copy_err(new_root))?;
        nix::mount::mount(
            Some("rootfs"),
            new_root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(sys("mounting the new root tmpfs"))?;
        let stats = move_tree(Path::new("/"), new_root, new_root)?;
        tracing::info!(
            target: "strake_init::switch_root",
            "moved {} files ({} KiB), {} dirs, {} links into tmpfs",
            stats.files,
            stats.bytes / 1024,
            stats.dirs,
            stats.links
        );
        nix::unistd::chdir(new_root).map_err(sys("chdir to the new root"))?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(sys("moving the new root onto /"))?;
        nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
        nix::unistd::chdir("/").map_err(sys("chdir /"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_visible_root_filesystem() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:21 / /proc rw,relatime - proc proc rw\n";
        assert_eq!(root_fstype(initramfs), Some("rootfs"));
        let switched = "1 1 0:2 / / rw - rootfs rootfs rw\n30 1 0:25 / / rw shared:1 - tmpfs rootfs rw,mode=755\n";
        assert_eq!(root_fstype(switched), Some("tmpfs"));
        assert_eq!(root_fstype("garbage\n\n1 2 3"), None);
    }

    #[test]
    fn moves_a_tree_preserving_kinds_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let dst = src.join(".strake-root");
        std::fs::create_dir_all(src.join("bin")).expect("mkdir");
        std::fs::create_dir_all(src.join("etc/deep/er")).expect("mkdir");
        std::fs::create_dir_all(&dst).expect("mkdir dst");
        std::fs::write(src.join("init"), b"#!binary").expect("write");
        std::fs::set_permissions(src.join("init"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::hard_link(src.join("init"), src.join("bin/strake")).expect("hardlink");
        std::os::unix::fs::symlink("../init", src.join("bin/sh")).expect("symlink");
        std::fs::write(src.join("etc/deep/er/file"), b"x").expect("write");
        std::fs::set_permissions(src.join("etc/deep"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o600)).expect("mkfifo");

        let stats = move_tree(&src, &dst, &dst).expect("move");

        assert_eq!(std::fs::read(dst.join("init")).expect("init"), b"#!binary");
        let mode = |p: &Path| {
            std::fs::symlink_metadata(p)
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(&dst.join("init")), 0o755);
        assert_eq!(mode(&dst.join("etc/deep")), 0o700);
        let a = std::fs::metadata(dst.join("init")).expect("a");
        let b = std::fs::metadata(dst.join("bin/strake")).expect("b");
        assert_eq!(a.ino(), b.ino(), "hard link preserved");
        assert_eq!(
            std::fs::read_link(dst.join("bin/sh")).expect("link"),
            Path::new("../init")
        );
        assert!(
            std::fs::symlink_metadata(dst.join("fifo"))
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            std::fs::read(dst.join("etc/deep/er/file")).expect("file"),
            b"x"
        );
        // The originals are gone; only the destination remains in the source.
        let left: Vec<_> = std::fs::read_dir(&src)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(".strake-root")]);
        assert_eq!((stats.files, stats.links), (3, 2));
        assert_eq!(stats.dirs, 4);
    }
}
