//! batch/v1 kinds — Job and CronJob: upstream's defaults (a Job's generated selector among
//! them), validation, update rules and Table cells.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::{Column, FieldError, ResourceDef};

use crate::apps::{
    containers_images, go_map, go_selector, immutable_selector, non_negative, one_of,
    selector_cell, selector_matches, validate_selector, with_template_columns,
};
use crate::core::{default_pod_spec, validate_pod_spec};
use crate::typed::{
    Kind, age_cell, age_column, col, entry, human_age, human_duration, name_cell, name_column,
    or_none,
};

/// The labels a generated Job selector rests on, current and legacy.
const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";

pub fn entries() -> Vec<ResourceDef> {
    vec![
        entry::<CronJob>()
            .short(&["cj"])
            .categories(&["all"])
            .status::<CronJob>()
            .build(),
        entry::<Job>().categories(&["all"]).status::<Job>().build(),
    ]
}

fn template_labels(t: &PodTemplateSpec) -> Option<&BTreeMap<String, String>> {
    t.metadata.as_ref().and_then(|m| m.labels.as_ref())
}

fn shown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

/// The rules a Job's spec and a CronJob's job template share (the selector is the Job's own).
fn validate_job_spec(errs: &mut Vec<FieldError>, spec: &JobSpec, path: &str) {
    non_negative(errs, &format!("{path}.parallelism"), spec.parallelism);
    non_negative(errs, &format!("{path}.completions"), spec.completions);
    non_negative(
        errs,
        &format!("{path}.activeDeadlineSeconds"),
        spec.active_deadline_seconds,
    );
    non_negative(errs, &format!("{path}.backoffLimit"), spec.backoff_limit);
    non_negative(
        errs,
        &format!("{path}.ttlSecondsAfterFinished"),
        spec.ttl_seconds_after_finished,
    );
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                errs.push(
                    FieldError::required(format!("{path}.completions"))
                        .with_message("Required value: when completion mode is Indexed"),
                );
            }
        }
        Some(m) => errs.push(FieldError::not_supported(
            format!("{path}.completionMode"),
            m,
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(b) = spec.backoff_limit_per_index {
        non_negative(errs, &format!("{path}.backoffLimitPerIndex"), Some(b));
        if !indexed {
            errs.push(FieldError::invalid(
                format!("{path}.backoffLimitPerIndex"),
                format!("Invalid value: {b}: requires indexed completion mode"),
            ));
        }
    }
    if let Some(m) = spec.max_failed_indexes {
        non_negative(errs, &format!("{path}.maxFailedIndexes"), Some(m));
        if spec.backoff_limit_per_index.is_none() {
            errs.push(
                FieldError::required(format!("{path}.backoffLimitPerIndex"))
                    .with_message("Required value: when maxFailedIndexes is specified"),
            );
        }
        if spec.completions.is_some_and(|c| m > c) {
            errs.push(FieldError::invalid(
                format!("{path}.maxFailedIndexes"),
                format!("Invalid value: {m}: must be less than or equal to completions"),
            ));
        }
    }
    if let Some(p) = spec.pod_replacement_policy.as_deref() {
        let allowed: &[&str] = if spec.pod_failure_policy.is_some() {
            &["Failed"]
        } else {
            &["Failed", "TerminatingOrFailed"]
        };
        one_of(
            errs,
            &format!("{path}.podReplacementPolicy"),
            Some(p),
            allowed,
        );
    }
    let tp = format!("{path}.template.spec");
    let ps = spec.template.spec.clone().unwrap_or_default();
    errs.extend(validate_pod_spec(&ps, &tp));
    let restart = ps.restart_policy.as_deref().unwrap_or("Always");
    if !matches!(restart, "OnFailure" | "Never") {
        errs.push(FieldError::not_supported(
            format!("{tp}.restartPolicy"),
            restart,
            &["OnFailure", "Never"],
        ));
    }
}

/// The labels and selector a Job gets unless it asks for a manual selector: every label is added
/// only when missing, so conflicting user labels surface in validation.
fn generate_selector(meta: &ObjectMeta, spec: &mut JobSpec) {
    let uid = meta.uid.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .get_or_insert_default()
        .labels
        .get_or_insert_default();
    for (k, v) in [
        (LEGACY_JOB_NAME, &name),
        (JOB_NAME, &name),
        (LEGACY_CONTROLLER_UID, &uid),
        (CONTROLLER_UID, &uid),
    ] {
        labels.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    spec.selector
        .get_or_insert_default()
        .match_labels
        .get_or_insert_default()
        .entry(CONTROLLER_UID.to_string())
        .or_insert(uid);
}

/// That a generated selector is what generation makes: the template carries the job's uid and
/// name, and the selector selects exactly on them.
fn validate_generated_selector(errs: &mut Vec<FieldError>, meta: &ObjectMeta, spec: &JobSpec) {
    let uid = meta.uid.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    if uid.is_empty() {
        errs.push(FieldError::required("metadata.uid"));
    }
    let labels = template_labels(&spec.template);
    for (k, want) in [
        (LEGACY_CONTROLLER_UID, &uid),
        (LEGACY_JOB_NAME, &name),
        (CONTROLLER_UID, &uid),
        (JOB_NAME, &name),
    ] {
        let path = format!("spec.template.metadata.labels[{k}]");
        match labels.and_then(|l| l.get(k)) {
            None => errs
                .push(FieldError::required(path).with_message(format!("Required value: {want}"))),
            Some(v) if v != want => errs.push(FieldError::invalid(
                path,
                format!("Invalid value: {}: must be '{want}'", go_map(labels)),
            )),
            Some(_) => {}
        }
    }
    let expected: BTreeMap<String, String> = [
        (CONTROLLER_UID.to_string(), uid),
        (JOB_NAME.to_string(), name),
    ]
    .into();
    if let Some(sel) = &spec.selector
        && !selector_matches(sel, &expected)
    {
        errs.push(FieldError::invalid(
            "spec.selector",
            format!(
                "Invalid value: {}: `selector` not auto-generated",
                go_selector(Some(sel))
            ),
        ));
    }
}

/// A pod template without what a suspended, never-started Job may still change.
fn without_scheduling_directives(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut meta = t.metadata.clone().unwrap_or_default();
    meta.labels = None;
    meta.annotations = None;
    let mut spec = t.spec.clone().unwrap_or_default();
    spec.node_selector = None;
    spec.affinity = None;
    spec.tolerations = None;
    spec.scheduling_gates = None;
    PodTemplateSpec {
        metadata: Some(meta),
        spec: Some(spec),
    }
}

/// The Status column: the first of Complete, Failed, Terminating, Suspended, FailureTarget,
/// SuccessCriteriaMet that holds, else Running.
fn job_status(job: &Job) -> &'static str {
    let has = |t: &str| {
        job.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

// ---------------------------------------------------------------- Job

impl Kind for Job {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
            spec.parallelism = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        if spec.backoff_limit.is_none() {
            spec.backoff_limit = Some(if spec.backoff_limit_per_index.is_some() {
                i32::MAX
            } else {
                6
            });
        }
        spec.completion_mode
            .get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        let replacement = if spec.pod_failure_policy.is_some() {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        spec.pod_replacement_policy
            .get_or_insert_with(|| replacement.into());
        for rule in spec
            .pod_failure_policy
            .iter_mut()
            .flat_map(|p| p.rules.iter_mut())
        {
            for pattern in rule.on_pod_conditions.iter_mut().flatten() {
                if pattern.status.is_empty() {
                    pattern.status = "True".into();
                }
            }
        }
        if spec.manual_selector != Some(true) {
            generate_selector(&self.metadata, spec);
        }
        // The Job carries its template's labels when it has none of its own.
        if let Some(labels) = template_labels(&spec.template)
            && self.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty)
        {
            self.metadata.labels = Some(labels.clone());
        }
        if let Some(ps) = spec.template.spec.as_mut() {
            default_pod_spec(ps);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        match &spec.selector {
            None => errs.push(FieldError::required("spec.selector")),
            Some(sel) => {
                validate_selector(&mut errs, sel, "spec.selector");
                let labels = template_labels(&spec.template);
                if !selector_matches(sel, &labels.cloned().unwrap_or_default()) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            go_map(labels)
                        ),
                    ));
                }
            }
        }
        if spec.manual_selector != Some(true) {
            validate_generated_selector(&mut errs, &self.metadata, &spec);
        }
        validate_job_spec(&mut errs, &spec, "spec");
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let (new, prev) = (
            self.spec.clone().unwrap_or_default(),
            old.spec.clone().unwrap_or_default(),
        );
        immutable_selector(&mut errs, new.selector.as_ref(), prev.selector.as_ref());
        // A suspended Job that never started may still move its pods (labels, annotations,
        // node selector, affinity, tolerations, scheduling gates).
        let never_started = prev.suspend == Some(true)
            && old.status.as_ref().is_none_or(|s| s.start_time.is_none());
        let template_changed = if never_started {
            without_scheduling_directives(&new.template)
                != without_scheduling_directives(&prev.template)
        } else {
            new.template != prev.template
        };
        if template_changed {
            errs.push(FieldError::invalid(
                "spec.template",
                "Invalid value: field is immutable",
            ));
        }
        if new.completions != prev.completions {
            if new.completion_mode.as_deref() != Some("Indexed") {
                errs.push(FieldError::invalid(
                    "spec.completions",
                    format!(
                        "Invalid value: {}: field is immutable",
                        shown(new.completions)
                    ),
                ));
            } else if let Some(c) = new.completions
                && Some(c) != new.parallelism
            {
                errs.push(FieldError::invalid(
                    "spec.completions",
                    format!(
                        "Invalid value: {c}: can only be modified in tandem with spec.parallelism"
                    ),
                ));
            }
        }
        if new.completion_mode != prev.completion_mode {
            errs.push(FieldError::invalid(
                "spec.completionMode",
                format!(
                    "Invalid value: {}: field is immutable",
                    shown(new.completion_mode.as_deref().map(|m| format!("{m:?}")))
                ),
            ));
        }
        if new.backoff_limit_per_index != prev.backoff_limit_per_index {
            errs.push(FieldError::invalid(
                "spec.backoffLimitPerIndex",
                format!(
                    "Invalid value: {}: field is immutable",
                    shown(new.backoff_limit_per_index)
                ),
            ));
        }
        if new.pod_failure_policy != prev.pod_failure_policy {
            errs.push(FieldError::invalid(
                "spec.podFailurePolicy",
                "Invalid value: field is immutable",
            ));
        }
        if new.managed_by != prev.managed_by {
            errs.push(FieldError::invalid(
                "spec.managedBy",
                format!(
                    "Invalid value: {}: field is immutable",
                    shown(new.managed_by.as_deref().map(|m| format!("{m:?}")))
                ),
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                col("Status", "The state the job is in."),
                col(
                    "Completions",
                    "Succeeded pods out of the completions wanted.",
                ),
                col("Duration", "How long the job ran, or has been running."),
                age_column(),
            ],
            true,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let succeeded = st.succeeded.unwrap_or(0);
        let completions = match (spec.completions, spec.parallelism.unwrap_or(0)) {
            (Some(c), _) => format!("{succeeded}/{c}"),
            (None, p) if p > 1 => format!("{succeeded}/1 of {p}"),
            (None, _) => format!("{succeeded}/1"),
        };
        let duration = match (&st.start_time, &st.completion_time) {
            (None, _) => String::new(),
            (Some(start), None) => {
                human_duration(Timestamp::now().duration_since(start.0).as_secs().max(0))
            }
            (Some(start), Some(end)) => {
                human_duration(end.0.duration_since(start.0).as_secs().max(0))
            }
        };
        let (containers, images) = containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(&self.metadata),
            json!(job_status(self)),
            json!(completions),
            json!(duration),
            age_cell(&self.metadata),
            containers,
            images,
            selector_cell(spec.selector.as_ref()),
        ]
    }
}

