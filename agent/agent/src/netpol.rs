//! NetworkPolicy on this node: every NetworkPolicy, Pod and Namespace in the cluster is
//! watched, and each pod of this node that a policy selects becomes an isolated pod in
//! `strake-net`'s policy table, with what its policies allow resolved to addresses and ports.
//! The table is rebuilt (atomically) when what it is built from changed.
//!
//! As upstream specifies: a pod is isolated for ingress when a policy selecting it lists
//! `Ingress` in `policyTypes` (the default when the field is absent), and for egress when one
//! lists `Egress` (the default when the policy has egress rules); what it may receive or send
//! is the union of its policies' rules. A rule without peers allows any peer, without ports
//! any port; a peer is an `ipBlock` (with `except`) or pods chosen by `podSelector` and
//! `namespaceSelector` (the policy's namespace when that is absent); ports take a number, a
//! range (`endPort`) or a container port's name. hostNetwork pods are neither selected nor
//! peers. A named port in an egress rule is resolved against each peer pod; with an `ipBlock`
//! or no peers it matches nothing, as there is no pod to name the port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use strake_net::Ipv4Net;
use strake_net::policy::{Allow, Block, Desired, Isolation, Peers, Ports};
use strake_net::services::Protocol;
use strake_scheduler::labels::selects;
use tokio::sync::Notify;

use crate::Shared;
use crate::proxy::{SETTLE, Store, reflect};

/// A pod on the pod network, with its address.
fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

struct View<'a> {
    /// Pods on the pod network, by namespace.
    pods: BTreeMap<&'a str, Vec<(&'a Pod, Ipv4Addr)>>,
    /// Namespaces' labels, with `kubernetes.io/metadata.name` as the API server sets it.
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl View<'_> {
    /// The pods a policy peer in namespace `ns` selects.
    fn select(&self, peer: &NetworkPolicyPeer, ns: &str) -> Vec<(&Pod, Ipv4Addr)> {
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            None => vec![ns],
            Some(sel) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| selects(sel, &Some((*labels).clone())))
                .map(|(n, _)| n.as_str())
                .collect(),
        };
        namespaces
            .iter()
            .flat_map(|n| self.pods.get(n).into_iter().flatten())
            .filter(|(p, _)| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selects(sel, &p.metadata.labels))
            })
            .copied()
            .collect()
    }
}

fn protocol(p: &NetworkPolicyPort) -> Option<Protocol> {
    Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))
}

/// The number of `pod`'s container port named `name` for `proto`.
fn named_port(pod: &Pod, name: &str, proto: Protocol) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) == Some(proto)
        })
        .and_then(|p| u16::try_from(p.container_port).ok())
}

fn block(b: &k8s_openapi::api::networking::v1::IPBlock) -> Option<Block> {
    let cidr: Ipv4Net = b.cidr.parse().ok()?;
    Some(Block {
        cidr: cidr.trunc(),
        except: b
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
            .collect(),
    })
}

