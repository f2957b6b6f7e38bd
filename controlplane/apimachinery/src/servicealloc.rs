//! Services' cluster IPs and node ports, handed out as the API server's allocators do: a
//! Service that needs a cluster IP gets a free one from the service range (the first address
//! is the `kubernetes` Service's; dynamic picks come from above a low band kept for addresses
//! users choose), and each port of a NodePort or LoadBalancer Service gets a free node port
//! (30000-32767 by default). A value the user chose must be in range and free, or the write is
//! refused with upstream's message. Free means used by no stored Service (other than the one
//! being written) nor handed out in the last minute to a write that may not be stored yet.
//!
//! One API server hands out at a time (a lock); with several API servers the store itself
//! would have to arbitrate (upstream's IPAddress objects), which is the HA issue's to add.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::admission::{AdmissionPlugin, Attributes, Operation};
use crate::error::{ApiError, FieldError};
use crate::registry::{ListOptions, Registry};

/// Upstream's default node port range.
pub const NODE_PORTS: RangeInclusive<u16> = 30000..=32767;
/// How long a value handed out counts as used without being stored.
const PENDING: Duration = Duration::from_secs(60);

pub struct ServiceAllocation {
    cidr: Ipv4Net,
    node_ports: RangeInclusive<u16>,
    /// Values handed out recently, which may not be stored yet.
    pending: tokio::sync::Mutex<Vec<Handed>>,
}

/// What one write was handed, and when.
struct Handed {
    /// The Service's namespace and name.
    key: (String, String),
    at: Instant,
    ip: Option<Ipv4Addr>,
    ports: Vec<u16>,
}

impl ServiceAllocation {
    pub fn new(cidr: Ipv4Net, node_ports: RangeInclusive<u16>) -> Self {
        Self {
            cidr: cidr.trunc(),
            node_ports,
            pending: tokio::sync::Mutex::default(),
        }
    }

