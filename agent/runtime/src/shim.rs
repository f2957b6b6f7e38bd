//! `strake shim`: the single-threaded per-container process that drives libcontainer.
//!
//! It must run in a freshly exec'd process with no other threads (libcontainer `chdir`s and
//! clones). See the crate documentation for the protocol between it and [`crate::Runtime`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::Utc;
use libcgroups::common::{CgroupConfig, CgroupManager};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use oci_spec::runtime::Spec;

use crate::RuntimeError;
use crate::spec::ContainerId;
use crate::state::{
    ExitRecord, ExitStatus, Layout, StartedRecord, read_json, write_atomic, write_json,
};
use crate::sys::{self, ChildExit};

/// The line the shim prints on stdout once the container runs.
pub(crate) const STARTED_LINE: &str = "started";

const USAGE: &str = "usage: strake shim run --state-dir <dir> --id <id> --log <file>\n       strake shim delete --state-dir <dir> --id <id>\n       strake shim exec [--tty] [--error-file <file>] --state-dir <dir> --id <id> -- <command> [args...]";

/// What `strake shim exec` exits with when the command could not be started at all (its
/// stderr then starts with [`EXEC_ERROR_PREFIX`]).
pub(crate) const EXEC_FAILED: u8 = 255;
pub(crate) const EXEC_ERROR_PREFIX: &str = "strake shim exec: ";

/// What can go wrong inside the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// Preparing the shim process itself failed.
    #[error("{step}: {errno}")]
    Setup { step: &'static str, errno: Errno },
    /// Another process holds this container's shim lock.
    #[error("another shim is running for this container ({})", .0.display())]
    Locked(PathBuf),
    /// The container already ran (a record exists).
    #[error("container state already exists: {}", .0.display())]
    AlreadyRan(PathBuf),
    /// A libcontainer operation failed (the message carries the whole error chain).
    #[error("{step}: {message}")]
    Libcontainer { step: &'static str, message: String },
    /// Reading or writing the state directory failed.
    #[error(transparent)]
    State(#[from] RuntimeError),
    /// Waiting for the container's init failed.
    #[error("waiting for the container init (pid {pid}): {errno}")]
    Wait { pid: i32, errno: Errno },
    /// Cleanup left something behind.
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
}

/// Renders an error and all its sources as `a: b: c`.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn lc(step: &'static str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> ShimError {
    move |e| ShimError::Libcontainer {
        step,
        message: chain(&e),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run {
        state_dir: PathBuf,
        id: ContainerId,
        log: PathBuf,
    },
    Delete {
        state_dir: PathBuf,
        id: ContainerId,
    },
    Exec {
        state_dir: PathBuf,
        id: ContainerId,
        args: Vec<String>,
        /// Stdin is a terminal the process should own (session leader, controlling tty).
        tty: bool,
        /// Where a failure to start the process is written, apart from the process's output.
        error_file: Option<PathBuf>,
    },
}

fn parse(args: &[String]) -> Result<Command, ShimError> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| ShimError::Usage("missing subcommand".into()))?;
    let (mut state_dir, mut id, mut log, mut error_file) = (None, None, None, None);
    let mut command = None;
    let mut tty = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--" if sub == "exec" => {
                command = Some(it.by_ref().cloned().collect::<Vec<_>>());
                break;
            }
            "--tty" if sub == "exec" => {
                tty = true;
                continue;
            }
            "--error-file" if sub == "exec" => &mut error_file,
            "--state-dir" => &mut state_dir,
            "--id" => &mut id,
            "--log" if sub == "run" => &mut log,
            other => return Err(ShimError::Usage(format!("unexpected argument {other:?}"))),
        };
        let value = it
            .next()
            .ok_or_else(|| ShimError::Usage(format!("{flag} needs a value")))?;
        *slot = Some(value.clone());
    }
    let need = |v: Option<String>, name: &str| {
        v.ok_or_else(|| ShimError::Usage(format!("missing {name}")))
    };
    let state_dir = PathBuf::from(need(state_dir, "--state-dir")?);
    let id = ContainerId::parse(&need(id, "--id")?)?;
    match sub.as_str() {
        "run" => Ok(Command::Run {
            state_dir,
            id,
            log: PathBuf::from(need(log, "--log")?),
        }),
        "delete" => Ok(Command::Delete { state_dir, id }),
        "exec" => match command {
            Some(args) if !args.is_empty() => Ok(Command::Exec {
                state_dir,
                id,
                args,
                tty,
                error_file: error_file.map(PathBuf::from),
            }),
            _ => Err(ShimError::Usage("exec needs -- and a command".into())),
        },
        other => Err(ShimError::Usage(format!("unknown subcommand {other:?}"))),
    }
}

