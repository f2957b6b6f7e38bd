//! The CronJob controller, as upstream's (v2): at each scheduled time (in `spec.timeZone`, a
//! `TZ=` prefix, or UTC) it creates a Job from the template named `<cronjob>-<minutes since
//! the epoch>`, so a run is created once however often the controller looks. Missed runs
//! (the control plane was down) are handled as upstream does: only the most recent missed
//! time is started, if it is still within `startingDeadlineSeconds`, and more than 100
//! missed times are reported. `concurrencyPolicy` Allow, Forbid or Replace; `suspend`;
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; the successful and failed
//! history limits; upstream's events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use strake_apimachinery::events::EventType;
use strake_apimachinery::registry::Propagation;
use strake_apimachinery::{ApiError, DeleteOptions, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action, controller_of};

pub const NAME: &str = "cronjob-controller";
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this are reported instead of counted.
const MAX_MISSED: usize = 100;

pub struct CronJobs {
    client: Client,
    cronjobs: Reader<CronJob>,
    jobs: Reader<Job>,
    queue: Arc<Queue<ObjectRef>>,
}

fn finished(j: &Job) -> Option<&'static str> {
    let conds = j.status.as_ref()?.conditions.as_ref()?;
    for c in conds.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return Some("Complete"),
            "Failed" => return Some("Failed"),
            _ => {}
        }
    }
    None
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The zone a CronJob's schedule runs in; None with the reason when it is unknown here.
fn zone(cj: &CronJob, schedule: &strake_kinds::cron::Schedule) -> Result<TimeZone, String> {
    let name = cj
        .spec
        .as_ref()
        .and_then(|s| s.time_zone.clone())
        .or_else(|| schedule.time_zone.clone());
    match name.as_deref() {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|e| format!("unknown time zone {n}: {e}")),
    }
}

/// The most recent start time in (`earliest`, `now`], and how many there were.
pub fn most_recent(
    schedule: &strake_kinds::cron::Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let mut last = None;
    let mut count = 0;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            break;
        }
        last = Some(next);
        count += 1;
        t = next;
        if count > MAX_MISSED + 1 {
            // Skip ahead: only the latest matters.
            let mut probe = now
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(60))
                .unwrap_or(now);
            while let Some(n) = schedule.next_after(probe, tz) {
                if n > now {
                    break;
                }
                last = Some(n);
                probe = n;
            }
            break;
        }
    }
    (last, count)
}

impl CronJobs {
    pub fn new(
        client: &Client,
        cronjobs: &mut Reflector<CronJob>,
        jobs: &mut Reflector<Job>,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        cronjobs.on_change(runtime::enqueue_self(&queue));
        jobs.on_change(runtime::enqueue_controller::<Job, CronJob>(&queue));
        Arc::new(Self {
            client: client.named(NAME),
            cronjobs: cronjobs.reader(),
            jobs: jobs.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.cronjobs.ready().await;
        self.jobs.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.cronjobs);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(cj) = self.cronjobs.get(&key) else {
            return Ok(Action::await_change());
        };
        let mut cj = (*cj).clone();
        let spec = cj.spec.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let mut jobs: Vec<Arc<Job>> = self
            .jobs
            .owned_by(&uid)
            .into_iter()
            .filter(|j| controller_of(j.as_ref(), "CronJob").is_some_and(|r| r.uid == uid))
            .collect();
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));

        // The active list follows the jobs; a finished one moves the last successful time.
        let mut st = cj.status.clone().unwrap_or_default();
        let active: Vec<ObjectReference> = jobs
            .iter()
            .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .map(|j| job_ref(j))
            .collect();
        for j in &jobs {
            if finished(j) == Some("Complete") {
                let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                if done.is_some()
                    && st.last_successful_time.as_ref().map(|t| t.0) < done.as_ref().map(|t| t.0)
                {
                    st.last_successful_time = done;
                }
            }
        }
        let was_active: Vec<Option<String>> =
            st.active.iter().flatten().map(|r| r.uid.clone()).collect();
        for j in &jobs {
            let name = j.metadata.name.clone().unwrap_or_default();
            if was_active.contains(&j.metadata.uid) {
                match finished(j) {
                    Some("Complete") => {
                        self.client
                            .event(
                                &cj,
                                EventType::Normal,
                                "SawCompletedJob",
                                &format!("Saw completed job: {name}, condition: Complete"),
                            )
                            .await
                    }
                    Some(c) => {
                        self.client
                            .event(
                                &cj,
                                EventType::Normal,
                                "SawCompletedJob",
                                &format!("Saw completed job: {name}, condition: {c}"),
                            )
                            .await
                    }
                    None => {}
                }
            }
        }
        st.active = (!active.is_empty()).then_some(active.clone());

