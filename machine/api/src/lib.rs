//! strake-machineapi: the machine API, HTTPS + JSON on port 50000, as machined serves it and
//! strakectl calls it.
//!
//! A node runs it in one of two modes:
//! - **maintenance** (no machine config yet): TLS with a self-signed certificate whose SHA-256
//!   fingerprint init prints on the console, no client authentication, and only `version` and
//!   `apply-config`;
//! - **configured**: mutual TLS. The serving certificate and every client certificate are signed
//!   by the machine CA (`machine.ca` in the machine config), which is kept apart from the
//!   cluster CA. A client's role is an organization in its certificate: `strake:admin`,
//!   `strake:operator` or `strake:reader`.
//!
//! | route                       | method | role      | what                                      |
//! |-----------------------------|--------|-----------|-------------------------------------------|
//! | `/v1/version`               | GET    | reader    | [`VersionInfo`]                           |
//! | `/v1/apply-config`          | POST   | admin     | body: YAML; `?mode=`, `?dryRun=true`      |
//! | `/v1/machineconfig`         | GET    | reader    | [`ConfigView`]; secrets redacted below admin |
//! | `/v1/reboot`, `/v1/shutdown`| POST   | operator  | [`Message`]                               |
//! | `/v1/upgrade`               | POST   | admin     | body: a UKI; written to the other slot, booted once, blessed when healthy |
//! | `/v1/reset`                 | POST   | admin     | wipes STATE at the next boot and reboots: back to maintenance mode |
//! | `/v1/services`              | GET    | reader    | [`ServiceView`] of every service init supervises |
//! | `/v1/services/{name}/restart` | POST | operator  | stops the service; init starts it again |
//! | `/v1/logs`                  | GET    | reader    | [`LogLines`]: the console log; `?service=`, `?tail=`, `?since=` |
//! | `/v1/dmesg`                 | GET    | reader    | [`LogLines`]: the kernel's log; `?tail=`, `?since=` |
//! | `/v1/disks`                 | GET    | reader    | [`DiskView`] of every disk; also in maintenance mode, to pick the install disk |
//! | `/v1/addresses`             | GET    | reader    | [`AddressView`] of every interface address |
//! | `/v1/routes`                | GET    | reader    | [`RouteView`] of the main routing table |
//! | `/v1/netstat`               | GET    | reader    | [`SocketView`] of every TCP and UDP socket of the host's network |
//! | `/v1/kubeconfig`            | GET    | admin     | [`KubeconfigView`]: admin credentials from the cluster CA (control planes only) |
//!
//! Every error is JSON [`ErrorBody`]: one message and, for a bad config, every problem with its
//! field path.

mod client;
mod clientconfig;
mod secrets;
mod server;
mod uki;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{Client, ClientError, Trust};
pub use clientconfig::{ClientConfigError, Context, StrakeConfig};
pub use secrets::{
    SecretsError, fingerprint, generate_ca, issue_client, self_signed, serving_cert,
};
pub use server::{Host, HostError, Power, ServerMode, serve, tls_config};
pub use uki::check_uki;

/// The machine API's TCP port.
pub const PORT: u16 = 50000;
/// Largest request body accepted (a machine config).
pub const MAX_BODY: usize = 1 << 20;
/// Largest UKI `upgrade` accepts.
pub const MAX_UPGRADE: usize = 256 << 20;
/// The largest store backup `strakectl store restore` sends.
pub const MAX_BACKUP: usize = 1 << 30;

/// What a client may do, from its certificate's organizations. Each role can do what the ones
/// below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: version, the machine config with its secrets redacted.
    Reader,
    /// Also reboots and shuts the machine down.
    Operator,
    /// Also applies configs and reads secrets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Reader];

    /// The certificate organization that grants this role.
    pub fn group(self) -> &'static str {
        match self {
            Role::Admin => "strake:admin",
            Role::Operator => "strake:operator",
            Role::Reader => "strake:reader",
        }
    }

    /// The highest role the groups grant, if any.
    pub fn from_groups<S: AsRef<str>>(groups: &[S]) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| groups.iter().any(|g| g.as_ref() == r.group()))
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub version: String,
    pub hostname: String,
    /// The node has no config and accepts only `apply-config`.
    pub maintenance: bool,
    /// The A/B slot systemd-boot booted (`a` or `b`); absent when the node did not boot from
    /// a slot (the `-kernel` path, the ISO, PXE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The slot is on trial: an upgrade not yet blessed.
    #[serde(default)]
    pub on_trial: bool,
}

