//! The single-threaded event loop of PID 1: spawns services, copies their output to the console,
//! reaps every child and routes each exit status to its owner, and runs the shutdown.
//!
//! The only code in init that waits for children is [`Runner::reap`]: a pid that belongs to a
//! supervised service goes to the [`Supervisor`]; any other pid is an orphan reparented to PID 1,
//! reaped and logged at debug level. Signals (SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGUSR2) are blocked in
//! init and read from a signalfd; children get an empty signal mask, set between fork and exec.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::power_button;
use crate::supervisor::{Backoff, ChildExit, ExitDecision, ServiceSpec, Supervisor};
use crate::sys::PowerAction;

/// How long services get between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for SIGKILLed services to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Longest output line; longer ones are split.
const MAX_LINE: usize = 4096;
/// How long after start init keeps looking for the power button device.
const BUTTON_SCAN_FOR: Duration = Duration::from_secs(60);
const BUTTON_SCAN_EVERY: Duration = Duration::from_secs(2);
/// PATH given to every service.
pub const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors setting up the loop or spawning a service.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("blocking signals: {0}")]
    Sigmask(Errno),
    #[error("creating the signalfd: {0}")]
    SignalFd(Errno),
    #[error("creating the output pipe for {name}: {errno}")]
    Pipe { name: String, errno: Errno },
    #[error("service {name} has an empty argv")]
    EmptyArgv { name: String },
    #[error("spawning {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
}

/// Something the loop did, returned by [`Runner::step`] (and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    Started {
        name: String,
        pid: Pid,
    },
    SpawnFailed {
        name: String,
        error: String,
        retry_in: Duration,
    },
    Exited(ExitDecision),
    Orphan {
        pid: Pid,
        exit: ChildExit,
    },
    Output {
        name: String,
        line: String,
    },
    ShutdownRequested(PowerAction),
    /// SIGUSR1: machined handed over a config in maintenance mode.
    ConfigHandedOver,
}

/// The signals init handles; block them before creating threads or children.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Blocks [`handled_signals`] in the calling thread (and threads it creates later).
pub fn block_signals() -> Result<(), RunnerError> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None)
        .map_err(RunnerError::Sigmask)
}

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes; returns the complete lines (without `\n`), splitting overlong ones.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        while self.pending.len() >= MAX_LINE {
            let chunk: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            lines.push(String::from_utf8_lossy(&chunk).into_owned());
        }
        lines
    }

    /// The unterminated rest, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

struct Output {
    file: File,
    name: String,
    lines: LineBuffer,
}

struct Shutdown {
    action: PowerAction,
    term_deadline: Instant,
    kill_deadline: Option<Instant>,
}

/// Spawns `spec` in its own process group with stdout and stderr on a new pipe; returns the pid
/// and the pipe's (non-blocking) read end.
pub fn spawn_service(spec: &ServiceSpec) -> Result<(Pid, File), RunnerError> {
    let name = spec.name.clone();
    let program = spec
        .argv
        .first()
        .ok_or_else(|| RunnerError::EmptyArgv { name: name.clone() })?;
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|errno| {
            RunnerError::Pipe {
                name: name.clone(),
                errno,
            }
        })?;
    // pipe2 made both ends non-blocking; the child's end must block (the two ends are separate
    // open file descriptions, so this leaves init's end non-blocking).
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&write),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
    )
    .map_err(|errno| RunnerError::Pipe {
        name: name.clone(),
        errno,
    })?;
    let write2: OwnedFd = write.try_clone().map_err(|e| RunnerError::Pipe {
        name: name.clone(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    let child = {
        // The Command owns our copies of the write end: it is dropped right after the spawn so
        // that the pipe reports EOF when the child (and its children) exit.
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .env("PATH", SERVICE_PATH)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2))
            .process_group(0)
            .current_dir("/");
        let empty = SigSet::empty();
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // calls are allowed; pthread_sigmask is one and nothing here allocates (`empty` was built
        // before the fork). It gives the service the empty signal mask init's blocked set would
        // otherwise leak into it (std keeps the parent's mask).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
    }
    .map_err(|source| RunnerError::Spawn {
        name,
        program: program.clone(),
        source,
    })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Dropping `child` does not wait: the reaper owns waiting.
    drop(child);
    Ok((pid, File::from(read)))
}

/// The supervisor loop.
pub struct Runner {
    sup: Supervisor,
    sigfd: SignalFd,
    outputs: Vec<Output>,
    buttons: Vec<File>,
    /// Root under which to look for the power button (`/` in production, `None` to disable).
    button_root: Option<PathBuf>,
    next_button_scan: Instant,
    button_scan_until: Instant,
    shutdown: Option<Shutdown>,
}

