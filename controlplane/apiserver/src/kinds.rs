//! The kinds this server stores and what is specific to each: validation, defaults, update
//! rules, graceful deletion, field selectors and table columns. Handlers are generic over `ApiKind`.

use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus, Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::validation::{is_dns1123_label, validate_meta};

/// Which part of an object a write targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// The `binding` subresource: sets `spec.nodeName` once, exempt from spec immutability.
    Binding,
}

/// A column of Table output.
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}

/// A kind served by the API server.
pub trait ApiKind:
    k8s_openapi::Resource
    + k8s_openapi::ListableResource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    const PLURAL: &'static str;
    const SINGULAR: &'static str;
    const SHORT_NAMES: &'static [&'static str];
    const NAMESPACED: bool;
    /// Whether the kind has a status subresource.
    const HAS_STATUS: bool = true;

    /// Validates a new object. Names follow RFC 1123 subdomains unless the kind says labels.
    fn validate(&self) -> Vec<FieldError>;
    /// Validates an update against the stored object.
    fn validate_update(&self, _old: &Self) -> Vec<FieldError> {
        self.validate()
    }
    /// Fills defaults at creation.
    fn default_on_create(&mut self) {}
    /// Carries over what a write to `part` may not change (status on main writes, spec on status writes).
    fn carry_over(&mut self, old: &Self, part: Part);
    /// Grace period for a delete, or `None` to delete at once.
    fn grace_period(&self, _requested: Option<i64>) -> Option<i64> {
        None
    }
    /// Value of a field for field selectors (`metadata.name` and `metadata.namespace` are generic).
    fn field(&self, _path: &str) -> Option<String> {
        None
    }
    fn columns() -> Vec<Column>;
    fn cells(&self) -> Vec<Value>;
}

const NAME_COL: Column = Column { name: "Name", ty: "string", format: "name", description: "Name must be unique within a namespace.", priority: 0 };
const AGE_COL: Column = Column { name: "Age", ty: "string", format: "", description: "Time since the object was created.", priority: 0 };

/// A human duration as kubectl prints it: 42s, 5m10s, 3h, 2d.
pub fn human_age(created: Option<&Time>) -> String {
    let Some(t) = created else { return "<unknown>".into() };
    let secs = Timestamp::now().duration_since(t.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn name_of(m: &ObjectMeta) -> Value {
    json!(m.name.clone().unwrap_or_default())
}

// ---------------------------------------------------------------- Namespace

impl ApiKind for Namespace {
    const PLURAL: &'static str = "namespaces";
    const SINGULAR: &'static str = "namespace";
    const SHORT_NAMES: &'static [&'static str] = &["ns"];
    const NAMESPACED: bool = false;

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, false, true, &mut errs);
        errs
    }
    fn default_on_create(&mut self) {
        self.status = Some(NamespaceStatus { phase: Some("Active".into()), ..Default::default() });
        let name = self.metadata.name.clone().unwrap_or_default();
        self.metadata.labels.get_or_insert_default().insert("kubernetes.io/metadata.name".into(), name);
        self.spec.get_or_insert_default().finalizers = Some(vec!["kubernetes".into()]);
    }
    fn carry_over(&mut self, old: &Self, part: Part) {
        match part {
            Part::Main | Part::Binding => self.status = old.status.clone(),
            Part::Status => self.spec = old.spec.clone(),
        }
    }
    fn grace_period(&self, _requested: Option<i64>) -> Option<i64> {
        Some(0) // namespaces always go through Terminating; the namespace controller finishes them
    }
    fn field(&self, path: &str) -> Option<String> {
        match path {
            "status.phase" => self.status.as_ref().and_then(|s| s.phase.clone()),
            _ => None,
        }
    }
    fn columns() -> Vec<Column> {
        vec![NAME_COL, Column { name: "Status", ty: "string", format: "", description: "The status of the namespace", priority: 0 }, AGE_COL]
    }
    fn cells(&self) -> Vec<Value> {
        let phase = self.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Active".into());
        vec![name_of(&self.metadata), json!(phase), json!(human_age(self.metadata.creation_timestamp.as_ref()))]
    }
}

// ---------------------------------------------------------------- Node

