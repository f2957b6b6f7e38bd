//! Thin syscall wrappers nix 0.29 lacks (pidfds, terminal ioctls) and the shim-liveness lock.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pidfd: a handle on one process that can't be confused with a later process reusing its pid.
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// `pidfd_open(pid, 0)`; `Ok(None)` when no such process exists (already reaped).
    pub(crate) fn open(pid: i32) -> Result<Option<Self>, Errno> {
        // SAFETY: pidfd_open takes a pid and flags by value and touches no memory of ours.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if ret < 0 {
            return match Errno::last() {
                Errno::ESRCH => Ok(None),
                errno => Err(errno),
            };
        }
        let fd = RawFd::try_from(ret).map_err(|_| Errno::EOVERFLOW)?;
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        Ok(Some(Self(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// `pidfd_send_signal`; `Ok(false)` when the process has already exited.
    pub(crate) fn send_signal(&self, signal: Signal) -> Result<bool, Errno> {
        // SAFETY: the fd is a live pidfd we own; a null siginfo asks the kernel to fill in
        // the same info kill(2) would; flags must be 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            return match Errno::last() {
                Errno::ESRCH => Ok(false),
                errno => Err(errno),
            };
        }
        Ok(true)
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A child that has exited but is not reaped yet (observed with `WNOWAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildExit {
    /// The child called `exit(code)`.
    Exited { pid: i32, code: i32 },
    /// The child was killed by signal number `signal` (any signal, real-time ones included).
    Killed { pid: i32, signal: i32 },
}

/// Blocks until any child (including clone children without an exit signal: `__WALL`) has
/// exited, and reports it without reaping it. Retries on `EINTR`.
pub(crate) fn wait_exited_child_nowait() -> Result<ChildExit, Errno> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t that outlives the call.
        let ret = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if ret < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                errno => return Err(errno),
            }
        }
        // SAFETY: waitid succeeded for a CLD_* event, so the sigchld fields are the ones set.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        return Ok(match info.si_code {
            libc::CLD_EXITED => ChildExit::Exited { pid, code: status },
            _ => ChildExit::Killed {
                pid,
                signal: status,
            },
        });
    }
}

/// Reaps `pid` (blocking; `__WALL`). `ECHILD` means someone else already did.
pub(crate) fn reap(pid: i32) -> Result<(), Errno> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int that outlives the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if ret >= 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::ECHILD => return Ok(()),
            errno => return Err(errno),
        }
    }
}

/// Reaps every child that has already exited, without blocking.
pub(crate) fn reap_exited_children() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int that outlives the call.
        let ret = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
        if ret <= 0 {
            return;
        }
    }
}

/// `CAP_SYS_RESOURCE`, needed to raise a hard rlimit.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether the effective capability set in a `/proc/<pid>/status` text contains `cap`.
fn status_has_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1 << cap) != 0)
}

/// The highest `RLIMIT_NOFILE` this process (and so a container it starts) can set:
/// unlimited with `CAP_SYS_RESOURCE`, else the current hard limit.
pub(crate) fn max_nofile() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if status_has_cap(&status, CAP_SYS_RESOURCE) {
        return u64::MAX;
    }
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_soft, hard)| hard)
        .unwrap_or(u64::MAX)
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(true)` when we now hold the lock, `Ok(false)` when another
/// open file description holds it. The lock lives until every fd sharing this open file
/// description is closed, including copies inherited by children.
pub(crate) fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock only takes a descriptor we own (borrowed from `file`) and flags.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if ret == 0 {
            return Ok(true);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EWOULDBLOCK => return Ok(false),
            errno => return Err(errno.into()),
        }
    }
}

/// True while some process holds the shim lock at `path`; false when it is free or missing.
pub(crate) fn lock_is_held(path: &Path) -> std::io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // If we got it, closing `file` on return releases it at once.
    Ok(!try_lock_exclusive(&file)?)
}

/// Creates (or opens) the lock file at `path` and locks it; `None` when someone else holds it.
pub(crate) fn take_lock(path: &Path) -> std::io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    Ok(try_lock_exclusive(&file)?.then_some(file))
}

/// A pseudo-terminal for an exec with a tty: the agent keeps `master`, the process gets
/// `slave` as its stdin, stdout and stderr.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pseudo-terminal pair (both ends close-on-exec in this process).
pub fn open_pty(cols: u16, rows: u16) -> Result<Pty, Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let nix::pty::OpenptyResult { master, slave } = nix::pty::openpty(Some(&size), None)?;
    for fd in [&master, &slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok(Pty { master, slave })
}

/// Sets a terminal's window size (`TIOCSWINSZ`); its foreground process group gets SIGWINCH.
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> Result<(), Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call; `fd` is
    // a descriptor we borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    Errno::result(ret).map(drop)
}

/// Makes this process a session leader whose controlling terminal is the tty on fd 0, so
/// what it starts there gets job control and the terminal's signals.
pub(crate) fn take_controlling_terminal() -> Result<(), Errno> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: don't steal from another session).
    let ret = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    Errno::result(ret).map(drop)
}

/// The master end of a terminal, readable and writable without blocking a thread.
pub struct PtyMaster(AsyncFd<OwnedFd>);

impl PtyMaster {
    /// Takes the master end (made non-blocking) for async reads and writes.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns `fd` and never closes or replaces it while registered.
        Ok(Self(unsafe { AsyncFd::register(fd)? }))
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(Into::into)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last process holding the terminal closed it: end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_of_self_and_of_a_missing_pid() {
        let me = PidFd::open(std::process::id() as i32).unwrap();
        assert!(me.is_some());
        // pid_max is at most 2^22 on Linux, so this pid never exists.
        assert!(PidFd::open(1 << 23).unwrap().is_none());
    }

    #[test]
    fn pidfd_signals_only_its_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap().unwrap();
        assert!(fd.send_signal(Signal::SIGKILL).unwrap());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd still refers to that process and reports it gone.
        assert!(!fd.send_signal(Signal::SIGKILL).unwrap());
    }

    #[test]
    fn reads_the_effective_capability_set() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n";
        assert!(!status_has_cap(status, CAP_SYS_RESOURCE));
        assert!(status_has_cap(status, 21));
        assert!(status_has_cap(
            "CapEff:\t0000000001000000\n",
            CAP_SYS_RESOURCE
        ));
        assert!(!status_has_cap("garbage", CAP_SYS_RESOURCE));
    }

    #[test]
    fn lock_probe_sees_holders_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.lock");
        assert!(!lock_is_held(&path).unwrap());
        let guard = take_lock(&path).unwrap().unwrap();
        assert!(lock_is_held(&path).unwrap());
        assert!(take_lock(&path).unwrap().is_none());
        // A duplicate of the holder's fd (as a child inherits it) keeps the lock alive.
        let inherited = guard.try_clone().unwrap();
        drop(guard);
        assert!(lock_is_held(&path).unwrap());
        drop(inherited);
        // Another test's fork may hold a copy of the descriptor until its child execs (the
        // descriptor is close-on-exec), so the release is awaited briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lock_is_held(&path).unwrap() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            !lock_is_held(&path).unwrap(),
            "the lock outlived its holders"
        );
    }
}
