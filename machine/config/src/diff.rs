//! What changed between two configs, and whether applying the change needs a reboot.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{MachineConfig, child};

/// One changed leaf. A field that appears or disappears is one change whose other side is `null`
/// (its whole subtree, not each leaf under it).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// In the same form as [`crate::FieldError::path`].
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// How a change is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The running services pick the change up (an empty change list is also this).
    NoReboot,
    /// Anything else changed: it is read once, at boot.
    Reboot,
}

/// The parts of the document machined applies while the node runs. The rest (network, time,
/// registries, hostname, role, install, kernel, agent, cluster) is read at boot: changing it
/// means a reboot in this version.
pub const LIVE: [&str; 2] = ["machine.sysctls", "machine.files"];

/// Lists the changed leaves from `old` to `new` (`apply-config --dry-run`), in path order. Lists are
/// compared position by position, so inserting an interface shows every later one as changed.
pub fn diff(old: &MachineConfig, new: &MachineConfig) -> Vec<Change> {
    // Serializing these types cannot fail (all map keys are strings); `null` keeps it total.
    let old = serde_json::to_value(old).unwrap_or(Value::Null);
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk("", &old, &new, &mut out);
    out
}

/// `NoReboot` when every change is under one of the live sections, `Reboot` otherwise.
pub fn apply_mode(changes: &[Change]) -> Mode {
    let live = |path: &str| {
        LIVE.iter().any(|section| {
            path.strip_prefix(*section)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    };
    if changes.iter().all(|c| live(&c.path)) {
        Mode::NoReboot
    } else {
        Mode::Reboot
    }
}

static NULL: Value = Value::Null;

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let x = a.get(key.as_str()).unwrap_or(&NULL);
                let y = b.get(key.as_str()).unwrap_or(&NULL);
                walk(&child(path, key), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let x = a.get(i).unwrap_or(&NULL);
                let y = b.get(i).unwrap_or(&NULL);
                walk(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if old != new => out.push(Change {
            path: path.to_owned(),
            old: old.clone(),
            new: new.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(extra: &str) -> MachineConfig {
        let yaml = format!(
            "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n{extra}\
             cluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n"
        );
        match MachineConfig::parse(&yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{yaml}"),
        }
    }

    #[test]
    fn no_changes_means_no_reboot() {
        let a = config("");
        assert!(diff(&a, &a).is_empty());
        assert_eq!(apply_mode(&[]), Mode::NoReboot);
    }

    #[test]
    fn changes_are_listed_by_leaf() {
        let a = config(
            "  hostname: a\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.0.2/24]\n  sysctls:\n    net.ipv4.ip_forward: \"0\"\n",
        );
        let b = config(
            "  hostname: b\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.0.3/24, 10.0.0.4/24]\n  sysctls:\n    net.ipv4.ip_forward: \"1\"\n  time:\n    servers: [ntp.lab]\n",
        );
        let changes = diff(&a, &b);
        let got: Vec<(&str, &Value, &Value)> = changes
            .iter()
            .map(|c| (c.path.as_str(), &c.old, &c.new))
            .collect();
        assert_eq!(
            got,
            [
                ("machine.hostname", &json!("a"), &json!("b")),
                (
                    "machine.network.interfaces[0].addresses[0]",
                    &json!("10.0.0.2/24"),
                    &json!("10.0.0.3/24")
                ),
                (
                    "machine.network.interfaces[0].addresses[1]",
                    &Value::Null,
                    &json!("10.0.0.4/24")
                ),
                (
                    "machine.sysctls[\"net.ipv4.ip_forward\"]",
                    &json!("0"),
                    &json!("1")
                ),
                (
                    "machine.time",
                    &Value::Null,
                    &json!({"servers": ["ntp.lab"]})
                ),
            ]
        );
        assert_eq!(apply_mode(&changes), Mode::Reboot, "hostname and network");
    }

    #[test]
    fn sysctl_and_file_changes_need_no_reboot() {
        let a = config("  sysctls:\n    vm.swappiness: \"1\"\n");
        let b = config(
            "  sysctls:\n    vm.swappiness: \"10\"\n  files:\n    - {path: /etc/strake/extra/x, content: y}\n",
        );
        let changes = diff(&a, &b);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(apply_mode(&changes), Mode::NoReboot);
    }

    #[test]
    fn role_kernel_install_agent_or_cluster_changes_need_a_reboot() {
        let base = config("");
        for extra in [
            "  kernel:\n    args: [quiet]\n",
            "  install:\n    disk: /dev/vda\n",
            "  agent:\n    maxPods: 200\n",
        ] {
            let changes = diff(&base, &config(extra));
            assert!(!changes.is_empty(), "{extra}");
            assert_eq!(apply_mode(&changes), Mode::Reboot, "{extra}");
        }
        let mut worker = base.clone();
        worker.machine.role = crate::Role::Worker;
        worker.cluster.name = "other".into();
        let changes = diff(&base, &worker);
        assert_eq!(changes.len(), 2);
        assert_eq!(apply_mode(&changes), Mode::Reboot);
        // One live change does not make a reboot change live.
        let mixed = [
            Change {
                path: "machine.sysctls".into(),
                old: json!("a"),
                new: json!("b"),
            },
            Change {
                path: "cluster.name".into(),
                old: json!("a"),
                new: json!("b"),
            },
        ];
        assert_eq!(apply_mode(&mixed), Mode::Reboot);
        // A section is matched whole, not by name prefix.
        let lookalike = [Change {
            path: "machine.timeout".into(),
            old: Value::Null,
            new: json!(1),
        }];
        assert_eq!(apply_mode(&lookalike), Mode::Reboot);
    }
}