impl Runner {
    /// Creates the loop; the handled signals must already be blocked (see [`block_signals`]).
    pub fn new(
        specs: Vec<ServiceSpec>,
        backoff: Backoff,
        button_root: Option<PathBuf>,
    ) -> Result<Runner, RunnerError> {
        let sigfd = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(RunnerError::SignalFd)?;
        let now = Instant::now();
        Ok(Runner {
            sup: Supervisor::new(specs, backoff, now),
            sigfd,
            outputs: Vec::new(),
            buttons: Vec::new(),
            button_root,
            next_button_scan: now,
            button_scan_until: now + BUTTON_SCAN_FOR,
            shutdown: None,
        })
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    /// One iteration: start due services, wait (at most `max_wait`) for signals, output or the
    /// power button, handle them, reap children and advance the shutdown.
    pub fn step(&mut self, max_wait: Duration) -> Vec<RunnerEvent> {
        let mut events = Vec::new();
        let now = Instant::now();
        self.start_due(now, &mut events);
        self.scan_buttons(now);

        let mut wake = now + max_wait;
        for t in [self.sup.next_deadline(), self.shutdown_deadline()]
            .into_iter()
            .flatten()
        {
            wake = wake.min(t);
        }
        if self.buttons.is_empty() && self.button_root.is_some() && now < self.button_scan_until {
            wake = wake.min(self.next_button_scan);
        }
        let timeout = wake.saturating_duration_since(now);
        let ms = u64::try_from(timeout.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .min(60_000);
        let timeout = PollTimeout::from(u16::try_from(ms).unwrap_or(60_000));

        let (sig_ready, out_ready, button_ready) = {
            let mut fds = Vec::with_capacity(1 + self.outputs.len() + self.buttons.len());
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            for o in &self.outputs {
                fds.push(PollFd::new(o.file.as_fd(), PollFlags::POLLIN));
            }
            for b in &self.buttons {
                fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
            }
            if let Err(e) = nix::poll::poll(&mut fds, timeout)
                && e != Errno::EINTR
            {
                tracing::warn!(target: "strake_init::runner", "poll: {e}");
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let n_out = self.outputs.len();
            (
                ready(&fds[0]),
                fds[1..=n_out].iter().map(ready).collect::<Vec<bool>>(),
                fds[1 + n_out..].iter().any(ready),
            )
        };

        if sig_ready {
            self.read_signals(&mut events);
        }
        self.drain_outputs(&out_ready, &mut events);
        if button_ready
            && self
                .buttons
                .iter_mut()
                .fold(false, |acc, b| power_button::read_press(b) | acc)
        {
            tracing::info!(target: "strake_init::runner", "power button pressed");
            self.request_shutdown(PowerAction::PowerOff, &mut events);
        }
        // Also reap without SIGCHLD: signals coalesce, and this loop must never leave zombies.
        self.reap(&mut events);
        self.advance_shutdown();
        events
    }

    fn start_due(&mut self, now: Instant, events: &mut Vec<RunnerEvent>) {
        for idx in self.sup.due(now) {
            let spec = self.sup.spec(idx).clone();
            match spawn_service(&spec) {
                Ok((pid, file)) => {
                    self.sup.started(idx, pid, now);
                    tracing::info!(target: "strake_init::runner", "started {} (pid {pid})", spec.name);
                    self.outputs.push(Output {
                        file,
                        name: spec.name.clone(),
                        lines: LineBuffer::default(),
                    });
                    events.push(RunnerEvent::Started {
                        name: spec.name,
                        pid,
                    });
                }
                Err(e) => {
                    let retry_in = self.sup.start_failed(idx, now);
                    tracing::error!(target: "strake_init::runner", "{e}; retrying in {retry_in:?}");
                    events.push(RunnerEvent::SpawnFailed {
                        name: spec.name,
                        error: e.to_string(),
                        retry_in,
                    });
                }
            }
        }
    }

    fn scan_buttons(&mut self, now: Instant) {
        let Some(root) = &self.button_root else {
            return;
        };
        if !self.buttons.is_empty() || now < self.next_button_scan || now >= self.button_scan_until
        {
            return;
        }
        self.next_button_scan = now + BUTTON_SCAN_EVERY;
        for path in power_button::find_power_buttons(root) {
            match power_button::open_button(&path) {
                Ok(f) => {
                    tracing::info!(target: "strake_init::runner", "listening to the power button on {}", path.display());
                    self.buttons.push(f);
                }
                Err(e) => {
                    tracing::debug!(target: "strake_init::runner", "opening {}: {e}", path.display())
                }
            }
        }
    }

    fn read_signals(&mut self, events: &mut Vec<RunnerEvent>) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            match Signal::try_from(signo) {
                Ok(Signal::SIGCHLD) => {} // reaped below, every iteration
                Ok(Signal::SIGTERM | Signal::SIGUSR2) => {
                    self.request_shutdown(PowerAction::PowerOff, events)
                }
                Ok(Signal::SIGINT) => self.request_shutdown(PowerAction::Reboot, events),
                Ok(Signal::SIGUSR1) => events.push(RunnerEvent::ConfigHandedOver),
                _ => tracing::debug!(target: "strake_init::runner", "ignoring signal {signo}"),
            }
        }
    }

    fn drain_outputs(&mut self, ready: &[bool], events: &mut Vec<RunnerEvent>) {
        let mut closed = Vec::new();
        for (i, o) in self.outputs.iter_mut().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            let mut buf = [0u8; 4096];
            // Bounded per iteration so one chatty service cannot starve the loop.
            for _ in 0..16 {
                match o.file.read(&mut buf) {
                    Ok(0) => {
                        closed.push(i);
                        break;
                    }
                    Ok(n) => {
                        for line in o.lines.push(&buf[..n]) {
                            emit_line(&o.name, line, events);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed.push(i);
                        break;
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            let mut o = self.outputs.remove(i);
            if let Some(rest) = o.lines.finish() {
                emit_line(&o.name, rest, events);
            }
        }
    }

    /// Waits for every child that has exited and routes each status to its owner.
    fn reap(&mut self, events: &mut Vec<RunnerEvent>) {
        loop {
            let (pid, exit) =
                match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid, ChildExit::Exited(code)),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ChildExit::Signaled(sig as i32)),
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!(target: "strake_init::runner", "waitpid: {e}");
                        return;
                    }
                };
            match self.sup.exited(pid, exit, Instant::now()) {
                Some(decision) => {
                    match decision.restart_in {
                        Some(d) => tracing::warn!(
                            target: "strake_init::runner",
                            "{} {exit} after {:.1}s; restarting in {:?}",
                            decision.name,
                            decision.ran_for.as_secs_f64(),
                            d
                        ),
                        None => {
                            tracing::info!(target: "strake_init::runner", "{} {exit}", decision.name)
                        }
                    }
                    events.push(RunnerEvent::Exited(decision));
                }
                None => {
                    tracing::debug!(target: "strake_init::runner", "reaped orphan {pid} ({exit})");
                    events.push(RunnerEvent::Orphan { pid, exit });
                }
            }
        }
    }

