//! strake-machineconfig: the declarative machine configuration (`apiVersion: strake.dev/v1alpha1`,
//! `kind: MachineConfig`): its types, decoding, validation, layering and diffing.
//! It is pure: it reads no files and touches no machine; applying a config is machined's job.
//!
//! Decoding stops at the first syntax, type or unknown-field error (there is no document to check
//! after one). Everything else is a validation rule, and [`MachineConfig::validate`] reports every
//! broken rule at once, each with the path of its field.

mod checks;
mod diff;
mod merge;
mod select;
mod types;
mod validate;

use std::fmt;

use serde_json::Value;

pub use checks::FILE_PREFIXES;
pub use diff::{Change, LIVE, Mode, apply_mode, diff};
pub use merge::merge;
pub use select::{DiskFacts, glob};
pub use types::{
    API_VERSION, Agent, Bond, BondMode, Bridge, Cluster, DEFAULT_MAX_PODS, DEFAULT_POD_SUBNET,
    DEFAULT_SERVICE_SUBNET, DeviceSelector, DiskSelector, Endpoint, File, FileMode, FileOp,
    Install, Interface, KIND, Kernel, KernelModule, Machine, MachineCa, MachineConfig, Mirror,
    Network, Parsed, Registries, RegistryAuth, RegistryConfig, Role, Route, SizeMatcher, SizeOp,
    Time, Vlan,
};

/// One problem, at the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `machine.network.interfaces[1].addresses[0]`. Map keys that are not plain words are quoted
    /// (`machine.sysctls["net.ipv4.ip_forward"]`). Empty when the document did not decode; the
    /// message then carries the line and column where the decoder could tell them.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a document, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.errors))]
pub struct ConfigErrors {
    pub errors: Vec<FieldError>,
}

impl ConfigErrors {
    fn decode(message: String) -> Self {
        Self {
            errors: vec![FieldError {
                path: String::new(),
                message,
            }],
        }
    }
}

fn join_lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config that could not be written out. Not expected for these types; kept typed rather than
/// unwrapped because a panic in machined takes the node's control API with it.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("writing the machine config as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
    #[error("writing the machine config as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl MachineConfig {
    /// Decodes one YAML document and validates it.
    pub fn parse(yaml: &str) -> Result<MachineConfig, ConfigErrors> {
        let config: MachineConfig = serde_saphyr::from_str(yaml).map_err(|e| {
            // The plain rendering ("... at line 3, column 5"), not the multi-line source snippet:
            // each error is one line.
            ConfigErrors::decode(one_line(&e.without_snippet().to_string()))
        })?;
        config.checked()
    }

    /// Decodes a JSON value (one merged layer stack, or an API request) and validates it.
    pub fn from_value(value: Value) -> Result<MachineConfig, ConfigErrors> {
        let config: MachineConfig = serde_json::from_value(value)
            .map_err(|e| ConfigErrors::decode(one_line(&e.to_string())))?;
        config.checked()
    }

    /// Folds configuration layers with [`merge`], in the order given (kernel command line, config
    /// drive, user config, then API patches: later layers win), then decodes and validates the
    /// result. A layer that is `null` erases everything before it, as RFC 7386 says; leave absent
    /// layers out instead.
    pub fn from_layers(layers: &[Value]) -> Result<MachineConfig, ConfigErrors> {
        let folded = layers
            .iter()
            .fold(Value::Null, |acc, layer| merge(&acc, layer));
        Self::from_value(folded)
    }

    /// The config as a JSON value: the form layers and [`diff`] work on.
    pub fn to_value(&self) -> Result<Value, EncodeError> {
        Ok(serde_json::to_value(self)?)
    }

    /// Pretty-printed JSON; [`MachineConfig::from_value`] reads it back unchanged.
    pub fn to_json(&self) -> Result<String, EncodeError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// YAML; [`MachineConfig::parse`] reads it back unchanged. Defaults are written out
    /// (`maxPods`, subnets) so the output shows what is in force.
    pub fn to_yaml(&self) -> Result<String, EncodeError> {
        Ok(serde_saphyr::to_string(self)?)
    }

    fn checked(self) -> Result<MachineConfig, ConfigErrors> {
        let errors = self.validate();
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors { errors })
        }
    }
}

