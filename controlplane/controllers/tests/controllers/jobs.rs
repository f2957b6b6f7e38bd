//! The Job controller with the scripted kubelet (`…:exit-N` images finish with exit code N):
//! completions within parallelism, counted once; the backoff limit; Indexed completion; the
//! pod failure policy; the active deadline; suspend and resume; the TTL after finishing.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Cluster, cluster, eventually};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::{Value, json};
use strake_apimachinery::{Filter, Part};

use common::WAIT;

fn job(name: &str, image: &str, extra: Value) -> Job {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": image}]}}
        }
    });
    for (k, x) in extra.as_object().unwrap() {
        v["spec"][k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

async fn get(c: &Cluster, name: &str) -> Job {
    c.client.get(Some("default"), name).await.unwrap()
}

fn condition(j: &Job, ty: &str) -> Option<(String, String)> {
    let c = j
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")?;
    Some((
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

async fn finished(c: &Cluster, name: &str, ty: &str) -> Job {
    eventually(&format!("job {name} {ty}"), WAIT, || async {
        let j: Job = c.client.get(Some("default"), name).await.ok()?;
        condition(&j, ty).map(|_| j)
    })
    .await
}

async fn job_pods(c: &Cluster, name: &str) -> Vec<Pod> {
    let (all, _): (Vec<Pod>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    all.into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("batch.kubernetes.io/job-name"))
                .map(String::as_str)
                == Some(name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_run_within_parallelism_and_count_once() {
    let c = cluster().await;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (client, stop, most) = (c.client.clone(), stop.clone(), most.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (ps, _): (Vec<Pod>, _) = client
                    .list(Some("default"), &Filter::default())
                    .await
                    .unwrap();
                let running = ps
                    .iter()
                    .filter(|p| strake_controllers::pods::phase(p) == "Running")
                    .count();
                most.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Each pod runs a moment (Running first), then succeeds: the kubelet sees exit-0.
    c.client
        .create(
            Some("default"),
            &job(
                "pi",
                "pi:exit-0",
                json!({"completions": 5, "parallelism": 2}),
            ),
        )
        .await
        .unwrap();
    let j = finished(&c, "pi", "Complete").await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    let st = j.status.unwrap();
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(5), Some(0), Some(0))
    );
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert!(
        most.load(Ordering::Relaxed) <= 2,
        "{} pods ran at once",
        most.load(Ordering::Relaxed)
    );
    let pods = job_pods(&c, "pi").await;
    assert_eq!(pods.len(), 5);
    assert!(
        pods.iter()
            .all(|p| p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())),
        "tracking finalizers left"
    );
    let (events, _): (Vec<Event>, _) = c
        .client
        .list(Some("default"), &Filter::default())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Completed")
                && e.message.as_deref() == Some("Job completed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_beyond_the_backoff_limit_fail_the_job() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &job("flaky", "flaky:exit-1", json!({"backoffLimit": 1})),
        )
        .await
        .unwrap();
    // One retry after the 10 s back-off, then the limit.
    let j = finished(&c, "flaky", "Failed").await;
    assert_eq!(
        condition(&j, "Failed").unwrap(),
        (
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into()
        )
    );
    assert!(condition(&j, "FailureTarget").is_some());
    assert_eq!(j.status.unwrap().failed, Some(2));
    assert_eq!(job_pods(&c, "flaky").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_jobs_and_the_failure_policy() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &job(
                "idx",
                "idx:exit-0",
                json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
            ),
        )
        .await
        .unwrap();
    let j = finished(&c, "idx", "Complete").await;
    assert_eq!(j.status.unwrap().completed_indexes.as_deref(), Some("0-2"));
    let mut indexes: Vec<String> = job_pods(&c, "idx")
        .await
        .iter()
        .map(|p| {
            let i = p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone();
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
            let env = spec.containers[0].env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some(i.as_str())));
            i
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // Exit code 42 fails the job at once, whatever the backoff limit.
    let policy = json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}
    ]}});
    c.client
        .create(Some("default"), &job("fatal", "fatal:exit-42", policy))
        .await
        .unwrap();
    let j = finished(&c, "fatal", "Failed").await;
    let (reason, message) = condition(&j, "Failed").unwrap();
    assert_eq!(reason, "PodFailurePolicy");
    assert!(
        message.contains("failed with exit code 42 matching FailJob rule at index 1"),
        "{message}"
    );
    assert_eq!(
        job_pods(&c, "fatal").await.len(),
        1,
        "no retry after FailJob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_suspension_and_ttl() {
    let c = cluster().await;
    c.client
        .create(
            Some("default"),
            &job(
                "slow",
                "slow:1",
                json!({"activeDeadlineSeconds": 1, "parallelism": 2, "completions": 2}),
            ),
        )
        .await
        .unwrap();
    let j = finished(&c, "slow", "Failed").await;
    assert_eq!(condition(&j, "Failed").unwrap().0, "DeadlineExceeded");
    assert!(
        job_pods(&c, "slow")
            .await
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some()
                || strake_controllers::pods::phase(p) != "Running")
    );

    // Suspended: no pods until resumed.
    c.client
        .create(
            Some("default"),
            &job("later", "later:exit-0", json!({"suspend": true})),
        )
        .await
        .unwrap();
    finished(&c, "later", "Suspended").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(job_pods(&c, "later").await.is_empty());
    c.client
        .modify::<Job>(Some("default"), "later", Part::Main, |j| {
            j.spec.as_mut().unwrap().suspend = Some(false);
            true
        })
        .await
        .unwrap();
    let j = finished(&c, "later", "Complete").await;
    let resumed = j
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Suspended")
        .unwrap();
    assert_eq!(
        (resumed.status.as_str(), resumed.reason.as_deref()),
        ("False", Some("JobResumed"))
    );

    // A TTL removes the finished job, and the collector its pods.
    c.client
        .create(
            Some("default"),
            &job(
                "brief",
                "brief:exit-0",
                json!({"ttlSecondsAfterFinished": 1}),
            ),
        )
        .await
        .unwrap();
    finished(&c, "brief", "Complete").await;
    eventually("the job deleted after its TTL", WAIT, || async {
        let gone = c.client.get::<Job>(Some("default"), "brief").await.is_err();
        (gone && job_pods(&c, "brief").await.is_empty()).then_some(())
    })
    .await;
    let _ = get(&c, "later").await;
}
