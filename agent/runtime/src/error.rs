//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

/// Everything that can go wrong running a container or mounting its rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A pod sandbox could not be made.
    #[error("pod sandbox: {0}")]
    Sandbox(String),
    /// The container id is outside `[a-z0-9][a-z0-9_.-]{0,127}`.
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    /// A field of the container spec is invalid.
    #[error("invalid container spec: {field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    /// oci-spec refused to build the runtime spec.
    #[error("building the OCI runtime spec failed: {0}")]
    OciSpec(String),
    /// A file operation on the runtime's state failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but does not parse.
    #[error("corrupt state file {}: {reason}", .path.display())]
    CorruptState { path: PathBuf, reason: String },
    /// A container with this id already has a state directory.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No state directory for this id.
    #[error("container {0} not found")]
    NotFound(String),
    /// The shim executable could not be spawned.
    #[error("spawning the shim {}: {source}", .exe.display())]
    ShimSpawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shim reported that creating or starting the container failed.
    #[error("container {id} failed to start: {error}")]
    StartFailed { id: String, error: String },
    /// The shim did not report a started or failed container in time.
    #[error("container {id} did not start within {timeout:?}")]
    StartTimeout { id: String, timeout: Duration },
    /// The shim is gone but recorded neither a start nor an exit.
    #[error(
        "the shim of container {id} died without recording the container's state; shim log: {log_tail}"
    )]
    ShimDied { id: String, log_tail: String },
    /// The container has no start record yet (the shim is still creating it).
    #[error("container {0} has not started yet")]
    NotStarted(String),
    /// The operation needs an exited container.
    #[error("container {0} is still running")]
    StillRunning(String),
    /// The container did not exit in time after being signalled.
    #[error("container {id} did not exit within {timeout:?} after {signal}")]
    StopTimeout {
        id: String,
        signal: Signal,
        timeout: Duration,
    },
    /// A shim that finished the container did not exit in time.
    #[error("the shim of container {id} did not finish within {timeout:?}")]
    ShimTimeout { id: String, timeout: Duration },
    /// `kill`/`pidfd_send_signal` failed.
    #[error("sending {signal} to container {id}: {errno}")]
    Signal {
        id: String,
        signal: Signal,
        errno: Errno,
    },
    /// `pidfd_open` failed for a reason other than the process being gone.
    #[error("opening a pidfd for pid {pid} of container {id}: {errno}")]
    PidFd { id: String, pid: i32, errno: Errno },
    /// A mount or unmount syscall failed.
    #[error("{op} {}: {errno}", .target.display())]
    Mount {
        op: &'static str,
        target: PathBuf,
        errno: Errno,
    },
    /// A path can't be expressed in overlayfs mount options.
    #[error("overlay path {} contains ':' or ',' which mount options can't carry", .path.display())]
    OverlayPath { path: PathBuf },
    /// The overlay option string exceeds what the kernel accepts.
    #[error("overlay options for {} are {len} bytes, over the kernel's {max}-byte limit", .target.display())]
    OverlayOptionsTooLong {
        target: PathBuf,
        len: usize,
        max: usize,
    },
    /// `strake shim delete` failed to clean up.
    #[error("cleaning up container {id}: {error}")]
    Cleanup { id: String, error: String },
    /// A cgroup directory could not be removed or listed.
    #[error("exec in container {id}: {error}")]
    ExecFailed { id: String, error: String },

    #[error("exec in container {id} did not finish within {timeout:?}")]
    ExecTimeout { id: String, timeout: Duration },

    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
