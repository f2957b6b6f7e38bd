//! Console log: every line goes to the console as `[    1.234567] <component>: message` (the time is
//! CLOCK_MONOTONIC, i.e. time since boot, in the kernel's own format) and into a size-bounded ring of
//! files under `/run/strake/log/` once `/run` exists. Lines logged before that are kept in a bounded
//! in-memory buffer and flushed into the ring when it opens.
//!
//! `tracing` events from init (and from the crates it uses) are routed here by [`install`]; the
//! component is the module below `strake_init` (`network`, `dhcp`, ...) or the foreign crate's name.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Default location of init's log ring.
pub const LOG_PATH: &str = "/run/strake/log/init.log";
/// Each ring file is rotated when it would exceed this many bytes (the ring keeps two files).
pub const RING_FILE_LIMIT: u64 = 1024 * 1024;
/// Lines kept in memory before the ring file is open.
const EARLY_LINES: usize = 2048;

/// Errors opening the log ring.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("opening log file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the console {path}: {source}")]
    Console {
        path: String,
        source: std::io::Error,
    },
}

/// A log file bounded to two generations of at most `limit` bytes: `path` and `path.1`.
pub struct RingFile {
    path: PathBuf,
    file: File,
    size: u64,
    limit: u64,
}

impl RingFile {
    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: &Path, limit: u64) -> Result<RingFile, ConsoleError> {
        let err = |source| ConsoleError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(RingFile {
            path: path.to_owned(),
            file,
            size,
            limit: limit.max(1),
        })
    }

    /// Appends one line, rotating first when it would not fit.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.limit {
            let old = self.path.with_extension("log.1");
            std::fs::rename(&self.path, &old)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }
}

struct Sinks {
    console: Box<dyn Write + Send>,
    ring: Option<RingFile>,
    early: VecDeque<Vec<u8>>,
}

/// The log sink shared by the whole process.
pub struct Console {
    sinks: Mutex<Sinks>,
    debug: AtomicBool,
    dropped_early: AtomicU64,
}

impl Console {
    /// A console writing to `out` (stderr at first, `/dev/console` once devtmpfs is mounted).
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            sinks: Mutex::new(Sinks {
                console: out,
                ring: None,
                early: VecDeque::new(),
            }),
            debug: AtomicBool::new(false),
            dropped_early: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sinks> {
        // A panic while holding the lock must not silence PID 1: take the data anyway.
        self.sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether debug lines are shown.
    pub fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    pub fn set_debug(&self, on: bool) {
        self.debug.store(on, Ordering::Relaxed);
    }

    /// Replaces the console writer.
    pub fn set_console(&self, out: Box<dyn Write + Send>) {
        self.lock().console = out;
    }

    /// Starts writing to `ring`, first flushing the lines logged so far.
    pub fn attach_ring(&self, mut ring: RingFile) {
        let mut sinks = self.lock();
        let dropped = self.dropped_early.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = format_line(
                monotonic_now(),
                "init",
                &format!("{dropped} early log lines were dropped"),
            );
            let _ = ring.append(note.as_bytes());
        }
        for line in sinks.early.drain(..) {
            let _ = ring.append(&line);
        }
        sinks.ring = Some(ring);
    }

    /// Logs one line for `component`, stamped now.
    pub fn line(&self, component: &str, message: &str) {
        self.line_at(monotonic_now(), component, message);
    }

    /// Logs one line with an explicit timestamp (seconds, nanoseconds since boot).
    pub fn line_at(&self, at: (u64, u32), component: &str, message: &str) {
        let mut out = String::with_capacity(message.len() + 32);
        for (i, part) in message.split('\n').enumerate() {
            if i > 0 && part.is_empty() {
                continue;
            }
            out.push_str(&format_line(at, component, part));
        }
        let mut sinks = self.lock();
        // Errors writing the console cannot be reported anywhere else: ignore them.
        let _ = sinks.console.write_all(out.as_bytes());
        let _ = sinks.console.flush();
        let sinks = &mut *sinks;
        match &mut sinks.ring {
            Some(ring) => {
                let _ = ring.append(out.as_bytes());
            }
            None => {
                if sinks.early.len() >= EARLY_LINES {
                    sinks.early.pop_front();
                    self.dropped_early.fetch_add(1, Ordering::Relaxed);
                }
                sinks.early.push_back(out.into_bytes());
            }
        }
    }
}

