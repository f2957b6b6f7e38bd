//! core/v1 kinds: defaults, validation, update rules and Table cells.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerStateTerminated, ContainerStatus, Endpoints, Event, LimitRange, Namespace,
    NamespaceSpec, NamespaceStatus, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec,
    PodStatus, PodTemplate, ReplicationController, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use strake_apimachinery::validation::{is_dns1123_label, is_dns1123_subdomain};
use strake_apimachinery::{Column, FieldError, NameRule, ResourceDef};

use crate::typed::{
    Kind, age_cell, age_column, col, entry, human_age, name_cell, name_column, or_none, wide,
};

pub fn entries() -> Vec<ResourceDef> {
    vec![
        entry::<Namespace>()
            .short(&["ns"])
            .status::<Namespace>()
            .sub("finalize", "Namespace", &["update"])
            .names(NameRule::Label)
            .fields(&["status.phase"])
            .build(),
        entry::<Node>()
            .short(&["no"])
            .status::<Node>()
            .fields(&["spec.unschedulable"])
            .build(),
        entry::<Pod>()
            .short(&["po"])
            .categories(&["all"])
            .status::<Pod>()
            .sub("log", "Pod", &["get"])
            .sub("exec", "PodExecOptions", &["create", "get"])
            .sub("portforward", "PodPortForwardOptions", &["create", "get"])
            .sub("binding", "Binding", &["create"])
            .subresource(strake_apimachinery::Subresource::eviction())
            .sub("ephemeralcontainers", "Pod", &["get", "patch", "update"])
            .fields(&[
                "spec.nodeName",
                "spec.schedulerName",
                "spec.restartPolicy",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ])
            .returns_deleted_object()
            .build(),
        entry::<Service>()
            .short(&["svc"])
            .categories(&["all"])
            .status::<Service>()
            .names(NameRule::Label)
            .returns_deleted_object()
            .build(),
        entry::<Endpoints>().short(&["ep"]).build(),
        entry::<ConfigMap>().short(&["cm"]).build(),
        entry::<Secret>().fields(&["type"]).build(),
        entry::<ServiceAccount>()
            .short(&["sa"])
            .subresource(strake_apimachinery::Subresource::token())
            .build(),
        entry::<Event>()
            .short(&["ev"])
            .fields(&[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ])
            .names(NameRule::PathSegment)
            .build(),
        entry::<ResourceQuota>()
            .short(&["quota"])
            .status::<ResourceQuota>()
            .build(),
        entry::<LimitRange>().short(&["limits"]).build(),
        entry::<PersistentVolume>()
            .short(&["pv"])
            .status::<PersistentVolume>()
            .build(),
        entry::<PersistentVolumeClaim>()
            .short(&["pvc"])
            .status::<PersistentVolumeClaim>()
            .build(),
        entry::<PodTemplate>().build(),
        entry::<ReplicationController>()
            .short(&["rc"])
            .categories(&["all"])
            .status::<ReplicationController>()
            .scale()
            .build(),
    ]
}

fn supported(
    errs: &mut Vec<FieldError>,
    path: impl Into<String>,
    v: Option<&str>,
    allowed: &[&str],
) {
    if let Some(v) = v
        && !allowed.contains(&v)
    {
        errs.push(FieldError::not_supported(path, v, allowed));
    }
}

