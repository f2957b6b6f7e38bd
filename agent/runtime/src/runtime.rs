//! [`Runtime`]: the async face of the shim for the (multi-threaded, tokio) agent.
//!
//! Nothing here calls libcontainer; every container operation that needs it runs in a
//! `strake shim` child process.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::RuntimeError;
use crate::shim::STARTED_LINE;
use crate::spec::{ContainerId, ContainerSpec, build_oci_spec, clamp_nofile};
use crate::state::{
    ExitRecord, ExitStatus, Layout, StartedRecord, log_tail, read_json, write_json,
};
use crate::sys::{self, PidFd};

/// How long [`Runtime::start`] waits for the shim by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for an exit after `SIGKILL`, and for a finished shim to clean up and exit.
const SHIM_FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two looks at a state file.
const MAX_POLL: Duration = Duration::from_millis(20);
/// How much of an exec's output [`Runtime::exec`] keeps.
pub const EXEC_OUTPUT_MAX: usize = 10 * 1024;
/// How much of `shim.log` goes into error messages.
const LOG_TAIL_BYTES: usize = 2048;

/// A started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerHandle {
    /// The container id.
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// When the container started.
    pub started_at: DateTime<Utc>,
}

/// What [`Runtime::status`] knows about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// The shim is creating the container.
    Starting,
    /// The init runs (or has exited and the shim is about to record it).
    Running { pid: i32, started_at: DateTime<Utc> },
    /// The init ended.
    Exited(ExitStatus),
    /// The container never ran, or the shim lost track of it.
    Failed { error: String },
    /// The shim died without recording how the container ended.
    Unknown { reason: String },
}

/// How a streamed exec's process is wired.
pub struct ExecIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Stdin is a terminal: the process becomes its session leader and owns it.
    pub tty: bool,
}

/// A process started by [`Runtime::spawn_exec`]; dropping it kills the process.
pub struct ExecProcess {
    child: Child,
    error_file: PathBuf,
    id: String,
}

impl ExecProcess {
    /// The process's stdin, when it was given a pipe.
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the process: its exit code (128 + the signal that killed it), or the reason
    /// it could not be started.
    pub async fn wait(mut self) -> Result<i32, RuntimeError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| RuntimeError::ExecFailed {
                id: self.id.clone(),
                error: e.to_string(),
            })?;
        let error = std::fs::read_to_string(&self.error_file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.error_file);
        if !error.is_empty() {
            return Err(RuntimeError::ExecFailed {
                id: self.id.clone(),
                error,
            });
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)))
    }
}

/// Runs containers through per-container shims; see the crate documentation.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_root: PathBuf,
    shim_exe: PathBuf,
    start_timeout: Duration,
}

/// Sleeps with exponential backoff (50 µs doubling up to [`MAX_POLL`]).
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_micros(50))
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_POLL);
    }
}