impl ApiKind for Node {
    const PLURAL: &'static str = "nodes";
    const SINGULAR: &'static str = "node";
    const SHORT_NAMES: &'static [&'static str] = &["no"];
    const NAMESPACED: bool = false;

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, false, false, &mut errs);
        errs
    }
    fn carry_over(&mut self, old: &Self, part: Part) {
        match part {
            Part::Main | Part::Binding => self.status = old.status.clone(),
            Part::Status => self.spec = old.spec.clone(),
        }
    }
    fn field(&self, path: &str) -> Option<String> {
        match path {
            "spec.unschedulable" => Some(self.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false).to_string()),
            _ => None,
        }
    }
    fn columns() -> Vec<Column> {
        vec![
            NAME_COL,
            Column { name: "Status", ty: "string", format: "", description: "The status of the node", priority: 0 },
            Column { name: "Roles", ty: "string", format: "", description: "The roles of the node", priority: 0 },
            AGE_COL,
            Column { name: "Version", ty: "string", format: "", description: "Kubelet Version reported by the node.", priority: 0 },
            Column { name: "Internal-IP", ty: "string", format: "", description: "Internal IP of the node.", priority: 1 },
            Column { name: "OS-Image", ty: "string", format: "", description: "OS image reported by the node.", priority: 1 },
            Column { name: "Kernel-Version", ty: "string", format: "", description: "Kernel version reported by the node.", priority: 1 },
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| if c.status == "True" { "Ready" } else { "NotReady" })
            .unwrap_or("Unknown");
        let mut st = ready.to_string();
        if self.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
            st.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<&str> = self
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .collect();
        roles.sort_unstable();
        let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
        let info = status.node_info.clone().unwrap_or_default();
        let ip = status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_of(&self.metadata),
            json!(st),
            json!(roles),
            json!(human_age(self.metadata.creation_timestamp.as_ref())),
            json!(info.kubelet_version),
            json!(ip),
            json!(info.os_image),
            json!(info.kernel_version),
        ]
    }
}

// ---------------------------------------------------------------- Pod

