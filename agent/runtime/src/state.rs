//! The per-container state directory shared by [`crate::Runtime`] and the shim, and the JSON records in it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::RuntimeError;
use crate::spec::ContainerId;

/// Paths inside one container's state directory `<state root>/<id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of container `id` under `state_root`.
    pub fn new(state_root: &Path, id: &ContainerId) -> Self {
        Self {
            dir: state_root.join(id.as_str()),
        }
    }

    /// The layout rooted at an existing container state directory.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<dir>`
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/bundle`, the OCI bundle (holds `config.json`).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    /// `<dir>/bundle/config.json`
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }

    /// `<dir>/lc`, libcontainer's state root (it keeps `<dir>/lc/<id>/`).
    pub fn libcontainer_root(&self) -> PathBuf {
        self.dir.join("lc")
    }

    /// `<dir>/shim.lock`, held (flock) for as long as the shim lives.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("shim.lock")
    }

    /// `<dir>/shim.log`, the shim's stderr.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    /// `<dir>/started.json`, a [`StartedRecord`].
    pub fn started(&self) -> PathBuf {
        self.dir.join("started.json")
    }

    /// `<dir>/exit.json`, an [`ExitRecord`].
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// `<dir>/cleaned`, present once libcontainer state and cgroup are gone.
    pub fn cleaned(&self) -> PathBuf {
        self.dir.join("cleaned")
    }
}

/// Written by the shim once the container's init runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    /// Host pid of the container's init.
    pub pid: i32,
    /// Pid of the shim supervising it.
    pub shim_pid: i32,
    /// When `start` returned.
    pub started_at: DateTime<Utc>,
}

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the init, if any.
    pub signal: Option<i32>,
    /// When the shim observed the exit.
    pub finished_at: DateTime<Utc>,
}

impl ExitStatus {
    /// The init called `exit(code)`.
    pub fn exited(code: i32, finished_at: DateTime<Utc>) -> Self {
        Self {
            exit_code: code,
            signal: None,
            finished_at,
        }
    }

    /// The init was killed by signal number `signal`.
    pub fn signaled(signal: i32, finished_at: DateTime<Utc>) -> Self {
        Self {
            exit_code: 128 + signal,
            signal: Some(signal),
            finished_at,
        }
    }
}

/// The content of `exit.json`: an exit status, or why the container never ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExitRecord {
    /// The container ran and its init ended.
    Exited(ExitStatus),
    /// Creating or starting the container failed, or the shim lost track of it.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// Writes `bytes` to `path` atomically: a sibling temp file renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(|e| RuntimeError::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| RuntimeError::io("writing", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| RuntimeError::io("renaming into place", path, e))
}

/// Serializes `value` as JSON into `path` atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let json = serde_json::to_vec(value).map_err(|e| RuntimeError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &json)
}

/// Reads a JSON record; `None` when the file does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RuntimeError::CorruptState {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io("reading", path, e)),
    }
}

/// The last `max` bytes of a log file, for error messages (empty when unreadable).
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn exit_file_format_is_stable() {
        let exited = ExitRecord::Exited(ExitStatus::exited(3, at(1_700_000_000)));
        assert_eq!(
            serde_json::to_string(&exited).unwrap(),
            r#"{"exit_code":3,"signal":null,"finished_at":"2023-11-14T22:13:20Z"}"#
        );
        let killed = ExitRecord::Exited(ExitStatus::signaled(9, at(0)));
        assert_eq!(
            serde_json::to_string(&killed).unwrap(),
            r#"{"exit_code":137,"signal":9,"finished_at":"1970-01-01T00:00:00Z"}"#
        );
        let failed = ExitRecord::Failed {
            error: "no such file".into(),
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"error":"no such file"}"#
        );
    }

    #[test]
    fn exit_records_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert_eq!(read_json::<ExitRecord>(&path).unwrap(), None);
        for record in [
            ExitRecord::Exited(ExitStatus::exited(0, at(5))),
            ExitRecord::Exited(ExitStatus::signaled(15, at(6))),
            ExitRecord::Failed {
                error: "boom".into(),
            },
        ] {
            write_json(&path, &record).unwrap();
            assert_eq!(read_json::<ExitRecord>(&path).unwrap(), Some(record));
        }
        assert!(!dir.path().join("exit.json.tmp").exists());
    }

    #[test]
    fn corrupt_records_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        fs::write(&path, b"{\"exit_code\": \"three\"}").unwrap();
        match read_json::<ExitRecord>(&path) {
            Err(RuntimeError::CorruptState { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected CorruptState, got {other:?}"),
        }
    }

    #[test]
    fn started_record_round_trips() {
        let rec = StartedRecord {
            pid: 4242,
            shim_pid: 4200,
            started_at: at(1),
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            json,
            r#"{"pid":4242,"shim_pid":4200,"started_at":"1970-01-01T00:00:01Z"}"#
        );
        assert_eq!(serde_json::from_str::<StartedRecord>(&json).unwrap(), rec);
    }

    #[test]
    fn layout_paths() {
        let id = ContainerId::parse("c1").unwrap();
        let l = Layout::new(Path::new("/run/strake/containers"), &id);
        assert_eq!(l.dir(), Path::new("/run/strake/containers/c1"));
        assert_eq!(
            l.config(),
            Path::new("/run/strake/containers/c1/bundle/config.json")
        );
        assert_eq!(l.exit(), Path::new("/run/strake/containers/c1/exit.json"));
        assert_eq!(
            l.libcontainer_root(),
            Path::new("/run/strake/containers/c1/lc")
        );
    }
}