/// Joins a multi-line decoder message, so that [`ConfigErrors`] stays one error per line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The path of `key` under `parent`: `parent.key` for a plain word, `parent["key"]` otherwise, so a
/// dotted map key (`net.ipv4.ip_forward`) cannot be read as nested fields.
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{}]", Value::from(key)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONTROLPLANE: &str = include_str!("../examples/controlplane.yaml");
    const WORKER: &str = include_str!("../examples/worker.yaml");

    fn parse(yaml: &str) -> MachineConfig {
        match MachineConfig::parse(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_controlplane_example_parses_with_every_section() {
        let c = parse(CONTROLPLANE);
        assert_eq!(c.machine.role, Role::Controlplane);
        assert_eq!(c.machine.hostname.as_deref(), Some("cp-1"));
        let eth0 = &c.machine.network.interfaces[0];
        assert_eq!(
            eth0.addresses[0].get(),
            Some(&"192.168.10.11/24".parse().unwrap())
        );
        assert_eq!(eth0.vlans[0].vlan_id, 100);
        let bond = c.machine.network.interfaces[3].bond.as_ref().unwrap();
        assert_eq!(bond.mode, BondMode::Lacp);
        assert_eq!(c.machine.network.nameservers.len(), 2);
        assert_eq!(c.machine.time.timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(c.machine.kernel.modules[0].name, "br_netfilter");
        assert!(c.machine.registries.mirrors.contains_key("docker.io"));
        assert_eq!(c.machine.agent.max_pods, 150);
        assert_eq!(c.machine.agent.system_reserved["cpu"], "500m");
        assert_eq!(c.machine.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(c.machine.files[0].permissions, FileMode(0o644));
        assert!(c.cluster.endpoint.is_none());
        assert_eq!(c.cluster.pod_subnets[0].raw(), "10.244.0.0/16");
    }

    #[test]
    fn the_worker_example_parses_and_gets_defaults() {
        let c = parse(WORKER);
        assert_eq!(c.machine.role, Role::Worker);
        let selector = c
            .machine
            .install
            .as_ref()
            .and_then(|i| i.disk_selector.as_ref())
            .unwrap();
        let size = selector.size.as_ref().and_then(Parsed::get).unwrap();
        assert!(size.matches(200_000_000_000) && !size.matches(50_000_000_000));
        let endpoint = c.cluster.endpoint.as_ref().and_then(Parsed::get).unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("192.168.10.11", 6443)
        );
        assert_eq!(c.machine.agent.max_pods, DEFAULT_MAX_PODS);
        assert_eq!(c.cluster.pod_subnets[0].raw(), DEFAULT_POD_SUBNET);
        assert_eq!(c.cluster.service_subnets[0].raw(), DEFAULT_SERVICE_SUBNET);
    }

    #[test]
    fn yaml_and_json_round_trip() {
        for example in [CONTROLPLANE, WORKER] {
            let c = parse(example);
            let yaml = c.to_yaml().unwrap();
            assert_eq!(parse(&yaml), c, "{yaml}");
            let json: Value = serde_json::from_str(&c.to_json().unwrap()).unwrap();
            assert_eq!(MachineConfig::from_value(json).unwrap(), c);
        }
    }

    #[test]
    fn an_unknown_field_is_one_error_that_names_it() {
        let yaml = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  colour: blue\ncluster: {name: x}\n";
        let err = MachineConfig::parse(yaml).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert!(
            err.errors[0].message.contains("unknown field `colour`"),
            "{err}"
        );
        assert!(err.errors[0].message.contains("line "), "{err}");
        let err = MachineConfig::from_value(json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "machine": {"role": "worker", "network": {"interfaces": [{"interface": "eth0", "dchp": true}]}},
            "cluster": {"name": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `dchp`"), "{err}");
    }

    #[test]
    fn syntax_and_type_errors_are_one_line_with_a_location() {
        for yaml in [
            "machine: [unclosed\n",
            "apiVersion: a\nkind: b\nmachine:\n  role: admin\ncluster: {name: x}\n",
            "",
        ] {
            let err = MachineConfig::parse(yaml).unwrap_err();
            assert_eq!(err.errors.len(), 1, "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        let err = MachineConfig::parse("machine: [unclosed\n").unwrap_err();
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn display_lists_one_error_per_line() {
        let yaml = "apiVersion: v1\nkind: Pod\nmachine: {role: worker}\ncluster:\n  name: x\n  \
                    endpoint: https://a:1\n  token: abcdef.0123456789abcdef\n  caPin: x\n";
        let err = MachineConfig::parse(yaml).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apiVersion: must be `strake.dev/v1alpha1`, not `v1`\n\
             kind: must be `MachineConfig`, not `Pod`\n\
             cluster.caPin: `x` is not `sha256:` followed by 64 hex digits"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("apiVersion:"));
    }

    #[test]
    fn layers_fold_in_order() {
        let cmdline = json!({"machine": {"role": "worker", "hostname": "from-cmdline"}});
        let drive = json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "machine": {"network": {"interfaces": [{"interface": "eth0", "dhcp": true}]}},
            "cluster": {"name": "lab", "endpoint": "https://10.0.0.1:6443", "token": "abcdef.0123456789abcdef"}
        });
        let user = json!({
            "machine": {"sysctls": {"vm.swappiness": 10}, "agent": {"systemReserved": {"cpu": 1}}},
            "cluster": {"caPin": format!("sha256:{}", "a".repeat(64))}
        });
        let api = json!({
            "machine": {"hostname": null, "network": {"interfaces": [{"interface": "eth1", "addresses": ["10.1.0.2/24"]}]}}
        });
        let c = MachineConfig::from_layers(&[cmdline, drive, user, api]).unwrap();
        assert_eq!(c.machine.role, Role::Worker);
        assert!(c.machine.hostname.is_none(), "the API patch deleted it");
        assert_eq!(c.machine.network.interfaces.len(), 1, "arrays replace");
        assert_eq!(
            c.machine.network.interfaces[0].interface.as_deref(),
            Some("eth1")
        );
        assert_eq!(
            c.machine.sysctls["vm.swappiness"], "10",
            "numbers are kept as text"
        );
        assert_eq!(c.machine.agent.system_reserved["cpu"], "1");

        let err =
            MachineConfig::from_layers(&[json!({"machine": {"role": "worker"}})]).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn a_yaml_document_converts_to_a_layer() {
        let layer: Value = serde_saphyr::from_str(WORKER).unwrap();
        let c = MachineConfig::from_layers(&[layer]).unwrap();
        assert_eq!(c, parse(WORKER));
    }

    #[test]
    fn paths_quote_keys_that_are_not_words() {
        assert_eq!(child("", "machine"), "machine");
        assert_eq!(child("a", "maxPods"), "a.maxPods");
        assert_eq!(
            child("a", "net.ipv4.ip_forward"),
            r#"a["net.ipv4.ip_forward"]"#
        );
        assert_eq!(child("a", "say \"hi\""), r#"a["say \"hi\""]"#);
        assert_eq!(child("a", ""), r#"a[""]"#);
    }

    #[test]
    fn odd_input_never_panics() {
        let inputs = [
            "",
            "~",
            "[]",
            "42",
            "---\n---\n",
            "machine:\n  role: worker\n  network:\n    interfaces: 7\n",
            "&a [*a]",
            "machine: &m {role: worker}\ncluster: *m\n",
            "\u{feff}\u{0}",
            "{{{{{{{{{{",
            "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  files:\n    - {path: \"\\u0000\", permissions: 99999999999}\ncluster: {name: \"\"}\n",
        ];
        for input in inputs {
            let _ = MachineConfig::parse(input);
        }
        for value in [
            json!(null),
            json!([]),
            json!({"machine": []}),
            json!({"cluster": {"podSubnets": [1, null]}}),
        ] {
            let _ = MachineConfig::from_layers(&[value.clone(), value]);
        }
    }
}
