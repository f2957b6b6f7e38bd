//! Routes to the other nodes' pods: every Node in the cluster is watched, and each one with a
//! pod CIDR and an IPv4 InternalIP becomes a peer that `strake-net`'s [`PodRoutes`] reaches,
//! host-gw on this node's L2 and VXLAN otherwise. A node that leaves takes its routes with it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use strake_net::Ipv4Net;
use strake_net::routes::{Peer, PodRoutes};
use tokio::sync::Notify;

use crate::Shared;
use crate::proxy::{SETTLE, reflect};

/// The peers among `nodes`: every node but `me` with an IPv4 pod CIDR and InternalIP.
pub fn peers<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> Vec<Peer> {
    let mut out: Vec<Peer> = nodes
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            if name == me {
                return None;
            }
            let spec = n.spec.as_ref()?;
            let pod_cidr = spec
                .pod_cidrs
                .iter()
                .flatten()
                .chain(spec.pod_cidr.iter())
                .find_map(|c| c.parse::<Ipv4Net>().ok())?;
            let node_ip = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<Ipv4Addr>().ok())?;
            Some(Peer {
                name,
                node_ip,
                pod_cidr: pod_cidr.trunc(),
            })
        })
        .collect();
    out.sort();
    out
}

/// Keeps this node's routes to its peers' pods in step with the cluster's Nodes.
pub async fn run(shared: Arc<Shared>, routes: PodRoutes) {
    let nodes: crate::proxy::Store<Node> = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let changed = Arc::new(Notify::new());
    tokio::spawn(reflect(shared.clone(), nodes.clone(), changed.clone()));
    let routes = Arc::new(routes);
    let mut synced: Option<Vec<Peer>> = None;
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        loop {
            let want = peers(
                nodes.lock().unwrap_or_else(|e| e.into_inner()).values(),
                &shared.cfg.node_name,
            );
            if synced.as_ref() == Some(&want) {
                break;
            }
            let r = routes.clone();
            let peers_now = want.clone();
            match tokio::task::spawn_blocking(move || r.sync(&peers_now)).await {
                Ok(Ok(report)) => {
                    if report.changed > 0 || report.removed > 0 {
                        tracing::info!(
                            peers = want.len(),
                            direct = report.direct,
                            tunnel = report.tunnel,
                            changed = report.changed,
                            removed = report.removed,
                            "routes to other nodes' pods updated"
                        );
                    }
                    for p in &report.unreachable {
                        tracing::warn!(
                            peer = %p.name,
                            address = %p.node_ip,
                            "the pod network backend is host-gw but this node is not on our L2: its pods are unreachable (use auto or vxlan)"
                        );
                    }
                    synced = Some(want);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "updating routes to other nodes' pods failed; retrying")
                }
                Err(e) => tracing::error!(error = %e, "the route sync panicked; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// This node's IPv4 address, which the routes and tunnels start from.
pub fn node_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) if !v.is_loopback() => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": cidr.map(|c| vec![c])},
            "status": {"addresses": ip.map(|i| serde_json::json!([
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": i},
            ]))},
        }))
        .unwrap()
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_cidr_and_an_address() {
        let nodes = [
            node("me", Some("10.244.0.0/24"), Some("192.168.77.10")),
            node("w2", Some("10.244.2.0/24"), Some("192.168.78.12")),
            node("w1", Some("10.244.1.0/24"), Some("192.168.77.11")),
            node("new", None, Some("192.168.77.13")),
            node("silent", Some("10.244.3.0/24"), None),
            node("v6", Some("fd00::/64"), Some("fd00::1")),
        ];
        let got = peers(&nodes, "me");
        let names: Vec<&str> = got.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["w1", "w2"]);
        assert_eq!(got[0].node_ip, Ipv4Addr::new(192, 168, 77, 11));
        assert_eq!(got[1].pod_cidr, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
    }
}
