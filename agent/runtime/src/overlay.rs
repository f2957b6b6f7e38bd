//! Overlay rootfs mounts for the agent (which must not make mount syscalls itself).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::RuntimeError;

/// The kernel copies mount data into one page.
const MAX_MOUNT_DATA: usize = 4095;

/// Builds `lowerdir=…,upperdir=…,workdir=…`; overlayfs lists the top layer first, so the
/// bottom-first `lowerdirs` are reversed.
fn overlay_options(
    lowerdirs: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<String, RuntimeError> {
    if lowerdirs.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            field: "lowerdirs".into(),
            reason: "an overlay needs at least one lower layer".into(),
        });
    }
    let all = lowerdirs.iter().map(PathBuf::as_path).chain([upper, work]);
    for path in all {
        let s = path.to_string_lossy();
        if s.contains([':', ',']) {
            return Err(RuntimeError::OverlayPath {
                path: path.to_owned(),
            });
        }
        if !path.is_absolute() {
            return Err(RuntimeError::InvalidSpec {
                field: "overlay".into(),
                reason: format!("{} is not an absolute path", path.display()),
            });
        }
    }
    let lower: Vec<String> = lowerdirs
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_MOUNT_DATA {
        return Err(RuntimeError::OverlayOptionsTooLong {
            target: target.to_owned(),
            len: options.len(),
            max: MAX_MOUNT_DATA,
        });
    }
    Ok(options)
}

/// Mounts an overlay of `lowerdirs` (bottom layer first) with `upper`/`work` at `target`.
///
/// `upper` and `work` must be on the same filesystem; `target` must exist.
pub fn mount_overlay(
    lowerdirs: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let options = overlay_options(lowerdirs, upper, work, target)?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|errno| RuntimeError::Mount {
        op: "mounting overlay on",
        target: target.to_owned(),
        errno,
    })
}

/// Mounts a tmpfs at `target` (mode 0777, as a memory-backed emptyDir), limited to
/// `size` bytes when given; `target` must exist.
pub fn mount_tmpfs(target: &Path, size: Option<i64>) -> Result<(), RuntimeError> {
    let mut options = "mode=0777".to_string();
    if let Some(size) = size {
        options.push_str(&format!(",size={}", size.max(4096)));
    }
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| RuntimeError::Mount {
        op: "mounting tmpfs on",
        target: target.to_owned(),
        errno,
    })
}

/// Detaches the mount at `target` (lazily, so open files don't block it).
///
/// Idempotent: a missing path or one that is not a mount point is not an error.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(errno) => Err(RuntimeError::Mount {
            op: "unmounting",
            target: target.to_owned(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_layer_comes_first() {
        let opts = overlay_options(
            &["/l/base".into(), "/l/mid".into(), "/l/top".into()],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/t"),
        )
        .unwrap();
        assert_eq!(
            opts,
            "lowerdir=/l/top:/l/mid:/l/base,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn rejects_what_options_cannot_carry() {
        let (u, w, t) = (Path::new("/u"), Path::new("/w"), Path::new("/t"));
        assert!(matches!(
            overlay_options(&["/a:b".into()], u, w, t),
            Err(RuntimeError::OverlayPath { .. })
        ));
        assert!(matches!(
            overlay_options(&["/a".into()], Path::new("/u,x"), w, t),
            Err(RuntimeError::OverlayPath { .. })
        ));
        assert!(matches!(
            overlay_options(&[], u, w, t),
            Err(RuntimeError::InvalidSpec { .. })
        ));
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/strake/layers/{i:064}")))
            .collect();
        assert!(matches!(
            overlay_options(&many, u, w, t),
            Err(RuntimeError::OverlayOptionsTooLong { .. })
        ));
    }
}
