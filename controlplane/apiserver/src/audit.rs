//! The audit log: one audit.k8s.io/v1 `Event` per request (stage `ResponseComplete`), as JSON
//! lines in a file on the node's disk, rotated by size. What is recorded is decided by a
//! Policy in upstream's format: the first rule matching the request gives its level —
//! `None` (nothing), `Metadata` (who, what, when, the outcome), `Request` (and the request's
//! object) or `RequestResponse` (and the response's object). Writing happens on a thread of
//! its own behind a bounded queue, so a slow disk never holds a request; when the queue is
//! full, events are dropped and counted, and the count is logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use strake_apimachinery::UserInfo;
use strake_apimachinery::request::Target;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

/// An audit policy (audit.k8s.io/v1 `Policy`).
#[derive(Clone, Debug, Deserialize)]
pub struct Policy {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// What a policy is asked about a request.
pub struct Request<'a> {
    pub user: &'a UserInfo,
    pub verb: &'a str,
    pub target: &'a Target,
    pub path: &'a str,
}

impl Policy {
    /// Parses a Policy (YAML or JSON), naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v =
            strake_apimachinery::decode::parse_yaml(text.as_bytes()).map_err(|e| e.to_string())?;
        if v["kind"] != "Policy" || v["apiVersion"] != "audit.k8s.io/v1" {
            return Err("not an audit.k8s.io/v1 Policy".into());
        }
        serde_json::from_value(v).map_err(|e| format!("invalid Policy: {e}"))
    }

    /// The policy used when none is given: health and version probes and the node's own
    /// heartbeats (leases) are not recorded, everything else at Metadata.
    pub fn default_policy() -> Self {
        Self::parse(
            r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/version/"]
- level: None
  userGroups: ["system:nodes"]
  verbs: ["get", "update"]
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
"#,
        )
        .expect("the default audit policy parses")
    }

    /// The level of the first rule that matches (None if no rule does).
    pub fn level(&self, r: &Request<'_>) -> Level {
        self.rules
            .iter()
            .find(|rule| rule.matches(r))
            .map_or(Level::None, |rule| rule.level)
    }
}

fn listed(list: &[String], x: &str) -> bool {
    list.is_empty() || list.iter().any(|l| l == "*" || l == x)
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> bool {
        if !listed(&self.users, &r.user.name)
            || !(self.user_groups.is_empty() || self.user_groups.iter().any(|g| r.user.in_group(g)))
            || !listed(&self.verbs, r.verb)
        {
            return false;
        }
        match r.target {
            Target::Resource(info) => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                let ns = info.namespace.as_deref().unwrap_or_default();
                if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns) {
                    return false;
                }
                let resource = match &info.subresource {
                    Some(s) => format!("{}/{s}", info.resource),
                    None => info.resource.clone(),
                };
                self.resources.is_empty()
                    || self.resources.iter().any(|g| {
                        g.group == info.group
                            && (g.resources.is_empty()
                                || g.resources.iter().any(|x| {
                                    x == "*"
                                        || *x == resource
                                        || *x == info.resource
                                        || x.strip_prefix("*/")
                                            .is_some_and(|s| info.subresource.as_deref() == Some(s))
                                }))
                            && (g.resource_names.is_empty()
                                || info
                                    .name
                                    .as_deref()
                                    .is_some_and(|n| g.resource_names.iter().any(|x| x == n)))
                    })
            }
            _ => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self.non_resource_urls.iter().any(|u| {
                        u == r.path || u.strip_suffix('*').is_some_and(|p| r.path.starts_with(p))
                    })
            }
        }
    }
}