    /// Stops restarts and sends SIGTERM to every service's process group.
    pub fn request_shutdown(&mut self, action: PowerAction, events: &mut Vec<RunnerEvent>) {
        if self.shutdown.is_some() {
            tracing::info!(target: "strake_init::runner", "shutdown already in progress");
            return;
        }
        tracing::info!(target: "strake_init::runner", "shutdown requested ({action:?}): stopping services");
        for (name, pid) in self.sup.begin_shutdown() {
            tracing::info!(target: "strake_init::runner", "sending SIGTERM to {name} (pid {pid})");
            signal_group(pid, Signal::SIGTERM);
        }
        self.shutdown = Some(Shutdown {
            action,
            term_deadline: Instant::now() + STOP_TIMEOUT,
            kill_deadline: None,
        });
        events.push(RunnerEvent::ShutdownRequested(action));
    }

    fn shutdown_deadline(&self) -> Option<Instant> {
        self.shutdown
            .as_ref()
            .map(|s| s.kill_deadline.unwrap_or(s.term_deadline))
    }

    fn advance_shutdown(&mut self) {
        let Some(s) = &mut self.shutdown else { return };
        if s.kill_deadline.is_none() && Instant::now() >= s.term_deadline {
            for (name, pid) in self.sup.running() {
                tracing::warn!(target: "strake_init::runner", "{name} did not stop in {STOP_TIMEOUT:?}: SIGKILL");
                signal_group(pid, Signal::SIGKILL);
            }
            s.kill_deadline = Some(Instant::now() + KILL_GRACE);
        }
    }

    /// `Some(action)` once a shutdown was requested and every service is gone (or the kill grace
    /// period ran out).
    pub fn shutdown_ready(&self) -> Option<PowerAction> {
        let s = self.shutdown.as_ref()?;
        let killed_long_ago = s.kill_deadline.is_some_and(|d| Instant::now() >= d);
        (self.sup.running().is_empty() || killed_long_ago).then_some(s.action)
    }

    /// Reaps anything left until there are no children or `deadline` passes.
    pub fn reap_until_empty(&mut self, deadline: Instant) {
        let mut events = Vec::new();
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Err(Errno::ECHILD) => return,
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                _ => self.reap(&mut events),
            }
        }
    }
}

fn emit_line(name: &str, line: String, events: &mut Vec<RunnerEvent>) {
    crate::console::log(name, &line);
    events.push(RunnerEvent::Output {
        name: name.to_owned(),
        line,
    });
}

/// Signals a service's process group, falling back to the pid if it left its group.
fn signal_group(pid: Pid, sig: Signal) {
    if nix::sys::signal::kill(Pid::from_raw(-pid.as_raw()), sig).is_err() {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
