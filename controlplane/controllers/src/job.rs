//! The Job controller, as upstream's: pods carry the `batch.kubernetes.io/job-tracking`
//! finalizer, and a finished pod is counted exactly once, through
//! `status.uncountedTerminatedPods` (record the uid, drop the finalizer, then count it), so a
//! restart or a deleted pod never miscounts. Non-indexed and Indexed completion (index
//! annotation and label, `<job>-<index>` hostname, `JOB_COMPLETION_INDEX`), parallelism,
//! completions (or a work queue without them), backoffLimit with the exponential pod
//! back-off (10 s doubling to 6 min), activeDeadlineSeconds, podFailurePolicy (FailJob,
//! Ignore, Count on exit codes and pod conditions), suspend and resume,
//! podReplacementPolicy, ttlSecondsAfterFinished, and the SuccessCriteriaMet/Complete and
//! FailureTarget/Failed conditions with upstream's reasons and events.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicyRule, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::events::EventType;
use strake_apimachinery::registry::Propagation;
use strake_apimachinery::{ApiError, DeleteOptions, Part};
use tokio::time::Instant;

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::ownership::claim;
use crate::pods;
use crate::queue::Queue;
use crate::replicaset::pod_from_template;
use crate::runtime::{self, Action, Expectations, controller_of};

pub const NAME: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
const BURST: usize = 500;
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub struct Jobs {
    client: Client,
    jobs: Reader<Job>,
    pods: Reader<Pod>,
    expectations: Expectations,
    /// When each job last saw a pod fail, for the pod back-off.
    last_failure: Mutex<HashMap<ObjectRef, Instant>>,
    /// Pods whose tracking finalizer this controller removed and whose removal the pod cache
    /// has not shown yet: counted already, they must not be recorded again from a stale copy.
    released: Mutex<HashMap<ObjectRef, HashSet<String>>>,
    /// The resourceVersion of each job's last status write: a cache older than that would
    /// count and create from stale numbers, so the job waits for the cache to catch up.
    written: Mutex<HashMap<ObjectRef, u64>>,
    queue: Arc<Queue<ObjectRef>>,
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_KEY))
        .and_then(|v| v.parse().ok())
}

fn rv_of(j: &Job) -> Option<u64> {
    j.metadata.resource_version.as_deref()?.parse().ok()
}

fn has_tracking(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

/// Failed as the Job counts it: failed, or deleted before it succeeded.
fn pod_failed(p: &Pod) -> bool {
    pods::phase(p) == "Failed"
        || (p.metadata.deletion_timestamp.is_some() && pods::phase(p) != "Succeeded")
}

fn finished(p: &Pod) -> bool {
    matches!(pods::phase(p), "Succeeded" | "Failed")
}

fn condition_true(st: &JobStatus, ty: &str) -> bool {
    st.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == ty && c.status == "True")
}

fn set_condition(st: &mut JobStatus, ty: &str, status: &str, reason: &str, message: &str) {
    let conds = st.conditions.get_or_insert_default();
    let now = Some(Time(Timestamp::now()));
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == ty) {
        if c.status != status {
            c.last_transition_time = now.clone();
        }
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return;
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = now;
        return;
    }
    conds.push(JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: now.clone(),
        last_transition_time: now,
    });
}

/// Indexes as upstream writes them: "1,3-5,7".
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    set.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    set.insert(n);
                }
            }
        }
    }
    set
}

/// What a failed pod's first matching pod failure policy rule says, with its message.
fn failure_rule<'a>(
    rules: &'a [PodFailurePolicyRule],
    pod: &Pod,
) -> Option<(&'a str, String, usize)> {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let pod_name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    for (i, rule) in rules.iter().enumerate() {
        if let Some(req) = &rule.on_exit_codes {
            for cs in &statuses {
                if req.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                    continue;
                }
                let Some(code) = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                if code == 0 {
                    continue;
                }
                let hit = match req.operator.as_str() {
                    "In" => req.values.contains(&code),
                    "NotIn" => !req.values.contains(&code),
                    _ => false,
                };
                if hit {
                    let msg = format!(
                        "Container {} for pod {pod_name} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, rule.action
                    );
                    return Some((rule.action.as_str(), msg, i));
                }
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let hit = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == pattern.type_ && c.status == pattern.status)
                });
            if hit {
                let msg = format!(
                    "Pod {pod_name} has condition {} matching {} rule at index {i}",
                    pattern.type_, rule.action
                );
                return Some((rule.action.as_str(), msg, i));
            }
        }
    }
    None
}

