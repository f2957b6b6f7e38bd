//! strake-runtime: runs containers through youki's libcontainer inside a per-container `strake shim`,
//! and owns the mount/umount/cgroup/pidfd syscalls the agent needs for containers and overlay rootfs.
//! It also makes pod sandboxes ([`Sandbox`]: the network, UTS and IPC namespaces a pod's containers
//! share). It must not touch pod networking, images or the API: the agent prepares rootfs and logs
//! paths and configures the sandbox's network namespace.
//!
//! # How a container runs
//!
//! libcontainer `chdir`s the calling process and runs Rust after a raw `clone3`, so it must never be
//! called from the multi-threaded agent. [`Runtime`] (async, used by the agent) therefore spawns
//! `<shim_exe> shim run --state-dir <dir> --id <id> --log <file>` for every container; the binary
//! dispatches `shim` to [`shim::main`]. The shim is single-threaded and lives as long as the container:
//!
//! 1. `setsid`, `PR_SET_CHILD_SUBREAPER`, then it creates and starts the container from
//!    `<dir>/bundle/config.json` (written by [`Runtime::start`] from [`build_oci_spec`]) with the log file
//!    (append) as stdout/stderr and an already-closed pipe as stdin.
//! 2. It writes `<dir>/started.json` (`{"pid":…,"shim_pid":…,"started_at":…}`) and prints `started` on its stdout,
//!    which is a pipe to [`Runtime::start`]; then it points its stdout at its own log.
//! 3. It waits for the init (which libcontainer clones as the shim's direct child with no exit
//!    signal, hence `__WALL`), observes the exit with `WNOWAIT`, writes `<dir>/exit.json` atomically,
//!    and only then reaps the init, so the init's pid cannot be reused while `exit.json` is absent:
//!    [`Runtime::signal`] opens a pidfd and then checks `exit.json` is still missing before signalling.
//! 4. It deletes the container with libcontainer, sweeps the cgroup, writes `<dir>/cleaned`, exits 0.
//!
//! On a create/start failure the shim writes `{"error": "..."}` to `exit.json`, sweeps what libcontainer
//! left behind (state, processes, cgroup), prints the error on stderr and exits non-zero.
//!
//! Liveness of a shim is an `flock` on `<dir>/shim.lock`: [`Runtime::start`] locks the file and hands
//! the locked open file to the shim as its stdin, so the lock is held from before the shim exists until
//! it exits (or dies). `<dir>/shim.log` is the shim's stderr; `<dir>/lc/` is libcontainer's state root.
//! `strake shim delete --state-dir <dir> --id <id>` force-deletes and sweeps when a shim could not.
//!
//! [`Runtime::wait`] is event-driven: it polls pidfds of the init and of the shim (the shim's
//! death without an `exit.json` means nobody will write one), then reads `exit.json`.
//!
//! Shims are children of the agent only until it restarts; they outlive it (own session) and get
//! reparented to PID 1, so killing the agent's whole cgroup would kill them too.
//!
//! State files are written with write-to-temp + rename but without fsync: the state root is meant to
//! live on tmpfs (`/run/strake/containers`), where containers don't survive a reboot anyway.

mod cgroup;
mod error;
mod overlay;
mod runtime;
mod sandbox;
pub mod shim;
mod spec;
mod state;
mod sys;

pub use cgroup::{cgroup_dirs, remove_cgroup};
pub use error::RuntimeError;
pub use nix::sys::signal::Signal;
pub use overlay::{mount_overlay, mount_tmpfs, unmount};
pub use runtime::{ContainerHandle, ContainerState, ExecIo, ExecProcess, Runtime};
pub use sandbox::Sandbox;
pub use spec::{
    BindMount, ContainerId, ContainerSpec, DEFAULT_CAPABILITIES, DEFAULT_PATH_ENV, MASKED_PATHS,
    MAX_ID_LEN, NOFILE_LIMIT, NetworkMode, READONLY_PATHS, build_oci_spec, clamp_nofile,
};
pub use state::{ExitRecord, ExitStatus, Layout, StartedRecord};
pub use sys::{Pty, PtyMaster, open_pty, set_window_size};