/// Entry point of `strake shim <args>` (`args` excludes the `shim` word itself).
pub fn main(args: &[String]) -> ExitCode {
    // libcontainer logs from the container's init too, after pointing its fd 2 at the
    // container's log; a private copy of our stderr keeps those lines in the shim log.
    let shim_log = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(|fd| std::sync::Arc::new(File::from(fd)));
    let Ok(shim_log) = shim_log else {
        eprintln!("strake shim: can't duplicate stderr");
        return ExitCode::FAILURE;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(shim_log)
        .with_ansi(false)
        .with_env_filter({
            // An exec's stderr is its command's: libcontainer's logs stay out of it whatever
            // RUST_LOG says (a failure is reported on its own).
            if args.first().is_some_and(|a| a == "exec") {
                tracing_subscriber::EnvFilter::new("off")
            } else {
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
            }
        })
        .try_init();
    match parse(args) {
        Ok(Command::Run { state_dir, id, log }) => run(&Layout::from_dir(state_dir), &id, &log),
        Ok(Command::Delete { state_dir, id }) => match delete(&Layout::from_dir(state_dir), &id) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strake shim delete {id}: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Exec {
            state_dir,
            id,
            args,
            tty,
            error_file,
        }) => match exec(&Layout::from_dir(state_dir), &id, args, tty) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                match error_file {
                    Some(path) => {
                        if std::fs::write(&path, e.to_string()).is_err() {
                            eprintln!("{EXEC_ERROR_PREFIX}{e}");
                        }
                    }
                    None => eprintln!("{EXEC_ERROR_PREFIX}{e}"),
                }
                ExitCode::from(EXEC_FAILED)
            }
        },
        Err(e) => {
            eprintln!("strake shim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Points fd 1 at our stderr (the shim log) so the pipe to the agent closes.
fn detach_stdout() {
    let _ = std::io::stdout().flush();
    let _ = nix::unistd::dup2(2, 1);
}

fn run(layout: &Layout, id: &ContainerId, log: &Path) -> ExitCode {
    let lock = match prepare(layout) {
        Ok(lock) => lock,
        Err(e) => {
            // Don't touch the records: they may belong to another shim.
            eprintln!("strake shim run {id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match create_and_start(layout, id, log) {
        Ok(pid) => supervise(layout, id, pid),
        Err(e) => {
            let error = e.to_string();
            eprintln!("strake shim run {id}: {error}");
            if let Err(we) = write_json(&layout.exit(), &ExitRecord::Failed { error }) {
                eprintln!("strake shim run {id}: recording the failure: {we}");
            }
            detach_stdout();
            sweep_and_mark(layout, id);
            return ExitCode::FAILURE;
        }
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strake shim run {id}: {e}");
            ExitCode::FAILURE
        }
    };
    drop(lock);
    code
}

/// Session, subreaper, cwd, lock and a fresh state directory.
fn prepare(layout: &Layout) -> Result<File, ShimError> {
    // EPERM only means we already lead a process group; nothing to detach from then.
    let _ = nix::unistd::setsid();
    nix::unistd::chdir("/").map_err(|errno| ShimError::Setup {
        step: "chdir /",
        errno,
    })?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|errno| ShimError::Setup {
        step: "PR_SET_CHILD_SUBREAPER",
        errno,
    })?;
    let lock = hold_lock(layout)?;
    for record in [layout.started(), layout.exit()] {
        if record.exists() {
            return Err(ShimError::AlreadyRan(record));
        }
    }
    Ok(lock)
}

/// The runtime hands us its locked lock file as stdin; otherwise (run by hand) lock it ourselves.
/// The returned file keeps the lock for as long as it stays open.
fn hold_lock(layout: &Layout) -> Result<File, ShimError> {
    let path = layout.lock();
    let stdin_is_lock = |stdin: &File| match (std::fs::metadata(&path), stdin.metadata()) {
        (Ok(want), Ok(have)) => want.dev() == have.dev() && want.ino() == have.ino(),
        _ => false,
    };
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from);
    let file = match stdin {
        // Shares the runtime's open file description, so locking it again succeeds at once.
        Some(stdin) if stdin_is_lock(&stdin) => Some(stdin),
        _ => None,
    };
    let locked = match file {
        Some(file) => sys::try_lock_exclusive(&file).map(|ok| ok.then_some(file)),
        None => sys::take_lock(&path),
    };
    match locked {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(ShimError::Locked(path)),
        Err(e) => Err(ShimError::State(RuntimeError::io("locking", &path, e))),
    }
}

/// Creates and starts the container; returns its init pid. Cleans nothing up on failure.
fn create_and_start(layout: &Layout, id: &ContainerId, log: &Path) -> Result<i32, ShimError> {
    let lc_root = layout.libcontainer_root();
    std::fs::create_dir_all(&lc_root).map_err(|e| RuntimeError::io("creating", &lc_root, e))?;
    let out = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(log)
        .map_err(|e| RuntimeError::io("opening log", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| RuntimeError::io("duplicating log fd", log, e))?;
    // stdin: a pipe whose write end is already closed, so reads see EOF (libcontainer would
    // reopen a /dev/null stdin inside the container; a pipe needs no such care).
    let (stdin, stdin_writer) = nix::unistd::pipe().map_err(|errno| ShimError::Setup {
        step: "pipe for stdin",
        errno,
    })?;
    drop(stdin_writer);

    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&lc_root)
        .map_err(lc("setting the state root"))?
        .with_stdin(stdin)
        .with_stdout(out)
        .with_stderr(err)
        .validate_id()
        .map_err(lc("validating the id"))?
        .as_init(layout.bundle())
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(lc("creating the container"))?;
    container.start().map_err(lc("starting the container"))?;
    let pid = container
        .pid()
        .ok_or_else(|| ShimError::Libcontainer {
            step: "starting the container",
            message: "libcontainer recorded no init pid".into(),
        })?
        .as_raw();
    Ok(pid)
}

/// Runs `args` inside the running container (its namespaces, cgroup, user, environment,
/// working directory and capabilities, as libcontainer's tenant builder joins them), with our
/// stdin, stdout and stderr, and waits for it. Returns its exit code (128 + signal when killed).
fn exec(layout: &Layout, id: &ContainerId, args: Vec<String>, tty: bool) -> Result<u8, ShimError> {
    if tty {
        crate::sys::take_controlling_terminal().map_err(|errno| ShimError::Setup {
            step: "taking the terminal",
            errno,
        })?;
    }
    let dup = |fd: std::os::fd::BorrowedFd<'_>, step: &'static str| {
        fd.try_clone_to_owned().map_err(|e| ShimError::Setup {
            step,
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })
    };
    let stdin = dup(std::io::stdin().as_fd(), "duplicating stdin")?;
    let stdout = dup(std::io::stdout().as_fd(), "duplicating stdout")?;
    let stderr = dup(std::io::stderr().as_fd(), "duplicating stderr")?;
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(layout.libcontainer_root())
        .map_err(lc("setting the state root"))?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .validate_id()
        .map_err(lc("validating the id"))?
        .as_tenant()
        .with_detach(false)
        .with_container_args(args)
        .build()
        .map_err(lc("starting the process in the container"))?;
    let pid = pid.as_raw();
    let status = wait_for(pid)?;
    Ok(match status.signal {
        Some(sig) => (128 + sig).clamp(0, 255) as u8,
        None => status.exit_code.clamp(0, 255) as u8,
    })
}

/// Records the start, waits for the init, records the exit, reaps, deletes.
fn supervise(layout: &Layout, id: &ContainerId, pid: i32) -> Result<(), ShimError> {
    let started = StartedRecord {
        pid,
        shim_pid: std::process::id() as i32,
        started_at: Utc::now(),
    };
    let recorded = write_json(&layout.started(), &started);
    if recorded.is_ok() {
        println!("{STARTED_LINE}");
    }
    detach_stdout();
    if let Err(e) = recorded {
        // Without a start record nobody can find the container: don't leave it running.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        let _ = write_json(
            &layout.exit(),
            &ExitRecord::Failed {
                error: format!("recording the start: {e}"),
            },
        );
        sys::reap(pid).map_err(|errno| ShimError::Wait { pid, errno })?;
        sweep_and_mark(layout, id);
        return Err(e.into());
    }

    let status = wait_for(pid);
    let record = match status {
        Ok(status) => ExitRecord::Exited(status),
        Err(ref e) => ExitRecord::Failed {
            error: e.to_string(),
        },
    };
    // Written before the reap: while exit.json is absent the init's pid can't be reused.
    let written = write_json(&layout.exit(), &record);
    sys::reap(pid).map_err(|errno| ShimError::Wait { pid, errno })?;
    sweep_and_mark(layout, id);
    status?;
    written.map_err(ShimError::from)
}