impl ApiKind for Pod {
    const PLURAL: &'static str = "pods";
    const SINGULAR: &'static str = "pod";
    const SHORT_NAMES: &'static [&'static str] = &["po"];
    const NAMESPACED: bool = true;

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, true, false, &mut errs);
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec"));
            return errs;
        };
        if spec.containers.is_empty() {
            errs.push(FieldError::required("spec.containers"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in spec.containers.iter().chain(spec.init_containers.iter().flatten()).enumerate() {
            let path = format!("spec.containers[{i}]");
            if c.name.is_empty() {
                errs.push(FieldError::required(format!("{path}.name")));
            } else if !is_dns1123_label(&c.name) {
                errs.push(FieldError::invalid(format!("{path}.name"), format!("Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'", c.name)));
            } else if !seen.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(format!("{path}.name"), format!("Duplicate value: {:?}", c.name)));
            }
            match c.image.as_deref() {
                None | Some("") => errs.push(FieldError::required(format!("{path}.image"))),
                Some(img) if img.trim() != img || img.contains(char::is_whitespace) => {
                    errs.push(FieldError::invalid(format!("{path}.image"), "must not contain whitespace"))
                }
                _ => {}
            }
            if let Some(p) = c.image_pull_policy.as_deref()
                && !matches!(p, "Always" | "IfNotPresent" | "Never") {
                    errs.push(FieldError::invalid(format!("{path}.imagePullPolicy"), format!("Unsupported value: {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\"")));
                }
        }
        if let Some(p) = spec.restart_policy.as_deref()
            && !matches!(p, "Always" | "OnFailure" | "Never") {
                errs.push(FieldError::invalid("spec.restartPolicy", format!("Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\"")));
            }
        if spec.termination_grace_period_seconds.is_some_and(|g| g < 0) {
            errs.push(FieldError::invalid("spec.terminationGracePeriodSeconds", "must be greater than or equal to 0"));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        // Pod specs are immutable except for container images (and a few fields we do not support yet).
        let strip = |p: &Pod| {
            let mut s = p.spec.clone().unwrap_or_default();
            for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
                c.image = None;
            }
            s.active_deadline_seconds = None;
            s.tolerations = None;
            s.termination_grace_period_seconds = None;
            s
        };
        if strip(self) != strip(old) {
            errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`"));
        }
        errs
    }

    fn default_on_create(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.termination_grace_period_seconds.get_or_insert(30);
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
        spec.service_account_name.get_or_insert_with(|| "default".into());
        spec.enable_service_links.get_or_insert(true);
        spec.security_context.get_or_insert_default();
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let latest = c.image.as_deref().is_some_and(|i| {
                let last = i.rsplit('/').next().unwrap_or(i);
                !last.contains(':') && !i.contains('@') || last.ends_with(":latest")
            });
            c.image_pull_policy.get_or_insert_with(|| if latest { "Always".into() } else { "IfNotPresent".into() });
            c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
            c.termination_message_policy.get_or_insert_with(|| "File".into());
        }
        self.status = Some(PodStatus { phase: Some("Pending".into()), qos_class: Some("BestEffort".into()), ..Default::default() });
    }

    fn carry_over(&mut self, old: &Self, part: Part) {
        match part {
            Part::Main | Part::Binding => self.status = old.status.clone(),
            Part::Status => self.spec = old.spec.clone(),
        }
    }

    fn grace_period(&self, requested: Option<i64>) -> Option<i64> {
        let spec = self.spec.as_ref();
        let scheduled = spec.and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        if !scheduled || matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let grace = requested.or(spec.and_then(|s| s.termination_grace_period_seconds)).unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    fn field(&self, path: &str) -> Option<String> {
        match path {
            "spec.nodeName" => Some(self.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()),
            "spec.schedulerName" => self.spec.as_ref().and_then(|s| s.scheduler_name.clone()),
            "spec.restartPolicy" => self.spec.as_ref().and_then(|s| s.restart_policy.clone()),
            "status.phase" => self.status.as_ref().and_then(|s| s.phase.clone()),
            "status.podIP" => Some(self.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()),
            _ => None,
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            NAME_COL,
            Column { name: "Ready", ty: "string", format: "", description: "The aggregate readiness state of this pod for accepting traffic.", priority: 0 },
            Column { name: "Status", ty: "string", format: "", description: "The aggregate status of the containers in this pod.", priority: 0 },
            Column { name: "Restarts", ty: "string", format: "", description: "The number of times the containers in this pod have been restarted.", priority: 0 },
            AGE_COL,
            Column { name: "IP", ty: "string", format: "", description: "IP address allocated to the pod.", priority: 1 },
            Column { name: "Node", ty: "string", format: "", description: "Name of the node assigned to the pod.", priority: 1 },
        ]
    }

    fn cells(&self) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let total = self.spec.as_ref().map_or(0, |s| s.containers.len());
        let statuses = status.container_statuses.clone().unwrap_or_default();
        let ready = statuses.iter().filter(|c| c.ready).count();
        let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
        vec![
            name_of(&self.metadata),
            json!(format!("{ready}/{total}")),
            json!(pod_display_status(self)),
            json!(restarts.to_string()),
            json!(human_age(self.metadata.creation_timestamp.as_ref())),
            json!(status.pod_ip.unwrap_or_else(|| "<none>".into())),
            json!(self.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "<none>".into())),
        ]
    }
}

/// The STATUS column as kubectl shows it: waiting/terminated reasons win over the phase.
pub fn pod_display_status(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut reason = status.reason.clone().or(status.phase.clone()).unwrap_or_else(|| "Pending".into());
    for c in status.container_statuses.iter().flatten() {
        if let Some(state) = &c.state {
            if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
                reason = w;
            } else if let Some(t) = &state.terminated {
                reason = t.reason.clone().unwrap_or_else(|| match t.signal {
                    Some(s) if s != 0 => format!("Signal:{s}"),
                    _ => format!("ExitCode:{}", t.exit_code),
                });
            }
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".into();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_validation_lists_every_problem() {
        let p = pod(json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}}));
        let errs = p.validate();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"metadata.name"), "{errs:?}");
        assert!(fields.contains(&"spec.containers[0].image"), "{errs:?}");
        assert!(fields.contains(&"spec.containers[1].name"), "{errs:?}");
        let empty = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(empty.validate()[0].field, "spec.containers");
    }

    #[test]
    fn pod_defaults_and_grace() {
        let mut p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}}));
        p.default_on_create();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(p.grace_period(None), None, "unscheduled pods go at once");
        p.spec.as_mut().unwrap().node_name = Some("n".into());
        assert_eq!(p.grace_period(None), Some(30));
        assert_eq!(p.grace_period(Some(0)), None);
        assert_eq!(pod_display_status(&p), "Pending");
    }

    #[test]
    fn pod_spec_is_immutable_but_image() {
        let old = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}));
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("x:2".into());
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().unwrap().containers[0].args = Some(vec!["x".into()]);
        assert_eq!(new.validate_update(&old)[0].field, "spec");
    }
}
