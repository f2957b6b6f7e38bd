//! `strakectl health`: the cluster as a list of checks, each passed or failed with its reason.
//! The machine API of every node given (configured, not on a trial slot, every service
//! running), then, with admin credentials from the first control plane, the Kubernetes API's
//! readiness, every Node Ready, and every pod in kube-system running.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use strake_machineapi::Client;

use crate::machine::{Conn, Output};

/// One check and how it came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was seen: the reason when it failed.
    pub detail: String,
}

fn check(name: impl Into<String>, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.into(),
        ok,
        detail,
    }
}

/// The machine API's checks of one node.
async fn node_checks(client: &Client) -> Vec<Check> {
    let who = client.endpoint().to_owned();
    let version = match client.version().await {
        Ok(v) => v,
        Err(e) => return vec![check(format!("{who}: machine API"), Err(e.to_string()))],
    };
    let mut out = vec![check(
        format!("{who}: machine API"),
        if version.maintenance {
            Err("in maintenance mode: it has no machine config".into())
        } else if version.on_trial {
            Err(format!(
                "on a trial boot of slot {} (not blessed yet)",
                version.slot.as_deref().unwrap_or("?")
            ))
        } else {
            Ok(format!(
                "{} {}, slot {}",
                version.hostname,
                version.version,
                version.slot.as_deref().unwrap_or("-")
            ))
        },
    )];
    if version.maintenance {
        return out;
    }
    out.push(check(
        format!("{who}: services"),
        match client.services().await {
            Ok(list) => {
                let down: Vec<String> = list
                    .iter()
                    .filter(|s| s.state != "running")
                    .map(|s| format!("{} {}", s.name, s.state))
                    .collect();
                if down.is_empty() {
                    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
                    Ok(format!("{} running", names.join(", ")))
                } else {
                    Err(down.join(", "))
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    out
}

/// Node names that are not Ready, with their Ready condition's reason.
pub fn not_ready(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(c) if c.status == "True" => None,
                Some(c) => Some(format!(
                    "{name} ({})",
                    c.reason.as_deref().unwrap_or(&c.status)
                )),
                None => Some(format!("{name} (no Ready condition)")),
            }
        })
        .collect()
}

/// Pods that are neither running with every container ready nor finished well.
pub fn unhealthy_pods(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            match phase {
                "Succeeded" => None,
                "Running" if ready => None,
                "Running" => Some(format!("{name} (running, not ready)")),
                other => Some(format!("{name} ({other})")),
            }
        })
        .collect()
}

/// The Kubernetes API's checks, with admin credentials from the first node that gives them.
async fn cluster_checks(clients: &[Client], server: Option<&str>) -> Vec<Check> {
    let mut creds = Err("no node given".to_owned());
    for c in clients {
        creds = c.kubeconfig().await.map_err(|e| e.to_string());
        if creds.is_ok() {
            break;
        }
    }
    let view = match creds {
        Ok(v) => v,
        Err(e) => return vec![check("admin credentials from a control plane", Err(e))],
    };
    let url = server.unwrap_or(&view.server).to_owned();
    let key = strake_pki::CertifiedKey {
        cert_pem: view.cert_pem,
        key_pem: view.key_pem,
    };
    let kube = match strake_kubeclient::Client::new(&url, &view.ca_pem, Some(&key)) {
        Ok(k) => k,
        Err(e) => {
            return vec![check(
                format!("Kubernetes API at {url}"),
                Err(e.to_string()),
            )];
        }
    };
    let readyz = kube.get_raw("/readyz").await;
    let mut out = vec![check(
        format!("Kubernetes API at {url}"),
        readyz
            .map(|_| "ready".to_owned())
            .map_err(|e| e.to_string()),
    )];
    if !out[0].ok {
        return out;
    }
    out.push(check(
        "nodes Ready",
        match kube.list::<Node>(None, None).await {
            Ok((nodes, _)) if nodes.is_empty() => Err("no nodes registered".into()),
            Ok((nodes, _)) => {
                let bad = not_ready(&nodes);
                if bad.is_empty() {
                    Ok(format!("{} of {}", nodes.len(), nodes.len()))
                } else {
                    Err(format!("not Ready: {}", bad.join(", ")))
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    out.push(check(
        "system pods",
        match kube.list::<Pod>(Some("kube-system"), None).await {
            Ok((pods, _)) => {
                let bad = unhealthy_pods(&pods);
                if bad.is_empty() {
                    Ok(format!("{} in kube-system running", pods.len()))
                } else {
                    Err(bad.join(", "))
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    out
}

/// Runs every check until all pass or `wait` runs out; prints them; fails if any failed.
pub fn health(
    conn: &Conn,
    server: Option<&str>,
    wait: Duration,
    out: Output,
) -> anyhow::Result<()> {
    let rt = crate::machine::runtime()?;
    let clients = conn.clients()?;
    let deadline = Instant::now() + wait;
    let checks = loop {
        let mut checks = Vec::new();
        for c in &clients {
            checks.extend(rt.block_on(node_checks(c)));
        }
        checks.extend(rt.block_on(cluster_checks(&clients, server)));
        if checks.iter().all(|c| c.ok) || Instant::now() >= deadline {
            break checks;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    crate::machine::print(out, &checks, || {
        checks
            .iter()
            .map(|c| {
                format!(
                    "{} {}: {}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name,
                    c.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: Option<(&str, &str)>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": ready.map(|(s, r)| vec![
                serde_json::json!({"type": "Ready", "status": s, "reason": r})
            ]).unwrap_or_default()},
        }))
        .unwrap()
    }

    fn pod(name: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn nodes_without_a_true_ready_condition_are_named_with_the_reason() {
        let nodes = [
            node("a", Some(("True", "KubeletReady"))),
            node("b", Some(("Unknown", "NodeStatusUnknown"))),
            node("c", None),
        ];
        assert_eq!(
            not_ready(&nodes),
            ["b (NodeStatusUnknown)", "c (no Ready condition)"]
        );
    }

    #[test]
    fn pods_must_run_ready_or_have_succeeded() {
        let pods = [
            pod("dns", "Running", true),
            pod("job", "Succeeded", false),
            pod("slow", "Running", false),
            pod("stuck", "Pending", false),
            pod("bad", "Failed", false),
        ];
        assert_eq!(
            unhealthy_pods(&pods),
            [
                "slow (running, not ready)",
                "stuck (Pending)",
                "bad (Failed)"
            ]
        );
    }
}