/// Reaps a shim we spawned, in the background, whenever it exits.
fn reap_in_background(mut child: Child) {
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

impl Runtime {
    /// A runtime keeping per-container state under `state_root` (ideally on tmpfs) and running
    /// `<shim_exe> shim ...` for every container.
    pub fn new(state_root: impl Into<PathBuf>, shim_exe: impl Into<PathBuf>) -> Self {
        Self {
            state_root: state_root.into(),
            shim_exe: shim_exe.into(),
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// Changes how long [`Runtime::start`] waits for the shim to report.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts `args` inside running container `id` with the given stdio (pipes, or a
    /// terminal's slave end with `tty`), for a streamed `kubectl exec`. The caller owns the
    /// other ends and waits with [`ExecProcess::wait`].
    pub fn spawn_exec(
        &self,
        id: &str,
        args: &[String],
        io: ExecIo,
    ) -> Result<ExecProcess, RuntimeError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let layout = self.existing(id)?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let error_file = layout
            .dir()
            .join(format!("exec-{}-{n}.err", std::process::id()));
        let mut cmd = Command::new(&self.shim_exe);
        cmd.arg("shim").arg("exec");
        if io.tty {
            cmd.arg("--tty");
        }
        let child = cmd
            .arg("--error-file")
            .arg(&error_file)
            .arg("--state-dir")
            .arg(layout.dir())
            .arg("--id")
            .arg(id)
            .arg("--")
            .args(args)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::ShimSpawn {
                exe: self.shim_exe.clone(),
                source,
            })?;
        Ok(ExecProcess {
            child,
            error_file,
            id: id.to_owned(),
        })
    }

    /// Runs `args` inside running container `id` (through `strake shim exec`, which joins it as
    /// libcontainer's tenant), with stdin closed, and waits at most `timeout` (the shim is
    /// killed after it). Returns the exit code and the first [`EXEC_OUTPUT_MAX`] bytes of its
    /// stdout and stderr together.
    pub async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<(i32, String), RuntimeError> {
        let io = ExecIo {
            stdin: Stdio::null(),
            stdout: Stdio::piped(),
            stderr: Stdio::piped(),
            tty: false,
        };
        let mut process = self.spawn_exec(id, args, io)?;
        let (stdout, stderr) = (process.take_stdout(), process.take_stderr());
        let run = async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            if let (Some(mut o), Some(mut e)) = (stdout, stderr) {
                let _ = tokio::join!(o.read_to_end(&mut out), e.read_to_end(&mut err));
            }
            process.wait().await.map(|code| (code, out, err))
        };
        // On the timeout the process is dropped, which kills the shim.
        let (code, stdout, stderr) =
            tokio::time::timeout(timeout, run)
                .await
                .map_err(|_| RuntimeError::ExecTimeout {
                    id: id.to_owned(),
                    timeout,
                })??;
        let mut text = String::from_utf8_lossy(&stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&stderr));
        if text.len() > EXEC_OUTPUT_MAX {
            let mut cut = EXEC_OUTPUT_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Ok((code, text))
    }

    /// The state directory layout of container `id`.
    pub fn layout(&self, id: &str) -> Result<Layout, RuntimeError> {
        Ok(Layout::new(&self.state_root, &ContainerId::parse(id)?))
    }

    /// The layout of an existing container, or [`RuntimeError::NotFound`].
    fn existing(&self, id: &str) -> Result<Layout, RuntimeError> {
        let layout = self.layout(id)?;
        if layout.dir().is_dir() {
            Ok(layout)
        } else {
            Err(RuntimeError::NotFound(id.to_owned()))
        }
    }

    /// Ids of all containers with state (running or not yet removed), e.g. after an agent restart.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let entries = match std::fs::read_dir(&self.state_root) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io("listing", &self.state_root, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RuntimeError::io("listing", &self.state_root, e))?;
            if let Some(name) = entry.file_name().to_str()
                && ContainerId::parse(name).is_ok()
                && entry.path().is_dir()
            {
                ids.push(name.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Writes the bundle, spawns the shim and waits until the container runs or fails.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<ContainerHandle, RuntimeError> {
        let mut oci = build_oci_spec(spec)?;
        clamp_nofile(&mut oci, sys::max_nofile());
        if !spec.log_path.is_absolute() {
            return Err(RuntimeError::InvalidSpec {
                field: "log_path".into(),
                reason: "must be an absolute path".into(),
            });
        }
        let layout = self.layout(&spec.id)?;
        std::fs::create_dir_all(&self.state_root)
            .map_err(|e| RuntimeError::io("creating", &self.state_root, e))?;
        match std::fs::create_dir(layout.dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(spec.id.clone()));
            }
            Err(e) => return Err(RuntimeError::io("creating", layout.dir(), e)),
        }
        // Until a shim runs nothing but files exist: on failure, take them away again.
        let spawned = self
            .write_bundle(&layout, spec, &oci)
            .and_then(|(lock, shim_log)| {
                Command::new(&self.shim_exe)
                    .arg("shim")
                    .arg("run")
                    .arg("--state-dir")
                    .arg(layout.dir())
                    .arg("--id")
                    .arg(&spec.id)
                    .arg("--log")
                    .arg(&spec.log_path)
                    .stdin(Stdio::from(lock))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::from(shim_log))
                    .kill_on_drop(false)
                    .spawn()
                    .map_err(|source| RuntimeError::ShimSpawn {
                        exe: self.shim_exe.clone(),
                        source,
                    })
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(layout.dir());
                return Err(e);
            }
        };

        let mut line = String::new();
        let report = match child.stdout.take() {
            Some(stdout) => {
                let mut reader = BufReader::new(stdout.take(256));
                tokio::time::timeout(self.start_timeout, reader.read_line(&mut line)).await
            }
            None => Ok(Ok(0)),
        };
        match report {
            Err(_elapsed) => {
                let _ = child.start_kill();
                reap_in_background(child);
                Err(RuntimeError::StartTimeout {
                    id: spec.id.clone(),
                    timeout: self.start_timeout,
                })
            }
            Ok(_) if line.trim_end() == STARTED_LINE => {
                reap_in_background(child);
                let started: StartedRecord =
                    read_json(&layout.started())?.ok_or_else(|| RuntimeError::CorruptState {
                        path: layout.started(),
                        reason: "the shim reported a start but the record is missing".into(),
                    })?;
                Ok(ContainerHandle {
                    id: spec.id.clone(),
                    pid: started.pid,
                    started_at: started.started_at,
                })
            }
            Ok(_) => {
                reap_in_background(child);
                match read_json::<ExitRecord>(&layout.exit())? {
                    Some(ExitRecord::Failed { error }) => Err(RuntimeError::StartFailed {
                        id: spec.id.clone(),
                        error,
                    }),
                    Some(ExitRecord::Exited(_)) | None => Err(RuntimeError::ShimDied {
                        id: spec.id.clone(),
                        log_tail: log_tail(&layout.shim_log(), LOG_TAIL_BYTES),
                    }),
                }
            }
        }
    }

    /// Writes `config.json`, creates the log directory, and returns the locked shim lock file
    /// and the shim's log file.
    fn write_bundle(
        &self,
        layout: &Layout,
        spec: &ContainerSpec,
        oci: &oci_spec::runtime::Spec,
    ) -> Result<(File, File), RuntimeError> {
        std::fs::create_dir(layout.bundle())
            .map_err(|e| RuntimeError::io("creating", layout.bundle(), e))?;
        write_json(&layout.config(), oci)?;
        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io("creating", parent, e))?;
        }
        // Locked here and inherited by the shim as its stdin: the lock is held without a gap
        // from now until the shim exits.
        let lock = sys::take_lock(&layout.lock())
            .map_err(|e| RuntimeError::io("locking", layout.lock(), e))?
            .ok_or_else(|| RuntimeError::AlreadyExists(spec.id.clone()))?;
        let shim_log = File::create(layout.shim_log())
            .map_err(|e| RuntimeError::io("creating", layout.shim_log(), e))?;
        Ok((lock, shim_log))
    }

    /// Sends `signal` to the container's init. A container that already exited is not an error.
    pub fn signal(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let layout = self.existing(id)?;
        let Some(started) = read_json::<StartedRecord>(&layout.started())? else {
            return if layout.exit().exists() {
                Ok(())
            } else {
                Err(RuntimeError::NotStarted(id.to_owned()))
            };
        };
        let pidfd = match PidFd::open(started.pid) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(()),
            Err(errno) => {
                return Err(RuntimeError::PidFd {
                    id: id.to_owned(),
                    pid: started.pid,
                    errno,
                });
            }
        };
        // The shim reaps the init only after writing exit.json. With the pidfd opened first,
        // a missing exit.json now proves the pidfd refers to our init, not a pid reuser.
        if layout.exit().exists() {
            return Ok(());
        }
        pidfd
            .send_signal(signal)
            .map(|_| ())
            .map_err(|errno| RuntimeError::Signal {
                id: id.to_owned(),
                signal,
                errno,
            })
    }

    /// Waits until the container has exited and returns how.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let layout = self.existing(id)?;
        let mut backoff = Backoff::new();
        let started = loop {
            if let Some(record) = read_json::<ExitRecord>(&layout.exit())? {
                return exit_result(id, record);
            }
            if let Some(started) = read_json::<StartedRecord>(&layout.started())? {
                break started;
            }
            self.check_shim_alive(id, &layout)?;
            backoff.pause().await;
        };
        // Watch the init (whose exit we want) and the shim (whose death means no record will
        // ever come). Each pidfd is opened before the check that proves it is the right
        // process: the init's pid can't be reused while exit.json is absent, and the shim's
        // while the lock is held.
        let init = watch_pid(id, started.pid)?;
        let shim = watch_pid(id, started.shim_pid)?;
        if let Some(record) = read_json::<ExitRecord>(&layout.exit())? {
            return exit_result(id, record);
        }
        self.check_shim_alive(id, &layout)?;
        let polled = tokio::select! {
            r = exited(init.as_ref()) => r,
            r = exited(shim.as_ref()) => r,
        };
        polled.map_err(|e| RuntimeError::io("polling pidfds of", layout.dir(), e))?;
        // The init or the shim is gone; a live shim records the exit right away.
        let deadline = tokio::time::Instant::now() + SHIM_FINISH_TIMEOUT;
        loop {
            if let Some(record) = read_json::<ExitRecord>(&layout.exit())? {
                return exit_result(id, record);
            }
            self.check_shim_alive(id, &layout)?;
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::ShimTimeout {
                    id: id.to_owned(),
                    timeout: SHIM_FINISH_TIMEOUT,
                });
            }
            backoff.pause().await;
        }
    }

    /// Errors with [`RuntimeError::ShimDied`] when the shim is gone and no exit was recorded.
    fn check_shim_alive(&self, id: &str, layout: &Layout) -> Result<(), RuntimeError> {
        if sys::lock_is_held(&layout.lock())
            .map_err(|e| RuntimeError::io("probing", layout.lock(), e))?
        {
            return Ok(());
        }
        // The shim may have finished between our last look and the probe.
        if layout.exit().exists() {
            return Ok(());
        }
        Err(RuntimeError::ShimDied {
            id: id.to_owned(),
            log_tail: log_tail(&layout.shim_log(), LOG_TAIL_BYTES),
        })
    }

    /// The container's current state.
    pub fn status(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let layout = self.existing(id)?;
        if let Some(record) = read_json::<ExitRecord>(&layout.exit())? {
            return Ok(record_state(record));
        }
        let started = read_json::<StartedRecord>(&layout.started())?;
        let shim_alive = sys::lock_is_held(&layout.lock())
            .map_err(|e| RuntimeError::io("probing", layout.lock(), e))?;
        if !shim_alive {
            // Re-read: the shim may have recorded the exit and quit just now.
            if let Some(record) = read_json::<ExitRecord>(&layout.exit())? {
                return Ok(record_state(record));
            }
            return Ok(ContainerState::Unknown {
                reason: format!(
                    "the shim exited without recording an exit status; shim log: {}",
                    log_tail(&layout.shim_log(), LOG_TAIL_BYTES)
                ),
            });
        }
        Ok(match started {
            Some(s) => ContainerState::Running {
                pid: s.pid,
                started_at: s.started_at,
            },
            None => ContainerState::Starting,
        })
    }

    /// `SIGTERM`, up to `grace` for the container to exit, then `SIGKILL` and wait.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        self.signal(id, Signal::SIGTERM)?;
        if let Ok(result) = tokio::time::timeout(grace, self.wait(id)).await {
            return result;
        }
        self.signal(id, Signal::SIGKILL)?;
        tokio::time::timeout(SHIM_FINISH_TIMEOUT, self.wait(id))
            .await
            .unwrap_or(Err(RuntimeError::StopTimeout {
                id: id.to_owned(),
                signal: Signal::SIGKILL,
                timeout: SHIM_FINISH_TIMEOUT,
            }))
    }

    /// Deletes an exited container's state, bundle and any leftover cgroup. Idempotent.
    ///
    /// Fails with [`RuntimeError::StillRunning`] while the container runs. If its shim died,
    /// whatever still runs in the container is killed.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let layout = self.layout(id)?;
        if !layout.dir().exists() {
            return Ok(());
        }
        let probe = |layout: &Layout| {
            sys::lock_is_held(&layout.lock())
                .map_err(|e| RuntimeError::io("probing", layout.lock(), e))
        };
        if probe(&layout)? {
            if !layout.exit().exists() {
                return Err(RuntimeError::StillRunning(id.to_owned()));
            }
            // The shim is deleting the container; it exits when done.
            let deadline = tokio::time::Instant::now() + SHIM_FINISH_TIMEOUT;
            let timed_out = || RuntimeError::ShimTimeout {
                id: id.to_owned(),
                timeout: SHIM_FINISH_TIMEOUT,
            };
            if let Some(started) = read_json::<StartedRecord>(&layout.started())?
                && let Some(shim) = watch_pid(id, started.shim_pid)?
                && probe(&layout)?
            {
                // Lock still held after the pidfd was opened: the pidfd is the shim's.
                tokio::time::timeout_at(deadline, exited(Some(&shim)))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| RuntimeError::io("polling the shim pidfd of", layout.dir(), e))?;
            }
            // A dead process has closed its files, so the lock is free by now unless the shim
            // never got a start record (failed creates): poll for those.
            let mut backoff = Backoff::new();
            while probe(&layout)? {
                if tokio::time::Instant::now() > deadline {
                    return Err(timed_out());
                }
                backoff.pause().await;
            }
        }
        // libcontainer state (and so maybe a cgroup or processes) exists only once a shim got to
        // creating; a shim that finished cleanly says so with `cleaned`.
        if layout.libcontainer_root().exists() && !layout.cleaned().exists() {
            self.run_shim_delete(id, &layout).await?;
        }
        match tokio::fs::remove_dir_all(layout.dir()).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io("removing", layout.dir(), e)),
        }
    }

    /// Runs `strake shim delete` to force-delete and sweep what a dead shim left behind.
    async fn run_shim_delete(&self, id: &str, layout: &Layout) -> Result<(), RuntimeError> {
        let output = Command::new(&self.shim_exe)
            .arg("shim")
            .arg("delete")
            .arg("--state-dir")
            .arg(layout.dir())
            .arg("--id")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let output = tokio::time::timeout(SHIM_FINISH_TIMEOUT, output)
            .await
            .map_err(|_| RuntimeError::ShimTimeout {
                id: id.to_owned(),
                timeout: SHIM_FINISH_TIMEOUT,
            })?
            .map_err(|source| RuntimeError::ShimSpawn {
                exe: self.shim_exe.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Cleanup {
                id: id.to_owned(),
                error: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// The state root this runtime uses.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }
}

/// A pollable pidfd for `pid`, or `None` when the process is already gone.
fn watch_pid(id: &str, pid: i32) -> Result<Option<AsyncFd<PidFd>>, RuntimeError> {
    let pidfd = match PidFd::open(pid) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(None),
        Err(errno) => {
            return Err(RuntimeError::PidFd {
                id: id.to_owned(),
                pid,
                errno,
            });
        }
    };
    // SAFETY: PidFd owns its OwnedFd and never closes or replaces it while the AsyncFd owns
    // the PidFd, so the registered descriptor stays valid and the same.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    registered.map(Some).map_err(|e| RuntimeError::PidFd {
        id: id.to_owned(),
        pid,
        errno: Errno::from_raw(e.into_parts().1.raw_os_error().unwrap_or(libc::EINVAL)),
    })
}

/// Resolves once the process behind `fd` has exited (a pidfd polls readable then).
async fn exited(fd: Option<&AsyncFd<PidFd>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => fd.readable().await.map(|_guard| ()),
        None => Ok(()),
    }
}

fn exit_result(id: &str, record: ExitRecord) -> Result<ExitStatus, RuntimeError> {
    match record {
        ExitRecord::Exited(status) => Ok(status),
        ExitRecord::Failed { error } => Err(RuntimeError::StartFailed {
            id: id.to_owned(),
            error,
        }),
    }
}

fn record_state(record: ExitRecord) -> ContainerState {
    match record {
        ExitRecord::Exited(status) => ContainerState::Exited(status),
        ExitRecord::Failed { error } => ContainerState::Failed { error },
    }
}
