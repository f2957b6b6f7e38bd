//! apps/v1 kinds — Deployment, ReplicaSet, StatefulSet, DaemonSet, ControllerRevision: upstream's
//! defaults, validation, update rules and Table cells. Also the selector and template helpers
//! the batch kinds share.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, DeploymentStrategy, ReplicaSet, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use strake_apimachinery::{Column, FieldError, ResourceDef};

use crate::core::{default_pod_spec, validate_pod_spec};
use crate::typed::{Kind, age_cell, age_column, col, entry, name_cell, name_column, or_none, wide};

pub fn entries() -> Vec<ResourceDef> {
    vec![
        entry::<ControllerRevision>().build(),
        entry::<DaemonSet>()
            .short(&["ds"])
            .categories(&["all"])
            .status::<DaemonSet>()
            .build(),
        entry::<Deployment>()
            .short(&["deploy"])
            .categories(&["all"])
            .status::<Deployment>()
            .scale()
            .build(),
        entry::<ReplicaSet>()
            .short(&["rs"])
            .categories(&["all"])
            .status::<ReplicaSet>()
            .scale()
            .build(),
        entry::<StatefulSet>()
            .short(&["sts"])
            .categories(&["all"])
            .status::<StatefulSet>()
            .scale()
            .build(),
    ]
}

// ---------------------------------------------------------------- shared helpers

/// Whether a label selector selects a set of labels: every matchLabels pair and every
/// matchExpressions requirement (In, NotIn, Exists, DoesNotExist) holds. An unknown operator
/// selects nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let values: &[String] = e.values.as_deref().unwrap_or_default();
            let label = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => label.is_some_and(|v| values.contains(v)),
                "NotIn" => label.is_none_or(|v| !values.contains(v)),
                "Exists" => label.is_some(),
                "DoesNotExist" => label.is_none(),
                _ => false,
            }
        })
}

/// A selector without requirements (which selects everything).
pub(crate) fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// The requirements of a selector: known operators, values only with In and NotIn.
pub(crate) fn validate_selector(errs: &mut Vec<FieldError>, sel: &LabelSelector, path: &str) {
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if e.key.is_empty() {
            errs.push(FieldError::required(format!("{p}.key")));
        }
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                errs.push(FieldError::required(format!("{p}.values")).with_message(
                    "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                ))
            }
            "Exists" | "DoesNotExist" if has_values => errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                format!("Invalid value: {op:?}: not a valid selector operator"),
            )),
        }
    }
}