/// How `apply-config` applies a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// `no-reboot` when every change can be applied live, `reboot` otherwise.
    #[default]
    Auto,
    /// Apply live; refused when a change is only read at boot.
    NoReboot,
    /// Keep the config and reboot into it.
    Reboot,
    /// Keep the config for the next boot; change nothing now.
    Staged,
}

impl ApplyMode {
    pub fn name(self) -> &'static str {
        match self {
            ApplyMode::Auto => "auto",
            ApplyMode::NoReboot => "no-reboot",
            ApplyMode::Reboot => "reboot",
            ApplyMode::Staged => "staged",
        }
    }

    pub fn parse(s: &str) -> Option<ApplyMode> {
        [
            ApplyMode::Auto,
            ApplyMode::NoReboot,
            ApplyMode::Reboot,
            ApplyMode::Staged,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// One changed field of a config (`apply-config --dry-run` lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeView {
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// `POST /v1/apply-config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// The mode used (or that would be, on a dry run); never `auto`.
    pub mode: ApplyMode,
    pub dry_run: bool,
    /// What changes against the config in force; in maintenance mode, against nothing.
    pub changes: Vec<ChangeView>,
    /// What happened or will, in one sentence.
    pub message: String,
}

/// `GET /v1/machineconfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    pub yaml: String,
    /// Secrets (the cluster token, the machine CA key, registry passwords) were replaced by
    /// `REDACTED`, as they are for every role below admin.
    pub redacted: bool,
}

/// A service init supervises (`strakectl services`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    /// `running`, `waiting` (to be restarted) or `stopped`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Since when it runs (or until when it waits), in seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    /// Resident memory of its main process, in bytes, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// A disk of the machine (`strakectl disks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskView {
    /// The device path, `/dev/vda`.
    pub device: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    pub partitions: Vec<PartitionView>,
}

/// A partition of a [`DiskView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub device: String,
    /// Its GPT name (`ESP`, `STATE`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub bytes: u64,
}

/// An address on an interface (`strakectl addresses`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    pub interface: String,
    /// With its prefix length: `10.0.2.15/24`, `fe80::1/64`.
    pub address: String,
}

/// A route of the main table (`strakectl routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// `0.0.0.0/0` for the default route.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub interface: String,
    pub metric: u32,
}

/// A TCP or UDP socket of the host's network namespace (`strakectl netstat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketView {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub protocol: String,
    /// `10.0.2.15:50000`, `[::1]:6443`.
    pub local: String,
    pub remote: String,
    /// TCP's state (`LISTEN`, `ESTABLISHED`...); empty for an unconnected UDP socket.
    pub state: String,
    /// `pid/name` of a process holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

/// One member of the cluster store (`strakectl store members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreMemberView {
    pub id: u64,
    pub peer_address: String,
    /// Votes, or only receives the log while it catches up (a learner).
    pub voter: bool,
    pub leader: bool,
}

/// The cluster store's members as a control plane sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreMembersView {
    /// The store node id of the control plane that answered.
    pub answered_by: u64,
    pub leader: Option<u64>,
    /// The answering node's raft term: it grows with every election.
    #[serde(default)]
    pub term: u64,
    pub members: Vec<StoreMemberView>,
}

/// A snapshot of the cluster store (`strakectl store snapshot`): a backup file holding every
/// acknowledged write, which `Store::restore` starts a new cluster from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreSnapshotView {
    pub revision: u64,
    /// The file, base64.
    pub data: String,
}