    /// The `kubernetes` Service's address: the range's first.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// The cluster DNS Service's address: the range's tenth (kubeadm's convention, and the
    /// agents' default `--cluster-dns`).
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 10)
    }

    /// Addresses handed out dynamically start above this offset, so that addresses users
    /// pick in the low band rarely collide (upstream keeps min(max(16, size/16), 256)).
    fn dynamic_start(&self) -> u32 {
        let size = 1u32 << (32 - u32::from(self.cidr.prefix_len()));
        (size / 16).clamp(16, 256).min(size / 2)
    }

    fn pick_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let net = u32::from(self.cidr.network());
        let last = u32::from(self.cidr.broadcast()) - 1;
        let first = (net + self.dynamic_start()).min(last);
        let span = last - first + 1;
        let start = rand::random::<u32>() % span;
        (0..span)
            .map(|i| Ipv4Addr::from(first + (start + i) % span))
            .chain((net + 1..first).map(Ipv4Addr::from))
            .find(|ip| !used.contains(ip))
    }

    fn pick_port(&self, used: &HashSet<u16>) -> Option<u16> {
        let (lo, hi) = (
            u32::from(*self.node_ports.start()),
            u32::from(*self.node_ports.end()),
        );
        let span = hi - lo + 1;
        let start = rand::random::<u32>() % span;
        (0..span)
            .map(|i| (lo + (start + i) % span) as u16)
            .find(|p| !used.contains(p))
    }
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    let spec = &svc["spec"];
    let mut ips: Vec<String> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if ips.is_empty()
        && let Some(ip) = spec["clusterIP"].as_str()
    {
        ips.push(ip.to_string());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

fn node_ports(svc: &Value) -> Vec<u16> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .filter(|p| *p > 0)
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

impl AdmissionPlugin for ServiceAllocation {
    fn name(&self) -> &'static str {
        "ServiceAllocation"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation == Operation::Delete
                || attrs.subresource.is_some()
                || !attrs.def.group.is_empty()
                || attrs.def.plural != "services"
            {
                return Ok(());
            }
            let ty = obj["spec"]["type"]
                .as_str()
                .unwrap_or("ClusterIP")
                .to_string();
            if ty == "ExternalName" {
                return Ok(());
            }
            let wants_ip = cluster_ips(obj).is_empty() && obj["spec"]["clusterIP"] != "None";
            let node_port_type = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
            let old_ips = attrs.old.map(cluster_ips).unwrap_or_default();
            let old_ports = attrs.old.map(node_ports).unwrap_or_default();
            let chosen_ips: Vec<String> = cluster_ips(obj)
                .into_iter()
                .filter(|ip| !old_ips.contains(ip))
                .collect();
            let ports_to_check: Vec<(usize, u16)> = if node_port_type {
                obj["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, p)| Some((i, u16::try_from(p["nodePort"].as_u64()?).ok()?)))
                    .filter(|(_, p)| *p > 0 && !old_ports.contains(p))
                    .collect()
            } else {
                Vec::new()
            };
            let needs_ports = node_port_type
                && obj["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["nodePort"].as_u64().unwrap_or(0) == 0);
            if !wants_ip && chosen_ips.is_empty() && ports_to_check.is_empty() && !needs_ports {
                return Ok(());
            }

            let mut pending = self.pending.lock().await;
            let all = reg.list(attrs.def, None, &ListOptions::default()).await?;
            let key_of = |s: &Value| {
                (
                    s["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            };
            // A value stays pending until it expires or its Service is stored with it (from
            // then on the store says whether it is used, and a deletion frees it).
            pending.retain(|h| {
                let stored = all.items.iter().find(|s| key_of(s) == h.key);
                let landed = stored.is_some_and(|s| {
                    h.ip.is_none_or(|ip| cluster_ips(s).contains(&ip.to_string()))
                        && h.ports.iter().all(|p| node_ports(s).contains(p))
                });
                h.at.elapsed() < PENDING && !landed
            });
            let me = (attrs.namespace.unwrap_or_default(), attrs.name);
            let others = all.items.iter().filter(|s| {
                (
                    s["metadata"]["namespace"].as_str().unwrap_or_default(),
                    s["metadata"]["name"].as_str().unwrap_or_default(),
                ) != me
            });
            let mut used_ips: HashSet<Ipv4Addr> = HashSet::new();
            let mut used_ports: HashSet<u16> = HashSet::new();
            for s in others {
                used_ips.extend(
                    cluster_ips(s)
                        .iter()
                        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
                );
                used_ports.extend(node_ports(s));
            }
            for h in pending.iter() {
                used_ips.extend(h.ip);
                used_ports.extend(h.ports.iter().copied());
            }

            let mut causes = Vec::new();
            for ip in &chosen_ips {
                let field = "spec.clusterIPs";
                let parsed = ip.parse::<Ipv4Addr>();
                let problem = match parsed {
                    Err(_) => Some(format!("{ip} is not a valid IP address")),
                    Ok(a)
                        if !self.cidr.contains(&a)
                            || a == self.cidr.network()
                            || a == self.cidr.broadcast() =>
                    {
                        Some(format!(
                            "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        ))
                    }
                    Ok(a) if used_ips.contains(&a) => {
                        Some("provided IP is already allocated".to_string())
                    }
                    Ok(_) => None,
                };
                if let Some(p) = problem {
                    causes.push(FieldError::invalid(
                        field,
                        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: {p}"),
                    ));
                }
            }
            for (i, port) in &ports_to_check {
                let field = format!("spec.ports[{i}].nodePort");
                if !self.node_ports.contains(port) {
                    causes.push(FieldError::invalid(
                        field,
                        format!(
                            "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                            self.node_ports.start(),
                            self.node_ports.end()
                        ),
                    ));
                } else if used_ports.contains(port) {
                    causes.push(FieldError::invalid(
                        field,
                        format!("Invalid value: {port}: provided port is already allocated"),
                    ));
                }
            }
            if !causes.is_empty() {
                return Err(attrs.def.invalid(attrs.name, causes));
            }

            let mut handed_ip = chosen_ips.first().and_then(|ip| ip.parse().ok());
            if wants_ip {
                let ip = self.pick_ip(&used_ips).ok_or_else(|| {
                    ApiError::Internal(format!(
                        "failed to allocate a serviceIP: range is full ({})",
                        self.cidr
                    ))
                })?;
                handed_ip = Some(ip);
                obj["spec"]["clusterIP"] = json!(ip.to_string());
                obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
            }
            if !cluster_ips(obj).is_empty() {
                if obj["spec"]["ipFamilies"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    obj["spec"]["ipFamilies"] = json!(["IPv4"]);
                }
                if obj["spec"]["ipFamilyPolicy"].is_null() {
                    obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
                }
            }
            let mut handed_ports: Vec<u16> = ports_to_check.iter().map(|(_, p)| *p).collect();
            if needs_ports {
                used_ports.extend(node_ports(obj));
                if let Some(ports) = obj["spec"]["ports"].as_array_mut() {
                    for p in ports
                        .iter_mut()
                        .filter(|p| p["nodePort"].as_u64().unwrap_or(0) == 0)
                    {
                        let port = self.pick_port(&used_ports).ok_or_else(|| {
                            ApiError::Internal(format!(
                                "failed to allocate a nodePort: range is full ({}-{})",
                                self.node_ports.start(),
                                self.node_ports.end()
                            ))
                        })?;
                        used_ports.insert(port);
                        handed_ports.push(port);
                        p["nodePort"] = json!(port);
                    }
                }
            }
            if !attrs.dry_run {
                pending.push(Handed {
                    key: (me.0.to_string(), me.1.to_string()),
                    at: Instant::now(),
                    ip: handed_ip,
                    ports: handed_ports,
                });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_stay_in_range_above_the_low_band_and_skip_used_values() {
        let a = ServiceAllocation::new("10.96.0.0/28".parse().unwrap(), 30000..=30002);
        assert_eq!(a.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(a.dynamic_start(), 8, "half of a tiny range");
        let mut used = HashSet::new();
        for _ in 0..14 {
            let ip = a.pick_ip(&used).unwrap();
            assert!(a.cidr.contains(&ip) && ip != a.cidr.network() && ip != a.cidr.broadcast());
            assert!(used.insert(ip), "{ip} twice");
        }
        assert_eq!(a.pick_ip(&used), None, "full");
        let big = ServiceAllocation::new("10.96.0.0/12".parse().unwrap(), NODE_PORTS);
        assert_eq!(big.dynamic_start(), 256);
        let ip = u32::from(big.pick_ip(&HashSet::new()).unwrap());
        assert!(ip >= u32::from(Ipv4Addr::new(10, 96, 1, 0)));
        let mut ports = HashSet::new();
        for _ in 0..3 {
            assert!(ports.insert(a.pick_port(&ports).unwrap()));
        }
        assert_eq!(a.pick_port(&ports), None);
    }
}
