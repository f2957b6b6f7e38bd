//! Pod sandboxes: what a pod's containers share. For a pod on the pod network, the runtime's
//! namespaces (network, UTS with the pod's hostname, IPC), an address from the node's pod CIDR
//! on a veth to the node's bridge, and the files the kubelet manages: `/etc/hosts`,
//! `/etc/resolv.conf` (by dnsPolicy and dnsConfig) and `/etc/hostname`, bind-mounted into every
//! container. A `hostNetwork` pod shares the node's namespaces and gets the node's resolvers
//! and hosts file.
//!
//! The node's pod network ([`PodNetwork`]) comes up once the control plane has given the node
//! its podCIDR; until then pods wait in ContainerCreating.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use strake_net::routes::PodRoutes;
use strake_net::{Ipam, Ipv4Net, NodeNetwork};
use strake_runtime::{BindMount, Sandbox};

use crate::Shared;

/// The node's bridge.
pub const POD_BRIDGE: &str = "strake0";
/// Upstream's limits on resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The node's pod network, once it has a podCIDR.
pub struct PodNetwork {
    pub node: NodeNetwork,
    pub ipam: Ipam,
}

/// What the containers of one pod share.
#[derive(Debug, Clone, Default)]
pub struct PodSandbox {
    /// The pod's own address; None on the host network.
    pub ip: Option<Ipv4Addr>,
    /// The namespaces to join; None on the host network.
    pub namespaces: Option<Sandbox>,
    /// Files mounted into every container that does not mount its own at the path.
    pub files: Vec<BindMount>,
    /// The containers' hostname: the pod's, or the node's on the host network.
    pub hostname: String,
}

pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn sandbox_dir(shared: &Shared, uid: &str) -> PathBuf {
    shared.cfg.run_dir.join("sandboxes").join(uid)
}

/// The network namespace of pod `uid`, if it has one on this node.
pub fn netns_of(shared: &Shared, uid: &str) -> Option<PathBuf> {
    let path = Sandbox::at(&sandbox_dir(shared, uid)).net;
    path.exists().then_some(path)
}

/// Waits for this node's podCIDR, then brings up the bridge and the address allocator and
/// publishes them in [`Shared::network`]. Addresses held by pods of an earlier agent run are
/// freed first: those pods' containers are gone (see `worker::sweep_leftovers`).
pub async fn run_network(shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(200);
    let mut said = false;
    loop {
        match shared.client.get::<Node>(None, &shared.cfg.node_name).await {
            Ok(node) => {
                let cidr = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.clone().or(s.pod_cidr.clone().map(|c| vec![c])))
                    .unwrap_or_default()
                    .iter()
                    .find_map(|c| c.parse::<Ipv4Net>().ok());
                match cidr {
                    Some(cidr) => {
                        let root = shared.cfg.data_dir.join("ipam");
                        let backend = shared.cfg.pod_network_backend;
                        let node_ip = crate::routes::node_ipv4(shared.cfg.node_ip);
                        let made = tokio::task::spawn_blocking(move || {
                            // Routes to other nodes first: the pods' MTU depends on them.
                            let routes = match node_ip {
                                Some(ip) => match PodRoutes::setup(backend, ip, cidr, None) {
                                    Ok(r) => Some(r),
                                    Err(e) => {
                                        tracing::error!(error = %e, "cross-node pod routes are unavailable: pods reach only this node's pods");
                                        None
                                    }
                                },
                                None => {
                                    tracing::warn!("no IPv4 node address: pods reach only this node's pods");
                                    None
                                }
                            };
                            let mtu = routes.as_ref().map(PodRoutes::pod_mtu);
                            let node = NodeNetwork::setup(POD_BRIDGE, cidr, mtu, None)?;
                            let ipam = Ipam::open(&root, cidr)?;
                            let freed = ipam.retain(|_| false)?;
                            if !freed.is_empty() {
                                tracing::info!(
                                    count = freed.len(),
                                    "freed the addresses of an earlier run's pods"
                                );
                            }
                            Ok::<_, strake_net::NetError>((PodNetwork { node, ipam }, routes))
                        })
                        .await;
                        match made {
                            Ok(Ok((net, routes))) => {
                                shared.network.send_replace(Some(Arc::new(net)));
                                if let Some(routes) = routes {
                                    tokio::spawn(crate::routes::run(shared.clone(), routes));
                                }
                                return;
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "setting up the pod network failed; retrying")
                            }
                            Err(e) => tracing::error!(error = %e, "pod network setup panicked"),
                        }
                    }
                    None if !said => {
                        said = true;
                        tracing::info!("waiting for the control plane to give this node a podCIDR");
                    }
                    None => {}
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading this node's podCIDR failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Makes the sandbox of `pod`, whose files go in `pod_dir`. For a pod on the pod network this
/// needs the node's pod network, which the caller has waited for.
pub async fn create(
    shared: &Shared,
    pod: &Pod,
    pod_dir: &Path,
    network: Option<Arc<PodNetwork>>,
) -> Result<(PodSandbox, Vec<String>), String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let hostname = if host_network(pod) {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| shared.cfg.node_name.clone())
    } else {
        crate::worker::pod_hostname(pod)
    };
    let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (resolv, warnings) = resolv_conf(
        pod,
        &shared.cfg.cluster_dns,
        &shared.cfg.cluster_domain,
        &node_resolv,
    );
    let mut sandbox = PodSandbox {
        hostname: hostname.clone(),
        ..Default::default()
    };
    let hosts = if host_network(pod) {
        let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        host_network_hosts(pod, &node_hosts)
    } else {
        let network = network.ok_or("network is not ready: this node has no podCIDR yet")?;
        let dir = sandbox_dir(shared, &uid);
        let (ns_host, ns_uid) = (hostname.clone(), uid.clone());
        let made = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let namespaces = Sandbox::create(&dir, &ns_host).map_err(|e| e.to_string())?;
            let ip = network.ipam.allocate(&ns_uid).map_err(|e| e.to_string())?;
            network
                .node
                .attach(&namespaces.net, &ns_uid, ip)
                .map_err(|e| e.to_string())?;
            Ok((namespaces, ip))
        })
        .await
        .map_err(|e| format!("sandbox setup panicked: {e}"))??;
        sandbox.namespaces = Some(made.0);
        sandbox.ip = Some(made.1);
        managed_hosts(pod, made.1, &hostname, &shared.cfg.cluster_domain)
    };
    let mut write = |name: &str, dest: &str, text: &str| -> Result<(), String> {
        let path = pod_dir.join(name);
        std::fs::create_dir_all(pod_dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        sandbox.files.push(BindMount {
            source: path,
            destination: dest.into(),
            readonly: false,
        });
        Ok(())
    };
    write("etc-hosts", "/etc/hosts", &hosts)?;
    write("resolv.conf", "/etc/resolv.conf", &resolv)?;
    write("hostname", "/etc/hostname", &format!("{hostname}\n"))?;
    Ok((sandbox, warnings))
}

