//! Leader election on a coordination.k8s.io/v1 Lease, one per component, as client-go's
//! leaderelection does: the holder renews the lease every `retry`; a candidate takes it over
//! once it has seen the same record for `lease_duration` (measured on its own clock, so clock
//! skew between machines does not matter); a leader that cannot renew within `renew_deadline`
//! stops acting before anyone else may take over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use strake_apimachinery::{ApiError, Part};
use tokio::time::Instant;

use crate::api::Client;

#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Election {
    /// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What this candidate last saw of the lease.
struct Observed {
    record: Option<(String, Option<MicroTime>)>,
    at: Instant,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One attempt to take or keep the lease; Ok(true) while we hold it.
async fn try_hold(client: &Client, e: &Election, seen: &mut Observed) -> Result<bool, ApiError> {
    let ns = Some(e.namespace.as_str());
    let current: Option<Lease> = match client.get(ns, &e.name).await {
        Ok(l) => Some(l),
        Err(ApiError::NotFound { .. }) => None,
        Err(err) => return Err(err),
    };
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(e.lease_duration.as_secs() as i32),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match client.create(ns, &lease).await {
            Ok(_) => Ok(true),
            Err(ApiError::AlreadyExists { .. }) => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = (holder.clone(), spec.renew_time.clone());
    if seen.record.as_ref() != Some(&record) {
        seen.record = Some(record);
        seen.at = Instant::now();
    }
    let duration = spec
        .lease_duration_seconds
        .map_or(e.lease_duration, |s| Duration::from_secs(s.max(1) as u64));
    let mine = holder == e.identity;
    if !mine && !holder.is_empty() && seen.at.elapsed() < duration {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(e.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        tracing::info!(lease = %e.name, previous = %holder, "taking over an expired lease");
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(e.lease_duration.as_secs() as i32);
    // The read's resourceVersion makes this a compare-and-swap: of two candidates, one wins.
    match client.replace(&lease, Part::Main).await {
        Ok(_) => Ok(true),
        Err(ApiError::Conflict { .. }) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Runs `lead` whenever this candidate holds the lease, and stops it as soon as it may not.
/// Never returns.
pub async fn run<F, Fut>(client: Client, election: Election, lead: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut seen = Observed {
        record: None,
        at: Instant::now(),
    };
    loop {
        loop {
            match try_hold(&client, &election, &mut seen).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(lease = %election.name, error = %e, "lease attempt failed")
                }
            }
            tokio::time::sleep(election.retry).await;
        }
        tracing::info!(lease = %election.name, identity = %election.identity, "became leader");
        let task = AbortOnDrop(tokio::spawn(lead()));
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(election.retry).await;
            match try_hold(&client, &election, &mut seen).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(lease = %election.name, error = %e, "renewing the lease failed");
                    if renewed.elapsed() >= election.renew_deadline {
                        break;
                    }
                }
            }
        }
        drop(task);
        tracing::warn!(lease = %election.name, "lost the lease; stopped acting");
    }
}

/// The leader's work stops when its election stops, however that happens.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
