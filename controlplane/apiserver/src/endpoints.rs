//! The `kubernetes` Service's endpoints: every API server that is up. Each renews a Lease of
//! its own in `kube-system` (`strake-apiserver-<address>`, holding its `ip:port`) every 5
//! seconds, and points the Service's Endpoints and EndpointSlice at the servers whose leases
//! are fresh (15 seconds), as upstream's lease endpoint reconciler does. Pods that reach the
//! API through `kubernetes.default` thus keep reaching it when a control plane goes away.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use strake_apimachinery::registry::{ListOptions, Registry};
use strake_apimachinery::{ApiError, Part};

/// How often a server renews its lease and looks at the others'.
const RENEW: Duration = Duration::from_secs(5);
/// How long a lease counts as live after its last renewal.
const LEASE_SECONDS: i64 = 15;
const LEASE_PREFIX: &str = "strake-apiserver-";

fn lease_name(addr: SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(['.', ':'], "-");
    format!("{LEASE_PREFIX}{ip}")
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn def(
    reg: &Registry,
    group: &str,
    plural: &str,
) -> Result<std::sync::Arc<strake_apimachinery::ResourceDef>, ApiError> {
    reg.table()
        .snapshot()
        .lookup(group, "v1", plural)
        .cloned()
        .ok_or(ApiError::NoRoute)
}

/// Creates or replaces `obj` (namespaced in `ns`), keeping nothing of the old one but its
/// metadata.
async fn upsert(
    reg: &Registry,
    def: &strake_apimachinery::ResourceDef,
    ns: &str,
    name: &str,
    obj: Value,
    fields: &[&str],
) -> Result<(), ApiError> {
    let (obj, _) = def.strategy.decode(def, obj, Default::default())?;
    match reg.get(def, Some(ns), name).await {
        Ok(mut old) => {
            let mut changed = false;
            for key in fields {
                if !obj[*key].is_null() && old[*key] != obj[*key] {
                    old[*key] = obj[*key].clone();
                    changed = true;
                }
            }
            if changed {
                reg.update(def, Some(ns), name, old, Part::Main, &Default::default())
                    .await?;
            }
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => reg
            .create(def, Some(ns), obj, &Default::default())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Renews this server's lease and returns the addresses of every server with a live one,
/// this one included, sorted.
pub async fn renew_and_list(reg: &Registry, me: SocketAddr) -> Result<Vec<SocketAddr>, ApiError> {
    let leases = def(reg, "coordination.k8s.io", "leases")?;
    let name = lease_name(me);
    let stamp = now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-system",
            "labels": {"strake.dev/apiserver": "true"}},
        "spec": {"holderIdentity": me.to_string(), "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": stamp}
    });
    upsert(reg, &leases, "kube-system", &name, lease, &["spec"]).await?;
    let all = reg
        .list(&leases, Some("kube-system"), &ListOptions::default())
        .await?;
    let now = now();
    let mut live: Vec<SocketAddr> = all
        .items
        .iter()
        .filter(|l| {
            l["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(LEASE_PREFIX))
        })
        .filter(|l| {
            let renewed = l["spec"]["renewTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let ttl = l["spec"]["leaseDurationSeconds"]
                .as_i64()
                .unwrap_or(LEASE_SECONDS);
            renewed.is_some_and(|r| now.as_second() - r.as_second() <= ttl)
        })
        .filter_map(|l| l["spec"]["holderIdentity"].as_str()?.parse().ok())
        .collect();
    if !live.contains(&me) {
        live.push(me);
    }
    live.sort();
    live.dedup();
    Ok(live)
}

/// Points the `kubernetes` Service's Endpoints and EndpointSlice at `servers` (one port: the
/// first server's).
pub async fn point_kubernetes_at(reg: &Registry, servers: &[SocketAddr]) -> Result<(), ApiError> {
    let Some(first) = servers.first() else {
        return Ok(());
    };
    let port = first.port();
    let ips: Vec<String> = servers.iter().map(|s| s.ip().to_string()).collect();
    let family = if first.is_ipv4() { "IPv4" } else { "IPv6" };
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    let endpoints_def = def(reg, "", "endpoints")?;
    let slices_def = def(reg, "discovery.k8s.io", "endpointslices")?;
    upsert(
        reg,
        &endpoints_def,
        "default",
        "kubernetes",
        endpoints,
        &["subsets"],
    )
    .await?;
    upsert(
        reg,
        &slices_def,
        "default",
        "kubernetes",
        slice,
        &["endpoints", "ports", "addressType"],
    )
    .await
}

/// Keeps this server's lease and the `kubernetes` endpoints current, for as long as it runs.
pub async fn reconcile(reg: Registry, me: SocketAddr) {
    let mut last: Vec<SocketAddr> = Vec::new();
    loop {
        tokio::time::sleep(RENEW).await;
        let result = async {
            let live = renew_and_list(&reg, me).await?;
            if live != last {
                point_kubernetes_at(&reg, &live).await?;
                tracing::info!(servers = ?live, "the kubernetes Service's endpoints");
                last = live;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = result {
            // Another server may have written the endpoints first; the next round sees it.
            tracing::debug!(error = %e, "renewing the API server's lease and endpoints");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_named_by_address() {
        assert_eq!(
            lease_name("192.168.80.11:6443".parse().unwrap()),
            "strake-apiserver-192-168-80-11"
        );
        assert_eq!(
            lease_name("[fd00::1]:6443".parse().unwrap()),
            "strake-apiserver-fd00--1"
        );
    }
}
