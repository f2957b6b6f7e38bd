//! Controllers that belong to the API server itself (every API server runs them): CRD serving
//! (a CRD's versions join the resource table, with the Established and NamesAccepted
//! conditions; deleting a CRD deletes its objects first), ClusterRole aggregation, store
//! compaction and the Event TTL.
//! They act through the registry, never raw store keys. Namespace teardown is the namespace
//! controller's, in `strake-controllers`.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, DeleteOptions, ListOptions, Part, Registry, WriteOptions};

/// The finalizer that holds a CRD until its objects are gone.
const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Runs `pass` at start, on every change under `prefix`, and at least every `every`.
async fn run_on_changes<F, Fut>(reg: Registry, prefix: &'static str, every: Duration, mut pass: F)
where
    F: FnMut(Registry) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    loop {
        let mut changes = match reg.store().watch(prefix.as_bytes().to_vec(), 0) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, prefix, "controller cannot watch the store");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            if let Err(e) = pass(reg.clone()).await {
                tracing::warn!(error = %e, prefix, "controller pass failed");
            }
            match tokio::time::timeout(every, changes.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_))) | Ok(None) => break,
            }
        }
    }
}

/// Compacts the store every `interval` to the revision it had one interval before, as
/// kube-apiserver does, so history (and watch resumption) spans one to two intervals.
pub async fn compactor(reg: Registry, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut previous: Option<u64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = match reg.store().revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "compactor cannot read the revision");
                continue;
            }
        };
        if let Some(rev) = previous.filter(|r| *r > 1) {
            match reg.store().compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted the store"),
                Err(e) => tracing::warn!(error = %e, revision = rev, "compaction failed"),
            }
        }
        previous = Some(now);
    }
}

/// Deletes events not seen for `ttl`, checking every tenth of it (at most every 5 minutes).
pub async fn event_sweeper(reg: Registry, ttl: Duration) {
    let every = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(300));
    loop {
        tokio::time::sleep(every).await;
        match strake_apimachinery::events::sweep(&reg, ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired events"),
            Err(e) => tracing::warn!(error = %e, "event sweep failed"),
        }
    }
}

pub async fn crds(reg: Registry) {
    run_on_changes(
        reg,
        "/registry/apiextensions.k8s.io/customresourcedefinitions/",
        Duration::from_secs(10),
        |reg| async move { crd_pass(&reg).await },
    )
    .await
}

/// ClusterRole aggregation: on every ClusterRole change (and every minute), each aggregated
/// role gets the rules of the roles its selectors pick.
pub async fn aggregation(reg: Registry) {
    run_on_changes(
        reg,
        "/registry/rbac.authorization.k8s.io/clusterroles/",
        Duration::from_secs(60),
        |reg| async move { crate::authz::aggregate(&reg).await.map(|_| ()) },
    )
    .await
}

fn condition(t: &str, reason: &str, message: &str) -> Value {
    json!({"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()})
}

/// Brings the table in line with the stored CRDs, once.
pub async fn crd_pass(reg: &Registry) -> Result<(), ApiError> {
    let table = reg.table().snapshot();
    let Some(crddef) = table
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .cloned()
    else {
        return Ok(());
    };
    let all = reg
        .list(&crddef, None, &ListOptions::default())
        .await?
        .items;
    let mut live = std::collections::HashSet::new();
    for v in all {
        let crd: CustomResourceDefinition = match serde_json::from_value(v.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable CRD");
                continue;
            }
        };
        let name = crd.metadata.name.clone().unwrap_or_default();
        let defs = strake_kinds::crd::crd_defs(&crd);
        if crd.metadata.deletion_timestamp.is_some() {
            // Delete every object, then let the CRD go.
            let mut remaining = 0;
            // All versions share one key prefix: the first lists every object.
            if let Some(def) = defs.first() {
                let items = reg.list(def, None, &ListOptions::default()).await?.items;
                remaining += items.len();
                for o in items
                    .iter()
                    .filter(|o| o["metadata"]["deletionTimestamp"].is_null())
                {
                    let ns = o["metadata"]["namespace"].as_str();
                    let _ = reg
                        .delete(
                            def,
                            ns,
                            o["metadata"]["name"].as_str().unwrap_or_default(),
                            &DeleteOptions::default(),
                        )
                        .await;
                }
            }
            if remaining == 0 {
                reg.table()
                    .remove_where(|d| d.crd.as_deref() == Some(name.as_str()));
                set_finalizer(reg, &crddef, None, &name, CRD_CLEANUP, false).await?;
            }
            continue;
        }
        live.insert(name.clone());
        // Names another resource already serves are not accepted.
        let clash = defs.first().is_some_and(|d| {
            table.all().iter().any(|o| {
                o.group == d.group
                    && o.plural == d.plural
                    && o.crd.as_deref() != Some(name.as_str())
            })
        });
        if !clash {
            reg.table().remove_where(|d| {
                d.crd.as_deref() == Some(name.as_str())
                    && !defs.iter().any(|n| n.version == d.version)
            });
            for def in defs {
                reg.table().register(def);
            }
        }
        let has_fin = crd
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == CRD_CLEANUP);
        if !has_fin {
            set_finalizer(reg, &crddef, None, &name, CRD_CLEANUP, true).await?;
        }
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if !established || clash {
            let names = serde_json::to_value(&crd.spec.names).unwrap_or_default();
            let stored: Vec<String> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.clone())
                .collect();
            reg.update_with(&crddef, None, &name, Part::Status, &WriteOptions::default(), |mut c| {
                let conds = if clash {
                    json!([{"type": "NamesAccepted", "status": "False", "reason": "NameConflict", "message": "the plural name is already served by another resource", "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
                           {"type": "Established", "status": "False", "reason": "NotAccepted", "message": "not all names are accepted"}])
                } else {
                    json!([condition("NamesAccepted", "NoConflicts", "no conflicts found"), condition("Established", "InitialNamesAccepted", "the initial names have been accepted")])
                };
                c["status"] = json!({"conditions": conds, "acceptedNames": names, "storedVersions": stored});
                Ok(c)
            })
            .await?;
        }
    }
    reg.table()
        .remove_where(|d| d.crd.as_ref().is_some_and(|c| !live.contains(c)));
    Ok(())
}

/// Adds (`present`) or removes a finalizer, retried on conflict; a no-op if already so.
async fn set_finalizer(
    reg: &Registry,
    def: &strake_apimachinery::ResourceDef,
    ns: Option<&str>,
    name: &str,
    finalizer: &str,
    present: bool,
) -> Result<Value, ApiError> {
    reg.update_with(
        def,
        ns,
        name,
        Part::Main,
        &WriteOptions::default(),
        |mut o| {
            let mut fins: Vec<Value> = o["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            fins.retain(|f| f != finalizer);
            if present {
                fins.push(finalizer.into());
            }
            o["metadata"]["finalizers"] = Value::Array(fins);
            Ok(o)
        },
    )
    .await
}
