//! The kinds of the named groups other than apps and batch: coordination, discovery, events,
//! networking, policy, storage, scheduling, node, autoscaling, apiextensions, admission
//! registration, RBAC, and the create-only review kinds of authorization and authentication.

use std::marker::PhantomData;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass, VolumeAttachment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use strake_apimachinery::decode::{FieldValidation, round_trip};
use strake_apimachinery::{ApiError, Column, FieldError, NameRule, ResourceDef, Strategy};

use crate::typed::{Kind, age_cell, age_column, col, entry, name_cell, name_column, or_none, wide};

pub fn entries() -> Vec<ResourceDef> {
    vec![
        entry::<Lease>().build(),
        entry::<EndpointSlice>().fields(&["addressType"]).build(),
        entry::<EventV1>()
            .stored_as::<k8s_openapi::api::core::v1::Event>()
            .short(&["ev"])
            .names(NameRule::PathSegment)
            .fields(&[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "reason",
                "type",
                "reportingController",
            ])
            .build(),
        entry::<NetworkPolicy>().short(&["netpol"]).build(),
        entry::<Ingress>()
            .short(&["ing"])
            .status::<Ingress>()
            .build(),
        entry::<IngressClass>().build(),
        entry::<PodDisruptionBudget>()
            .short(&["pdb"])
            .status::<PodDisruptionBudget>()
            .build(),
        entry::<StorageClass>().short(&["sc"]).build(),
        entry::<CSIDriver>().build(),
        entry::<VolumeAttachment>()
            .status::<VolumeAttachment>()
            .build(),
        entry::<PriorityClass>().short(&["pc"]).build(),
        entry::<RuntimeClass>().build(),
        entry::<HorizontalPodAutoscaler>()
            .short(&["hpa"])
            .categories(&["all"])
            .status::<HorizontalPodAutoscaler>()
            .build(),
        entry::<CustomResourceDefinition>()
            .short(&["crd", "crds"])
            .categories(&["api-extensions"])
            .status::<CustomResourceDefinition>()
            .build(),
        entry::<MutatingWebhookConfiguration>()
            .categories(&["api-extensions"])
            .build(),
        entry::<ValidatingWebhookConfiguration>()
            .categories(&["api-extensions"])
            .build(),
        entry::<ValidatingAdmissionPolicy>()
            .categories(&["api-extensions"])
            .status::<ValidatingAdmissionPolicy>()
            .build(),
        entry::<ValidatingAdmissionPolicyBinding>()
            .categories(&["api-extensions"])
            .build(),
        entry::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>()
            .short(&["csr"])
            .status::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>()
            .sub(
                "approval",
                "CertificateSigningRequest",
                &["get", "patch", "update"],
            )
            .build(),
        entry::<Role>().names(NameRule::PathSegment).build(),
        entry::<ClusterRole>().names(NameRule::PathSegment).build(),
        entry::<RoleBinding>().names(NameRule::PathSegment).build(),
        entry::<ClusterRoleBinding>()
            .names(NameRule::PathSegment)
            .build(),
        review::<SelfSubjectAccessReview>(false),
        review::<SubjectAccessReview>(false),
        review::<LocalSubjectAccessReview>(true),
        review::<SelfSubjectRulesReview>(false),
        review::<TokenReview>(false),
        review::<SelfSubjectReview>(false),
    ]
}

/// A create-only kind that is computed, never stored (reviews): the API server answers it.
struct Review<K>(PhantomData<fn() -> K>);

impl<K: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static> Strategy
    for Review<K>
{
    fn definitions(&self) -> Option<(String, serde_json::Map<String, Value>)> {
        Some(crate::typed::schema_definitions::<K>())
    }

    fn decode(
        &self,
        def: &ResourceDef,
        obj: Value,
        mode: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let (v, unknown) = round_trip::<K>(&def.kind, &def.api_version(), obj)?;
        Ok((v, mode.judge(unknown)?))
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![obj["metadata"]["name"].clone()]
    }
}

fn review<
    K: k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + schemars::JsonSchema
        + Send
        + Sync
        + 'static,
