//! Pod sandboxes: the network, UTS and IPC namespaces a pod's containers share, created once
//! per pod and kept alive without any process by bind-mounting their nsfs files into the
//! sandbox directory (`<dir>/net`, `<dir>/uts`, `<dir>/ipc`), as `ip netns add` does. The
//! containers join them by path ([`crate::ContainerSpec::network`], `ipc`, `uts`); the agent's
//! networking configures the network namespace through its path.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::error::RuntimeError;
use crate::overlay::unmount;

/// The namespaces of one pod, each a bind-mounted nsfs file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub net: PathBuf,
    pub uts: PathBuf,
    pub ipc: PathBuf,
}

const KINDS: [&str; 3] = ["net", "uts", "ipc"];

impl Sandbox {
    /// The paths of the sandbox kept in `dir` (whether or not it exists).
    pub fn at(dir: &Path) -> Self {
        Self {
            net: dir.join("net"),
            uts: dir.join("uts"),
            ipc: dir.join("ipc"),
        }
    }

    /// Creates fresh namespaces with `hostname` set in the UTS one (and `lo` down, as a new
    /// network namespace starts). A sandbox already in `dir` is torn down first.
    pub fn create(dir: &Path, hostname: &str) -> Result<Self, RuntimeError> {
        if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['/', '\0']) {
            return Err(RuntimeError::InvalidSpec {
                field: "hostname".into(),
                reason: format!("{hostname:?} must be 1 to 64 bytes without '/' or NUL"),
            });
        }
        Self::remove(dir)?;
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let me = Self::at(dir);
        for path in [&me.net, &me.uts, &me.ipc] {
            std::fs::File::create(path).map_err(io("creating", path))?;
        }
        let paths = me.clone();
        let hostname = hostname.to_owned();
        // unshare(2) moves only the calling thread, so a thread of its own is entered into the
        // new namespaces, pins them, and ends; the rest of the process never leaves its own.
        let made = std::thread::spawn(move || -> Result<(), RuntimeError> {
            let sys = |op: &'static str| {
                move |errno: Errno| RuntimeError::Mount {
                    op,
                    target: PathBuf::from("/proc/thread-self/ns"),
                    errno,
                }
            };
            nix::sched::unshare(
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC,
            )
            .map_err(sys("unsharing the pod's namespaces"))?;
            nix::unistd::sethostname(&hostname).map_err(sys("setting the pod's hostname"))?;
            for (kind, target) in KINDS.iter().zip([&paths.net, &paths.uts, &paths.ipc]) {
                let source = format!("/proc/thread-self/ns/{kind}");
                nix::mount::mount(
                    Some(source.as_str()),
                    target.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|errno| RuntimeError::Mount {
                    op: "pinning the pod's namespace",
                    target: target.clone(),
                    errno,
                })?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RuntimeError::Sandbox(
                "the thread creating the namespaces panicked".into(),
            ))
        });
        if let Err(e) = made {
            let _ = Self::remove(dir);
            return Err(e);
        }
        Ok(me)
    }

    /// Unpins the namespaces in `dir` (they go when the last container has left them, and
    /// with the network namespace its interfaces) and removes the directory. Nothing there is
    /// not an error.
    pub fn remove(dir: &Path) -> Result<(), RuntimeError> {
        for kind in KINDS {
            unmount(&dir.join(kind))?;
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io {
                op: "removing",
                path: dir.to_owned(),
                source,
            }),
        }
    }
}