        if cj.metadata.deletion_timestamp.is_some() {
            return self.finish(&mut cj, st, Action::await_change()).await;
        }
        self.prune(&cj, &jobs).await?;
        if spec.suspend == Some(true) {
            return self.finish(&mut cj, st, Action::await_change()).await;
        }
        let schedule = match strake_kinds::cron::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.client
                    .event(
                        &cj,
                        EventType::Warning,
                        "UnparseableSchedule",
                        &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                    )
                    .await;
                return self.finish(&mut cj, st, Action::await_change()).await;
            }
        };
        let tz = match zone(&cj, &schedule) {
            Ok(tz) => tz,
            Err(e) => {
                self.client
                    .event(&cj, EventType::Warning, "UnknownTimeZone", &e)
                    .await;
                return self.finish(&mut cj, st, Action::await_change()).await;
            }
        };
        let now = Timestamp::now();
        let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let mut earliest = st.last_schedule_time.as_ref().map_or(created, |t| t.0);
        if let Some(d) = spec.starting_deadline_seconds {
            let window = now
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(d))
                .unwrap_or(now);
            if window > earliest {
                earliest = window;
            }
        }
        let next_action = |after: Timestamp| match schedule.next_after(after, &tz) {
            Some(n) => {
                let secs = (n.as_second() - Timestamp::now().as_second()).max(0) as u64;
                Action::requeue(Duration::from_secs(secs) + Duration::from_millis(100))
            }
            None => Action::await_change(),
        };
        let (scheduled, missed) = most_recent(&schedule, &tz, earliest, now);
        let Some(scheduled) = scheduled else {
            return self.finish(&mut cj, st, next_action(now)).await;
        };
        if missed > MAX_MISSED {
            self.client
                .event(&cj, EventType::Warning, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew")
                .await;
        }
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if policy == "Forbid" && !active.is_empty() {
            tracing::debug!(cronjob = %key, "not starting a run while one is active (Forbid)");
            return self.finish(&mut cj, st, next_action(now)).await;
        }
        if policy == "Replace" {
            for r in &active {
                let name = r.name.clone().unwrap_or_default();
                let opts = DeleteOptions {
                    propagation: Some(Propagation::Background),
                    ..Default::default()
                };
                self.client.delete::<Job>(key.ns(), &name, &opts).await?;
                self.client
                    .event(
                        &cj,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted job {name}"),
                    )
                    .await;
            }
            st.active = None;
        }
        let name = format!("{}-{}", key.name, scheduled.as_second() / 60);
        let template = spec.job_template.clone();
        let tm = template.metadata.clone().unwrap_or_default();
        let mut annotations = tm.annotations.unwrap_or_default();
        annotations.insert(
            SCHEDULED_AT.into(),
            scheduled.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: key.namespace.clone(),
                labels: tm.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![pods::controller_ref(&cj)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        match self.client.create(key.ns(), &job).await {
            Ok(created) => {
                tracing::info!(cronjob = %key, job = %name, "started a scheduled run");
                self.client
                    .event(
                        &cj,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created job {name}"),
                    )
                    .await;
                st.active.get_or_insert_default().push(job_ref(&created));
            }
            // Created by an earlier pass whose status write was lost.
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => {
                self.client
                    .event(
                        &cj,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    )
                    .await;
                return Err(e);
            }
        }
        st.last_schedule_time = Some(Time(scheduled));
        self.finish(&mut cj, st, next_action(now)).await
    }

    /// Writes the status (based on the read, so a stale pass is redone) and returns `action`.
    async fn finish(
        &self,
        cj: &mut CronJob,
        st: k8s_openapi::api::batch::v1::CronJobStatus,
        action: Action,
    ) -> Result<Action, ApiError> {
        if cj.status.as_ref() != Some(&st) {
            let mut next = cj.clone();
            next.status = Some(st);
            *cj = self.client.replace(&next, Part::Status).await?;
        }
        Ok(action)
    }

    /// Deletes the oldest finished jobs beyond the history limits.
    async fn prune(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(), ApiError> {
        let spec = cj.spec.clone().unwrap_or_default();
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(excess) {
                let name = j.metadata.name.clone().unwrap_or_default();
                let opts = DeleteOptions {
                    propagation: Some(Propagation::Background),
                    ..Default::default()
                };
                self.client
                    .delete::<Job>(j.metadata.namespace.as_deref(), &name, &opts)
                    .await?;
                self.client
                    .event(
                        cj,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted job {name}"),
                    )
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_latest_missed_run_counts() {
        let s = strake_kinds::cron::parse("*/5 * * * *").unwrap();
        let (last, n) = most_recent(
            &s,
            &TimeZone::UTC,
            at("2026-12-03T10:00:00Z"),
            at("2026-12-03T10:17:00Z"),
        );
        assert_eq!(
            (last.unwrap().to_string().as_str(), n),
            ("2026-12-03T10:15:00Z", 3)
        );
        let (none, n) = most_recent(
            &s,
            &TimeZone::UTC,
            at("2026-12-03T10:15:00Z"),
            at("2026-12-03T10:17:00Z"),
        );
        assert_eq!((none, n), (None, 0));
        // Days of missed minutes: counted past the limit, the latest still found.
        let every = strake_kinds::cron::parse("* * * * *").unwrap();
        let (last, n) = most_recent(
            &every,
            &TimeZone::UTC,
            at("2026-12-01T00:00:00Z"),
            at("2026-12-03T10:17:30Z"),
        );
        assert_eq!(last.unwrap().to_string(), "2026-12-03T10:17:00Z");
        assert!(n > MAX_MISSED);
    }
}
