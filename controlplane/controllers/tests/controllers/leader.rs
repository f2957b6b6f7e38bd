//! Lease leader election: of two candidates exactly one acts; when it stops, the other takes
//! the lease over once it expires, and the Lease records the transition.

use crate::common;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use strake_controllers::leader::{self, Election};

struct Acting(Arc<AtomicI32>);

impl Drop for Acting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_candidate_acts_and_the_other_takes_over() {
    let c = cluster().await;
    let acting = Arc::new(AtomicI32::new(0));
    let most = Arc::new(AtomicI32::new(0));
    let leader_name = Arc::new(Mutex::new(None::<String>));
    let candidate = |id: &'static str| {
        let election = Election {
            lease_duration: Duration::from_millis(1000),
            renew_deadline: Duration::from_millis(600),
            retry: Duration::from_millis(100),
            ..Election::new("test-lock", id)
        };
        let (acting, most, leader_name) = (acting.clone(), most.clone(), leader_name.clone());
        tokio::spawn(leader::run(c.client.named(id), election, move || {
            let (acting, most, leader_name) = (acting.clone(), most.clone(), leader_name.clone());
            async move {
                let n = acting.fetch_add(1, Ordering::SeqCst) + 1;
                let _guard = Acting(acting);
                most.fetch_max(n, Ordering::SeqCst);
                *leader_name.lock().unwrap() = Some(id.to_string());
                std::future::pending::<()>().await;
            }
        }))
    };
    let a = candidate("a");
    let b = candidate("b");
    let first = eventually("a leader", Duration::from_secs(10), || async {
        leader_name.lock().unwrap().clone()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two candidates acted at once"
    );
    assert_eq!(
        leader_name.lock().unwrap().as_deref(),
        Some(first.as_str()),
        "leadership moved without cause"
    );

    // The leader's process goes away: the other takes over after the lease expires.
    let (gone, other) = if first == "a" { (a, "b") } else { (b, "a") };
    gone.abort();
    let _ = gone.await;
    eventually(
        "the other candidate to lead",
        Duration::from_secs(10),
        || async { (leader_name.lock().unwrap().as_deref() == Some(other)).then_some(()) },
    )
    .await;
    assert_eq!(acting.load(Ordering::SeqCst), 1);
    let lease: Lease = c
        .client
        .get(Some("kube-system"), "test-lock")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(other));
    assert_eq!(spec.lease_transitions, Some(1));
}