/// Admin credentials for the cluster (`strakectl kubeconfig`), signed by the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigView {
    pub cluster: String,
    /// The API server's URL as the node knows it (the config's endpoint, or its own address).
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Log lines (`logs`, `dmesg`), each `[seconds since boot] ...`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLines {
    pub lines: Vec<String>,
    /// The timestamp of the last line (seconds since boot): pass it as `since` to get only
    /// what comes after (`-f`).
    pub last: f64,
}

/// The boot-relative timestamp that starts a log line (`[   12.345678] ...`).
pub fn line_time(line: &str) -> Option<f64> {
    line.strip_prefix('[')?
        .split_once(']')?
        .0
        .trim()
        .parse()
        .ok()
}

/// The component a console line names (`[   1.2] machined: ...` → `machined`).
pub fn line_component(line: &str) -> Option<&str> {
    let rest = line.split_once("] ")?.1;
    Some(rest.split_once(':')?.0)
}

/// A one-sentence answer (`reboot`, `shutdown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

/// One problem with a config, at its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error the API answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Replaces the secrets in a config (as a JSON value) with `REDACTED`.
pub fn redact(config: &mut Value) {
    const HIDDEN: &str = "REDACTED";
    let hide = |v: Option<&mut Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            *v = Value::from(HIDDEN);
        }
    };
    hide(config.pointer_mut("/cluster/token"));
    hide(config.pointer_mut("/machine/ca/key"));
    hide(config.pointer_mut("/cluster/ca/key"));
    if let Some(Value::Object(registries)) = config.pointer_mut("/machine/registries/config") {
        for registry in registries.values_mut() {
            if let Some(Value::Object(auth)) = registry.get_mut("auth") {
                for field in ["password", "auth"] {
                    hide(auth.get_mut(field));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn log_lines_carry_their_time_and_component() {
        let l = "[   12.345678] machined:  INFO listening";
        assert_eq!(line_time(l), Some(12.345678));
        assert_eq!(line_component(l), Some("machined"));
        assert_eq!(line_time("no stamp"), None);
        assert_eq!(line_component("[1.0] no colon"), None);
    }

    #[test]
    fn the_highest_role_wins() {
        assert_eq!(
            Role::from_groups(&["strake:reader", "strake:admin"]),
            Some(Role::Admin)
        );
        assert_eq!(Role::from_groups(&["system:masters"]), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
    }

    #[test]
    fn modes_parse_by_name() {
        for m in ["auto", "no-reboot", "reboot", "staged"] {
            assert_eq!(ApplyMode::parse(m).map(ApplyMode::name), Some(m));
        }
        assert_eq!(ApplyMode::parse("now"), None);
        assert_eq!(
            serde_json::to_value(ApplyMode::NoReboot).unwrap(),
            json!("no-reboot")
        );
    }

    #[test]
    fn redaction_hides_every_secret_and_nothing_else() {
        let mut v = json!({
            "machine": {
                "role": "worker",
                "ca": {"crt": "CERT", "key": "KEY"},
                "registries": {"config": {
                    "r.lab": {"auth": {"username": "u", "password": "p", "auth": "dTpw"}},
                    "other": {"insecureSkipVerify": true}
                }}
            },
            "cluster": {"name": "lab", "token": "abcdef.0123456789abcdef"}
        });
        redact(&mut v);
        assert_eq!(
            v["machine"]["ca"],
            json!({"crt": "CERT", "key": "REDACTED"})
        );
        assert_eq!(
            v["machine"]["registries"]["config"]["r.lab"]["auth"],
            json!({"username": "u", "password": "REDACTED", "auth": "REDACTED"})
        );
        assert_eq!(v["cluster"]["token"], "REDACTED");
        assert_eq!(
            v["machine"]["registries"]["config"]["other"]["insecureSkipVerify"],
            true
        );
        let mut bare = json!({"machine": {"role": "worker"}, "cluster": {"name": "x"}});
        redact(&mut bare);
        assert_eq!(
            bare,
            json!({"machine": {"role": "worker"}, "cluster": {"name": "x"}})
        );
    }
}