// ---------------------------------------------------------------- CronJob

/// The CronJob rules; `TZ=` in the schedule only stays allowed on objects that had it.
fn check_cron(cj: &CronJob, allow_tz_in_schedule: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = cj.spec.clone().unwrap_or_default();
    let schedule = spec.schedule.as_str();
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else {
        if let Err(e) = crate::cron::validate_schedule(schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                format!("Invalid value: {schedule:?}: {e}"),
            ));
        }
        if schedule.contains("TZ") {
            if !allow_tz_in_schedule {
                errs.push(FieldError::invalid("spec.schedule", format!("Invalid value: {schedule:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead")));
            } else if spec.time_zone.is_some() {
                errs.push(FieldError::invalid("spec.schedule", format!("Invalid value: {schedule:?}: cannot use both timeZone field and TZ or CRON_TZ in schedule")));
            }
        }
    }
    if let Some(tz) = spec.time_zone.as_deref() {
        if tz.is_empty() {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                "Invalid value: \"\": timeZone must be nil or non-empty string",
            ));
        } else if !crate::cron::valid_time_zone_name(tz) {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                format!("Invalid value: {tz:?}: unknown time zone {tz}"),
            ));
        } else if tz.eq_ignore_ascii_case("Local") {
            errs.push(FieldError::invalid("spec.timeZone", format!("Invalid value: {tz:?}: timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones")));
        }
    }
    match spec.concurrency_policy.as_deref() {
        Some("") => errs.push(FieldError::required("spec.concurrencyPolicy")),
        p => one_of(
            &mut errs,
            "spec.concurrencyPolicy",
            p,
            &["Allow", "Forbid", "Replace"],
        ),
    }
    non_negative(
        &mut errs,
        "spec.startingDeadlineSeconds",
        spec.starting_deadline_seconds,
    );
    non_negative(
        &mut errs,
        "spec.successfulJobsHistoryLimit",
        spec.successful_jobs_history_limit,
    );
    non_negative(
        &mut errs,
        "spec.failedJobsHistoryLimit",
        spec.failed_jobs_history_limit,
    );
    let job = spec.job_template.spec.clone().unwrap_or_default();
    validate_job_spec(&mut errs, &job, "spec.jobTemplate.spec");
    if let Some(sel) = &job.selector {
        errs.push(FieldError::invalid(
            "spec.jobTemplate.spec.selector",
            format!(
                "Invalid value: {}: `selector` will be auto-generated",
                go_selector(Some(sel))
            ),
        ));
    }
    if job.manual_selector == Some(true) {
        errs.push(FieldError::not_supported(
            "spec.jobTemplate.spec.manualSelector",
            "true",
            &["nil", "false"],
        ));
    }
    errs
}