/// A string map as Go's `%#v` prints it, the way upstream's messages show label values.
pub(crate) fn go_map(m: Option<&BTreeMap<String, String>>) -> String {
    match m {
        None => "map[string]string(nil)".into(),
        Some(m) => format!(
            "map[string]string{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k:?}:{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A label selector as upstream's messages print it (`v1.LabelSelector{MatchLabels:...}`).
pub(crate) fn go_selector(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else { return "null".into() };
    let strings = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let requirement = |e: &LabelSelectorRequirement| {
        let values = e.values.as_deref().map_or_else(
            || "[]string(nil)".to_string(),
            |v| format!("[]string{{{}}}", strings(v)),
        );
        format!(
            "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
            e.key, e.operator
        )
    };
    let exprs = match &sel.match_expressions {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(es) => format!(
            "[]v1.LabelSelectorRequirement{{{}}}",
            es.iter().map(requirement).collect::<Vec<_>>().join(", ")
        ),
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_map(sel.match_labels.as_ref())
    )
}

/// `must be greater than or equal to 0` for a negative optional number.
pub(crate) fn non_negative<T: Into<i64> + Copy>(
    errs: &mut Vec<FieldError>,
    path: &str,
    v: Option<T>,
) {
    let v: Option<i64> = v.map(Into::into);
    if let Some(v) = v
        && v < 0
    {
        errs.push(FieldError::invalid(
            path,
            format!("Invalid value: {v}: must be greater than or equal to 0"),
        ));
    }
}

/// `Unsupported value` unless an optional value is one of `allowed`.
pub(crate) fn one_of(errs: &mut Vec<FieldError>, path: &str, v: Option<&str>, allowed: &[&str]) {
    if let Some(v) = v
        && !allowed.contains(&v)
    {
        errs.push(FieldError::not_supported(path, v, allowed));
    }
}

/// `field is immutable` when a selector changed.
pub(crate) fn immutable_selector(
    errs: &mut Vec<FieldError>,
    new: Option<&LabelSelector>,
    old: Option<&LabelSelector>,
) {
    if new != old {
        errs.push(FieldError::invalid(
            "spec.selector",
            format!("Invalid value: {}: field is immutable", go_selector(new)),
        ));
    }
}

/// The Containers and Images cells of a pod template.
pub(crate) fn containers_images(spec: Option<&PodSpec>) -> (Value, Value) {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or_default())
        .collect();
    (json!(names.join(",")), json!(images.join(",")))
}

/// `columns` and then the wide Containers, Images and (with `selector`) Selector columns.
pub(crate) fn with_template_columns(mut columns: Vec<Column>, selector: bool) -> Vec<Column> {
    columns.push(wide(
        "Containers",
        "Names of the containers in the template.",
    ));
    columns.push(wide("Images", "Images of the containers in the template."));
    if selector {
        columns.push(wide("Selector", "The label selector of the pods."));
    }
    columns
}

/// The Selector cell: the selector as kubectl prints it, `<none>` when there is none.
pub(crate) fn selector_cell(sel: Option<&LabelSelector>) -> Value {
    or_none(sel.map(crate::selector_string).unwrap_or_default())
}

/// Labels as `k=v,k2=v2`, `<none>` when there are none.
fn labels_cell(m: Option<&BTreeMap<String, String>>) -> Value {
    or_none(
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => format!("{s:?}"),
    }
}

/// The number of a percentage string (`25%`), `None` when it is not one.
fn percent(s: &str) -> Option<u64> {
    let digits = s.strip_suffix('%')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().unwrap_or(u64::MAX))
}

/// The number in an int-or-percent (0 when unset or malformed), for the "both zero" rules.
fn int_or_percent_value(v: Option<&IntOrString>) -> i64 {
    match v {
        Some(IntOrString::Int(i)) => i64::from(*i),
        Some(IntOrString::String(s)) => percent(s).map_or(0, |p| p.min(i64::MAX as u64) as i64),
        None => 0,
    }
}

/// A non-negative integer or a percentage, at most 100% when `cap` is set.
fn int_or_percent(errs: &mut Vec<FieldError>, v: Option<&IntOrString>, path: &str, cap: bool) {
    match v {
        Some(IntOrString::Int(i)) if *i < 0 => errs.push(FieldError::invalid(path, format!("Invalid value: {i}: must be greater than or equal to 0"))),
        Some(IntOrString::String(s)) => match percent(s) {
            None => errs.push(FieldError::invalid(
                path,
                format!("Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
            )),
            Some(p) if cap && p > 100 => errs.push(FieldError::invalid(path, format!("Invalid value: {s:?}: must not be greater than 100%"))),
            _ => {}
        },
        _ => {}
    }
}

/// A controller's selector and pod template: a non-empty selector that selects the template's
/// labels, a valid pod spec, restartPolicy Always and no activeDeadlineSeconds.
fn validate_controller(
    errs: &mut Vec<FieldError>,
    sel: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    what: &str,
    kind: &str,
) {
    if sel.match_labels.is_none() && sel.match_expressions.is_none() {
        errs.push(FieldError::required("spec.selector"));
    } else if selector_is_empty(sel) {
        errs.push(FieldError::invalid(
            "spec.selector",
            format!(
                "Invalid value: {}: empty selector is invalid for {what}",
                go_selector(Some(sel))
            ),
        ));
    } else {
        validate_selector(errs, sel, "spec.selector");
    }
    let Some(t) = template else {
        errs.push(FieldError::required("spec.template"));
        return;
    };
    let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    if !selector_is_empty(sel) && !selector_matches(sel, &labels.cloned().unwrap_or_default()) {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                go_map(labels)
            ),
        ));
    }
    let ps = t.spec.clone().unwrap_or_default();
    errs.extend(validate_pod_spec(&ps, "spec.template.spec"));
    if let Some(rp) = ps.restart_policy.as_deref()
        && rp != "Always"
    {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            rp,
            &["Always"],
        ));
    }
    if ps.active_deadline_seconds.is_some() {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            format!("activeDeadlineSeconds in {kind} is not Supported"),
        ));
    }
}