fn label_name(errs: &mut Vec<FieldError>, path: String, name: &str) {
    if name.is_empty() {
        errs.push(FieldError::required(path));
    } else if !is_dns1123_label(name) {
        errs.push(FieldError::invalid(path, format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")));
    }
}

/// Validates a pod spec (a pod's, or a template's) with `path` as the prefix of every field.
pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers")));
    }
    let mut names = HashSet::new();
    let lists = [
        ("containers", spec.containers.as_slice()),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            if !c.name.is_empty() && is_dns1123_label(&c.name) && !names.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(
                    format!("{p}.name"),
                    format!("Duplicate value: {:?}", c.name),
                ));
            } else {
                label_name(&mut errs, format!("{p}.name"), &c.name);
            }
            match c.image.as_deref() {
                None | Some("") => errs.push(FieldError::required(format!("{p}.image"))),
                Some(img) if img.trim() != img || img.contains(char::is_whitespace) => errs.push(
                    FieldError::invalid(format!("{p}.image"), "must not contain whitespace"),
                ),
                _ => {}
            }
            if list == "initContainers" {
                supported(
                    &mut errs,
                    format!("{p}.restartPolicy"),
                    c.restart_policy.as_deref(),
                    &["Always"],
                );
                if c.restart_policy.as_deref() != Some("Always") {
                    let probes = [
                        ("lifecycle", c.lifecycle.is_some()),
                        ("livenessProbe", c.liveness_probe.is_some()),
                        ("readinessProbe", c.readiness_probe.is_some()),
                        ("startupProbe", c.startup_probe.is_some()),
                    ];
                    for (field, _) in probes.iter().filter(|(_, set)| *set) {
                        errs.push(FieldError::forbidden(
                            format!("{p}.{field}"),
                            "may not be set for init containers without restartPolicy=Always",
                        ));
                    }
                }
            } else if c.restart_policy.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{p}.restartPolicy"),
                    "may not be set for non-init containers",
                ));
            }
            supported(
                &mut errs,
                format!("{p}.imagePullPolicy"),
                c.image_pull_policy.as_deref(),
                &["Always", "IfNotPresent", "Never"],
            );
            supported(
                &mut errs,
                format!("{p}.terminationMessagePolicy"),
                c.termination_message_policy.as_deref(),
                &["File", "FallbackToLogsOnError"],
            );
            let mut ports = HashSet::new();
            for (j, port) in c.ports.iter().flatten().enumerate() {
                let pp = format!("{p}.ports[{j}]");
                if !(1..=65535).contains(&port.container_port) {
                    errs.push(FieldError::invalid(
                        format!("{pp}.containerPort"),
                        format!(
                            "Invalid value: {}: must be between 1 and 65535, inclusive",
                            port.container_port
                        ),
                    ));
                }
                if let Some(h) = port.host_port
                    && !(0..=65535).contains(&h)
                {
                    errs.push(FieldError::invalid(
                        format!("{pp}.hostPort"),
                        format!("Invalid value: {h}: must be between 0 and 65535, inclusive"),
                    ));
                }
                supported(
                    &mut errs,
                    format!("{pp}.protocol"),
                    port.protocol.as_deref(),
                    &["SCTP", "TCP", "UDP"],
                );
                if let Some(n) = port.name.as_deref() {
                    if n.len() > 15
                        || !is_dns1123_label(n)
                        || !n.chars().any(|ch| ch.is_ascii_lowercase())
                    {
                        errs.push(FieldError::invalid(format!("{pp}.name"), format!("Invalid value: {n:?}: must be no more than 15 characters, lowercase alphanumerics or '-', with at least one letter")));
                    } else if !ports.insert(n.to_string()) {
                        errs.push(FieldError::duplicate(
                            format!("{pp}.name"),
                            format!("Duplicate value: {n:?}"),
                        ));
                    }
                }
            }
            for (j, e) in c.env.iter().flatten().enumerate() {
                if e.name.is_empty() {
                    errs.push(FieldError::required(format!("{p}.env[{j}].name")));
                }
                if e.value.is_some() && e.value_from.is_some() {
                    errs.push(FieldError::invalid(
                        format!("{p}.env[{j}].valueFrom"),
                        "may not be specified when `value` is not empty",
                    ));
                }
            }
            let volumes: HashSet<&str> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                if !volumes.contains(m.name.as_str()) {
                    errs.push(FieldError {
                        field: format!("{p}.volumeMounts[{j}].name"),
                        message: format!("Not found: {:?}", m.name),
                        reason: "FieldValueNotFound",
                    });
                }
                if m.mount_path.is_empty() {
                    errs.push(FieldError::required(format!(
                        "{p}.volumeMounts[{j}].mountPath"
                    )));
                }
            }
        }
    }
    let mut vols = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        label_name(&mut errs, format!("{path}.volumes[{i}].name"), &v.name);
        if !vols.insert(v.name.as_str()) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                format!("Duplicate value: {:?}", v.name),
            ));
        }
    }
    supported(
        &mut errs,
        format!("{path}.restartPolicy"),
        spec.restart_policy.as_deref(),
        &["Always", "OnFailure", "Never"],
    );
    supported(
        &mut errs,
        format!("{path}.dnsPolicy"),
        spec.dns_policy.as_deref(),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    );
    if spec.termination_grace_period_seconds.is_some_and(|g| g < 0) {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            "must be greater than or equal to 0",
        ));
    }
    if spec.active_deadline_seconds.is_some_and(|g| g <= 0) {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(h) = spec.hostname.as_deref() {
        label_name(&mut errs, format!("{path}.hostname"), h);
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        supported(
            &mut errs,
            format!("{path}.tolerations[{i}].operator"),
            t.operator.as_deref(),
            &["Equal", "Exists"],
        );
        supported(
            &mut errs,
            format!("{path}.tolerations[{i}].effect"),
            t.effect.as_deref(),
            &["NoExecute", "NoSchedule", "PreferNoSchedule"],
        );
    }
    errs
}

