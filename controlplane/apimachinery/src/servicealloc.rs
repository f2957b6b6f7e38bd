//! Services' cluster IPs and node ports, handed out as the API server's allocators do: a
//! Service that needs a cluster IP gets a free one from the service range (the first address
//! is the `kubernetes` Service's; dynamic picks come from above a low band kept for addresses
//! users choose), and each port of a NodePort or LoadBalancer Service gets a free node port
//! (30000-32767 by default). A value the user chose must be in range and free, or the write is
//! refused with upstream's message.
//!
//! Several API servers hand out values at once, so the store arbitrates: every value a Service
//! holds has a claim key (`/allocations/serviceips/<ip>`, `/allocations/nodeports/<port>`)
//! naming the Service, written in the same transaction as the Service itself (a guard that the
//! key is absent, or still at the stale claim's revision being taken over). Of two writes that
//! picked one value, the second fails its guard; a create then runs admission again, which
//! picks anew or refuses a value the user chose. A claim whose Service no longer holds the
//! value (deleted, or changed type) is stale: the next Service that wants the value takes it
//! over, and deleting a Service releases its claims.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::admission::{AdmissionPlugin, Attributes, Operation};
use crate::error::{ApiError, FieldError};
use crate::registry::{ListOptions, Registry};
use crate::resource::ResourceDef;
use crate::storage::{Guard, ObjectStore};

/// Upstream's default node port range.
pub const NODE_PORTS: RangeInclusive<u16> = 30000..=32767;
/// Where claims on cluster IPs and node ports are kept (outside `/registry/`: no API serves
/// them).
const IP_CLAIMS: &str = "/allocations/serviceips/";
const PORT_CLAIMS: &str = "/allocations/nodeports/";

pub struct ServiceAllocation {
    cidr: Ipv4Net,
    node_ports: RangeInclusive<u16>,
}

impl ServiceAllocation {
    pub fn new(cidr: Ipv4Net, node_ports: RangeInclusive<u16>) -> Self {
        Self {
            cidr: cidr.trunc(),
            node_ports,
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

const IP_TAKEN: &str = "provided IP is already allocated";

fn ip_refused(ip: &str, problem: &str) -> FieldError {
    FieldError::invalid(
        "spec.clusterIPs",
        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: {problem}"),
    )
}

fn port_taken(index: usize, port: u16) -> FieldError {
    FieldError::invalid(
        format!("spec.ports[{index}].nodePort"),
        format!("Invalid value: {port}: provided port is already allocated"),
    )
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

            // The store decides in the end (the claims written with the Service); this read
            // only keeps picks off values that stored Services hold.
            let all = reg.list(attrs.def, None, &ListOptions::default()).await?;
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

            let mut causes = Vec::new();
            for ip in &chosen_ips {
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
                    Ok(a) if used_ips.contains(&a) => Some(IP_TAKEN.to_string()),
                    Ok(_) => None,
                };
                if let Some(p) = problem {
                    causes.push(ip_refused(ip, &p));
                }
            }
            for (i, port) in &ports_to_check {
                if !self.node_ports.contains(port) {
                    causes.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                            self.node_ports.start(),
                            self.node_ports.end()
                        ),
                    ));
                } else if used_ports.contains(port) {
                    causes.push(port_taken(*i, *port));
                }
            }
            if !causes.is_empty() {
                return Err(attrs.def.invalid(attrs.name, causes));
            }

            if wants_ip {
                let ip = self.pick_ip(&used_ips).ok_or_else(|| {
                    ApiError::Internal(format!(
                        "failed to allocate a serviceIP: range is full ({})",
                        self.cidr
                    ))
                })?;
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
                        p["nodePort"] = json!(port);
                    }
                }
            }
            Ok(())
        })
    }
}

/// The Service a claim names.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Owner {
    namespace: String,
    name: String,
    uid: String,
}

impl Owner {
    fn of(svc: &Value) -> Self {
        let meta = |f: &str| svc["metadata"][f].as_str().unwrap_or_default().to_string();
        Self {
            namespace: meta("namespace"),
            name: meta("name"),
            uid: meta("uid"),
        }
    }
}

/// A value a Service holds: its claim key, and the refusal if another Service holds it.
struct Held {
    key: Vec<u8>,
    taken: FieldError,
}