fn default_template(t: Option<&mut PodTemplateSpec>) {
    if let Some(ps) = t.and_then(|t| t.spec.as_mut()) {
        default_pod_spec(ps);
    }
}

// ---------------------------------------------------------------- Deployment

fn validate_deployment_strategy(errs: &mut Vec<FieldError>, s: &DeploymentStrategy) {
    match s.type_.as_deref() {
        Some("Recreate") if s.rolling_update.is_some() => {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        Some("Recreate") => {}
        Some("RollingUpdate") => match &s.rolling_update {
            None => errs.push(
                FieldError::required("spec.strategy.rollingUpdate")
                    .with_message("Required value: this should be defaulted and never be nil"),
            ),
            Some(ru) => {
                let path = "spec.strategy.rollingUpdate";
                int_or_percent(
                    errs,
                    ru.max_unavailable.as_ref(),
                    &format!("{path}.maxUnavailable"),
                    true,
                );
                int_or_percent(
                    errs,
                    ru.max_surge.as_ref(),
                    &format!("{path}.maxSurge"),
                    false,
                );
                if int_or_percent_value(ru.max_unavailable.as_ref()) == 0
                    && int_or_percent_value(ru.max_surge.as_ref()) == 0
                {
                    let shown = ru
                        .max_unavailable
                        .as_ref()
                        .map_or_else(|| "null".into(), int_or_string);
                    errs.push(FieldError::invalid(
                        format!("{path}.maxUnavailable"),
                        format!("Invalid value: {shown}: may not be 0 when `maxSurge` is 0"),
                    ));
                }
            }
        },
        None => {}
        Some(t) => errs.push(FieldError::not_supported(
            "spec.strategy.type",
            t,
            &["Recreate", "RollingUpdate"],
        )),
    }
}

impl Kind for Deployment {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.replicas.get_or_insert(1);
        let strategy = spec.strategy.get_or_insert_default();
        if strategy
            .type_
            .get_or_insert_with(|| "RollingUpdate".into())
            .as_str()
            == "RollingUpdate"
        {
            let ru = strategy.rolling_update.get_or_insert_default();
            ru.max_unavailable
                .get_or_insert_with(|| IntOrString::String("25%".into()));
            ru.max_surge
                .get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        default_template(Some(&mut spec.template));
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        validate_controller(
            &mut errs,
            &spec.selector,
            Some(&spec.template),
            "deployment",
            "ReplicaSet",
        );
        if let Some(s) = &spec.strategy {
            validate_deployment_strategy(&mut errs, s);
        }
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        non_negative(
            &mut errs,
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
        );
        if let Some(p) = spec.progress_deadline_seconds {
            non_negative(&mut errs, "spec.progressDeadlineSeconds", Some(p));
            if p <= spec.min_ready_seconds.unwrap_or(0) {
                errs.push(FieldError::invalid(
                    "spec.progressDeadlineSeconds",
                    format!("Invalid value: {p}: must be greater than minReadySeconds"),
                ));
            }
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        immutable_selector(
            &mut errs,
            self.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        );
        errs
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                col("Ready", "Ready pods out of the desired replicas."),
                Column::new(
                    "Up-to-date",
                    "integer",
                    "Pods of this deployment that run the current template.",
                    0,
                ),
                Column::new(
                    "Available",
                    "integer",
                    "Pods of this deployment that have been ready for at least minReadySeconds.",
                    0,
                ),
                age_column(),
            ],
            true,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(&self.metadata),
            json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            json!(st.updated_replicas.unwrap_or(0)),
            json!(st.available_replicas.unwrap_or(0)),
            age_cell(&self.metadata),
            containers,
            images,
            selector_cell(Some(&spec.selector)),
        ]
    }
}

