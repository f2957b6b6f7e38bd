//! The CronJob controller: a run missed while the control plane was away is started once
//! (named by its minute, carrying its scheduled time), its completion moves
//! lastSuccessfulTime; a run older than startingDeadlineSeconds is skipped; suspension stops
//! runs.

use crate::common;

use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use strake_apimachinery::{Filter, Part};

use common::WAIT;

fn cronjob(name: &str, schedule: &str, extra: serde_json::Value) -> CronJob {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "tick:exit-0"}]}}}}
        }
    });
    for (k, x) in extra.as_object().unwrap() {
        v["spec"][k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// As if the controller last ran this CronJob `minutes` ago.
async fn last_ran(c: &Cluster, name: &str, minutes: i64) {
    let then = Timestamp::now()
        .checked_sub(SignedDuration::from_mins(minutes))
        .unwrap();
    c.client
        .modify::<CronJob>(Some("default"), name, Part::Status, |cj| {
            cj.status.get_or_insert_default().last_schedule_time = Some(Time(then));
            true
        })
        .await
        .unwrap();
}

async fn jobs_of(c: &Cluster, name: &str) -> Vec<Job> {
    let (all, _): (Vec<Job>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    all.into_iter()
        .filter(|j| {
            j.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "CronJob" && r.name == name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_run_starts_once_and_its_success_is_recorded() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &cronjob("tick", "* * * * *", json!({"startingDeadlineSeconds": 600})),
        )
        .await
        .unwrap();
    // Created just now, the first run is at the next minute: make it three minutes late.
    last_ran(&c, "tick", 3).await;
    let job = eventually("the missed run", WAIT, || async {
        let js = jobs_of(&c, "tick").await;
        (!js.is_empty()).then(|| js.into_iter().next().unwrap())
    })
    .await;
    let minute = Timestamp::now().as_second() / 60;
    let name = job.metadata.name.clone().unwrap();
    let n: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    assert!(
        minute - n <= 1,
        "the latest missed minute runs, not an older one: {name}"
    );
    assert!(
        job.metadata
            .annotations
            .unwrap()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    let cj = eventually("the run's success recorded", WAIT, || async {
        let cj: CronJob = c.client.get(Some("default"), "tick").await.ok()?;
        let st = cj.status.clone()?;
        (st.last_successful_time.is_some() && st.active.is_none()).then_some(cj)
    })
    .await;
    assert!(cj.status.unwrap().last_schedule_time.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        jobs_of(&c, "tick").await.len(),
        1,
        "one run per scheduled time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_their_deadline_or_suspended_do_not_start() {
    let c = cluster().await;
    // Yearly, last run long ago: January 1st is far outside a 60 s starting deadline.
    c.client
        .create(
            Some("default"),
            &cronjob(
                "yearly",
                "0 0 1 1 *",
                json!({"startingDeadlineSeconds": 60}),
            ),
        )
        .await
        .unwrap();
    last_ran(&c, "yearly", 60 * 24 * 400).await;
    c.client
        .create(
            Some("default"),
            &cronjob("paused", "* * * * *", json!({"suspend": true})),
        )
        .await
        .unwrap();
    last_ran(&c, "paused", 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs_of(&c, "yearly").await.is_empty(),
        "a run past its deadline started"
    );
    assert!(
        jobs_of(&c, "paused").await.is_empty(),
        "a suspended cronjob ran"
    );
}