/// Undoes [`create`] for pod `uid`: its veth, namespaces and address. Safe to repeat, and for
/// pods that never got a sandbox.
pub async fn remove(shared: &Shared, uid: &str) {
    let dir = sandbox_dir(shared, uid);
    let network = shared.network.borrow().clone();
    let uid = uid.to_string();
    let done = tokio::task::spawn_blocking(move || {
        if let Some(net) = &network
            && let Err(e) = net.node.detach(&uid)
        {
            tracing::warn!(pod = %uid, error = %e, "removing the pod's veth failed");
        }
        if let Err(e) = Sandbox::remove(&dir) {
            tracing::warn!(pod = %uid, error = %e, "removing the pod's namespaces failed");
        }
        if let Some(net) = &network
            && let Err(e) = net.ipam.release(&uid)
        {
            tracing::warn!(pod = %uid, error = %e, "releasing the pod's address failed");
        }
    })
    .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "sandbox teardown panicked");
    }
}

/// Removes every sandbox left by an earlier agent run (their pods' containers are gone).
pub fn sweep(run_dir: &Path) {
    let root = run_dir.join("sandboxes");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if let Err(e) = Sandbox::remove(&entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "removing a leftover sandbox failed");
        }
    }
}

/// The kubelet's hosts file for a pod on the pod network: localhost entries, the pod's own
/// address under its hostname (and FQDN with a subdomain), then `hostAliases`.
pub fn managed_hosts(pod: &Pod, ip: Ipv4Addr, hostname: &str, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.clone().unwrap_or_default();
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(sub) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            out.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"
            ));
        }
        None => out.push_str(&format!("{ip}\t{hostname}\n")),
    }
    push_aliases(&mut out, pod);
    out
}

/// A `hostNetwork` pod's hosts file: the node's, then `hostAliases`.
pub fn host_network_hosts(pod: &Pod, node_hosts: &str) -> String {
    let mut out = node_hosts.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    push_aliases(&mut out, pod);
    out
}

fn push_aliases(out: &mut String, pod: &Pod) {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if aliases.is_empty() {
        return;
    }
    out.push_str("\n# Entries added by HostAliases.\n");
    for a in aliases {
        let names = a.hostnames.unwrap_or_default();
        if names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
    }
}