/// Waits until the init `pid` has exited, reaping any other child on the way.
fn wait_for(pid: i32) -> Result<ExitStatus, ShimError> {
    loop {
        let exit =
            sys::wait_exited_child_nowait().map_err(|errno| ShimError::Wait { pid, errno })?;
        match exit {
            ChildExit::Exited { pid: p, code } if p == pid => {
                return Ok(ExitStatus::exited(code, Utc::now()));
            }
            ChildExit::Killed { pid: p, signal } if p == pid => {
                return Ok(ExitStatus::signaled(signal, Utc::now()));
            }
            ChildExit::Exited { pid: other, .. } | ChildExit::Killed { pid: other, .. } => {
                sys::reap(other).map_err(|errno| ShimError::Wait { pid: other, errno })?;
            }
        }
    }
}

/// Deletes the container and sweeps its cgroup; writes the `cleaned` marker when all is gone.
fn sweep_and_mark(layout: &Layout, id: &ContainerId) {
    match sweep(layout, id) {
        Ok(()) => {
            if let Err(e) = write_atomic(&layout.cleaned(), b"") {
                eprintln!("strake shim {id}: {e}");
            }
        }
        Err(e) => eprintln!("strake shim {id}: {e}"),
    }
    sys::reap_exited_children();
}

/// Force-deletes libcontainer's state for `id` (killing what still runs) and makes sure its
/// cgroup is gone: directly from `config.json` when libcontainer could not delete it.
fn sweep(layout: &Layout, id: &ContainerId) -> Result<(), ShimError> {
    let mut problems = Vec::new();
    let container_dir = layout.libcontainer_root().join(id.as_str());
    let mut deleted = false;
    if container_dir.exists() {
        match Container::load(container_dir.clone()) {
            Ok(mut container) => match container.delete(true) {
                Ok(()) => deleted = true,
                Err(e) => problems.push(format!("libcontainer delete: {}", chain(&e))),
            },
            Err(e) => problems.push(format!("loading libcontainer state: {}", chain(&e))),
        }
    }
    // A failed create may leak the cgroup without any libcontainer state to delete it by.
    if !deleted {
        match read_json::<Spec>(&layout.config()) {
            Ok(Some(spec)) => {
                if let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone())
                    && let Err(e) = remove_container_cgroup(path, id)
                {
                    problems.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    if container_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&container_dir)
    {
        problems.push(format!("removing {}: {e}", container_dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Cleanup(problems.join("; ")))
    }
}

/// Kills what is left in the container's cgroup and removes it in every hierarchy.
fn remove_container_cgroup(path: PathBuf, id: &ContainerId) -> Result<(), String> {
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: path.clone(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| format!("cgroup manager for {}: {}", path.display(), chain(&e)))?;
    manager
        .remove()
        .map_err(|e| format!("removing cgroup {}: {}", path.display(), chain(&e)))
}

/// `strake shim delete`: clean up after a shim that could not (crashed or was killed).
fn delete(layout: &Layout, id: &ContainerId) -> Result<(), ShimError> {
    nix::unistd::chdir("/").map_err(|errno| ShimError::Setup {
        step: "chdir /",
        errno,
    })?;
    let _lock = hold_lock(layout)?;
    sweep(layout, id)?;
    write_atomic(&layout.cleaned(), b"")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_both_subcommands() {
        assert_eq!(
            parse(&args("run --state-dir /s/c1 --id c1 --log /l/c1.log")).unwrap(),
            Command::Run {
                state_dir: "/s/c1".into(),
                id: ContainerId::parse("c1").unwrap(),
                log: "/l/c1.log".into()
            }
        );
        assert_eq!(
            parse(&args("delete --id c1 --state-dir /s/c1")).unwrap(),
            Command::Delete {
                state_dir: "/s/c1".into(),
                id: ContainerId::parse("c1").unwrap()
            }
        );
        assert_eq!(
            parse(&args("exec --state-dir /s/c1 --id c1 -- cat --id /x")).unwrap(),
            Command::Exec {
                state_dir: "/s/c1".into(),
                id: ContainerId::parse("c1").unwrap(),
                args: vec!["cat".into(), "--id".into(), "/x".into()],
                tty: false,
                error_file: None,
            }
        );
        assert_eq!(
            parse(&args(
                "exec --tty --error-file /e --state-dir /s/c1 --id c1 -- sh"
            ))
            .unwrap(),
            Command::Exec {
                state_dir: "/s/c1".into(),
                id: ContainerId::parse("c1").unwrap(),
                args: vec!["sh".into()],
                tty: true,
                error_file: Some("/e".into()),
            }
        );
        assert!(parse(&args("run --tty --state-dir /s --id c1 --log /l")).is_err());
        assert!(parse(&args("exec --state-dir /s/c1 --id c1 --")).is_err());
        assert!(parse(&args("exec --state-dir /s/c1 --id c1")).is_err());
    }

    #[test]
    fn rejects_bad_command_lines() {
        for bad in [
            "",
            "run --state-dir /s --id c1",
            "run --state-dir /s --id C1 --log /l",
            "delete --state-dir /s --id c1 --log /l",
            "exec --state-dir /s --id c1",
            "run --state-dir",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_chains_are_flattened() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let outer = RuntimeError::io("opening", "/x", inner);
        assert_eq!(chain(&outer), "opening /x: no such file");
    }
}