// ---------------------------------------------------------------- ReplicaSet

impl Kind for ReplicaSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.replicas.get_or_insert(1);
        default_template(spec.template.as_mut());
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        validate_controller(
            &mut errs,
            &spec.selector,
            spec.template.as_ref(),
            "deployment",
            "ReplicaSet",
        );
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        immutable_selector(
            &mut errs,
            self.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        );
        errs
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                Column::new("Desired", "integer", "The number of pods wanted.", 0),
                Column::new("Current", "integer", "The number of pods observed.", 0),
                Column::new("Ready", "integer", "The number of pods that are ready.", 0),
                age_column(),
            ],
            true,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) =
            containers_images(spec.template.as_ref().and_then(|t| t.spec.as_ref()));
        vec![
            name_cell(&self.metadata),
            json!(spec.replicas.unwrap_or(1)),
            json!(st.replicas),
            json!(st.ready_replicas.unwrap_or(0)),
            age_cell(&self.metadata),
            containers,
            images,
            selector_cell(Some(&spec.selector)),
        ]
    }
}

// ---------------------------------------------------------------- StatefulSet

impl Kind for StatefulSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        let us = spec.update_strategy.get_or_insert_default();
        if us
            .type_
            .get_or_insert_with(|| "RollingUpdate".into())
            .as_str()
            == "RollingUpdate"
        {
            us.rolling_update
                .get_or_insert_default()
                .partition
                .get_or_insert(0);
        }
        let pvc = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_default();
        pvc.when_deleted.get_or_insert_with(|| "Retain".into());
        pvc.when_scaled.get_or_insert_with(|| "Retain".into());
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        for claim in spec.volume_claim_templates.iter_mut().flatten() {
            <PersistentVolumeClaim as Kind>::defaults(claim);
        }
        default_template(Some(&mut spec.template));
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        match spec.pod_management_policy.as_deref() {
            Some("") => errs.push(FieldError::required("spec.podManagementPolicy")),
            p => one_of(
                &mut errs,
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ),
        }
        if let Some(us) = &spec.update_strategy {
            match us.type_.as_deref() {
                None => {}
                Some("") => errs.push(FieldError::required("spec.updateStrategy")),
                Some("RollingUpdate") => {
                    if let Some(ru) = &us.rolling_update {
                        non_negative(
                            &mut errs,
                            "spec.updateStrategy.rollingUpdate.partition",
                            ru.partition,
                        );
                        int_or_percent(
                            &mut errs,
                            ru.max_unavailable.as_ref(),
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            true,
                        );
                    }
                }
                Some("OnDelete") if us.rolling_update.is_some() => {
                    errs.push(FieldError::invalid(
                        "spec.updateStrategy.rollingUpdate",
                        "Invalid value: only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
                Some("OnDelete") => {}
                Some(t) => errs.push(FieldError::invalid(
                    "spec.updateStrategy",
                    format!("Invalid value: {t:?}: must be 'RollingUpdate' or 'OnDelete'"),
                )),
            }
        }
        if let Some(p) = &spec.persistent_volume_claim_retention_policy {
            one_of(
                &mut errs,
                "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
                p.when_deleted.as_deref(),
                &["Retain", "Delete"],
            );
            one_of(
                &mut errs,
                "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
                p.when_scaled.as_deref(),
                &["Retain", "Delete"],
            );
        }
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        non_negative(
            &mut errs,
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
        );
        non_negative(
            &mut errs,
            "spec.ordinals.start",
            spec.ordinals.as_ref().and_then(|o| o.start),
        );
        validate_controller(
            &mut errs,
            &spec.selector,
            Some(&spec.template),
            "statefulset",
            "StatefulSet",
        );
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let (new, old) = (
            self.spec.clone().unwrap_or_default(),
            old.spec.clone().unwrap_or_default(),
        );
        immutable_selector(&mut errs, Some(&new.selector), Some(&old.selector));
        // Only these fields may change; the selector is reported on its own above.
        let fixed = |s: &StatefulSetSpec| StatefulSetSpec {
            replicas: None,
            ordinals: None,
            template: PodTemplateSpec::default(),
            update_strategy: None,
            persistent_volume_claim_retention_policy: None,
            min_ready_seconds: None,
            revision_history_limit: None,
            selector: LabelSelector::default(),
            ..s.clone()
        };
        if fixed(&new) != fixed(&old) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                col("Ready", "Ready pods out of the desired replicas."),
                age_column(),
            ],
            false,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(&self.metadata),
            json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            age_cell(&self.metadata),
            containers,
            images,
        ]
    }
}

