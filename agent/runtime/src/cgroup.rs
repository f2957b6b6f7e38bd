//! Finding and removing a cgroup across every mounted hierarchy (v1, hybrid or pure v2).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// Mount points of all cgroup (v1) and cgroup2 filesystems in a `/proc/self/mountinfo` text.
fn parse_cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mount_point) = left.split(' ').nth(4) {
            let path = PathBuf::from(unescape_octal(mount_point));
            if !mounts.contains(&path) {
                mounts.push(path);
            }
        }
    }
    mounts
}

/// Undoes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0')),
                );
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cgroup_mounts() -> Result<Vec<PathBuf>, RuntimeError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io("reading", path, e))?;
    Ok(parse_cgroup_mounts(&text))
}

fn relative(cgroup_path: &str) -> Result<&Path, RuntimeError> {
    if cgroup_path == "/" || !crate::spec::is_clean_absolute(Path::new(cgroup_path)) {
        return Err(RuntimeError::Cgroup {
            path: cgroup_path.to_owned(),
            reason: "not a clean absolute cgroup path below the root".into(),
        });
    }
    Ok(Path::new(&cgroup_path[1..]))
}

/// The directories that exist for `cgroup_path` (e.g. `/strake/pod-x/c`) in every hierarchy.
pub fn cgroup_dirs(cgroup_path: &str) -> Result<Vec<PathBuf>, RuntimeError> {
    let rel = relative(cgroup_path)?;
    Ok(cgroup_mounts()?
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|p| p.is_dir())
        .collect())
}

/// Removes `cgroup_path` and its (empty) child cgroups in every hierarchy, deepest first.
///
/// Missing directories are fine. A cgroup that still has processes fails with `EBUSY`: stop and
/// remove the containers inside it first.
pub fn remove_cgroup(cgroup_path: &str) -> Result<(), RuntimeError> {
    for dir in cgroup_dirs(cgroup_path)? {
        remove_tree(&dir).map_err(|e| RuntimeError::Cgroup {
            path: cgroup_path.to_owned(),
            reason: format!("removing {}: {e}", dir.display()),
        })?;
    }
    Ok(())
}

/// Cgroup directories can only be `rmdir`ed (their control files can't be unlinked).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 252:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 25 0:40 / /mnt/odd\\040dir rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_and_v2_hierarchies() {
        assert_eq!(
            parse_cgroup_mounts(HYBRID),
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/unified",
                "/mnt/odd dir"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn rejects_unclean_paths() {
        for bad in ["/", "", "/a/../b", "/a/./b"] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            relative("/strake/pod/c").unwrap(),
            Path::new("strake/pod/c")
        );
    }
}
