//! The kube-proxy role: Services and their EndpointSlices, watched across the cluster, become
//! this node's nf_tables rules (`strake-net`'s `services` table: cluster IPs and node ports
//! DNATed to ready endpoints at random, hairpin and egress masquerade). Changes are batched for
//! a moment and the table is rebuilt whole and swapped atomically when what it is built from
//! changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::{ListableResource, Metadata, Resource};
use serde::de::DeserializeOwned;
use strake_kubeclient::WatchEvent;
use strake_net::Ipv4Net;
use strake_net::services::{Desired, Protocol, ServicePort};
use tokio::sync::Notify;

use crate::Shared;

/// How long changes gather before the rules are rebuilt.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);

pub(crate) type Store<K> = Arc<std::sync::Mutex<BTreeMap<String, K>>>;

fn key_of<K: Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    obj: &K,
) -> String {
    let m = obj.metadata();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Keeps `store` equal to every object of kind `K` in the cluster: a list, then a watch from
/// its revision, listing again whenever the watch fails; pokes `changed` on every change.
pub(crate) async fn reflect<K>(shared: Arc<Shared>, store: Store<K>, changed: Arc<Notify>)
where
    K: Resource
        + ListableResource
        + DeserializeOwned
        + Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
        + Send
        + 'static,
{
    loop {
        let (items, mut rv) = match shared.client.list::<K>(None, None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "listing failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        *store.lock().unwrap_or_else(|e| e.into_inner()) =
            items.into_iter().map(|o| (key_of(&o), o)).collect();
        changed.notify_one();
        loop {
            let stream = match shared
                .client
                .watch::<K>(None, None, &rv, Duration::from_secs(300))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(kind = K::KIND, error = %e, "watch failed, listing again");
                    break;
                }
            };
            let mut stream = Box::pin(stream);
            let mut failed = false;
            while let Some(ev) = stream.next().await {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                match ev {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.metadata().resource_version.clone().unwrap_or_default();
                        s.insert(key_of(&o), o);
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.metadata().resource_version.clone().unwrap_or_default();
                        s.remove(&key_of(&o));
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        rv = b;
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(kind = K::KIND, error = %e, "watch ended, listing again");
                        failed = true;
                        break;
                    }
                }
                drop(s);
                changed.notify_one();
            }
            if failed {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The IPv4 EndpointSlices of each Service, by namespace and name.
fn slices_by_service(
    slices: &BTreeMap<String, EndpointSlice>,
) -> BTreeMap<(String, String), Vec<&EndpointSlice>> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices.values() {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((ns, svc.clone())).or_default().push(s);
    }
    by_service
}

/// What the cluster DNS answers from: every Service, with its named ports and the endpoints
/// it publishes (the ready ones, or all with `publishNotReadyAddresses`).
pub fn zone(
    domain: &str,
    services: &BTreeMap<String, Service>,
    slices: &BTreeMap<String, EndpointSlice>,
) -> Option<strake_dns::Zone> {
    let by_service = slices_by_service(slices);
    let mut out = Vec::new();
    for svc in services.values() {
        let spec = svc.spec.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let all = spec.publish_not_ready_addresses.unwrap_or(false);
        let mut endpoints = Vec::new();
        for slice in by_service
            .get(&(ns.clone(), name.clone()))
            .into_iter()
            .flatten()
        {
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !all {
                    continue;
                }
                if let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                    endpoints.push(strake_dns::Endpoint {
                        ip,
                        hostname: ep.hostname.clone(),
                    });
                }
            }
        }
        endpoints.sort_by_key(|e| e.ip);
        endpoints.dedup_by_key(|e| e.ip);
        out.push(strake_dns::Service {
            namespace: ns,
            name,
            cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
            external_name: (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.clone())
                .flatten(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(strake_dns::Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect(),
            endpoints,
        });
    }
    strake_dns::Zone::new(domain, out)
}

/// What the rules are built from: every Service port with a cluster IP or node port, and the
/// ready IPv4 endpoints its slices name for that port.
pub fn desired(
    node_name: &str,
    services: &BTreeMap<String, Service>,
    slices: &BTreeMap<String, EndpointSlice>,
    pod_cidr: Option<Ipv4Net>,
    cluster_cidr: Ipv4Net,
    node_ips: Vec<Ipv4Addr>,
) -> Desired {
    let by_service = slices_by_service(slices);
    let mut ports = Vec::new();
    for svc in services.values() {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        // spec.externalIPs, and for a LoadBalancer its ingress addresses (ServiceLB's are the
        // nodes' own).
        let lb = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .chain(lb.iter().filter_map(|i| i.ip.as_ref()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        external_ips.sort_unstable();
        external_ips.dedup();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let own_slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) else {
                continue;
            };
            let node_port = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            if cluster_ip.is_none() && node_port.is_none() && external_ips.is_empty() {
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let mut endpoints = Vec::new();
            let mut local_endpoints = Vec::new();
            for slice in &own_slices {
                let Some(target) = slice.ports.iter().flatten().find_map(|sp| {
                    (sp.name.clone().unwrap_or_default() == port_name
                        && sp.protocol.as_deref().unwrap_or("TCP")
                            == p.protocol.as_deref().unwrap_or("TCP"))
                    .then_some(sp.port)
                    .flatten()
                }) else {
                    continue;
                };
                let Ok(target) = u16::try_from(target) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    if let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                        endpoints.push((ip, target));
                        if ep.node_name.as_deref() == Some(node_name) {
                            local_endpoints.push((ip, target));
                        }
                    }
                }
            }
            endpoints.sort_unstable();
            endpoints.dedup();
            local_endpoints.sort_unstable();
            local_endpoints.dedup();
            let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
                || spec.external_ips.as_ref().is_some_and(|e| !e.is_empty());
            ports.push(ServicePort {
                name: format!(
                    "{ns}/{name}:{port_name}/{}",
                    p.protocol.as_deref().unwrap_or("TCP")
                ),
                cluster_ip,
                external_ips: external_ips.clone(),
                protocol,
                port,
                node_port,
                endpoints,
                local_endpoints,
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_local: external
                    && spec.external_traffic_policy.as_deref() == Some("Local"),
                affinity_timeout: (spec.session_affinity.as_deref() == Some("ClientIP")).then(
                    || {
                        spec.session_affinity_config
                            .as_ref()
                            .and_then(|c| c.client_ip.as_ref())
                            .and_then(|c| c.timeout_seconds)
                            .and_then(|t| u32::try_from(t).ok())
                            .unwrap_or(10_800)
                    },
                ),
            });
        }
    }
    Desired {
        pod_cidr,
        cluster_cidr,
        node_ips,
        services: ports,
        dns: None,
    }
}

/// Runs the proxy: waits for the node's pod network, then keeps the rules and the cluster
/// DNS zone in step with the cluster's Services and EndpointSlices; serves the cluster DNS
/// address on this node when one is configured.
pub async fn run(shared: Arc<Shared>) {
    let changed = Arc::new(Notify::new());
    let services: Store<Service> = Arc::default();
    let slices: Store<EndpointSlice> = Arc::default();
    tokio::spawn(reflect(shared.clone(), services.clone(), changed.clone()));
    tokio::spawn(reflect(shared.clone(), slices.clone(), changed.clone()));
    let mut ready = shared.network.subscribe();
    if ready.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let (pod_cidr, gateway) = {
        let net = ready.borrow();
        (
            net.as_ref().map(|n| n.node.cidr()),
            net.as_ref().map(|n| n.node.gateway()),
        )
    };
    // Node-local cluster DNS: the first IPv4 `--cluster-dns` address leads to a server on the
    // pods' gateway.
    let dns_ip = shared.cfg.cluster_dns.iter().find_map(|ip| match ip {
        std::net::IpAddr::V4(v4) => Some(*v4),
        std::net::IpAddr::V6(_) => None,
    });
    let domain = shared.cfg.cluster_domain.clone();
    let Some(empty) = strake_dns::Zone::new(&domain, Vec::new()) else {
        tracing::error!(%domain, "the cluster domain is not a DNS name; no service routing or DNS");
        return;
    };
    let (zone_tx, zone_rx) = tokio::sync::watch::channel(Arc::new(empty));
    let dns = match (dns_ip, gateway) {
        (Some(ip), Some(gw)) => {
            let upstreams = strake_dns::Upstreams::from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            );
            let server = strake_dns::Server::new(zone_rx, upstreams);
            let addr = std::net::SocketAddr::from((gw, 53));
            tokio::spawn(async move {
                if let Err(e) = server.serve(addr).await {
                    tracing::error!(error = %e, "cluster DNS could not start");
                }
            });
            Some((ip, gw))
        }
        _ => None,
    };
    let node_ips: Vec<Ipv4Addr> = match shared.cfg.node_ip {
        std::net::IpAddr::V4(ip) => vec![ip],
        std::net::IpAddr::V6(_) => Vec::new(),
    };
    let mut last: Option<Desired> = None;
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        let want = {
            let s = services.lock().unwrap_or_else(|e| e.into_inner());
            let e = slices.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(z) = zone(&domain, &s, &e) {
                zone_tx.send_replace(Arc::new(z));
            }
            let mut want = desired(
                &shared.cfg.node_name,
                &s,
                &e,
                pod_cidr,
                shared.cfg.cluster_cidr,
                node_ips.clone(),
            );
            want.dns = dns;
            want
        };
        if last.as_ref() == Some(&want) {
            continue;
        }
        let began = std::time::Instant::now();
        let (rules, before) = (want.clone(), last.take());
        let synced = tokio::task::spawn_blocking(move || {
            let incremental = strake_net::services::sync_from(before.as_ref(), &rules, None)?;
            // UDP flows the change left stale: to endpoints that went, or to ports that had
            // none. A failure here leaves them to time out; the rules are right either way.
            let flushed = match &before {
                Some(b) => {
                    let stale = strake_net::services::stale_udp(b, &rules);
                    strake_net::conntrack::flush(None, &stale).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "deleting stale UDP conntrack entries failed");
                        0
                    })
                }
                None => 0,
            };
            Ok::<_, strake_net::NetError>((incremental, flushed))
        })
        .await;
        match synced {
            Ok(Ok((incremental, flushed))) => {
                tracing::info!(
                    ports = want.services.len(),
                    incremental,
                    flushed,
                    ms = began.elapsed().as_millis() as u64,
                    "service rules synced"
                );
                last = Some(want);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "syncing the service rules failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                changed.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "service rule sync panicked"),
        }
    }
}