// ---------------------------------------------------------------- DaemonSet

impl Kind for DaemonSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        let us = spec.update_strategy.get_or_insert_default();
        if us
            .type_
            .get_or_insert_with(|| "RollingUpdate".into())
            .as_str()
            == "RollingUpdate"
        {
            let ru = us.rolling_update.get_or_insert_default();
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        spec.revision_history_limit.get_or_insert(10);
        default_template(Some(&mut spec.template));
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        validate_controller(
            &mut errs,
            &spec.selector,
            Some(&spec.template),
            "daemonset",
            "DaemonSet",
        );
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        non_negative(
            &mut errs,
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
        );
        if let Some(us) = &spec.update_strategy {
            match us.type_.as_deref() {
                None | Some("OnDelete") => {}
                Some("RollingUpdate") => match &us.rolling_update {
                    None => errs.push(FieldError::required("spec.updateStrategy.rollingUpdate")),
                    Some(ru) => {
                        let path = "spec.updateStrategy.rollingUpdate";
                        int_or_percent(
                            &mut errs,
                            ru.max_unavailable.as_ref(),
                            &format!("{path}.maxUnavailable"),
                            true,
                        );
                        int_or_percent(
                            &mut errs,
                            ru.max_surge.as_ref(),
                            &format!("{path}.maxSurge"),
                            true,
                        );
                        let unavailable = int_or_percent_value(ru.max_unavailable.as_ref()) != 0;
                        let surge = int_or_percent_value(ru.max_surge.as_ref()) != 0;
                        if unavailable && surge {
                            let shown = ru
                                .max_surge
                                .as_ref()
                                .map_or_else(|| "null".into(), int_or_string);
                            errs.push(FieldError::invalid(format!("{path}.maxSurge"), format!("Invalid value: {shown}: may not be set when maxUnavailable is non-zero")));
                        } else if !unavailable && !surge {
                            errs.push(
                                FieldError::required(format!("{path}.maxUnavailable"))
                                    .with_message("Required value: cannot be 0 when maxSurge is 0"),
                            );
                        }
                    }
                },
                Some(t) => errs.push(FieldError::not_supported(
                    "spec.updateStrategy.type",
                    t,
                    &["OnDelete", "RollingUpdate"],
                )),
            }
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        immutable_selector(
            &mut errs,
            self.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        );
        errs
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                Column::new(
                    "Desired",
                    "integer",
                    "The number of nodes that should run the daemon pod.",
                    0,
                ),
                Column::new(
                    "Current",
                    "integer",
                    "The number of nodes running at least one daemon pod that should.",
                    0,
                ),
                Column::new(
                    "Ready",
                    "integer",
                    "The number of nodes whose daemon pod is ready.",
                    0,
                ),
                Column::new(
                    "Up-to-date",
                    "integer",
                    "The number of nodes running the current daemon pod template.",
                    0,
                ),
                Column::new(
                    "Available",
                    "integer",
                    "The number of nodes whose daemon pod has been ready for at least minReadySeconds.",
                    0,
                ),
                col("Node Selector", "The node selector of the daemon pods."),
                age_column(),
            ],
            true,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(&self.metadata),
            json!(st.desired_number_scheduled),
            json!(st.current_number_scheduled),
            json!(st.number_ready),
            json!(st.updated_number_scheduled.unwrap_or(0)),
            json!(st.number_available.unwrap_or(0)),
            labels_cell(
                spec.template
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_selector.as_ref()),
            ),
            age_cell(&self.metadata),
            containers,
            images,
            selector_cell(Some(&spec.selector)),
        ]
    }
}

