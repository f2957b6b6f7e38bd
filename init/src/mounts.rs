//! The mount table as data, the cgroup2 controller setup and the efivarfs mount.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sys::{MountSpec, Mounter};

/// Errors of the mounts phase.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating mount point {path}: {source}")]
    MountPoint {
        path: String,
        source: std::io::Error,
    },
    #[error("mounting {fstype} on {target}: {errno}")]
    Mount {
        fstype: String,
        target: String,
        errno: Errno,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("enabling cgroup controllers {controllers:?} in {path}: {source}")]
    Controllers {
        path: String,
        controllers: Vec<String>,
        source: std::io::Error,
    },
}

/// Where the pure cgroup2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The base mounts, in order.
pub fn base_mounts() -> Vec<MountSpec> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | MsFlags::MS_NOEXEC;
    vec![
        MountSpec::new("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        MountSpec::new("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        MountSpec::new(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        MountSpec::new(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        MountSpec::new("shm", "/dev/shm", "tmpfs", nosuid_nodev, Some("mode=1777")),
        MountSpec::new("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        MountSpec::new("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
        MountSpec::new(
            "cgroup2",
            CGROUP_ROOT,
            "cgroup2",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
        ),
        MountSpec::new("tmpfs", "/var", "tmpfs", nosuid_nodev, Some("mode=0755")),
    ]
}

/// Under `root`, the host path of an absolute path in init's namespace.
pub fn host_path(root: &Path, abs: &str) -> std::path::PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Creates each mount point (under `root`) and mounts it.
pub fn mount_all(
    mounter: &mut dyn Mounter,
    root: &Path,
    mounts: &[MountSpec],
) -> Result<(), MountError> {
    for m in mounts {
        let dir = host_path(root, &m.target);
        std::fs::create_dir_all(&dir).map_err(|source| MountError::MountPoint {
            path: m.target.clone(),
            source,
        })?;
        mounter.mount(m).map_err(|errno| MountError::Mount {
            fstype: m.fstype.clone(),
            target: m.target.clone(),
            errno,
        })?;
    }
    Ok(())
}

/// Enables every controller listed in the root `cgroup.controllers` in the root
/// `cgroup.subtree_control`. Returns the enabled controllers. If enabling them all at once fails,
/// tries one by one and fails naming those the kernel refused.
pub fn enable_cgroup_controllers(root: &Path) -> Result<Vec<String>, MountError> {
    let cg = host_path(root, CGROUP_ROOT);
    let list_path = cg.join("cgroup.controllers");
    let list = std::fs::read_to_string(&list_path).map_err(|source| MountError::Read {
        path: list_path.display().to_string(),
        source,
    })?;
    let controllers: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
    if controllers.is_empty() {
        return Ok(controllers);
    }
    let control = cg.join("cgroup.subtree_control");
    let all: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    if std::fs::write(&control, all.join(" ")).is_ok() {
        return Ok(controllers);
    }
    let mut refused = Vec::new();
    let mut last_err = None;
    let mut enabled = Vec::new();
    for c in &controllers {
        match std::fs::write(&control, format!("+{c}")) {
            Ok(()) => enabled.push(c.clone()),
            Err(e) => {
                refused.push(c.clone());
                last_err = Some(e);
            }
        }
    }
    match last_err {
        Some(source) => Err(MountError::Controllers {
            path: control.display().to_string(),
            controllers: refused,
            source,
        }),
        None => Ok(enabled),
    }
}

/// Where efivarfs goes on UEFI machines.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// Whether the machine booted through UEFI.
pub fn is_uefi(root: &Path) -> bool {
    host_path(root, "/sys/firmware/efi").is_dir()
}

/// Mounts efivarfs; a kernel without it (ENODEV) is only a warning, reported as `Ok(false)`.
pub fn mount_efivarfs(mounter: &mut dyn Mounter) -> Result<bool, MountError> {
    let spec = MountSpec::new(
        "efivarfs",
        EFIVARS,
        "efivarfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );
    match mounter.mount(&spec) {
        Ok(()) => Ok(true),
        Err(Errno::ENODEV) => Ok(false),
        Err(errno) => Err(MountError::Mount {
            fstype: spec.fstype,
            target: spec.target,
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;

    #[test]
    fn mounts_in_order_creating_mount_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeKernel::default();
        let mut m = fake.clone();
        mount_all(&mut m, dir.path(), &base_mounts()).expect("mount");
        let state = fake.state();
        let targets: Vec<String> = state.mounts.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup",
                "/var"
            ]
        );
        assert!(dir.path().join("sys/fs/cgroup").is_dir());
        let cg = &state.mounts[7];
        assert_eq!(
            (cg.fstype.as_str(), cg.data.as_deref()),
            ("cgroup2", Some("nsdelegate"))
        );
        assert_eq!(
            state.mounts[3].data.as_deref(),
            Some("gid=5,mode=0620,ptmxmode=0666")
        );
    }

    #[test]
    fn mount_failure_names_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeKernel::default();
        fake.state()
            .fail_mounts
            .insert("/dev/pts".into(), Errno::EPERM);
        let mut m = fake.clone();
        let err = mount_all(&mut m, dir.path(), &base_mounts()).expect_err("fails");
        assert_eq!(
            err.to_string(),
            "mounting devpts on /dev/pts: EPERM: Operation not permitted"
        );
        assert_eq!(fake.state().mounts.len(), 3);
    }

    #[test]
    fn enables_all_listed_controllers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("sys/fs/cgroup");
        std::fs::create_dir_all(&cg).expect("mkdir");
        std::fs::write(cg.join("cgroup.controllers"), "cpuset cpu io memory pids\n")
            .expect("write");
        let enabled = enable_cgroup_controllers(dir.path()).expect("enable");
        assert_eq!(enabled, ["cpuset", "cpu", "io", "memory", "pids"]);
        let written = std::fs::read_to_string(cg.join("cgroup.subtree_control")).expect("read");
        assert_eq!(written, "+cpuset +cpu +io +memory +pids");
    }

    #[test]
    fn missing_controllers_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = enable_cgroup_controllers(dir.path()).expect_err("fails");
        assert!(err.to_string().contains("cgroup.controllers"), "{err}");
    }

    #[test]
    fn efivarfs_missing_is_not_fatal() {
        let fake = FakeKernel::default();
        fake.state()
            .fail_mounts
            .insert(EFIVARS.into(), Errno::ENODEV);
        let mut m = fake.clone();
        assert!(!mount_efivarfs(&mut m).expect("ok"));
        fake.state()
            .fail_mounts
            .insert(EFIVARS.into(), Errno::EACCES);
        assert!(mount_efivarfs(&mut m).is_err());
    }
}