/// Where and how the log is kept.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub policy: Policy,
    /// Rotated past this size (upstream's --audit-log-maxsize, in bytes here).
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` ... `audit.log.N`).
    pub max_backups: usize,
}

impl AuditConfig {
    /// The default policy into `path`, 100 MiB a file, 5 kept.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            policy: Policy::default_policy(),
            max_bytes: 100 << 20,
            max_backups: 5,
        }
    }
}

/// The running log.
pub struct Log {
    pub policy: Policy,
    queue: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_bytes: u64,
    max_backups: usize,
}

impl Writer {
    fn open(path: &Path, max_bytes: u64, max_backups: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            max_backups,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.max_backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.max_backups).rev() {
                if name(i).exists() {
                    std::fs::rename(name(i), name(i + 1))?;
                }
            }
            std::fs::rename(&self.path, name(1))?;
        }
        *self = Self::open(&self.path, self.max_bytes, self.max_backups)?;
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

impl Log {
    /// Opens (or creates) the log file and starts its writer.
    pub fn start(cfg: AuditConfig) -> std::io::Result<Self> {
        let mut w = Writer::open(&cfg.path, cfg.max_bytes, cfg.max_backups)?;
        let (queue, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(10_000);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = w.write(&line) {
                        tracing::warn!(path = %w.path.display(), error = %e, "cannot write the audit log");
                    }
                }
            })?;
        Ok(Self {
            policy: cfg.policy,
            queue,
            dropped: Arc::default(),
        })
    }

    fn record(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "the audit log cannot keep up; events dropped");
                }
            }
        }
    }
}

fn now() -> String {
    Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// One request's event, filled in as the request goes.
pub struct Entry {
    pub level: Level,
    pub event: Value,
}

impl Entry {
    /// Starts the event of a request at `level` (None when nothing is to be recorded).
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        level: Level,
        r: &Request<'_>,
        actor: &UserInfo,
        uri: &str,
        source: Option<std::net::IpAddr>,
        user_agent: Option<&str>,
    ) -> Option<Self> {
        if level == Level::None {
            return None;
        }
        let user_json = |u: &UserInfo| {
            let mut v = json!({"username": u.name, "groups": u.groups});
            if !u.uid.is_empty() {
                v["uid"] = json!(u.uid);
            }
            if !u.extra.is_empty() {
                v["extra"] = json!(u.extra);
            }
            v
        };
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": format!("{level:?}"),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": uri,
            "verb": r.verb,
            "user": user_json(actor),
            "sourceIPs": source.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
            "requestReceivedTimestamp": now(),
        });
        if actor != r.user {
            event["impersonatedUser"] = user_json(r.user);
        }
        if let Some(ua) = user_agent {
            event["userAgent"] = json!(ua);
        }
        if let Target::Resource(info) = r.target {
            let mut o = json!({"resource": info.resource, "apiVersion": info.version});
            if !info.group.is_empty() {
                o["apiGroup"] = json!(info.group);
                o["apiVersion"] = json!(format!("{}/{}", info.group, info.version));
            }
            for (k, v) in [
                ("namespace", &info.namespace),
                ("name", &info.name),
                ("subresource", &info.subresource),
            ] {
                if let Some(v) = v {
                    o[k] = json!(v);
                }
            }
            event["objectRef"] = o;
        }
        Some(Self { level, event })
    }

    /// Notes the authorizer's decision, as upstream's annotations do.
    pub fn decision(&mut self, allowed: bool, reason: &str) {
        let mut a: BTreeMap<&str, &str> = BTreeMap::new();
        a.insert(
            "authorization.k8s.io/decision",
            if allowed { "allow" } else { "forbid" },
        );
        if !reason.is_empty() {
            a.insert("authorization.k8s.io/reason", reason);
        }
        self.event["annotations"] = json!(a);
    }

    /// Records the request's object (Request and RequestResponse levels).
    pub fn request_object(&mut self, body: &[u8]) {
        if self.level >= Level::Request
            && let Ok(v) = serde_json::from_slice::<Value>(body)
        {
            self.event["requestObject"] = v;
        }
    }

    /// Completes the event with the response and writes it.
    pub fn finish(mut self, log: &Log, code: u16, body: Option<&[u8]>) {
        self.event["responseStatus"] = json!({"metadata": {}, "code": code});
        if self.level == Level::RequestResponse
            && let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok())
        {
            self.event["responseObject"] = v;
        }
        self.event["stageTimestamp"] = json!(now());
        log.record(&self.event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strake_apimachinery::request::{RequestInfo, Verb};

    fn target(verb: Verb, group: &str, resource: &str, ns: Option<&str>) -> Target {
        Target::Resource(RequestInfo {
            verb,
            group: group.into(),
            version: "v1".into(),
            namespace: ns.map(String::from),
            resource: resource.into(),
            name: Some("x".into()),
            subresource: None,
        })
    }

    #[test]
    fn the_first_matching_rule_sets_the_level() {
        let p = Policy::parse(
            r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: RequestResponse
  resources: [{group: "", resources: [secrets]}]
  namespaces: [prod]
- level: Request
  verbs: [create, update, patch]
  userGroups: [devs]
- level: None
  users: [system:kube-proxy]
- level: Metadata
  resources: [{group: apps}]
"#,
        )
        .unwrap();
        let dev = UserInfo::new("alice", &["devs"]);
        let proxy = UserInfo::new("system:kube-proxy", &[]);
        let ask = |u: &UserInfo, t: &Target, verb: &str| {
            p.level(&Request {
                user: u,
                verb,
                target: t,
                path: "",
            })
        };
        let secret = target(Verb::Get, "", "secrets", Some("prod"));
        assert_eq!(ask(&dev, &secret, "get"), Level::RequestResponse);
        let cm = target(Verb::Create, "", "configmaps", Some("dev"));
        assert_eq!(ask(&dev, &cm, "create"), Level::Request);
        assert_eq!(ask(&proxy, &cm, "create"), Level::None);
        let deploy = target(Verb::List, "apps", "deployments", Some("dev"));
        assert_eq!(ask(&proxy, &deploy, "list"), Level::None);
        assert_eq!(ask(&dev, &deploy, "list"), Level::Metadata);
        // Nothing matches: not recorded.
        assert_eq!(ask(&dev, &cm, "get"), Level::None);

        let d = Policy::default_policy();
        let health = Target::NonResource("/healthz".into());
        let req = |t: &Target, path: &str| {
            d.level(&Request {
                user: &dev,
                verb: "get",
                target: t,
                path,
            })
        };
        assert_eq!(req(&health, "/healthz"), Level::None);
        assert_eq!(req(&health, "/readyz/etcd"), Level::None);
        assert_eq!(req(&secret, ""), Level::Metadata);
        for bad in [
            "",
            "kind: Policy",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_log_rotates_and_keeps_its_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = Writer::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            w.write(format!("{{\"n\":{i:040}}}\n").as_bytes()).unwrap();
        }
        assert!(path.exists());
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }
}