/// What one rule allows `me` (a pod of namespace `ns`) in direction `dir`.
fn rule_allows(
    view: &View<'_>,
    dir: Dir,
    me: &Pod,
    ns: &str,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> Vec<Allow> {
    let peers = peers.filter(|p| !p.is_empty());
    let mut selected: Vec<(&Pod, Ipv4Addr)> = Vec::new();
    let mut blocks = Vec::new();
    for peer in peers.into_iter().flatten() {
        match &peer.ip_block {
            Some(b) => blocks.extend(block(b)),
            None => selected.extend(view.select(peer, ns)),
        }
    }
    let resolved = peers.map(|_| Peers {
        addresses: selected.iter().map(|(_, ip)| *ip).collect(),
        blocks: blocks.clone(),
    });
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![Allow {
            peers: resolved,
            ports: None,
        }];
    };
    let mut out = Vec::new();
    for port in ports {
        let Some(proto) = protocol(port) else {
            continue;
        };
        match &port.port {
            None => out.push(Allow {
                peers: resolved.clone(),
                ports: Some(Ports {
                    protocol: proto,
                    range: None,
                }),
            }),
            Some(IntOrString::Int(n)) => {
                let Ok(first) = u16::try_from(*n) else {
                    continue;
                };
                let last = port
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= first)
                    .unwrap_or(first);
                out.push(Allow {
                    peers: resolved.clone(),
                    ports: Some(Ports {
                        protocol: proto,
                        range: Some((first, last)),
                    }),
                });
            }
            Some(IntOrString::String(name)) => match dir {
                // The receiving pod is this one: its own port of that name.
                Dir::Ingress => {
                    if let Some(n) = named_port(me, name, proto) {
                        out.push(Allow {
                            peers: resolved.clone(),
                            ports: Some(Ports {
                                protocol: proto,
                                range: Some((n, n)),
                            }),
                        });
                    }
                }
                // Each receiving peer pod names its own.
                Dir::Egress => {
                    for (pod, ip) in &selected {
                        if let Some(n) = named_port(pod, name, proto) {
                            out.push(Allow {
                                peers: Some(Peers {
                                    addresses: BTreeSet::from([*ip]),
                                    blocks: Vec::new(),
                                }),
                                ports: Some(Ports {
                                    protocol: proto,
                                    range: Some((n, n)),
                                }),
                            });
                        }
                    }
                }
            },
        }
    }
    out
}

/// The policy table for the pods of node `me`.
pub fn desired<'a>(
    me: &str,
    policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    pods: impl IntoIterator<Item = &'a Pod>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> Desired {
    let mut view = View {
        pods: BTreeMap::new(),
        namespaces: BTreeMap::new(),
    };
    for p in pods {
        if let (Some(ip), Some(ns)) = (pod_ip(p), p.metadata.namespace.as_deref()) {
            view.pods.entry(ns).or_default().push((p, ip));
        }
    }
    for n in namespaces {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let mut labels = n.metadata.labels.clone().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
        view.namespaces.insert(name, labels);
    }
    let mut by_ns: BTreeMap<&str, Vec<&NetworkPolicy>> = BTreeMap::new();
    for p in policies {
        if let Some(ns) = p.metadata.namespace.as_deref() {
            by_ns.entry(ns).or_default().push(p);
        }
    }
    let mut out = Desired::default();
    for (ns, pods) in &view.pods {
        let Some(policies) = by_ns.get(ns) else {
            continue;
        };
        for (pod, ip) in pods {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(me) {
                continue;
            }
            let mut iso = Isolation {
                pod: format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()),
                ip: *ip,
                ingress: None,
                egress: None,
            };
            for policy in policies {
                let Some(spec) = &policy.spec else { continue };
                // An empty (or absent) podSelector selects every pod of the namespace.
                let chosen = spec
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| selects(sel, &pod.metadata.labels));
                if !chosen {
                    continue;
                }
                // Upstream's defaulting: an absent or empty policyTypes means Ingress, plus
                // Egress when there is at least one egress rule.
                let types: Vec<&str> = match &spec.policy_types {
                    Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
                    _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
                        vec!["Ingress", "Egress"]
                    }
                    _ => vec!["Ingress"],
                };
                if types.contains(&"Ingress") {
                    let allows = iso.ingress.get_or_insert_with(Vec::new);
                    for rule in spec.ingress.iter().flatten() {
                        allows.extend(rule_allows(
                            &view,
                            Dir::Ingress,
                            pod,
                            ns,
                            rule.from.as_ref(),
                            rule.ports.as_ref(),
                        ));
                    }
                }
                if types.contains(&"Egress") {
                    let allows = iso.egress.get_or_insert_with(Vec::new);
                    for rule in spec.egress.iter().flatten() {
                        allows.extend(rule_allows(
                            &view,
                            Dir::Egress,
                            pod,
                            ns,
                            rule.to.as_ref(),
                            rule.ports.as_ref(),
                        ));
                    }
                }
            }
            if iso.ingress.is_some() || iso.egress.is_some() {
                out.pods.push(iso);
            }
        }
    }
    out.pods.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

