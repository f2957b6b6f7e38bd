//! strakectl's client config (as talosconfig is to talosctl): named contexts, each with the
//! nodes' endpoints, the machine CA and a client certificate.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strake_pki::CertifiedKey;

use crate::Trust;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrakeConfig {
    /// The context used when none is named.
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `host[:port]` of the nodes' machine API; the first is used when no node is named.
    pub endpoints: Vec<String>,
    /// The machine CA certificate (PEM).
    pub ca: String,
    /// This client's certificate and key (PEM).
    pub crt: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a strakectl config: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no context `{name}` (it has: {known})")]
    NoContext {
        path: PathBuf,
        name: String,
        known: String,
    },
}

impl StrakeConfig {
    /// `$STRAKECONFIG`, else `~/.strake/config`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("STRAKECONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".strake").join("config")
    }

    pub fn load(path: &Path) -> Result<StrakeConfig, ClientConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientConfigError::Read {
            path: path.into(),
            source,
        })?;
        serde_saphyr::from_str(&text).map_err(|e| ClientConfigError::Decode {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Writes the file with mode 0600: it holds a private key.
    pub fn save(&self, path: &Path) -> Result<(), ClientConfigError> {
        let err = |source| ClientConfigError::Write {
            path: path.into(),
            source,
        };
        let text = serde_saphyr::to_string(self).map_err(|e| err(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The named context, or the current one.
    pub fn context(&self, path: &Path, name: Option<&str>) -> Result<&Context, ClientConfigError> {
        let name = name.unwrap_or(&self.context);
        self.contexts
            .get(name)
            .ok_or_else(|| ClientConfigError::NoContext {
                path: path.into(),
                name: name.into(),
                known: if self.contexts.is_empty() {
                    "none".into()
                } else {
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// Adds (or replaces) a context and makes it the current one.
    pub fn merge(&mut self, name: &str, context: Context) {
        self.contexts.insert(name.to_owned(), context);
        self.context = name.to_owned();
    }
}

impl Context {
    pub fn trust(&self) -> Trust {
        Trust::Ca {
            ca_pem: self.ca.clone(),
            client: CertifiedKey {
                cert_pem: self.crt.clone(),
                key_pem: self.key.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_saved_config_loads_back_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config");
        let mut c = StrakeConfig::default();
        c.merge(
            "lab",
            Context {
                endpoints: vec!["127.0.0.1:50000".into()],
                ca: "CA\n".into(),
                crt: "CRT\n".into(),
                key: "KEY\n".into(),
            },
        );
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = StrakeConfig::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.context(&path, None).unwrap().endpoints[0],
            "127.0.0.1:50000"
        );
        let err = back.context(&path, Some("prod")).unwrap_err().to_string();
        assert!(err.contains("no context `prod` (it has: lab)"), "{err}");
        std::fs::write(&path, "context: x\nbogus: 1\n").unwrap();
        let err = StrakeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("is not a strakectl config"), "{err}");
    }
}