>(
    namespaced: bool,
) -> ResourceDef {
    ResourceDef {
        group: K::GROUP.into(),
        version: K::VERSION.into(),
        kind: K::KIND.into(),
        list_kind: format!("{}List", K::KIND),
        plural: K::URL_PATH_SEGMENT.into(),
        singular: K::KIND.to_ascii_lowercase(),
        short_names: Vec::new(),
        categories: Vec::new(),
        namespaced,
        verbs: vec!["create".into()],
        subresources: Vec::new(),
        scale: None,
        selectable_fields: Vec::new(),
        columns: vec![name_column()],
        name_rule: NameRule::PathSegment,
        generation: false,
        strategy: Arc::new(Review::<K>(PhantomData)),
        storage_version: None,
        stored_as: None,
        crd: None,
        delete_returns_object: false,
    }
}

impl Kind for Lease {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Holder", "The holder of the lease"),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(
                self.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default()
            ),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for EndpointSlice {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if !matches!(self.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
            errs.push(FieldError::not_supported(
                "addressType",
                &self.address_type,
                &["FQDN", "IPv4", "IPv6"],
            ));
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.address_type != old.address_type {
            errs.push(FieldError::invalid(
                "addressType",
                "Invalid value: field is immutable",
            ));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("AddressType", ""),
            col("Ports", ""),
            col("Endpoints", ""),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.map(|p| p.to_string()))
            .collect();
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect();
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            name_cell(&self.metadata),
            json!(self.address_type),
            or_none(ports.join(",")),
            or_none(shown),
            age_cell(&self.metadata),
        ]
    }
}

/// events.k8s.io/v1 names of core/v1 Event fields (the rest are spelled alike).
const EVENT_V1_NAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename_fields(
    mut obj: Value,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
) -> Value {
    if let Some(m) = obj.as_object_mut() {
        let moved: Vec<(&str, Value)> = pairs
            .filter_map(|(from, to)| m.remove(from).map(|v| (to, v)))
            .collect();
        for (to, v) in moved {
            m.insert(to.into(), v);
        }
    }
    obj
}

impl Kind for EventV1 {
    fn to_storage(obj: Value) -> Value {
        rename_fields(obj, EVENT_V1_NAMES.iter().copied())
    }
    fn from_storage(obj: Value) -> Value {
        rename_fields(obj, EVENT_V1_NAMES.iter().map(|(v1, core)| (*core, *v1)))
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.event_time.is_none() {
            errs.push(FieldError::required("eventTime"));
        }
        if let Some(t) = self.type_.as_deref()
            && !matches!(t, "Normal" | "Warning")
        {
            errs.push(FieldError::not_supported("type", t, &["Normal", "Warning"]));
        }
        errs
    }
}