impl Jobs {
    pub fn new(client: &Client, jobs: &mut Reflector<Job>, pods: &mut Reflector<Pod>) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        jobs.on_change(runtime::enqueue_self(&queue));
        pods.on_change(runtime::enqueue_controller::<Pod, Job>(&queue));
        Arc::new(Self {
            client: client.named(NAME),
            jobs: jobs.reader(),
            pods: pods.reader(),
            expectations: Expectations::default(),
            last_failure: Mutex::default(),
            released: Mutex::default(),
            written: Mutex::default(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.jobs.ready().await;
        self.pods.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.jobs);
        // Pods whose Job is gone still hold the tracking finalizer: queue their owners' keys.
        for p in self.pods.list() {
            if let Some(r) = controller_of(p.as_ref(), "Job") {
                self.queue
                    .add(ObjectRef::new(p.metadata.namespace.as_deref(), &r.name));
            }
        }
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn drop_finalizer(&self, pod: &Pod) -> Result<(), ApiError> {
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let res = self
            .client
            .modify::<Pod>(ns, name, Part::Main, |p| {
                let Some(f) = p.metadata.finalizers.as_mut() else {
                    return false;
                };
                let before = f.len();
                f.retain(|x| x != TRACKING_FINALIZER);
                before != f.len()
            })
            .await;
        match res {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the status computed from `job` as the cache showed it: the counts accumulate,
    /// so a write based on a stale read must fail (409) and be redone, never overwrite.
    async fn write_status(&self, job: &Job, st: &JobStatus) -> Result<Job, ApiError> {
        let mut next = job.clone();
        next.status = Some(st.clone());
        let out = self.client.replace(&next, Part::Status).await?;
        if let Some(rv) = rv_of(&out) {
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ObjectRef::of(&out), rv);
        }
        Ok(out)
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(job) = self.jobs.get(&key) else {
            // Gone: its pods must not keep the finalizer.
            self.expectations.forget(&key);
            self.released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            for p in self.pods.in_namespace(key.ns().unwrap_or_default()) {
                if has_tracking(&p)
                    && controller_of(p.as_ref(), "Job").is_some_and(|r| r.name == key.name)
                {
                    self.drop_finalizer(&p).await?;
                }
            }
            return Ok(Action::await_change());
        };
        let seen = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if seen.is_some_and(|w| rv_of(&job).is_none_or(|rv| rv < w)) {
            // Our last write has not reached the cache; its arrival queues the job again.
            return Ok(Action::await_change());
        }
        let mut job = (*job).clone();
        let spec = job.spec.clone().unwrap_or_default();
        let mut st = job.status.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        // Checked before the pods are read: a pod that reaches the cache after this snapshot
        // must not count as missing.
        let satisfied = self.expectations.satisfied(&key, &self.pods);
        let all: Vec<Arc<Pod>> = claim(&self.client, &job, &selector, &self.pods).await?;
        let done = condition_true(&st, "Complete") || condition_true(&st, "Failed");

        // Count finished pods exactly once: record their uids, drop the finalizer, count.
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let rules = spec
            .pod_failure_policy
            .as_ref()
            .map(|p| p.rules.clone())
            .unwrap_or_default();
        let mut uncounted = st.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut recorded: HashSet<String> = uncounted
            .succeeded
            .iter()
            .flatten()
            .chain(uncounted.failed.iter().flatten())
            .cloned()
            .collect();
        let mut completed = parse_indexes(st.completed_indexes.as_deref().unwrap_or_default());
        let mut fail_job: Option<(String, String)> = None;
        let mut ignored: Vec<Arc<Pod>> = Vec::new();
        let mut new_records = false;
        let released: HashSet<String> = {
            let mut map = self.released.lock().unwrap_or_else(|p| p.into_inner());
            let set = map.entry(key.clone()).or_default();
            // Forget the ones the cache now shows released (or gone).
            set.retain(|uid| {
                all.iter()
                    .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()) && has_tracking(p))
            });
            set.clone()
        };
        // Pods this controller deletes (suspended, or finishing) are not failures.
        let deleting_by_us = spec.suspend == Some(true)
            || condition_true(&st, "FailureTarget")
            || condition_true(&st, "SuccessCriteriaMet");
        for p in all.iter().filter(|p| has_tracking(p)) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if recorded.contains(&uid) || released.contains(&uid) {
                continue;
            }
            if pods::phase(p) == "Succeeded" {
                uncounted
                    .succeeded
                    .get_or_insert_default()
                    .push(uid.clone());
                if let Some(i) = index_of(p) {
                    completed.insert(i);
                }
            } else if deleting_by_us
                && pods::phase(p) != "Failed"
                && p.metadata.deletion_timestamp.is_some()
            {
                ignored.push(p.clone());
                continue;
            } else if pod_failed(p) {
                match failure_rule(&rules, p) {
                    Some(("Ignore", _, _)) => {
                        ignored.push(p.clone());
                        continue;
                    }
                    Some(("FailJob", msg, _)) => fail_job = Some(("PodFailurePolicy".into(), msg)),
                    _ => {}
                }
                uncounted.failed.get_or_insert_default().push(uid.clone());
                self.last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), Instant::now());
            } else {
                continue;
            }
            recorded.insert(uid);
            new_records = true;
        }
        if new_records {
            st.uncounted_terminated_pods = Some(uncounted.clone());
            if indexed {
                st.completed_indexes = Some(format_indexes(&completed));
            }
            job = self.write_status(&job, &st).await?;
        }
        for p in all.iter().filter(|p| has_tracking(p)) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if recorded.contains(&uid) || ignored.iter().any(|i| i.metadata.uid == p.metadata.uid) {
                self.drop_finalizer(p).await?;
                self.released
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .insert(uid);
            }
        }
        // Everything recorded is now free of the finalizer: count it.
        let counted_s = uncounted.succeeded.as_ref().map_or(0, Vec::len) as i32;
        let counted_f = uncounted.failed.as_ref().map_or(0, Vec::len) as i32;
        if counted_s + counted_f > 0 {
            st.succeeded = Some(st.succeeded.unwrap_or(0) + counted_s);
            st.failed = Some(st.failed.unwrap_or(0) + counted_f);
            st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
            // Written before anything acts on the new counts: a stale pass fails here.
            job = self.write_status(&job, &st).await?;
        }

        let active: Vec<&Arc<Pod>> = all
            .iter()
            .filter(|p| !finished(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        let terminating = all
            .iter()
            .filter(|p| !finished(p) && p.metadata.deletion_timestamp.is_some())
            .count() as i32;
        let succeeded = st.succeeded.unwrap_or(0);
        let restarts: i32 = if spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure")
        {
            active.iter().map(|p| pods::restarts(p)).sum()
        } else {
            0
        };
        let failed = st.failed.unwrap_or(0) + restarts;
        let now = Timestamp::now();
        let suspended = spec.suspend == Some(true);
        if !suspended && !done && st.start_time.is_none() {
            st.start_time = Some(Time(now));
        }

        // Why the job fails, if it does.
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline_left = spec
            .active_deadline_seconds
            .zip(st.start_time.as_ref())
            .map(|(secs, start)| secs - (now.as_second() - start.0.as_second()));
        let failure = if done {
            None
        } else if let Some(f) = fail_job.or_else(|| {
            condition_true(&st, "FailureTarget").then(|| {
                let c = st
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "FailureTarget");
                (
                    c.and_then(|c| c.reason.clone()).unwrap_or_default(),
                    c.and_then(|c| c.message.clone()).unwrap_or_default(),
                )
            })
        }) {
            Some(f)
        } else if failed > backoff_limit {
            Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ))
        } else if !suspended && deadline_left.is_some_and(|l| l <= 0) {
            Some((
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into(),
            ))
        } else {
            None
        };
        let completions = spec.completions;
        let complete = !done
            && failure.is_none()
            && match completions {
                Some(n) if indexed => (0..n).all(|i| completed.contains(&i)),
                Some(n) => succeeded >= n,
                None => succeeded > 0 && active.is_empty(),
            };

        let mut action = Action::await_change();
        if let Some((reason, message)) = &failure {
            set_condition(&mut st, "FailureTarget", "True", reason, message);
            self.delete_pods(&job, &key, &active).await?;
            if active.is_empty() && terminating == 0 {
                set_condition(&mut st, "Failed", "True", reason, message);
                self.client
                    .event(&job, EventType::Warning, reason, message)
                    .await;
            }
        } else if complete {
            set_condition(
                &mut st,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            self.delete_pods(&job, &key, &active).await?;
            if active.is_empty() && terminating == 0 {
                set_condition(
                    &mut st,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                st.completion_time = Some(Time(now));
                self.client
                    .event(&job, EventType::Normal, "Completed", "Job completed")
                    .await;
            }
        } else if !done && suspended {
            self.delete_pods(&job, &key, &active).await?;
            if !condition_true(&st, "Suspended") {
                set_condition(
                    &mut st,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                self.client
                    .event(&job, EventType::Normal, "Suspended", "Job suspended")
                    .await;
            }
        } else if !done {
            if condition_true(&st, "Suspended") {
                set_condition(&mut st, "Suspended", "False", "JobResumed", "Job resumed");
                st.start_time = Some(Time(now));
                self.client
                    .event(&job, EventType::Normal, "Resumed", "Job resumed")
                    .await;
            }
            if satisfied {
                action = self
                    .manage(
                        &job,
                        &key,
                        &active,
                        terminating,
                        succeeded,
                        failed,
                        &completed,
                    )
                    .await?;
            }
            if let Some(left) = deadline_left.filter(|l| *l > 0) {
                action = action.min(Action::requeue(Duration::from_secs(left as u64)));
            }
        }
        st.active = Some(active.len() as i32);
        st.ready = Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32);
        st.terminating = Some(terminating);
        st.succeeded.get_or_insert(0);
        st.failed.get_or_insert(0);
        if st.uncounted_terminated_pods.is_none() {
            st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
        }
        if indexed {
            st.completed_indexes = Some(format_indexes(&completed));
        }
        let job = if job.status.as_ref() != Some(&st) {
            self.write_status(&job, &st).await?
        } else {
            job
        };
        // A finished job goes ttlSecondsAfterFinished after it finished.
        let st = job.status.clone().unwrap_or_default();
        if let Some(ttl) = spec.ttl_seconds_after_finished
            && (condition_true(&st, "Complete") || condition_true(&st, "Failed"))
        {
            let finished_at = st
                .conditions
                .iter()
                .flatten()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .and_then(|c| c.last_transition_time.as_ref())
                .map_or(now, |t| t.0);
            let left = i64::from(ttl) - (now.as_second() - finished_at.as_second());
            if left <= 0 {
                tracing::info!(job = %key, "deleting a finished job after its TTL");
                let opts = DeleteOptions {
                    propagation: Some(Propagation::Background),
                    precondition_uid: job.metadata.uid.clone(),
                    ..Default::default()
                };
                self.client
                    .delete::<Job>(key.ns(), &key.name, &opts)
                    .await?;
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(Duration::from_secs(left as u64)));
        }
        Ok(action)
    }

    async fn delete_pods(
        &self,
        job: &Job,
        key: &ObjectRef,
        victims: &[&Arc<Pod>],
    ) -> Result<(), ApiError> {
        for p in victims {
            let name = p.metadata.name.clone().unwrap_or_default();
            self.expectations.expect_delete(key, &name);
            match self
                .client
                .delete::<Pod>(key.ns(), &name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {
                    self.client
                        .event(
                            job,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates or deletes pods toward the wanted number of active ones.
    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        job: &Job,
        key: &ObjectRef,
        active: &[&Arc<Pod>],
        terminating: i32,
        succeeded: i32,
        failed: i32,
        completed: &BTreeSet<i32>,
    ) -> Result<Action, ApiError> {
        let spec = job.spec.clone().unwrap_or_default();
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let wanted = match spec.completions {
            Some(n) if indexed => parallelism.min(n - completed.len() as i32),
            Some(n) => parallelism.min(n - succeeded),
            None if succeeded > 0 => active.len() as i32,
            None => parallelism,
        }
        .max(0) as usize;
        // With podReplacementPolicy Failed, a terminating pod still holds its place.
        let holding = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
            terminating as usize
        } else {
            0
        };
        if active.len() > wanted {
            let mut extra: Vec<&Arc<Pod>> = active.to_vec();
            extra.sort_by(|a, b| {
                index_of(b)
                    .cmp(&index_of(a))
                    .then_with(|| pods::deletion_order(a, b))
            });
            extra.truncate(active.len() - wanted);
            self.delete_pods(job, key, &extra).await?;
            return Ok(Action::await_change());
        }
        let missing = wanted.saturating_sub(active.len() + holding).min(BURST);
        if missing == 0 {
            return Ok(Action::await_change());
        }
        // Failed pods are replaced after an exponential back-off.
        if failed > 0 {
            let since = self
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .map(|t| t.elapsed());
            let delay = BACKOFF_BASE
                .saturating_mul(
                    1u32.checked_shl((failed - 1).clamp(0, 16) as u32)
                        .unwrap_or(u32::MAX),
                )
                .min(BACKOFF_MAX);
            if let Some(since) = since
                && since < delay
            {
                return Ok(Action::requeue(delay - since));
            }
        }
        let template = spec.template.clone();
        let indexes: Vec<Option<i32>> = if indexed {
            let n = spec.completions.unwrap_or(0);
            let running: HashSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
            (0..n)
                .filter(|i| !completed.contains(i) && !running.contains(i))
                .take(missing)
                .map(Some)
                .collect()
        } else {
            vec![None; missing]
        };
        let job_name = job.metadata.name.clone().unwrap_or_default();
        for index in indexes {
            let mut pod = pod_from_template(job, &template, None);
            pod.metadata
                .finalizers
                .get_or_insert_default()
                .push(TRACKING_FINALIZER.into());
            if let Some(i) = index {
                pod.metadata.generate_name = Some(format!("{job_name}-{i}-"));
                pod.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(INDEX_KEY.into(), i.to_string());
                pod.metadata
                    .labels
                    .get_or_insert_default()
                    .insert(INDEX_KEY.into(), i.to_string());
                if let Some(ps) = pod.spec.as_mut() {
                    if ps.hostname.is_none() {
                        ps.hostname = Some(format!("{job_name}-{i}"));
                    }
                    for c in ps
                        .containers
                        .iter_mut()
                        .chain(ps.init_containers.iter_mut().flatten())
                    {
                        let env = c.env.get_or_insert_default();
                        if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                            env.push(EnvVar {
                                name: "JOB_COMPLETION_INDEX".into(),
                                value: Some(i.to_string()),
                                value_from: None,
                            });
                        }
                    }
                }
            }
            match self.client.create(key.ns(), &pod).await {
                Ok(p) => {
                    let name = p.metadata.name.unwrap_or_default();
                    self.expectations.expect_create(key, &name);
                    self.client
                        .event(
                            job,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        )
                        .await;
                }
                Err(ApiError::Forbidden(m)) => {
                    tracing::debug!(job = %key, message = %m, "pod creation refused");
                    return Ok(Action::await_change());
                }
                Err(e) => {
                    self.client
                        .event(
                            job,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                    return Err(e);
                }
            }
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_ranges_round_trip() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
    }
}
