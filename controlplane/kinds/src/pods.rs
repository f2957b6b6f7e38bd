//! Binding a pod to a node (`pods/binding`), shared by the API's binding subresource and the
//! scheduler: the pod must be unbound and not terminating; its PodScheduled condition turns
//! True.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::{ApiError, Part, Registry, WriteOptions};

pub async fn bind(
    reg: &Registry,
    namespace: &str,
    name: &str,
    node: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let def = reg
        .table()
        .snapshot()
        .lookup("", "v1", "pods")
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    let opts = WriteOptions {
        dry_run,
        ..Default::default()
    };
    reg.update_with(
        &def,
        Some(namespace),
        name,
        Part::Binding,
        &opts,
        |mut pod| {
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                return Err(ApiError::Conflict {
                    resource: def.group_resource(),
                    name: name.into(),
                    message: "the pod is being deleted".into(),
                });
            }
            match pod["spec"]["nodeName"].as_str() {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::Conflict {
                        resource: def.group_resource(),
                        name: name.into(),
                        message: format!("pod {name} is already assigned to node \"{n}\""),
                    });
                }
                _ => pod["spec"]["nodeName"] = node.into(),
            }
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mut conds: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conds.retain(|c| c["type"] != "PodScheduled");
            conds
                .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
            pod["status"]["conditions"] = Value::Array(conds);
            Ok(pod)
        },
    )
    .await?;
    Ok(())
}

/// Whether a disruption budget's selector selects these labels (a budget without a selector, or
/// with an empty one, selects nothing, as upstream's eviction treats it).
fn budget_selects(pdb: &Value, labels: &Value) -> bool {
    let sel = &pdb["spec"]["selector"];
    let ml = sel["matchLabels"].as_object();
    let me = sel["matchExpressions"].as_array();
    if ml.is_none_or(|m| m.is_empty()) && me.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    ml.into_iter().flatten().all(|(k, v)| get(k) == v.as_str())
        && me.into_iter().flatten().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        })
}

/// `pods/eviction`: deletes the pod unless the PodDisruptionBudget that selects it allows no
/// disruption now (429, as upstream answers, so `kubectl drain` retries). An allowed eviction
/// takes one disruption from the budget's status, recorded in `disruptedPods`, before the
/// pod is deleted; finished pods, and unready ones when the budget's
/// `unhealthyPodEvictionPolicy` permits, are evicted without taking one.
pub async fn evict(
    reg: &Registry,
    namespace: &str,
    name: &str,
    opts: &strake_apimachinery::DeleteOptions,
) -> Result<(), ApiError> {
    let table = reg.table().snapshot();
    let pods = table
        .lookup("", "v1", "pods")
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    let pod = reg.get(&pods, Some(namespace), name).await?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let finished = matches!(phase, "Succeeded" | "Failed");
    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
    let Some(pdbs) = table
        .lookup("policy", "v1", "poddisruptionbudgets")
        .cloned()
    else {
        return reg
            .delete(&pods, Some(namespace), name, opts)
            .await
            .map(|_| ());
    };
    if finished || deleting {
        return reg
            .delete(&pods, Some(namespace), name, opts)
            .await
            .map(|_| ());
    }
    let budgets: Vec<Value> = reg
        .list(&pdbs, Some(namespace), &Default::default())
        .await?
        .items
        .into_iter()
        .filter(|b| budget_selects(b, &pod["metadata"]["labels"]))
        .collect();
    let budget = match budgets.as_slice() {
        [] => {
            return reg
                .delete(&pods, Some(namespace), name, opts)
                .await
                .map(|_| ());
        }
        [one] => one.clone(),
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
    };
    let budget_name = budget["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let status = &budget["status"];
    let current = status["currentHealthy"].as_i64().unwrap_or(0);
    let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
    if !ready {
        let policy = budget["spec"]["unhealthyPodEvictionPolicy"]
            .as_str()
            .unwrap_or("IfHealthyBudget");
        if policy == "AlwaysAllow" || current >= desired {
            return reg
                .delete(&pods, Some(namespace), name, opts)
                .await
                .map(|_| ());
        }
    }
    let too_many = |message: String| ApiError::TooManyRequests {
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        causes: vec![("DisruptionBudget".into(), message)],
    };
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    if observed < budget["metadata"]["generation"].as_i64().unwrap_or(0) {
        return Err(too_many(format!(
            "the disruption budget {budget_name} is still being processed by the server"
        )));
    }
    if opts.dry_run {
        if status["disruptionsAllowed"].as_i64().unwrap_or(0) <= 0 {
            return Err(too_many(format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {current} currently"
            )));
        }
        return Ok(());
    }
    // Take one disruption; a concurrent eviction racing for the last one gets a 409 here and
    // retries against the new count.
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    reg.update_with(&pdbs, Some(namespace), &budget_name, Part::Status, &WriteOptions::default(), |mut b| {
        let allowed = b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed <= 0 {
            let desired = b["status"]["desiredHealthy"].as_i64().unwrap_or(0);
            let current = b["status"]["currentHealthy"].as_i64().unwrap_or(0);
            return Err(too_many(format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {current} currently"
            )));
        }
        b["status"]["disruptionsAllowed"] = (allowed - 1).into();
        if !b["status"]["disruptedPods"].is_object() {
            b["status"]["disruptedPods"] = json!({});
        }
        b["status"]["disruptedPods"][name] = now.clone().into();
        Ok(b)
    })
    .await?;
    reg.delete(&pods, Some(namespace), name, opts)
        .await
        .map(|_| ())
}