impl Kind for NetworkPolicy {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        if spec.policy_types.is_none() {
            let mut types = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                types.push("Egress".into());
            }
            spec.policy_types = Some(types);
        }
        for rule in spec.ingress.iter_mut().flatten() {
            for p in rule.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
        for rule in spec.egress.iter_mut().flatten() {
            for p in rule.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, t) in self
            .spec
            .iter()
            .flat_map(|s| s.policy_types.iter().flatten())
            .enumerate()
        {
            if !matches!(t.as_str(), "Ingress" | "Egress") {
                errs.push(FieldError::not_supported(
                    format!("spec.policyTypes[{i}]"),
                    t,
                    &["Egress", "Ingress"],
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![name_column(), col("Pod-Selector", ""), age_column()]
    }
    fn cells(&self) -> Vec<Value> {
        let sel = self
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .map(crate::selector_string)
            .unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            or_none(sel),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for Ingress {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Class", ""),
            col("Hosts", ""),
            col("Address", ""),
            col("Ports", ""),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let hosts: Vec<String> = spec
            .rules
            .iter()
            .flatten()
            .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
            .collect();
        let addr: Vec<String> = self
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|l| l.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
            .collect();
        let ports = if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
            "80, 443"
        } else {
            "80"
        };
        vec![
            name_cell(&self.metadata),
            or_none(spec.ingress_class_name.unwrap_or_default()),
            json!(if hosts.is_empty() {
                "*".into()
            } else {
                hosts.join(",")
            }),
            json!(addr.join(",")),
            json!(ports),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for IngressClass {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Controller", ""),
            col("Parameters", ""),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let params = spec
            .parameters
            .map(|p| format!("{}/{}", p.kind, p.name))
            .unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            json!(spec.controller.unwrap_or_default()),
            or_none(params),
            age_cell(&self.metadata),
        ]
    }
}

fn int_or_str(v: &Option<IntOrString>) -> String {
    match v {
        Some(IntOrString::Int(i)) => i.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
        None => "N/A".into(),
    }
}

impl Kind for PodDisruptionBudget {
    fn validate(&self) -> Vec<FieldError> {
        let spec = self.spec.clone().unwrap_or_default();
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            return vec![FieldError::invalid(
                "spec",
                "minAvailable and maxUnavailable cannot be both set",
            )];
        }
        Vec::new()
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Min Available", ""),
            col("Max Unavailable", ""),
            Column::new("Allowed Disruptions", "integer", "", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        vec![
            name_cell(&self.metadata),
            json!(int_or_str(&spec.min_available)),
            json!(int_or_str(&spec.max_unavailable)),
            json!(self.status.as_ref().map_or(0, |s| s.disruptions_allowed)),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for StorageClass {
    fn defaults(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode
            .get_or_insert_with(|| "Immediate".into());
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.provisioner.is_empty() {
            errs.push(FieldError::required("provisioner"));
        }
        if let Some(m) = self.volume_binding_mode.as_deref()
            && !matches!(m, "Immediate" | "WaitForFirstConsumer")
        {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                m,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.provisioner != old.provisioner
            || self.parameters != old.parameters
            || self.reclaim_policy != old.reclaim_policy
            || self.volume_binding_mode != old.volume_binding_mode
        {
            errs.push(FieldError::forbidden("(root)", "updates to provisioner, parameters, reclaimPolicy and volumeBindingMode are forbidden"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Provisioner", ""),
            col("ReclaimPolicy", ""),
            col("VolumeBindingMode", ""),
            Column::new("AllowVolumeExpansion", "boolean", "", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let default = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
            .is_some_and(|v| v == "true");
        let name = format!(
            "{}{}",
            self.metadata.name.clone().unwrap_or_default(),
            if default { " (default)" } else { "" }
        );
        vec![
            json!(name),
            json!(self.provisioner),
            json!(self.reclaim_policy.clone().unwrap_or_default()),
            json!(self.volume_binding_mode.clone().unwrap_or_default()),
            json!(self.allow_volume_expansion.unwrap_or(false)),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for CSIDriver {}
impl Kind for VolumeAttachment {}

impl Kind for PriorityClass {
    fn defaults(&mut self) {
        self.preemption_policy
            .get_or_insert_with(|| "PreemptLowerPriority".into());
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let system = self
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("system-"));
        if !system && self.value > 1_000_000_000 {
            errs.push(FieldError::forbidden(
                "value",
                "maximum allowed value of a user defined priority is 1000000000",
            ));
        }
        if system
            && !matches!(
                self.metadata.name.as_deref(),
                Some("system-node-critical" | "system-cluster-critical")
            )
        {
            errs.push(FieldError::forbidden(
                "metadata.name",
                "priority class names with 'system-' prefix are reserved for system use only",
            ));
        }
        errs
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.value != old.value {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            Column::new("Value", "integer", "", 0),
            Column::new("Global-Default", "boolean", "", 0),
            age_column(),
            col("PreemptionPolicy", ""),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(self.value),
            json!(self.global_default.unwrap_or(false)),
            age_cell(&self.metadata),
            json!(self.preemption_policy.clone().unwrap_or_default()),
        ]
    }
}

impl Kind for RuntimeClass {
    fn validate(&self) -> Vec<FieldError> {
        if self.handler.is_empty() {
            vec![FieldError::required("handler")]
        } else {
            Vec::new()
        }
    }
    fn columns() -> Vec<Column> {
        vec![name_column(), col("Handler", ""), age_column()]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(self.handler),
            age_cell(&self.metadata),
        ]
    }
}

/// The TARGETS column as kubectl prints it: `cpu: 45%/80%`, `memory: 120Mi/200Mi`, with
/// `<unknown>` for a current value not yet measured.
fn hpa_targets(h: &HorizontalPodAutoscaler) -> String {
    let spec = h.spec.clone().unwrap_or_default();
    let current = h
        .status
        .as_ref()
        .and_then(|s| s.current_metrics.clone())
        .unwrap_or_default();
    let mut parts = Vec::new();
    for m in spec.metrics.iter().flatten() {
        let (name, container, target) = match (&m.resource, &m.container_resource) {
            (Some(r), _) => (r.name.clone(), None, r.target.clone()),
            (None, Some(r)) => (r.name.clone(), Some(r.container.clone()), r.target.clone()),
            _ => {
                parts.push(format!("<{} metric>", m.type_));
                continue;
            }
        };
        let now = current
            .iter()
            .find_map(|c| match (&c.resource, &c.container_resource) {
                (Some(r), _) if container.is_none() && r.name == name => Some(r.current.clone()),
                (_, Some(r)) if Some(&r.container) == container.as_ref() && r.name == name => {
                    Some(r.current.clone())
                }
                _ => None,
            });
        let label = match &container {
            Some(c) => format!("{name} ({c})"),
            None => name,
        };
        if target.type_ == "Utilization" {
            let cur = now
                .and_then(|n| n.average_utilization)
                .map_or("<unknown>".to_string(), |u| format!("{u}%"));
            parts.push(format!(
                "{label}: {cur}/{}%",
                target.average_utilization.unwrap_or(0)
            ));
        } else {
            let cur = now
                .and_then(|n| n.average_value.or(n.value))
                .map_or("<unknown>".to_string(), |q| q.0);
            let want = target
                .average_value
                .or(target.value)
                .map(|q| q.0)
                .unwrap_or_default();
            parts.push(format!("{label}: {cur}/{want}"));
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}

impl Kind for HorizontalPodAutoscaler {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.is_none() {
            spec.metrics = serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])).ok();
        }
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldError::required("spec")];
        };
        if spec.max_replicas < 1 {
            errs.push(FieldError::invalid(
                "spec.maxReplicas",
                "must be greater than or equal to 1",
            ));
        }
        if spec.min_replicas.is_some_and(|m| m > spec.max_replicas) {
            errs.push(FieldError::invalid(
                "spec.maxReplicas",
                "must be greater than or equal to `minReplicas`",
            ));
        }
        if spec.scale_target_ref.kind.is_empty() || spec.scale_target_ref.name.is_empty() {
            errs.push(FieldError::required("spec.scaleTargetRef"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Reference", ""),
            col("Targets", ""),
            col("MinPods", ""),
            Column::new("MaxPods", "integer", "", 0),
            Column::new("Replicas", "integer", "", 0),
            age_column(),
        ]
    }
    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let r = format!(
            "{}/{}",
            spec.scale_target_ref.kind, spec.scale_target_ref.name
        );
        vec![
            name_cell(&self.metadata),
            json!(r),
            json!(hpa_targets(self)),
            json!(spec.min_replicas.unwrap_or(1).to_string()),
            json!(spec.max_replicas),
            json!(
                self.status
                    .as_ref()
                    .and_then(|s| s.current_replicas)
                    .unwrap_or(0)
            ),
            age_cell(&self.metadata),
        ]
    }
}

impl Kind for CustomResourceDefinition {
    fn validate(&self) -> Vec<FieldError> {
        crate::crd::validate_crd(self)
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.spec.group != old.spec.group || self.spec.names.plural != old.spec.names.plural {
            errs.push(FieldError::invalid(
                "spec.group",
                "Invalid value: field is immutable",
            ));
        }
        if self.spec.scope != old.spec.scope {
            errs.push(FieldError::invalid(
                "spec.scope",
                "Invalid value: field is immutable",
            ));
        }
        errs
    }
    fn defaults(&mut self) {
        crate::crd::default_crd(self);
    }
    fn columns() -> Vec<Column> {
        vec![name_column(), Column::new("Created At", "date", "", 0)]
    }
    fn cells(&self) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            json!(
                self.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default()
            ),
        ]
    }
}

impl Kind for ValidatingAdmissionPolicy {}
impl Kind for ValidatingAdmissionPolicyBinding {}

fn rbac_created() -> Vec<Column> {
    vec![name_column(), Column::new("Created At", "date", "", 0)]
}

fn created_cell(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Value {
    json!(
        m.creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    )
}

fn validate_rules(rules: &[k8s_openapi::api::rbac::v1::PolicyRule], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if r.verbs.is_empty() {
            errs.push(FieldError::required(format!("{path}[{i}].verbs")));
        }
        let resourceful = r.resources.as_ref().is_some_and(|v| !v.is_empty());
        let non_resource = r.non_resource_urls.as_ref().is_some_and(|v| !v.is_empty());
        if resourceful && r.api_groups.as_ref().is_none_or(Vec::is_empty) {
            errs.push(
                FieldError::required(format!("{path}[{i}].apiGroups")).with_message(
                    "Required value: resource rules must supply at least one api group",
                ),
            );
        }
        if !resourceful && !non_resource {
            errs.push(
                FieldError::required(format!("{path}[{i}].resources")).with_message(
                    "Required value: rules must apply to at least one resource or non-resource URL",
                ),
            );
        }
    }
    errs
}

/// Roles and cluster roles share their rules, validation and columns.
macro_rules! role_kind {
    ($kind:ty) => {
        impl Kind for $kind {
            fn validate(&self) -> Vec<FieldError> {
                validate_rules(self.rules.as_deref().unwrap_or_default(), "rules")
            }
            fn columns() -> Vec<Column> {
                rbac_created()
            }
            fn cells(&self) -> Vec<Value> {
                vec![name_cell(&self.metadata), created_cell(&self.metadata)]
            }
        }
    };
}

role_kind!(Role);
role_kind!(ClusterRole);

fn binding_columns() -> Vec<Column> {
    vec![
        name_column(),
        col("Role", ""),
        age_column(),
        wide("Users", ""),
        wide("Groups", ""),
        wide("ServiceAccounts", ""),
    ]
}

fn binding_cells(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    role: &k8s_openapi::api::rbac::v1::RoleRef,
    subjects: &[k8s_openapi::api::rbac::v1::Subject],
) -> Vec<Value> {
    let of = |k: &str| {
        subjects
            .iter()
            .filter(|s| s.kind == k)
            .map(|s| {
                if k == "ServiceAccount" {
                    format!("{}/{}", s.namespace.clone().unwrap_or_default(), s.name)
                } else {
                    s.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        name_cell(m),
        json!(format!("{}/{}", role.kind, role.name)),
        age_cell(m),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

fn validate_binding(
    role: &k8s_openapi::api::rbac::v1::RoleRef,
    subjects: &[k8s_openapi::api::rbac::v1::Subject],
    cluster: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["ClusterRole", "Role"]
    };
    if !kinds.contains(&role.kind.as_str()) {
        errs.push(FieldError::not_supported("roleRef.kind", &role.kind, kinds));
    }
    if role.api_group != "rbac.authorization.k8s.io" {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &role.api_group,
            &["rbac.authorization.k8s.io"],
        ));
    }
    if role.name.is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    }
    for (i, s) in subjects.iter().enumerate() {
        if !matches!(s.kind.as_str(), "User" | "Group" | "ServiceAccount") {
            errs.push(FieldError::not_supported(
                format!("subjects[{i}].kind"),
                &s.kind,
                &["Group", "ServiceAccount", "User"],
            ));
        }
        if s.name.is_empty() {
            errs.push(FieldError::required(format!("subjects[{i}].name")));
        }
        if s.kind == "ServiceAccount" && cluster && s.namespace.as_deref().is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("subjects[{i}].namespace")));
        }
    }
    errs
}

/// Role bindings and cluster role bindings differ only in what their roleRef may name.
macro_rules! binding_kind {
    ($kind:ty, $cluster:expr) => {
        impl Kind for $kind {
            fn validate(&self) -> Vec<FieldError> {
                validate_binding(
                    &self.role_ref,
                    self.subjects.as_deref().unwrap_or_default(),
                    $cluster,
                )
            }
            fn validate_update(&self, old: &Self) -> Vec<FieldError> {
                let mut errs = self.validate();
                if self.role_ref != old.role_ref {
                    errs.push(FieldError::invalid(
                        "roleRef",
                        "Invalid value: cannot change roleRef",
                    ));
                }
                errs
            }
            fn columns() -> Vec<Column> {
                binding_columns()
            }
            fn cells(&self) -> Vec<Value> {
                binding_cells(
                    &self.metadata,
                    &self.role_ref,
                    self.subjects.as_deref().unwrap_or_default(),
                )
            }
        }
    };
}

binding_kind!(RoleBinding, false);
binding_kind!(ClusterRoleBinding, true);