impl Kind for CronJob {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_default();
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(ps) = spec
            .job_template
            .spec
            .as_mut()
            .and_then(|j| j.template.spec.as_mut())
        {
            default_pod_spec(ps);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = check_cron(self, false);
        // Job names add an 11-character suffix and must stay DNS-1035 labels.
        if let Some(name) = self.metadata.name.as_deref()
            && name.len() > 52
        {
            errs.push(FieldError::invalid(
                "metadata.name",
                format!("Invalid value: {name:?}: must be no more than 52 characters"),
            ));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        check_cron(
            self,
            old.spec.as_ref().is_some_and(|s| s.schedule.contains("TZ")),
        )
    }

    fn columns() -> Vec<Column> {
        with_template_columns(
            vec![
                name_column(),
                col("Schedule", "When the job runs, in cron format."),
                col("Timezone", "The time zone the schedule is read in."),
                Column::new(
                    "Suspend",
                    "boolean",
                    "Whether further runs are suspended.",
                    0,
                ),
                Column::new("Active", "integer", "The number of jobs running now.", 0),
                col("Last Schedule", "When the job was last scheduled."),
                age_column(),
            ],
            true,
        )
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let job = spec.job_template.spec.clone().unwrap_or_default();
        let (containers, images) = containers_images(job.template.spec.as_ref());
        let suspend = match spec.suspend {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        let last = st
            .last_schedule_time
            .as_ref()
            .map_or_else(|| "<none>".to_string(), |t| human_age(Some(t)));
        vec![
            name_cell(&self.metadata),
            json!(spec.schedule),
            or_none(spec.time_zone.clone().unwrap_or_default()),
            json!(suspend),
            json!(st.active.as_ref().map_or(0, Vec::len)),
            json!(last),
            age_cell(&self.metadata),
            containers,
            images,
            selector_cell(job.selector.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(restart: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": restart, "containers": [{"name": "pi", "image": "perl:5.34"}]}}},
        }))
        .unwrap()
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn job_defaults_generate_its_selector() {
        let mut j = job("Never");
        j.defaults();
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(
            (spec.parallelism, spec.completions, spec.backoff_limit),
            (Some(1), Some(1), Some(6))
        );
        assert_eq!(
            (
                spec.completion_mode.as_deref(),
                spec.suspend,
                spec.manual_selector
            ),
            (Some("NonIndexed"), Some(false), None)
        );
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[CONTROLLER_UID],
            "u-1"
        );
        let labels = template_labels(&spec.template).unwrap();
        for (k, v) in [
            (CONTROLLER_UID, "u-1"),
            (LEGACY_CONTROLLER_UID, "u-1"),
            (JOB_NAME, "pi"),
            (LEGACY_JOB_NAME, "pi"),
        ] {
            assert_eq!(labels[k], v, "{k}");
        }
        assert_eq!(j.metadata.labels.as_ref(), Some(labels));
        assert_eq!(j.validate(), vec![]);
        let mut parallel = job("Never");
        parallel.spec.as_mut().unwrap().parallelism = Some(3);
        parallel.defaults();
        assert_eq!(parallel.spec.as_ref().unwrap().completions, None);
        assert_eq!(parallel.cells()[2], json!("0/1 of 3"));
    }

    #[test]
    fn job_restart_policy_and_selectors() {
        let mut always = job("Always");
        always.defaults();
        let errs = always.validate();
        assert_eq!(fields(&errs), ["spec.template.spec.restartPolicy"]);
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let mut own = job("Never");
        own.spec.as_mut().unwrap().selector =
            serde_json::from_value(json!({"matchLabels": {"app": "pi"}})).unwrap();
        own.defaults();
        let errs = own.validate();
        assert_eq!(
            fields(&errs),
            ["spec.template.metadata.labels", "spec.selector"]
        );
        assert!(
            errs[1].message.ends_with("`selector` not auto-generated"),
            "{errs:?}"
        );
        let mut manual = job("OnFailure");
        let spec = manual.spec.as_mut().unwrap();
        spec.manual_selector = Some(true);
        spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "pi"}})).unwrap();
        spec.template.metadata = Some(ObjectMeta {
            labels: Some([("app".to_string(), "pi".to_string())].into()),
            ..Default::default()
        });
        manual.defaults();
        assert_eq!(manual.validate(), vec![]);
        manual.spec.as_mut().unwrap().template.metadata = None;
        assert_eq!(
            fields(&manual.validate()),
            ["spec.template.metadata.labels"]
        );
    }

    #[test]
    fn job_update_rules() {
        let mut old = job("Never");
        old.defaults();
        let mut new = old.clone();
        new.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("perl:5.36".into());
        new.spec.as_mut().unwrap().completions = Some(2);
        assert_eq!(
            fields(&new.validate_update(&old)),
            ["spec.template", "spec.completions"]
        );
        let mut suspended = old.clone();
        suspended.spec.as_mut().unwrap().suspend = Some(true);
        let mut moved = suspended.clone();
        moved
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = Some([("zone".to_string(), "a".to_string())].into());
        assert_eq!(moved.validate_update(&suspended), vec![]);
        assert_eq!(fields(&moved.validate_update(&old)), ["spec.template"]);
    }

    #[test]
    fn job_cells() {
        let mut j = job("Never");
        j.defaults();
        j.status = serde_json::from_value(json!({
            "succeeded": 1,
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T00:00:30Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        }))
        .unwrap();
        let cells = j.cells();
        assert_eq!(cells.len(), Job::columns().len());
        assert_eq!(cells[1..4], [json!("Complete"), json!("1/1"), json!("30s")]);
        assert_eq!(cells[5..7], [json!("pi"), json!("perl:5.34")]);
        assert_eq!(cells[7], json!("batch.kubernetes.io/controller-uid=u-1"));
    }

    fn cron(schedule: &str) -> CronJob {
        let mut c: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "tick"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "t", "image": "busybox"}]}}}}},
        }))
        .unwrap();
        c.defaults();
        c
    }

    #[test]
    fn cron_schedules() {
        assert_eq!(crate::cron::validate_schedule("*/5 * * * *"), Ok(()));
        assert_eq!(crate::cron::validate_schedule("@hourly"), Ok(()));
        assert!(crate::cron::validate_schedule("61 * * * *").is_err());
        assert!(crate::cron::validate_schedule("* * *").is_err());
        assert_eq!(cron("*/5 * * * *").validate(), vec![]);
        assert_eq!(cron("@hourly").validate(), vec![]);
        let errs = cron("61 * * * *").validate();
        assert_eq!(fields(&errs), ["spec.schedule"]);
        assert_eq!(
            errs[0].message,
            "Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        );
        assert_eq!(fields(&cron("* * *").validate()), ["spec.schedule"]);
        assert_eq!(fields(&cron("").validate()), ["spec.schedule"]);
        assert_eq!(
            fields(&cron("TZ=UTC 0 * * * *").validate()),
            ["spec.schedule"]
        );
    }

    #[test]
    fn cronjob_defaults_rules_and_cells() {
        let mut c = cron("0 3 * * MON");
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(
            (spec.concurrency_policy.as_deref(), spec.suspend),
            (Some("Allow"), Some(false))
        );
        assert_eq!(
            (
                spec.successful_jobs_history_limit,
                spec.failed_jobs_history_limit
            ),
            (Some(3), Some(1))
        );
        let cells = c.cells();
        assert_eq!(cells.len(), CronJob::columns().len());
        assert_eq!(
            cells[1..6],
            [
                json!("0 3 * * MON"),
                json!("<none>"),
                json!("False"),
                json!(0),
                json!("<none>")
            ]
        );
        let spec = c.spec.as_mut().unwrap();
        spec.time_zone = Some(String::new());
        spec.concurrency_policy = Some("Sometimes".into());
        spec.job_template
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("Always".into());
        assert_eq!(
            fields(&c.validate()),
            [
                "spec.timeZone",
                "spec.concurrencyPolicy",
                "spec.jobTemplate.spec.template.spec.restartPolicy"
            ]
        );
    }
}