/// The pod's resolv.conf by its dnsPolicy and dnsConfig, as the kubelet writes it, with the
/// warnings to report as Events (`MissingClusterDNS`).
pub fn resolv_conf(
    pod: &Pod,
    cluster_dns: &[IpAddr],
    domain: &str,
    node_resolv: &str,
) -> (String, Vec<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let (mut servers, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in node_resolv.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_string)),
            Some("search" | "domain") => {
                search = words.map(str::to_string).collect();
            }
            Some("options") => options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_net = spec.host_network.unwrap_or(false);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_net,
        _ => false,
    };
    if policy == "None" {
        (servers, search, options) = (Vec::new(), Vec::new(), Vec::new());
    } else if cluster_first && cluster_dns.is_empty() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        warnings.push(format!(
            "pod: \"{name}_{ns}({uid})\". kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."
        ));
    } else if cluster_first {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut cluster = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_string(),
        ];
        cluster.append(&mut search);
        search = cluster;
        servers = cluster_dns.iter().map(IpAddr::to_string).collect();
        options = vec!["ndots:5".to_string()];
    }
    if let Some(cfg) = spec.dns_config {
        servers.extend(cfg.nameservers.unwrap_or_default());
        search.extend(cfg.searches.unwrap_or_default());
        for o in cfg.options.unwrap_or_default() {
            let text = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = o.name.unwrap_or_default();
            options.retain(|existing| existing.split(':').next() != Some(key.as_str()));
            options.push(text);
        }
    }
    dedup(&mut servers);
    dedup(&mut search);
    servers.truncate(MAX_NAMESERVERS);
    search.truncate(MAX_SEARCHES);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    (out, warnings)
}

fn dedup(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|s| !s.is_empty() && seen.insert(s.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": spec
        }))
        .unwrap()
    }

    const NODE: &str = "# from DHCP\nsearch lan example.com\nnameserver 10.0.2.3\noptions edns0\n";

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_list() {
        let p = pod(json!({"containers": []}));
        let dns = ["10.96.0.10".parse().unwrap()];
        let (text, warnings) = resolv_conf(&p, &dns, "cluster.local", NODE);
        assert!(warnings.is_empty());
        assert_eq!(
            text,
            "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.com\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // A hostNetwork pod with ClusterFirst gets the node's; ClusterFirstWithHostNet not.
        let host = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(
            resolv_conf(&host, &dns, "cluster.local", NODE).0,
            "search lan example.com\nnameserver 10.0.2.3\noptions edns0\n"
        );
        let with = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert!(
            resolv_conf(&with, &dns, "cluster.local", NODE)
                .0
                .contains("nameserver 10.96.0.10\n")
        );
    }

    #[test]
    fn without_cluster_dns_cluster_first_falls_back_with_a_warning() {
        let p = pod(json!({"containers": []}));
        let (text, warnings) = resolv_conf(&p, &[], "cluster.local", NODE);
        assert_eq!(
            text,
            "search lan example.com\nnameserver 10.0.2.3\noptions edns0\n"
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(
                "pod: \"web_shop(u1)\". kubelet does not have ClusterDNS IP configured"
            )
        );
    }

    #[test]
    fn dns_config_merges_and_none_starts_empty() {
        let p = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "1.1.1.1", "8.8.8.8", "9.9.9.9", "4.4.4.4"],
            "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]
        }}));
        assert_eq!(
            resolv_conf(&p, &[], "cluster.local", NODE).0,
            "search a.example\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\noptions ndots:2 edns0\n"
        );
        let merged = pod(
            json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
        );
        let dns = ["10.96.0.10".parse().unwrap()];
        assert!(
            resolv_conf(&merged, &dns, "cluster.local", NODE)
                .0
                .ends_with("options ndots:1\n")
        );
    }

    #[test]
    fn hosts_files_as_the_kubelet_writes_them() {
        let p = pod(
            json!({"containers": [], "hostname": "db-0", "subdomain": "db",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
        );
        let text = managed_hosts(&p, Ipv4Addr::new(10, 244, 0, 7), "db-0", "cluster.local");
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            text.contains("\n10.244.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n")
        );
        let plain = pod(json!({"containers": []}));
        assert!(
            managed_hosts(&plain, Ipv4Addr::new(10, 244, 0, 8), "web", "cluster.local")
                .ends_with("\n10.244.0.8\tweb\n")
        );
        assert_eq!(
            host_network_hosts(&plain, "127.0.0.1 localhost"),
            "127.0.0.1 localhost\n"
        );
    }
}