/// Formats `[    1.234567] component: message\n`, replacing control characters so a service
/// cannot mess up the console.
pub fn format_line(at: (u64, u32), component: &str, message: &str) -> String {
    let mut s = String::with_capacity(message.len() + component.len() + 18);
    let _ = write!(s, "[{:5}.{:06}] {component}: ", at.0, at.1 / 1000);
    for c in message.trim_end_matches('\r').chars() {
        if c.is_control() && c != '\t' {
            s.push('?');
        } else {
            s.push(c);
        }
    }
    s.push('\n');
    s
}

/// CLOCK_MONOTONIC as (seconds, nanoseconds): the time since boot that dmesg also shows.
pub fn monotonic_now() -> (u64, u32) {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (
            u64::try_from(ts.tv_sec()).unwrap_or_default(),
            u32::try_from(ts.tv_nsec()).unwrap_or_default(),
        ),
        Err(_) => (0, 0),
    }
}

static GLOBAL: OnceLock<Console> = OnceLock::new();

/// The process-wide console (writing to stderr until [`Console::set_console`] is called).
pub fn global() -> &'static Console {
    GLOBAL.get_or_init(|| Console::new(Box::new(std::io::stderr())))
}

/// Logs one line for `component` on the global console.
pub fn log(component: &str, message: &str) {
    global().line(component, message);
}

/// Opens `/dev/console` (read-write, not as controlling terminal) and makes it the log sink and
/// init's stdin/stdout/stderr.
pub fn use_dev_console(path: &str) -> Result<(), ConsoleError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|source| ConsoleError::Console {
            path: path.into(),
            source,
        })?;
    for fd in 0..=2 {
        // Best effort: on failure the old descriptors (the kernel's console) stay in place.
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), fd);
    }
    global().set_console(Box::new(file));
    Ok(())
}

/// Routes `tracing` events to the global console. Safe to call more than once.
pub fn install() {
    let _ = tracing::subscriber::set_global_default(ConsoleSubscriber);
}

/// A minimal `tracing` subscriber: no spans, one console line per event.
struct ConsoleSubscriber;

fn component_of(target: &str) -> &str {
    match target.strip_prefix("strake_init::") {
        Some(rest) => rest.split("::").next().unwrap_or(rest),
        None if target == "strake_init" => "init",
        None => target.split("::").next().unwrap_or(target),
    }
}

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for ConsoleSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let max = if global().debug_enabled() {
            Level::DEBUG
        } else {
            Level::INFO
        };
        *metadata.level() <= max
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = MessageVisitor(String::new());
        event.record(&mut visitor);
        let meta = event.metadata();
        let mut message = visitor.0;
        match *meta.level() {
            Level::ERROR => message.insert_str(0, "ERROR: "),
            Level::WARN => message.insert_str(0, "warning: "),
            _ => {}
        }
        global().line(component_of(meta.target()), &message);
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn line_format_matches_kernel_style() {
        assert_eq!(
            format_line((1, 234_567_891), "network", "up"),
            "[    1.234567] network: up\n"
        );
        assert_eq!(
            format_line((12345, 0), "x", "a\u{1b}[2Jb\r"),
            "[12345.000000] x: a?[2Jb\n"
        );
    }

    #[test]
    fn early_lines_are_flushed_into_the_ring() {
        let out = Shared::default();
        let console = Console::new(Box::new(out.clone()));
        console.line_at((0, 5_000), "init", "before\nsecond");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log/init.log");
        console.attach_ring(RingFile::open(&path, 4096).expect("open"));
        console.line_at((2, 0), "svc", "after");
        let file = std::fs::read_to_string(&path).expect("read");
        let expected =
            "[    0.000005] init: before\n[    0.000005] init: second\n[    2.000000] svc: after\n";
        assert_eq!(file, expected);
        assert_eq!(
            String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8"),
            expected
        );
    }

    #[test]
    fn ring_is_bounded_to_two_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("init.log");
        let mut ring = RingFile::open(&path, 100).expect("open");
        for i in 0..50 {
            ring.append(format!("line number {i:04}\n").as_bytes())
                .expect("append");
        }
        let cur = std::fs::read_to_string(&path).expect("cur");
        let old = std::fs::read_to_string(dir.path().join("init.log.1")).expect("old");
        assert!(
            cur.len() <= 100 && old.len() <= 100,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line number 0049\n"));
        assert!(old.ends_with(&format!("line number {:04}\n", 49 - cur.lines().count())));
    }

    #[test]
    fn components_from_targets() {
        assert_eq!(component_of("strake_init::dhcp::client"), "dhcp");
        assert_eq!(component_of("strake_init"), "init");
        assert_eq!(component_of("netlink_proto::connection"), "netlink_proto");
    }
}