/// Upstream's pod spec defaults.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    spec.security_context.get_or_insert_default();
    spec.priority.get_or_insert(0);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let latest = c.image.as_deref().is_some_and(|i| {
            let last = i.rsplit('/').next().unwrap_or(i);
            !last.contains(':') && !i.contains('@') || last.ends_with(":latest")
        });
        c.image_pull_policy.get_or_insert_with(|| {
            if latest {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

// ---------------------------------------------------------------- Namespace

impl Kind for Namespace {
    fn defaults(&mut self) {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Active".into());
        self.status = Some(NamespaceStatus {
            phase: Some(phase),
            ..self.status.clone().unwrap_or_default()
        });
        let name = self.metadata.name.clone().unwrap_or_default();
        self.metadata
            .labels
            .get_or_insert_default()
            .insert("kubernetes.io/metadata.name".into(), name);
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        if spec.finalizers.is_none() {
            spec.finalizers = Some(vec!["kubernetes".into()]);
        }
    }
    /// A namespace always goes through Terminating: the namespace controller empties it.
    fn grace(&self, _requested: Option<i64>) -> Option<i64> {
        Some(0)
    }
    fn holds_deletion(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| !f.is_empty())
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", "The status of the namespace"),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Active".into());
        vec![
            name_cell(&self.metadata),
            json!(phase),
            age_cell(&self.metadata),
        ]
    }
}

// ---------------------------------------------------------------- Node

impl Kind for Node {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty())
            && let Err(m) = canonical_cidr(cidr)
        {
            errs.push(FieldError::invalid("spec.podCIDR", m));
        }
        let cidrs = spec.pod_cidrs.unwrap_or_default();
        let mut families = Vec::new();
        for (i, cidr) in cidrs.iter().enumerate() {
            match canonical_cidr(cidr) {
                Err(m) => errs.push(FieldError::invalid(format!("spec.podCIDRs[{i}]"), m)),
                Ok(net) => {
                    let v4 = matches!(net, ipnet::IpNet::V4(_));
                    if families.contains(&v4) {
                        errs.push(FieldError::invalid(
                            format!("spec.podCIDRs[{i}]"),
                            "may specify no more than one CIDR for each IP family",
                        ));
                    }
                    families.push(v4);
                }
            }
        }
        if let (Some(first), Some(single)) = (cidrs.first(), spec.pod_cidr.as_deref())
            && !single.is_empty()
            && first != single
        {
            errs.push(FieldError::invalid(
                "spec.podCIDRs[0]",
                format!("{first:?}: must match the value of spec.podCIDR ({single:?})"),
            ));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let cidrs = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidrs.clone());
        // As upstream: the pod CIDRs may be set once, never changed.
        if let Some(old_cidrs) = cidrs(old).filter(|c| !c.is_empty())
            && cidrs(self) != Some(old_cidrs)
        {
            errs.push(FieldError::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        errs
    }

    fn prepare_update(&mut self, old: &Self) {
        // A writer that sends the node without its pod CIDRs (the agent's own updates) keeps
        // the allocated ones.
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) {
            if new.pod_cidr.as_deref().is_none_or(str::is_empty) {
                new.pod_cidr = old.pod_cidr.clone();
            }
            if new.pod_cidrs.as_ref().is_none_or(Vec::is_empty) {
                new.pod_cidrs = old.pod_cidrs.clone();
            }
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", "The status of the node"),
            col("Roles", "The roles of the node"),
            age_column(),
            col("Version", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of internal IPs in the node."),
            wide("External-IP", "List of external IPs in the node."),
            wide("OS-Image", "OS image reported by the node."),
            wide("Kernel-Version", "Kernel version reported by the node."),
            wide(
                "Container-Runtime",
                "Container runtime reported by the node.",
            ),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| {
                if c.status == "True" {
                    "Ready"
                } else {
                    "NotReady"
                }
            })
            .unwrap_or("Unknown");
        let mut st = ready.to_string();
        if self
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
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
        let info = status.node_info.clone().unwrap_or_default();
        let addr = |t: &str| {
            status
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == t)
                .map(|a| a.address.clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            name_cell(&self.metadata),
            json!(st),
            or_none(roles.join(",")),
            age_cell(&self.metadata),
            json!(info.kubelet_version),
            or_none(addr("InternalIP")),
            or_none(addr("ExternalIP")),
            json!(info.os_image),
            json!(info.kernel_version),
            json!(info.container_runtime_version),
        ]
    }
}

// ---------------------------------------------------------------- Pod

impl Kind for Pod {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        default_pod_spec(spec);
        spec.service_account_name
            .get_or_insert_with(|| "default".into());
        if self.status.is_none() {
            self.status = Some(PodStatus {
                phase: Some("Pending".into()),
                qos_class: Some(qos_class(spec).into()),
                ..Default::default()
            });
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        match &self.spec {
            Some(spec) => validate_pod_spec(spec, "spec"),
            None => vec![FieldError::required("spec")],
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        // Pod specs are immutable except for images, the deadline, tolerations and grace.
        let strip = |p: &Pod| {
            let mut s = p.spec.clone().unwrap_or_default();
            for c in s
                .containers
                .iter_mut()
                .chain(s.init_containers.iter_mut().flatten())
            {
                c.image = None;
            }
            s.active_deadline_seconds = None;
            s.tolerations = None;
            s.termination_grace_period_seconds = None;
            s.ephemeral_containers = None;
            s
        };
        if strip(self) != strip(old) {
            errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
        errs
    }

    fn grace(&self, requested: Option<i64>) -> Option<i64> {
        let spec = self.spec.as_ref();
        let scheduled = spec
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        if !scheduled || matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let grace = requested
            .or(spec.and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            Column::new(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                0,
            ),
            age_column(),
            wide("IP", "The IP address assigned to the pod"),
            wide("Node", "The name of the node where the pod is running"),
            wide(
                "Nominated Node",
                "The name of the node where the pod may be scheduled to, once preemption is done",
            ),
            wide("Readiness Gates", "The readiness gates of the pod"),
        ]
    }

    fn cells(&self) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let row = pod_summary(self);
        vec![
            name_cell(&self.metadata),
            json!(format!("{}/{}", row.ready, row.total)),
            json!(row.status),
            json!(row.restarts),
            age_cell(&self.metadata),
            or_none(status.pod_ip.unwrap_or_default()),
            or_none(
                self.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            ),
            or_none(status.nominated_node_name.unwrap_or_default()),
            or_none(""),
        ]
    }
}

/// The QoS class of a pod spec: Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let r = c.resources.clone().unwrap_or_default();
        let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        any |= !req.is_empty() || !lim.is_empty();
        for res in ["cpu", "memory"] {
            let l = lim.get(res);
            let q = req.get(res).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A pod's Ready, Status and Restarts cells, as kubectl's pod printer computes them.
#[derive(Debug, PartialEq)]
pub struct PodSummary {
    pub ready: usize,
    pub total: usize,
    pub status: String,
    pub restarts: String,
}

fn is_sidecar(spec: Option<&PodSpec>, name: &str) -> bool {
    spec.and_then(|s| s.init_containers.as_ref())
        .and_then(|v| v.iter().find(|c| c.name == name))
        .is_some_and(|c| c.restart_policy.as_deref() == Some("Always"))
}

/// The reason a terminated container shows: its reason, else its signal or exit code.
fn terminated_reason(t: &ContainerStateTerminated) -> String {
    match (&t.reason, t.signal) {
        (Some(r), _) if !r.is_empty() => r.clone(),
        (_, Some(s)) if s != 0 => format!("Signal:{s}"),
        _ => format!("ExitCode:{}", t.exit_code),
    }
}

/// Upstream's rules: the phase (or status reason) unless an init container is pending or
/// failed (`Init:1/2`, `Init:CrashLoopBackOff`), then the first container with a waiting or
/// terminated reason; `Terminating` for a pod being deleted that has not ended. Sidecars
/// (restartable init containers) count as containers once started.
pub fn pod_summary(pod: &Pod) -> PodSummary {
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let inits = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let mut total = spec.map_or(0, |s| s.containers.len())
        + inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .count();
    let mut reason = status
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .or(status.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".into();
    }
    let finished = |s: &ContainerStatus| {
        s.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .and_then(|t| t.finished_at.clone())
            .map(|t| t.0)
    };
    let (mut restarts, mut last) = (0i32, None::<jiff::Timestamp>);
    let (mut sidecar_restarts, mut sidecar_last) = (0i32, None::<jiff::Timestamp>);
    let mut ready = 0;
    let mut initializing = false;
    let init_statuses = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += c.restart_count;
        last = last.max(finished(c));
        let sidecar = is_sidecar(spec, &c.name);
        if sidecar {
            sidecar_restarts += c.restart_count;
            sidecar_last = sidecar_last.max(finished(c));
        }
        let state = c.state.clone().unwrap_or_default();
        if state.terminated.as_ref().is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if sidecar && c.started == Some(true) {
            ready += usize::from(c.ready);
            continue;
        }
        initializing = true;
        reason = match (&state.terminated, &state.waiting) {
            (Some(t), _) => format!("Init:{}", terminated_reason(t)),
            (None, Some(w))
                if w.reason
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && r != "PodInitializing") =>
            {
                format!("Init:{}", w.reason.clone().unwrap_or_default())
            }
            _ => format!("Init:{i}/{}", inits.len()),
        };
        break;
    }
    let initialized = conditions
        .iter()
        .any(|c| c.type_ == "Initialized" && c.status == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last = sidecar_last;
        let mut running = false;
        for c in status.container_statuses.iter().flatten().rev() {
            restarts += c.restart_count;
            last = last.max(finished(c));
            let state = c.state.clone().unwrap_or_default();
            let waiting = state.waiting.as_ref().and_then(|w| w.reason.clone());
            if let Some(w) = waiting.filter(|w| !w.is_empty()) {
                reason = w;
            } else if let Some(t) = &state.terminated {
                reason = terminated_reason(t);
            } else if c.ready && state.running.is_some() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    let phase = status.phase.as_deref().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    total = total.max(ready);
    let restarts = match last {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            crate::typed::human_duration(jiff::Timestamp::now().duration_since(t).as_secs().max(0))
        ),
        _ => restarts.to_string(),
    };
    PodSummary {
        ready,
        total,
        status: reason,
        restarts,
    }
}

// ---------------------------------------------------------------- Service

impl Kind for Service {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        if spec.type_.is_none() {
            spec.type_ = Some(if spec.external_name.is_some() {
                "ExternalName".into()
            } else {
                "ClusterIP".into()
            });
        }
        spec.session_affinity.get_or_insert_with(|| "None".into());
        let ext = spec.type_.as_deref() == Some("ExternalName");
        if !ext {
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        }
        if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
        self.status
            .get_or_insert_default()
            .load_balancer
            .get_or_insert_default();
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldError::required("spec")];
        };
        if let Some(n) = self.metadata.name.as_deref()
            && !n.starts_with(|c: char| c.is_ascii_lowercase())
        {
            errs.push(FieldError::invalid("metadata.name", format!("Invalid value: {n:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character")));
        }
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        supported(
            &mut errs,
            "spec.type",
            Some(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        );
        supported(
            &mut errs,
            "spec.sessionAffinity",
            spec.session_affinity.as_deref(),
            &["ClientIP", "None"],
        );
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ty == "ExternalName" {
            match spec.external_name.as_deref() {
                None | Some("") => errs.push(FieldError::required("spec.externalName")),
                Some(n) if !is_dns1123_subdomain(n.trim_end_matches('.')) => {
                    errs.push(FieldError::invalid(
                        "spec.externalName",
                        format!("Invalid value: {n:?}: must be a DNS name"),
                    ))
                }
                _ => {}
            }
        } else if ports.is_empty() && !headless {
            errs.push(FieldError::required("spec.ports"));
        }
        let mut names = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if !(1..=65535).contains(&p.port) {
                errs.push(FieldError::invalid(
                    format!("{path}.port"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        p.port
                    ),
                ));
            }
            supported(
                &mut errs,
                format!("{path}.protocol"),
                p.protocol.as_deref(),
                &["SCTP", "TCP", "UDP"],
            );
            match p.name.as_deref() {
                None | Some("") if ports.len() > 1 => {
                    errs.push(FieldError::required(format!("{path}.name")))
                }
                Some(n) if !n.is_empty() && !names.insert(n.to_string()) => {
                    errs.push(FieldError::duplicate(
                        format!("{path}.name"),
                        format!("Duplicate value: {n:?}"),
                    ))
                }
                _ => {}
            }
            if let Some(IntOrString::Int(t)) = &p.target_port
                && !(1..=65535).contains(t)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    format!("Invalid value: {t}: must be between 1 and 65535, inclusive"),
                ));
            }
            if let Some(np) = p.node_port {
                if !matches!(ty, "NodePort" | "LoadBalancer") && np != 0 {
                    errs.push(FieldError::forbidden(
                        format!("{path}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                } else if !(30000..=32767).contains(&np) && np != 0 {
                    errs.push(FieldError::invalid(format!("{path}.nodePort"), format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767")));
                }
            }
        }
        if let Some(ip) = spec.cluster_ip.as_deref()
            && !ip.is_empty()
            && ip != "None"
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            errs.push(FieldError::invalid(
                "spec.clusterIP",
                format!("Invalid value: {ip:?}: must be empty, 'None', or a valid IP address"),
            ));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let ip = |s: &Service| {
            s.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|i| !i.is_empty())
        };
        if let (Some(old_ip), new_ip) = (ip(old), ip(self))
            && new_ip.as_ref() != Some(&old_ip)
            && self.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ExternalName")
        {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                "Invalid value: field is immutable",
            ));
        }
        errs
    }

    fn prepare_update(&mut self, old: &Self) {
        // A client that drops the allocated IPs keeps them (as kubectl apply does).
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref())
            && new.cluster_ip.as_deref().is_none_or(str::is_empty)
        {
            new.cluster_ip = old.cluster_ip.clone();
            new.cluster_ips = old.cluster_ips.clone();
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Type", "The type of the service"),
            col("Cluster-IP", "The cluster IP of the service"),
            col("External-IP", "The external IP of the service"),
            col("Port(s)", "The ports of the service"),
            age_column(),
            wide("Selector", "The label selector of the service"),
        ]
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(np) if np != 0 => format!("{}:{np}/{proto}", p.port),
                    _ => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        let ingress: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip.or(i.hostname))
            .chain(spec.external_ips.clone().unwrap_or_default())
            .collect();
        let external = match ty.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" if ingress.is_empty() => "<pending>".into(),
            _ => ingress.join(","),
        };
        let mut sel: Vec<String> = spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        sel.sort();
        vec![
            name_cell(&self.metadata),
            json!(ty),
            or_none(spec.cluster_ip.unwrap_or_default()),
            or_none(external),
            or_none(ports.join(",")),
            age_cell(&self.metadata),
            or_none(sel.join(",")),
        ]
    }
}