// ---------------------------------------------------------------- ControllerRevision

impl Kind for ControllerRevision {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        non_negative(&mut errs, "revision", Some(self.revision));
        if self.data.is_none() {
            errs.push(
                FieldError::required("data").with_message("Required value: data is mandatory"),
            );
        }
        errs
    }

    /// Only `data` is fixed: controllers bump `revision` when they roll back to an old one.
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.data != old.data {
            errs.push(FieldError::invalid(
                "data",
                "Invalid value: field is immutable",
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Controller", "The controller that owns this revision."),
            Column::new(
                "Revision",
                "integer",
                "The revision of the state this object holds.",
                0,
            ),
            age_column(),
        ]
    }

    fn cells(&self) -> Vec<Value> {
        let controller = self
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| {
                let group = o.api_version.rsplit_once('/').map_or("", |(g, _)| g);
                let kind = if group.is_empty() {
                    o.kind.clone()
                } else {
                    format!("{}.{group}", o.kind)
                };
                format!("{}/{}", kind.to_lowercase(), o.name)
            });
        vec![
            name_cell(&self.metadata),
            or_none(controller.unwrap_or_default()),
            json!(self.revision),
            age_cell(&self.metadata),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(v: Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn web(selector: Value, labels: Value) -> Deployment {
        deployment(json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"selector": selector, "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
        }))
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn deployment_defaults_and_validates() {
        let mut d = web(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        );
        d.defaults();
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let strategy = spec.strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let ru = strategy.rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        assert_eq!(ru.max_unavailable, Some(IntOrString::String("25%".into())));
        assert_eq!(
            (spec.revision_history_limit, spec.progress_deadline_seconds),
            (Some(10), Some(600))
        );
        assert_eq!(
            spec.template
                .spec
                .as_ref()
                .unwrap()
                .restart_policy
                .as_deref(),
            Some("Always")
        );
        assert_eq!(d.validate(), vec![]);
    }

    #[test]
    fn selector_must_match_the_template_and_not_be_empty() {
        let mut d = web(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "other"}),
        );
        d.defaults();
        let errs = d.validate();
        assert_eq!(fields(&errs), ["spec.template.metadata.labels"]);
        assert!(
            errs[0]
                .message
                .contains("`selector` does not match template `labels`"),
            "{errs:?}"
        );
        let mut none = web(json!(null), json!({"app": "web"}));
        none.defaults();
        assert_eq!(fields(&none.validate()), ["spec.selector"]);
        let mut empty = web(json!({"matchLabels": {}}), json!({"app": "web"}));
        empty.defaults();
        assert!(
            empty.validate()[0]
                .message
                .contains("empty selector is invalid")
        );
    }

    #[test]
    fn deployment_strategy_and_update_rules() {
        let mut d = web(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        );
        d.defaults();
        let old = d.clone();
        d.spec.as_mut().unwrap().strategy.as_mut().unwrap().type_ = Some("Recreate".into());
        assert_eq!(fields(&d.validate()), ["spec.strategy.rollingUpdate"]);
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Blue".into()),
            rolling_update: None,
        });
        assert_eq!(d.validate()[0].reason, "FieldValueNotSupported");
        let mut moved = old.clone();
        moved
            .spec
            .as_mut()
            .unwrap()
            .selector
            .match_labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "x".into());
        moved
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "x".into());
        let errs = moved.validate_update(&old);
        assert_eq!(fields(&errs), ["spec.selector"]);
        assert!(errs[0].message.ends_with("field is immutable"));
        let mut scaled = old.clone();
        scaled.spec.as_mut().unwrap().replicas = Some(-1);
        assert_eq!(
            scaled.validate_update(&old)[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn deployment_cells_with_status() {
        let mut d = web(
            json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}),
            json!({"app": "web", "tier": "a"}),
        );
        d.spec.as_mut().unwrap().replicas = Some(3);
        d.status = serde_json::from_value(json!({"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2})).unwrap();
        d.defaults();
        assert_eq!(d.validate(), vec![]);
        let cells = d.cells();
        assert_eq!(cells.len(), Deployment::columns().len());
        assert_eq!(cells[..4], [json!("web"), json!("2/3"), json!(3), json!(2)]);
        assert_eq!(
            cells[5..],
            [
                json!("web"),
                json!("nginx:1.27"),
                json!("app=web,tier in (a,b)")
            ]
        );
        assert_eq!(
            Deployment::columns()
                .iter()
                .filter(|c| c.priority == 1)
                .count(),
            3
        );
    }

    #[test]
    fn selector_matching() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}, {"key": "canary", "operator": "DoesNotExist"}, {"key": "zone", "operator": "Exists"}],
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("zone", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("zone", "a"), ("tier", "db")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("zone", "a"), ("canary", "1")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        let mut errs = Vec::new();
        let bad: LabelSelector = serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "In"}, {"key": "b", "operator": "Near"}]})).unwrap();
        validate_selector(&mut errs, &bad, "spec.selector");
        assert_eq!(
            fields(&errs),
            [
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].operator"
            ]
        );
    }

    #[test]
    fn statefulset_defaults_and_forbidden_updates() {
        let mut s: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres"}]}}},
        }))
        .unwrap();
        s.defaults();
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .unwrap()
                .rolling_update
                .as_ref()
                .unwrap()
                .partition,
            Some(0)
        );
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .as_ref()
                .unwrap()
                .when_scaled
                .as_deref(),
            Some("Retain")
        );
        assert_eq!(s.validate(), vec![]);
        let mut scaled = s.clone();
        scaled.spec.as_mut().unwrap().replicas = Some(5);
        assert_eq!(scaled.validate_update(&s), vec![]);
        let mut renamed = s.clone();
        renamed.spec.as_mut().unwrap().service_name = Some("other".into());
        let errs = renamed.validate_update(&s);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].reason),
            ("spec", "FieldValueForbidden")
        );
        let mut bad = s.clone();
        bad.spec.as_mut().unwrap().pod_management_policy = Some("Random".into());
        assert_eq!(fields(&bad.validate()), ["spec.podManagementPolicy"]);
    }

    #[test]
    fn daemonset_defaults_and_cells() {
        let mut ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"nodeSelector": {"os": "linux"}, "containers": [{"name": "a", "image": "agent:1"}]}}},
        }))
        .unwrap();
        ds.defaults();
        let ru = ds
            .spec
            .as_ref()
            .unwrap()
            .update_strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .clone()
            .unwrap();
        assert_eq!(
            (ru.max_unavailable, ru.max_surge),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
        );
        assert_eq!(ds.validate(), vec![]);
        let cells = ds.cells();
        assert_eq!(cells.len(), DaemonSet::columns().len());
        assert_eq!(cells[6], json!("os=linux"));
        ds.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("Never".into());
        assert_eq!(fields(&ds.validate()), ["spec.template.spec.restartPolicy"]);
    }

    #[test]
    fn controller_revision_cells_and_immutable_data() {
        let cr: ControllerRevision = serde_json::from_value(json!({
            "metadata": {"name": "agent-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]},
            "data": {"spec": {}},
            "revision": 1,
        }))
        .unwrap();
        assert_eq!(cr.cells()[1], json!("daemonset.apps/agent"));
        let mut bumped = cr.clone();
        bumped.revision = 2;
        assert_eq!(bumped.validate_update(&cr), vec![]);
        bumped.data = None;
        assert_eq!(fields(&bumped.validate_update(&cr)), ["data", "data"]);
    }
}