fn snapshot<K: Clone>(s: &Store<K>) -> BTreeMap<String, K> {
    s.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Keeps this node's policy table in step with the cluster's NetworkPolicies, Pods and
/// Namespaces.
pub async fn run(shared: Arc<Shared>) {
    let policies: Store<NetworkPolicy> = Arc::default();
    let pods: Store<Pod> = Arc::default();
    let namespaces: Store<Namespace> = Arc::default();
    let changed = Arc::new(Notify::new());
    tokio::spawn(reflect(shared.clone(), policies.clone(), changed.clone()));
    tokio::spawn(reflect(shared.clone(), pods.clone(), changed.clone()));
    tokio::spawn(reflect(shared.clone(), namespaces.clone(), changed.clone()));
    let mut applied: Option<Desired> = None;
    loop {
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        loop {
            let (pol, pod, nss) = (snapshot(&policies), snapshot(&pods), snapshot(&namespaces));
            let want = desired(
                &shared.cfg.node_name,
                pol.values(),
                pod.values(),
                nss.values(),
            );
            if applied.as_ref() == Some(&want) {
                break;
            }
            let d = want.clone();
            match tokio::task::spawn_blocking(move || strake_net::policy::sync(&d, None)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        isolated = want.pods.len(),
                        policies = pol.len(),
                        "network policy rules updated"
                    );
                    applied = Some(want);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "programming network policy failed; retrying")
                }
                Err(e) => tracing::error!(error = %e, "the policy sync panicked; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            ]}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    }

    fn policy(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": "p"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn world() -> (Vec<Pod>, Vec<Namespace>) {
        (
            vec![
                pod(
                    "web",
                    "front",
                    "n1",
                    "10.244.0.2",
                    serde_json::json!({"role": "frontend"}),
                ),
                pod(
                    "web",
                    "back",
                    "n2",
                    "10.244.1.2",
                    serde_json::json!({"role": "backend"}),
                ),
                pod(
                    "web",
                    "db",
                    "n1",
                    "10.244.0.3",
                    serde_json::json!({"role": "db"}),
                ),
                pod(
                    "ops",
                    "probe",
                    "n2",
                    "10.244.1.3",
                    serde_json::json!({"role": "backend"}),
                ),
            ],
            vec![
                ns("web", serde_json::json!({"team": "a"})),
                ns("ops", serde_json::json!({"team": "ops"})),
            ],
        )
    }

    #[test]
    fn deny_all_isolates_every_pod_of_the_namespace_both_ways_on_this_node_only() {
        let (pods, nss) = world();
        let p = policy(
            "web",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        );
        let d = desired("n1", [&p], &pods, &nss);
        let names: Vec<&str> = d.pods.iter().map(|i| i.pod.as_str()).collect();
        assert_eq!(names, ["web/db", "web/front"]);
        for i in &d.pods {
            assert_eq!(i.ingress, Some(vec![]));
            assert_eq!(i.egress, Some(vec![]));
        }
        // Without policyTypes and egress rules, only ingress is isolated.
        let p = policy("web", serde_json::json!({"podSelector": {}}));
        let d = desired("n1", [&p], &pods, &nss);
        assert!(
            d.pods
                .iter()
                .all(|i| i.ingress == Some(vec![]) && i.egress.is_none())
        );
        // An empty egress list or policyTypes is the same as none: ingress only.
        let p = policy(
            "web",
            serde_json::json!({"podSelector": {}, "egress": [], "policyTypes": []}),
        );
        let d = desired("n1", [&p], &pods, &nss);
        assert!(
            d.pods
                .iter()
                .all(|i| i.ingress == Some(vec![]) && i.egress.is_none())
        );
        // Another namespace's policy selects nothing here.
        let p = policy("ops", serde_json::json!({"podSelector": {}}));
        assert!(desired("n1", [&p], &pods, &nss).pods.is_empty());
    }

    #[test]
    fn allow_specific_lets_backends_of_the_namespace_reach_the_frontend_port() {
        let (pods, nss) = world();
        let p = policy(
            "web",
            serde_json::json!({
                "podSelector": {"matchLabels": {"role": "frontend"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "backend"}}}],
                    "ports": [{"port": "http"}],
                }],
            }),
        );
        let d = desired("n1", [&p], &pods, &nss);
        assert_eq!(d.pods.len(), 1);
        let front = &d.pods[0];
        assert_eq!(front.ip, ip("10.244.0.2"));
        assert_eq!(
            front.ingress,
            Some(vec![Allow {
                peers: Some(Peers {
                    // web/back only: ops/probe is a backend of another namespace.
                    addresses: BTreeSet::from([ip("10.244.1.2")]),
                    blocks: vec![],
                }),
                ports: Some(Ports {
                    protocol: Protocol::Tcp,
                    range: Some((8080, 8080)),
                }),
            }])
        );
    }

    #[test]
    fn namespace_selectors_ip_blocks_ranges_and_named_egress_ports() {
        let (pods, nss) = world();
        let p = policy(
            "web",
            serde_json::json!({
                "podSelector": {"matchLabels": {"role": "db"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]},
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "backend"}}}],
                     "ports": [{"port": "dns", "protocol": "UDP"}]},
                    {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                     "ports": [{"port": 30000, "endPort": 30100}, {"protocol": "SCTP"}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}}}]},
                ],
            }),
        );
        let d = desired("n1", [&p], &pods, &nss);
        let db = &d.pods[0];
        assert_eq!(db.pod, "web/db");
        assert!(db.ingress.is_none());
        let egress = db.egress.as_ref().unwrap();
        assert_eq!(egress.len(), 6, "{egress:#?}");
        assert_eq!(
            egress[0].peers.as_ref().unwrap().addresses,
            BTreeSet::from([ip("10.244.1.3")])
        );
        assert_eq!(egress[0].ports, None);
        // The named port, resolved per backend pod in any namespace.
        let named: Vec<_> = egress[1..3]
            .iter()
            .map(|a| {
                (
                    a.peers.as_ref().unwrap().addresses.clone(),
                    a.ports.unwrap(),
                )
            })
            .collect();
        assert_eq!(named.len(), 2);
        assert!(
            named
                .iter()
                .all(|(_, p)| p.range == Some((53, 53)) && p.protocol == Protocol::Udp)
        );
        assert_eq!(egress[3].ports.unwrap().range, Some((30000, 30100)));
        assert_eq!(
            egress[3].peers.as_ref().unwrap().blocks,
            vec![Block {
                cidr: "192.168.0.0/16".parse().unwrap(),
                except: vec!["192.168.1.0/24".parse().unwrap()],
            }]
        );
        assert_eq!(
            egress[4].ports,
            Some(Ports {
                protocol: Protocol::Sctp,
                range: None
            })
        );
        // The automatic namespace name label selects the policy's own namespace.
        assert_eq!(
            egress[5].peers.as_ref().unwrap().addresses,
            BTreeSet::from([ip("10.244.0.2"), ip("10.244.0.3"), ip("10.244.1.2")])
        );
    }

    #[test]
    fn host_network_and_finished_pods_are_left_out() {
        let (mut pods, nss) = world();
        pods[0].spec.as_mut().unwrap().host_network = Some(true);
        pods[2].status.as_mut().unwrap().phase = Some("Succeeded".into());
        let p = policy("web", serde_json::json!({"podSelector": {}}));
        assert!(desired("n1", [&p], &pods, &nss).pods.is_empty());
    }
}