impl Kind for Endpoints {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Endpoints", "Endpoints is a list of addresses"),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let mut eps = Vec::new();
        for s in self.subsets.iter().flatten() {
            for a in s.addresses.iter().flatten() {
                for p in s.ports.iter().flatten() {
                    eps.push(format!("{}:{}", a.ip, p.port));
                }
                if s.ports.as_ref().is_none_or(Vec::is_empty) {
                    eps.push(a.ip.clone());
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            name_cell(&self.metadata),
            or_none(shown),
            age_cell(&self.metadata),
        ]
    }
}

fn valid_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn data_keys<'a>(
    errs: &mut Vec<FieldError>,
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    seen: &mut HashSet<String>,
) {
    for k in keys {
        if !valid_data_key(k) {
            errs.push(FieldError::invalid(format!("{field}[{k}]"), format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
        } else if !seen.insert(k.clone()) {
            errs.push(FieldError::invalid(
                format!("{field}[{k}]"),
                format!("Invalid value: {k:?}: duplicate of key present in another data field"),
            ));
        }
    }
}

impl Kind for ConfigMap {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut seen = HashSet::new();
        data_keys(
            &mut errs,
            "data",
            self.data.iter().flatten().map(|(k, _)| k),
            &mut seen,
        );
        data_keys(
            &mut errs,
            "binaryData",
            self.binary_data.iter().flatten().map(|(k, _)| k),
            &mut seen,
        );
        let size: usize = self
            .data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self
                .binary_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.0.len())
                .sum::<usize>();
        if size > 1024 * 1024 {
            errs.push(FieldError::invalid(
                "data",
                format!("Too long: must have at most 1048576 bytes, not {size}"),
            ));
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if old.immutable == Some(true) {
            if self.data != old.data || self.binary_data != old.binary_data {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
            if self.immutable != Some(true) {
                errs.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            Column::new("Data", "integer", "Number of keys in the config map", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len())
            + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![
            name_cell(&self.metadata),
            json!(n),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for Secret {
    fn defaults(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is write-only: it is merged into data, its keys winning.
        if let Some(sd) = self.string_data.take() {
            let data = self.data.get_or_insert_default();
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut seen = HashSet::new();
        data_keys(
            &mut errs,
            "data",
            self.data.iter().flatten().map(|(k, _)| k),
            &mut seen,
        );
        let size: usize = self
            .data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.0.len())
            .sum();
        if size > 1024 * 1024 {
            errs.push(FieldError::invalid(
                "data",
                format!("Too long: must have at most 1048576 bytes, not {size}"),
            ));
        }
        let has = |k: &str| self.data.as_ref().is_some_and(|d| d.contains_key(k));
        match self.type_.as_deref() {
            Some("kubernetes.io/tls") => {
                for k in ["tls.crt", "tls.key"] {
                    if !has(k) {
                        errs.push(FieldError::required(format!("data[{k}]")));
                    }
                }
            }
            Some("kubernetes.io/dockerconfigjson") if !has(".dockerconfigjson") => {
                errs.push(FieldError::required("data[.dockerconfigjson]"))
            }
            Some("kubernetes.io/basic-auth") if !has("username") && !has("password") => {
                errs.push(FieldError::required("data[username]"))
            }
            Some("kubernetes.io/ssh-auth") if !has("ssh-privatekey") => {
                errs.push(FieldError::required("data[ssh-privatekey]"))
            }
            Some("kubernetes.io/service-account-token") => {
                let ann = self
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/service-account.name"));
                if ann.is_none_or(String::is_empty) {
                    errs.push(FieldError::required(
                        "metadata.annotations[kubernetes.io/service-account.name]",
                    ));
                }
            }
            _ => {}
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.type_ != old.type_ {
            errs.push(FieldError::invalid(
                "type",
                "Invalid value: field is immutable",
            ));
        }
        if old.immutable == Some(true) && (self.data != old.data || self.immutable != Some(true)) {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Type", "The type of the secret"),
            Column::new("Data", "integer", "The number of keys in the secret", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.data.as_ref().map_or(0, |d| d.len())),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for ServiceAccount {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            Column::new("Secrets", "integer", "The number of secrets", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(self.secrets.as_ref().map_or(0, |s| s.len())),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for Event {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.involved_object.kind.is_none() && self.involved_object.name.is_none() {
            errs.push(FieldError::required("involvedObject"));
        }
        supported(
            &mut errs,
            "type",
            self.type_.as_deref(),
            &["Normal", "Warning"],
        );
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            col("Last Seen", "Time since the event was last seen"),
            col("Type", "The type of the event"),
            col("Reason", "Why the event happened"),
            col("Object", "The object this event is about"),
            col("Message", "A human-readable description"),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let last = self
            .last_timestamp
            .as_ref()
            .or(self.first_timestamp.as_ref())
            .or(self.metadata.creation_timestamp.as_ref());
        let obj = format!(
            "{}/{}",
            self.involved_object
                .kind
                .clone()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            self.involved_object.name.clone().unwrap_or_default()
        );
        vec![
            json!(human_age(last)),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.reason.clone().unwrap_or_default()),
            json!(obj),
            json!(self.message.clone().unwrap_or_default()),
        ]
    }
}

impl Kind for ResourceQuota {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        let mut scopes: Vec<(String, String)> = spec
            .scopes
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| (format!("spec.scopes[{i}]"), s.clone()))
            .collect();
        for (i, r) in spec
            .scope_selector
            .iter()
            .flat_map(|s| s.match_expressions.iter().flatten())
            .enumerate()
        {
            let path = format!("spec.scopeSelector.matchExpressions[{i}]");
            scopes.push((format!("{path}.scopeName"), r.scope_name.clone()));
            let values = r.values.as_ref().is_some_and(|v| !v.is_empty());
            match r.operator.as_str() {
                "In" | "NotIn" if r.scope_name != "PriorityClass" => errs.push(
                    FieldError::invalid(
                        format!("{path}.operator"),
                        format!(
                            "Invalid value: {:?}: must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                            r.operator
                        ),
                    ),
                ),
                "In" | "NotIn" if !values => errs.push(FieldError::required(format!(
                    "{path}.values"
                ))
                .with_message("must be at least one value when `operator` is 'In' or 'NotIn' for scope selector")),
                "Exists" | "DoesNotExist" if values => errs.push(FieldError::invalid(
                    format!("{path}.values"),
                    "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => errs.push(FieldError::not_supported(
                    format!("{path}.operator"),
                    other,
                    &["DoesNotExist", "Exists", "In", "NotIn"],
                )),
            }
        }
        for (path, scope) in &scopes {
            if !strake_quota::SCOPES.contains(&scope.as_str()) {
                errs.push(FieldError::not_supported(
                    path.clone(),
                    scope,
                    strake_quota::SCOPES,
                ));
            }
        }
        let has = |s: &str| scopes.iter().any(|(_, x)| x == s);
        for (a, b) in [
            ("Terminating", "NotTerminating"),
            ("BestEffort", "NotBestEffort"),
        ] {
            if has(a) && has(b) {
                errs.push(FieldError::invalid(
                    "spec.scopes",
                    format!("Invalid value: [{a:?}, {b:?}]: conflicting scopes"),
                ));
            }
        }
        for (name, q) in spec.hard.iter().flatten() {
            let path = format!("spec.hard[{name}]");
            let negative = q.0.trim_start().starts_with('-');
            match strake_quota::parse(q) {
                _ if negative => errs.push(FieldError::invalid(
                    path.clone(),
                    format!("Invalid value: {:?}: must be greater than or equal to 0", q.0),
                )),
                None => errs.push(FieldError::invalid(
                    path.clone(),
                    format!("Invalid value: {:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'", q.0),
                )),
                Some(_) => {}
            }
            let pods_only = has("BestEffort") && name != "pods" && name != "count/pods";
            if !scopes.is_empty() && (pods_only || !strake_quota::is_pod_resource(name)) {
                errs.push(FieldError::invalid(
                    path,
                    format!("Invalid value: {name:?}: unsupported scope applied to resource"),
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            age_column(),
            col("Request", "Requested resources"),
            col("Limit", "Resource limits"),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let hard = status
            .hard
            .clone()
            .or_else(|| self.spec.as_ref().and_then(|s| s.hard.clone()))
            .unwrap_or_default();
        let used = status.used.unwrap_or_default();
        let fmt = |limits: bool| {
            hard.iter()
                .filter(|(k, _)| k.starts_with("limits.") == limits)
                .map(|(k, v)| {
                    format!(
                        "{k}: {}/{}",
                        used.get(k).map_or("0".to_string(), |u| u.0.clone()),
                        v.0
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            name_cell(&self.metadata),
            age_cell(&self.metadata),
            json!(fmt(false)),
            json!(fmt(true)),
        ]
    }
}

impl Kind for LimitRange {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, l) in self.spec.iter().flat_map(|s| s.limits.iter()).enumerate() {
            supported(
                &mut errs,
                format!("spec.limits[{i}].type"),
                Some(l.type_.as_str()),
                &["Container", "Pod", "PersistentVolumeClaim"],
            );
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            Column::new("Created At", "date", "When the limit range was created", 0),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(
                self.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
        ]
    }
}

fn modes(m: &Option<Vec<String>>) -> String {
    m.iter()
        .flatten()
        .map(|a| match a.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Kind for PersistentVolume {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.persistent_volume_reclaim_policy
            .get_or_insert_with(|| "Retain".into());
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        self.status
            .get_or_insert_default()
            .phase
            .get_or_insert_with(|| "Pending".into());
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required("spec.accessModes"));
        }
        if spec
            .capacity
            .as_ref()
            .is_none_or(|c| !c.contains_key("storage"))
        {
            errs.push(FieldError::required("spec.capacity"));
        }
        supported(
            &mut errs,
            "spec.persistentVolumeReclaimPolicy",
            spec.persistent_volume_reclaim_policy.as_deref(),
            &["Delete", "Recycle", "Retain"],
        );
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Capacity", ""),
            col("Access Modes", ""),
            col("Reclaim Policy", ""),
            col("Status", ""),
            col("Claim", ""),
            col("StorageClass", ""),
            col("VolumeAttributesClass", ""),
            col("Reason", ""),
            age_column(),
            wide("VolumeMode", ""),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let claim = spec
            .claim_ref
            .as_ref()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.namespace.clone().unwrap_or_default(),
                    c.name.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            json!(
                spec.capacity
                    .as_ref()
                    .and_then(|c| c.get("storage"))
                    .map(|q| q.0.clone())
                    .unwrap_or_default()
            ),
            json!(modes(&spec.access_modes)),
            json!(
                spec.persistent_volume_reclaim_policy
                    .clone()
                    .unwrap_or_default()
            ),
            json!(status.phase.unwrap_or_default()),
            json!(claim),
            json!(spec.storage_class_name.clone().unwrap_or_default()),
            or_none(
                spec.volume_attributes_class_name
                    .clone()
                    .unwrap_or_default(),
            ),
            json!(status.reason.unwrap_or_default()),
            age_cell(&self.metadata),
            json!(spec.volume_mode.unwrap_or_default()),
        ]
    }
}

impl Kind for PersistentVolumeClaim {
    fn defaults(&mut self) {
        self.spec
            .get_or_insert_default()
            .volume_mode
            .get_or_insert_with(|| "Filesystem".into());
        self.status
            .get_or_insert_default()
            .phase
            .get_or_insert_with(|| "Pending".into());
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required("spec.accessModes"));
        }
        if spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_none_or(|r| !r.contains_key("storage"))
        {
            errs.push(FieldError::required("spec.resources[storage]"));
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let strip = |p: &PersistentVolumeClaim| {
            let mut s = p.spec.clone().unwrap_or_default();
            s.resources = None;
            s.volume_name = None;
            s.volume_attributes_class_name = None;
            s
        };
        // A claim without a class may be given one (the default class, retroactively).
        let mut old = old.clone();
        if let (Some(o), Some(n)) = (old.spec.as_mut(), self.spec.as_ref())
            && o.storage_class_name.is_none()
            && o.volume_name.as_deref().is_none_or(str::is_empty)
        {
            o.storage_class_name = n.storage_class_name.clone();
        }
        let old = &old;
        if strip(self) != strip(old) {
            errs.push(FieldError::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", ""),
            col("Volume", ""),
            col("Capacity", ""),
            col("Access Modes", ""),
            col("StorageClass", ""),
            col("VolumeAttributesClass", ""),
            age_column(),
            wide("VolumeMode", ""),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            json!(status.phase.unwrap_or_default()),
            json!(spec.volume_name.clone().unwrap_or_default()),
            json!(
                status
                    .capacity
                    .as_ref()
                    .and_then(|c| c.get("storage"))
                    .map(|q| q.0.clone())
                    .unwrap_or_default()
            ),
            json!(modes(&status.access_modes)),
            json!(spec.storage_class_name.clone().unwrap_or_default()),
            or_none(
                spec.volume_attributes_class_name
                    .clone()
                    .unwrap_or_default(),
            ),
            age_cell(&self.metadata),
            json!(spec.volume_mode.unwrap_or_default()),
        ]
    }
}

impl Kind for PodTemplate {
    fn defaults(&mut self) {
        if let Some(spec) = self.template.as_mut().and_then(|t| t.spec.as_mut()) {
            default_pod_spec(spec);
        }
    }
    fn validate(&self) -> Vec<FieldError> {
        match self.template.as_ref().and_then(|t| t.spec.as_ref()) {
            Some(spec) => validate_pod_spec(spec, "template.spec"),
            None => vec![FieldError::required("template.spec")],
        }
    }
}

impl Kind for ReplicationController {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.replicas.get_or_insert(1);
        // An RC without a selector selects its template's labels.
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            spec.selector = spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone());
        }
        if let Some(ps) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
            default_pod_spec(ps);
        }
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        if spec.replicas.is_some_and(|r| r < 0) {
            errs.push(FieldError::invalid(
                "spec.replicas",
                "must be greater than or equal to 0",
            ));
        }
        let sel = spec.selector.clone().unwrap_or_default();
        if sel.is_empty() {
            errs.push(FieldError::required("spec.selector"));
        }
        match spec.template.as_ref() {
            Some(t) => {
                let labels = t
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        "Invalid value: `selector` does not match template `labels`",
                    ));
                }
                if let Some(ps) = &t.spec {
                    errs.extend(validate_pod_spec(ps, "spec.template.spec"));
                    if ps.restart_policy.as_deref().is_some_and(|r| r != "Always") {
                        errs.push(FieldError::not_supported(
                            "spec.template.spec.restartPolicy",
                            ps.restart_policy.as_deref().unwrap_or_default(),
                            &["Always"],
                        ));
                    }
                }
            }
            None => errs.push(FieldError::required("spec.template")),
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            Column::new("Desired", "integer", "", 0),
            Column::new("Current", "integer", "", 0),
            Column::new("Ready", "integer", "", 0),
            age_column(),
            wide("Containers", ""),
            wide("Images", ""),
            wide("Selector", ""),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let containers = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let mut sel: Vec<String> = spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        sel.sort();
        vec![
            name_cell(&self.metadata),
            json!(spec.replicas.unwrap_or(1)),
            json!(status.replicas),
            json!(status.ready_replicas.unwrap_or(0)),
            age_cell(&self.metadata),
            json!(
                containers
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            json!(
                containers
                    .iter()
                    .map(|c| c.image.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            or_none(sel.join(",")),
        ]
    }
}

/// A CIDR in canonical form (no host bits), as upstream's validation wants it.
fn canonical_cidr(cidr: &str) -> Result<ipnet::IpNet, String> {
    let net: ipnet::IpNet = cidr.parse().map_err(|_| {
        format!("{cidr:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{cidr:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64) in canonical form (did you mean {:?}?)",
            net.trunc().to_string()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_validation_lists_every_problem() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}}),
        );
        let errs = p.validate();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[0].image"), "{errs:?}");
        assert!(fields.contains(&"spec.containers[1].name"), "{errs:?}");
        let empty = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(empty.validate()[0].field, "spec.containers");
        let init = pod(json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [
                {"name": "i", "image": "x", "readinessProbe": {"exec": {"command": ["true"]}}},
                {"name": "s", "image": "x", "restartPolicy": "Always", "readinessProbe": {"exec": {"command": ["true"]}}},
                {"name": "n", "image": "x", "restartPolicy": "Never"}],
            "containers": [{"name": "a", "image": "x", "restartPolicy": "Always"}]}}));
        let errs = init.validate();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].restartPolicy",
                "spec.initContainers[0].readinessProbe",
                "spec.initContainers[2].restartPolicy"
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn node_pod_cidrs_are_canonical_and_set_once() {
        let node = |spec: Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": spec})).unwrap()
        };
        let fields = |errs: Vec<FieldError>| -> Vec<String> {
            errs.into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        let good = node(json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}));
        assert!(good.validate().is_empty());
        let bad = node(json!({"podCIDR": "10.244.1.7/24", "podCIDRs": ["nope", "10.1.0.0/16"]}));
        let errs = bad.validate();
        assert!(
            errs[0].message.contains("did you mean \"10.244.1.0/24\""),
            "{errs:?}"
        );
        assert_eq!(
            fields(errs),
            ["spec.podCIDR", "spec.podCIDRs[0]", "spec.podCIDRs[0]"]
        );
        let twice = node(json!({"podCIDRs": ["10.1.0.0/16", "10.2.0.0/16"]}));
        assert_eq!(fields(twice.validate()), ["spec.podCIDRs[1]"]);

        let empty = node(json!({}));
        assert!(
            good.validate_update(&empty).is_empty(),
            "set once from empty"
        );
        let other = node(json!({"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}));
        assert_eq!(fields(other.validate_update(&good)), ["spec.podCIDRs"]);
        // The agent's update without the CIDRs keeps them.
        let mut agent = node(json!({"unschedulable": true}));
        agent.prepare_update(&good);
        assert!(agent.validate_update(&good).is_empty());
        assert_eq!(
            agent.spec.unwrap().pod_cidr.as_deref(),
            Some("10.244.1.0/24")
        );
    }

    #[test]
    fn pod_defaults_and_grace() {
        let mut p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}}),
        );
        p.defaults();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(p.grace(None), None, "unscheduled pods go at once");
        p.spec.as_mut().unwrap().node_name = Some("n".into());
        assert_eq!(p.grace(None), Some(30));
        assert_eq!(p.grace(Some(0)), None);
        assert_eq!(pod_summary(&p).status, "Pending");
        assert_eq!(
            p.status.as_ref().unwrap().qos_class.as_deref(),
            Some("BestEffort")
        );
    }

    #[test]
    fn pod_summary_follows_kubectls_printer() {
        let base = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i1", "image": "x"}, {"name": "side", "image": "x", "restartPolicy": "Always"}],
            "containers": [{"name": "a", "image": "x"}]}});
        let with = |status: Value| {
            let mut v = base.clone();
            v["status"] = status;
            pod(v)
        };
        let waiting = |r: &str| json!({"waiting": {"reason": r}});
        let p = with(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i1", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}},
            {"name": "side", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": waiting("PodInitializing")}],
            "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": waiting("PodInitializing")}]}));
        let s = pod_summary(&p);
        assert_eq!((s.ready, s.total, s.status.as_str()), (0, 2, "Init:0/2"));
        let p = with(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i1", "image": "x", "imageID": "", "ready": false, "restartCount": 3, "state": waiting("CrashLoopBackOff"),
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:00Z"}}}]}));
        let s = pod_summary(&p);
        assert_eq!(s.status, "Init:CrashLoopBackOff");
        assert!(s.restarts.starts_with("3 ("), "{}", s.restarts);
        let p = with(json!({"phase": "Failed", "initContainerStatuses": [
            {"name": "i1", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}));
        assert_eq!(pod_summary(&p).status, "Init:Error");
        let p = with(
            json!({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
            "initContainerStatuses": [
            {"name": "i1", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "side", "image": "x", "imageID": "", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}}],
            "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        let s = pod_summary(&p);
        assert_eq!((s.ready, s.total, s.status.as_str()), (2, 2, "Running"));
        assert_eq!(s.restarts, "1", "no finish time recorded, so no age");
        let mut p = with(
            json!({"phase": "Succeeded", "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert_eq!(
            pod_summary(&p).status,
            "Completed",
            "a finished pod is not shown Terminating"
        );
    }

    #[test]
    fn pod_spec_is_immutable_but_image() {
        let old = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}),
        );
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("x:2".into());
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().unwrap().containers[0].args = Some(vec!["x".into()]);
        assert_eq!(new.validate_update(&old)[0].field, "spec");
    }

    #[test]
    fn services_default_target_ports_and_validate_ports() {
        let mut s: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}, {"port": 70000, "name": "b"}]}})).unwrap();
        s.defaults();
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(
            spec.ports.as_ref().unwrap()[0].target_port,
            Some(IntOrString::Int(80))
        );
        let fields: Vec<String> = s.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].targetPort"
            ]
        );
        assert_eq!(s.cells()[4], json!("80/TCP,70000/TCP"));
    }

    #[test]
    fn secrets_merge_string_data_and_keep_their_type() {
        let mut s: Secret = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "stringData": {"a": "x"}, "data": {"b": "eQ=="}}),
        )
        .unwrap();
        s.defaults();
        assert!(s.string_data.is_none());
        assert_eq!(s.data.as_ref().unwrap()["a"].0, b"x");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let mut changed = s.clone();
        changed.type_ = Some("kubernetes.io/tls".into());
        let fields: Vec<String> = changed
            .validate_update(&s)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert!(fields.contains(&"type".to_string()), "{fields:?}");
    }

    #[test]
    fn config_map_keys_and_immutability() {
        let c: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"bad key": "1", "ok": "2"}, "immutable": true})).unwrap();
        assert_eq!(c.validate()[0].field, "data[bad key]");
        let mut d = c.clone();
        d.data.as_mut().unwrap().insert("ok".into(), "3".into());
        assert!(
            d.validate_update(&c)
                .iter()
                .any(|e| e.field == "data" && e.reason == "FieldValueForbidden")
        );
    }
}