fn held(svc: &Value) -> Vec<Held> {
    let mut out: Vec<Held> = cluster_ips(svc)
        .into_iter()
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
        .map(|ip| Held {
            key: format!("{IP_CLAIMS}{ip}").into_bytes(),
            taken: ip_refused(&ip, IP_TAKEN),
        })
        .collect();
    let ports = svc["spec"]["ports"].as_array().into_iter().flatten();
    for (i, p) in ports.enumerate() {
        if let Some(port) = p["nodePort"].as_u64().and_then(|p| u16::try_from(p).ok())
            && port > 0
        {
            out.push(Held {
                key: format!("{PORT_CLAIMS}{port}").into_bytes(),
                taken: port_taken(i, port),
            });
        }
    }
    out
}

pub(crate) fn is_services(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "services"
}

/// The claims a Service write makes, as guards to write in the same transaction: each value
/// the Service holds that no claim names yet (the guard: the key is still absent), or whose
/// claim is stale (the guard: the claim is still at the revision read). A value new to this
/// Service that another Service holds refuses the write; one it already held before (stored
/// before claims existed) is left as it is. A Service stored before claims existed gets its
/// claims at the first write that changes its values.
pub(crate) async fn claims(
    reg: &Registry,
    def: &ResourceDef,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Vec<Guard>, ApiError> {
    if !is_services(def) {
        return Ok(Vec::new());
    }
    let before: Vec<Vec<u8>> = old
        .map(held)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.key)
        .collect();
    let now = held(obj);
    // An update that keeps its values (most are: status, labels, selectors) claimed them when
    // it first held them, and reads nothing more here.
    if old.is_some() && now.len() == before.len() && now.iter().all(|h| before.contains(&h.key)) {
        return Ok(Vec::new());
    }
    let me = Owner::of(obj);
    let mine = serde_json::to_vec(&me).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut guards = Vec::new();
    let mut causes = Vec::new();
    for h in now {
        let expected = match reg.store().get(&h.key).await? {
            None => 0,
            Some(claim) => {
                let owner = serde_json::from_slice::<Owner>(&claim.value).ok();
                if owner.as_ref() == Some(&me) {
                    continue;
                }
                let live = match &owner {
                    Some(o) => holds(reg, def, o, &h.key).await?,
                    None => false,
                };
                // A create of a Service that exists: the write says so, as for any object.
                if live
                    && old.is_none()
                    && owner.is_some_and(|o| o.namespace == me.namespace && o.name == me.name)
                {
                    return Err(ApiError::AlreadyExists {
                        resource: def.group_resource(),
                        name: me.name,
                    });
                }
                if live {
                    if !before.contains(&h.key) {
                        causes.push(h.taken);
                    }
                    continue;
                }
                claim.revision
            }
        };
        guards.push(Guard {
            key: h.key,
            value: mine.clone(),
            expected,
        });
    }
    if !causes.is_empty() {
        return Err(def.invalid(&me.name, causes));
    }
    Ok(guards)
}

/// Whether the claim's Service is stored (the same object: its uid) and still holds the value.
async fn holds(
    reg: &Registry,
    def: &ResourceDef,
    owner: &Owner,
    key: &[u8],
) -> Result<bool, ApiError> {
    match reg.get(def, Some(&owner.namespace), &owner.name).await {
        Ok(svc) => Ok(Owner::of(&svc) == *owner && held(&svc).iter().any(|h| h.key == key)),
        Err(ApiError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Drops the claims a Service held that it holds no more (`now` None: it is gone), so the
/// store keeps no claim for a deleted Service. A claim taken over meanwhile is left alone;
/// one left behind (a failure here) is stale, and taken over by the next Service wanting it.
pub(crate) async fn release(
    store: &dyn ObjectStore,
    def: &ResourceDef,
    was: &Value,
    now: Option<&Value>,
) {
    if !is_services(def) {
        return;
    }
    let me = Owner::of(was);
    let kept: Vec<Vec<u8>> = now
        .map(held)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.key)
        .collect();
    for h in held(was).into_iter().filter(|h| !kept.contains(&h.key)) {
        if let Ok(Some(claim)) = store.get(&h.key).await
            && serde_json::from_slice::<Owner>(&claim.value).is_ok_and(|o| o == me)
        {
            let _ = store.delete(h.key, Some(claim.revision)).await;
        }
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
