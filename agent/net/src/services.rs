//! Service routing and masquerade as one nf_tables table of Strake's own (`ip strake`), the
//! kube-proxy role: built whole from the desired state and swapped in atomically (the table is
//! deleted and rebuilt in the same batch), never touching any other table.
//!
//! ```text
//! chain prerouting  { type nat hook prerouting priority -100;
//!                     ip saddr != <cluster CIDR> meta mark set mark | 0x4000
//!                     jump services
//!                     meta mark set mark & ~0x4000 }              # nothing matched
//! chain output      { type nat hook output priority -100; jump services
//!                     meta mark set mark & ~0x4000 }
//! chain postrouting { type nat hook postrouting priority 100;
//!                     meta mark & 0x4000 == 0x4000 masquerade      # hairpin
//!                     ip saddr <pod CIDR> ip daddr != <cluster CIDR> masquerade }
//! chain services    { ip daddr <cluster DNS> udp|tcp dport 53 dnat to <node's DNS>:53
//!                     ip daddr @node-ips meta mark set mark | 0x4000
//!                     ip daddr . meta l4proto . th dport vmap @service-ips
//!                     ip daddr @node-ips meta l4proto . th dport vmap @service-nodeports }
//! chain svc-<h>     { numgen random mod N vmap @svc-<h> }          # one per service port
//! chain sep-<h>     { ip saddr <endpoint> meta mark set 0x4000     # one per endpoint
//!                     dnat to <endpoint>:<port> }
//! ```
//!
//! With session affinity, each endpoint chain first does `update @aff-<h> { ip saddr }` (a
//! set whose elements time out after `timeoutSeconds`) and each picker first sends a client
//! found in an endpoint's set straight back to that endpoint:
//!
//! ```text
//! chain svc-<h>     { ip saddr @aff-<h1> goto sep-<h1> ...; numgen random mod N vmap @svc-<h> }
//! ```
//!
//! A service port without ready endpoints is refused at once (ICMP port unreachable), from
//! filter chains (`filter-forward`, `filter-output`, `filter-input`) looking its address and
//! port up in `no-endpoints` and `no-endpoint-nodeports`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use sha2::{Digest as _, Sha256};

use crate::NetError;
use crate::nft::{
    Base, BaseChain, Batch, CmpOp, DATA_VERDICT, Data, Element, Expr, Family, Hook, MetaKey,
    REG_VERDICT, REG32_00, Set, Verdict, prefix_mask,
};

pub const TABLE: &str = "strake";
/// The mark of connections that must leave masqueraded (a pod reaching itself through a
/// service).
const MASQ_MARK: u32 = 0x4000;
const FAMILY: Family = Family::Ipv4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub(crate) fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One port of one Service, with where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `ns/name:port`, for naming its chains.
    pub name: String,
    pub cluster_ip: Option<Ipv4Addr>,
    /// Further addresses the port answers on: `spec.externalIPs` and LoadBalancer ingress.
    pub external_ips: Vec<Ipv4Addr>,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints: address and target port.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// The endpoints on this node (a subset of `endpoints`), for the Local traffic policies.
    pub local_endpoints: Vec<(Ipv4Addr, u16)>,
    /// `internalTrafficPolicy: Local`: the cluster IP leads only to this node's endpoints.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: node ports and external addresses lead only to this
    /// node's endpoints, without masquerade (the client's address is kept); traffic from
    /// the cluster's own pods still reaches every endpoint.
    pub external_local: bool,
    /// `sessionAffinity: ClientIP`: a client keeps its endpoint for this many seconds after
    /// its last new connection.
    pub affinity_timeout: Option<u32>,
}

/// Everything the table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// This node's pods: their traffic leaving the cluster is masqueraded.
    pub pod_cidr: Option<Ipv4Net>,
    /// Every pod's range: traffic to it is never masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The node's addresses NodePorts answer on.
    pub node_ips: Vec<Ipv4Addr>,
    pub services: Vec<ServicePort>,
    /// The cluster DNS address and this node's DNS server it leads to (node-local DNS: port
    /// 53, UDP and TCP, never leaves the node).
    pub dns: Option<(Ipv4Addr, Ipv4Addr)>,
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

pub(crate) fn reg(n: u32) -> u32 {
    REG32_00 + n
}

fn goto(chain: &str) -> Data {
    Data::Verdict(Verdict::Goto(chain.to_string()))
}

fn port_key(proto: Protocol, port: u16) -> Vec<u8> {
    let mut k = vec![proto.number(), 0, 0, 0];
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// `ip saddr|daddr & mask ==|!= net`.
fn match_net(offset: u32, net: Ipv4Net, op: CmpOp) -> [Expr; 3] {
    [
        Expr::Payload {
            base: Base::Network,
            offset,
            len: 4,
            dreg: reg(0),
        },
        Expr::Bitwise {
            sreg: reg(0),
            dreg: reg(0),
            mask: prefix_mask(net.prefix_len(), 4),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: reg(0),
            op,
            data: net.network().octets().to_vec(),
        },
    ]
}

/// Loads `meta l4proto . th dport` into registers `first` and `first + 1`.
fn load_proto_port(first: u32) -> [Expr; 2] {
    [
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: reg(first),
        },
        Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
            dreg: reg(first + 1),
        },
    ]
}

fn verdict_map(name: &str, key_len: u32) -> Set {
    Set {
        name: name.to_string(),
        key_len,
        data: Some((DATA_VERDICT, 0)),
        timeout_ms: None,
    }
}

fn svc_chain(sp: &ServicePort) -> String {
    format!("svc-{}", short_hash(&sp.name))
}

/// The chain (and map) picking among this node's endpoints only.
fn local_chain(sp: &ServicePort) -> String {
    format!("svl-{}", short_hash(&sp.name))
}

/// The chain external traffic enters under `externalTrafficPolicy: Local`.
fn external_chain(sp: &ServicePort) -> String {
    format!("ext-{}", short_hash(&sp.name))
}

impl ServicePort {
    fn needs_local(&self) -> bool {
        self.internal_local || self.external_local
    }

    /// The chain a key of `map` leads to: the cluster IP's (all endpoints, or this node's
    /// under the internal Local policy), or the external addresses' and node port's (all
    /// endpoints, or the external chain under the external Local policy).
    fn target(&self, map: Map, key: &[u8]) -> String {
        let cluster = map == Map::Ips
            && self
                .cluster_ip
                .is_some_and(|ip| key.starts_with(&ip.octets()));
        match (cluster, self.internal_local, self.external_local) {
            (true, true, _) => local_chain(self),
            (false, _, true) => external_chain(self),
            _ => svc_chain(self),
        }
    }
}

/// The set of clients that stick to an endpoint (session affinity).
fn affinity_set(sp: &ServicePort, ip: Ipv4Addr, port: u16) -> String {
    format!("aff-{}", short_hash(&format!("{}/{ip}:{port}", sp.name)))
}

/// `ip saddr` into `reg`.
fn saddr(reg: u32) -> Expr {
    Expr::Payload {
        base: Base::Network,
        offset: 12,
        len: 4,
        dreg: reg,
    }
}

fn sep_chain(sp: &ServicePort, ip: Ipv4Addr, port: u16) -> String {
    format!("sep-{}", short_hash(&format!("{}/{ip}:{port}", sp.name)))
}

/// Which map a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Map {
    Ips,
    NodePorts,
}

impl Map {
    /// The verdict map of ports with endpoints, or the set of those without (refused).
    fn set(self, has_endpoints: bool) -> &'static str {
        match (self, has_endpoints) {
            (Map::Ips, true) => "service-ips",
            (Map::NodePorts, true) => "service-nodeports",
            (Map::Ips, false) => "no-endpoints",
            (Map::NodePorts, false) => "no-endpoint-nodeports",
        }
    }
}

/// The keys a port asks for in the two service maps.
fn wanted_keys(sp: &ServicePort) -> Vec<(Map, Vec<u8>)> {
    let mut out: Vec<(Map, Vec<u8>)> = sp
        .cluster_ip
        .iter()
        .chain(&sp.external_ips)
        .map(|ip| {
            let mut key = ip.octets().to_vec();
            key.extend(port_key(sp.protocol, sp.port));
            (Map::Ips, key)
        })
        .collect();
    if let Some(np) = sp.node_port {
        out.push((Map::NodePorts, port_key(sp.protocol, np)));
    }
    out
}

/// Ports by name.
fn sorted(d: &Desired) -> Vec<&ServicePort> {
    let ports: BTreeMap<&str, &ServicePort> =
        d.services.iter().map(|s| (s.name.as_str(), s)).collect();
    ports.into_values().collect()
}

/// Who gets each map key: when two ports ask for one (the same external address and port),
/// the first by name.
fn claims(d: &Desired) -> BTreeMap<(Map, Vec<u8>), String> {
    let mut out = BTreeMap::new();
    for sp in sorted(d) {
        for key in wanted_keys(sp) {
            out.entry(key).or_insert_with(|| sp.name.clone());
        }
    }
    out
}

/// The keys `sp` holds under `claims`.
fn held(sp: &ServicePort, claims: &BTreeMap<(Map, Vec<u8>), String>) -> Vec<(Map, Vec<u8>)> {
    wanted_keys(sp)
        .into_iter()
        .filter(|k| claims.get(k) == Some(&sp.name))
        .collect()
}

/// A chain that picks one of `endpoints` at random through a map of the same name (their
/// endpoint chains must exist), or drops when there are none.
fn add_picker(b: &mut Batch, sp: &ServicePort, chain: &str, endpoints: &[(Ipv4Addr, u16)]) {
    b.add_chain(FAMILY, TABLE, chain, None);
    if endpoints.is_empty() {
        b.add_rule(
            FAMILY,
            TABLE,
            chain,
            &[Expr::Immediate {
                dreg: REG_VERDICT,
                data: Data::Verdict(Verdict::Drop),
            }],
        );
        return;
    }
    // Session affinity: a client seen lately goes back to the endpoint it had.
    if sp.affinity_timeout.is_some() {
        for (ip, port) in endpoints {
            b.add_rule(
                FAMILY,
                TABLE,
                chain,
                &[
                    saddr(reg(0)),
                    lookup(&affinity_set(sp, *ip, *port), reg(0), None),
                    Expr::Immediate {
                        dreg: REG_VERDICT,
                        data: goto(&sep_chain(sp, *ip, *port)),
                    },
                ],
            );
        }
    }
    b.add_set(FAMILY, TABLE, &verdict_map(chain, 4));
    let picks: Vec<Element> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| Element {
            key: (i as u32).to_ne_bytes().to_vec(),
            data: Some(goto(&sep_chain(sp, *ip, *port))),
        })
        .collect();
    b.add_elements(FAMILY, TABLE, chain, &picks);
    b.add_rule(
        FAMILY,
        TABLE,
        chain,
        &[
            Expr::Numgen {
                dreg: reg(0),
                modulus: endpoints.len() as u32,
            },
            Expr::Lookup {
                set: chain.to_string(),
                sreg: reg(0),
                dreg: Some(REG_VERDICT),
                invert: false,
            },
        ],
    );
}

/// Removes what [`add_picker`] added.
fn remove_picker(b: &mut Batch, chain: &str, endpoints: &[(Ipv4Addr, u16)]) {
    b.flush_chain(FAMILY, TABLE, chain);
    if !endpoints.is_empty() {
        b.delete_set(FAMILY, TABLE, chain);
    }
}

/// Adds a port: its chains and maps when it has endpoints, and the keys it holds.
fn add_port(
    b: &mut Batch,
    sp: &ServicePort,
    claims: &BTreeMap<(Map, Vec<u8>), String>,
    cluster_cidr: Ipv4Net,
) {
    let has_endpoints = !sp.endpoints.is_empty();
    if has_endpoints {
        for (ip, port) in &sp.endpoints {
            let sep = sep_chain(sp, *ip, *port);
            b.add_chain(FAMILY, TABLE, &sep, None);
            if let Some(seconds) = sp.affinity_timeout {
                let set = affinity_set(sp, *ip, *port);
                b.add_set(
                    FAMILY,
                    TABLE,
                    &Set {
                        name: set.clone(),
                        key_len: 4,
                        data: None,
                        timeout_ms: Some(u64::from(seconds.max(1)) * 1000),
                    },
                );
                b.add_rule(
                    FAMILY,
                    TABLE,
                    &sep,
                    &[saddr(reg(0)), Expr::DynsetUpdate { set, sreg: reg(0) }],
                );
            }
            b.add_rule(FAMILY, TABLE, &sep, &hairpin_mark(*ip));
            b.add_rule(FAMILY, TABLE, &sep, &dnat(*ip, *port));
        }
        add_picker(b, sp, &svc_chain(sp), &sp.endpoints);
        if sp.needs_local() {
            add_picker(b, sp, &local_chain(sp), &sp.local_endpoints);
        }
        if sp.external_local {
            // The cluster's own pods reach every endpoint (masqueraded, as the endpoint may
            // be on another node); anyone else only this node's, unmasqueraded.
            let ext = external_chain(sp);
            b.add_chain(FAMILY, TABLE, &ext, None);
            let mut from_pods = match_net(12, cluster_cidr, CmpOp::Eq).to_vec();
            from_pods.push(Expr::Immediate {
                dreg: REG_VERDICT,
                data: goto(&svc_chain(sp)),
            });
            b.add_rule(FAMILY, TABLE, &ext, &from_pods);
            let mut rest = set_masq_mark(false).to_vec();
            rest.push(Expr::Immediate {
                dreg: REG_VERDICT,
                data: goto(&local_chain(sp)),
            });
            b.add_rule(FAMILY, TABLE, &ext, &rest);
        }
    }
    for map in [Map::Ips, Map::NodePorts] {
        let elems: Vec<Element> = held(sp, claims)
            .into_iter()
            .filter(|(m, _)| *m == map)
            .map(|(m, key)| Element {
                data: has_endpoints.then(|| goto(&sp.target(m, &key))),
                key,
            })
            .collect();
        b.add_elements(FAMILY, TABLE, map.set(has_endpoints), &elems);
    }
}

/// Removes what [`add_port`] added: first the keys leading to it, then its chain's rule (the
/// reference to its map), its map (the references to the endpoint chains), the endpoint
/// chains and its chain.
fn remove_port(b: &mut Batch, sp: &ServicePort, claims: &BTreeMap<(Map, Vec<u8>), String>) {
    for map in [Map::Ips, Map::NodePorts] {
        let elems: Vec<Element> = held(sp, claims)
            .into_iter()
            .filter(|(m, _)| *m == map)
            .map(|(_, key)| Element { key, data: None })
            .collect();
        b.delete_elements(FAMILY, TABLE, map.set(!sp.endpoints.is_empty()), &elems);
    }
    if sp.endpoints.is_empty() {
        return;
    }
    // What refers to a chain goes before it: the external chain (to both pickers), the
    // pickers' rules and maps (to the endpoint chains), then the chains themselves.
    let mut chains = Vec::new();
    if sp.external_local {
        let ext = external_chain(sp);
        b.flush_chain(FAMILY, TABLE, &ext);
        chains.push(ext);
    }
    if sp.needs_local() {
        remove_picker(b, &local_chain(sp), &sp.local_endpoints);
        chains.push(local_chain(sp));
    }
    remove_picker(b, &svc_chain(sp), &sp.endpoints);
    chains.push(svc_chain(sp));
    for chain in &chains {
        b.delete_chain(FAMILY, TABLE, chain);
    }
    for (ip, port) in &sp.endpoints {
        let sep = sep_chain(sp, *ip, *port);
        b.flush_chain(FAMILY, TABLE, &sep);
        b.delete_chain(FAMILY, TABLE, &sep);
        if sp.affinity_timeout.is_some() {
            b.delete_set(FAMILY, TABLE, &affinity_set(sp, *ip, *port));
        }
    }
}

/// The changes that take the table from `old` to `new`: only the ports that changed are
/// removed and added again. None when only a rebuild will do (the node's ranges, addresses or
/// DNS changed, or a contested key changed hands between ports that did not change).
pub fn update(old: &Desired, new: &Desired) -> Option<Batch> {
    if (old.pod_cidr, old.cluster_cidr, &old.node_ips, old.dns)
        != (new.pod_cidr, new.cluster_cidr, &new.node_ips, new.dns)
    {
        return None;
    }
    let by_name = |d: &Desired| -> BTreeMap<String, ServicePort> {
        d.services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (before, after) = (by_name(old), by_name(new));
    let touched: std::collections::BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|n| before.get(*n) != after.get(*n))
        .collect();
    let (old_claims, new_claims) = (claims(old), claims(new));
    for key in old_claims.keys().chain(new_claims.keys()) {
        let (was, is) = (old_claims.get(key), new_claims.get(key));
        if was != is
            && (was.is_some_and(|w| !touched.contains(w))
                || is.is_some_and(|w| !touched.contains(w)))
        {
            return None;
        }
    }
    let mut b = Batch::new();
    for name in &touched {
        if let Some(sp) = before.get(*name) {
            remove_port(&mut b, sp, &old_claims);
        }
    }
    for name in &touched {
        if let Some(sp) = after.get(*name) {
            add_port(&mut b, sp, &new_claims, new.cluster_cidr);
        }
    }
    Some(b)
}

/// `ip saddr <ip> meta mark set 0x4000`: a pod reaching itself is masqueraded.
fn hairpin_mark(ip: Ipv4Addr) -> [Expr; 4] {
    [
        Expr::Payload {
            base: Base::Network,
            offset: 12,
            len: 4,
            dreg: reg(0),
        },
        Expr::Cmp {
            sreg: reg(0),
            op: CmpOp::Eq,
            data: ip.octets().to_vec(),
        },
        Expr::Immediate {
            dreg: reg(1),
            data: Data::Value(MASQ_MARK.to_ne_bytes().to_vec()),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: reg(1),
        },
    ]
}

/// `meta mark set mark | 0x4000` (or `& ~0x4000` when `on` is false): the masquerade bit,
/// leaving the mark's other bits alone.
fn set_masq_mark(on: bool) -> [Expr; 3] {
    [
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: reg(1),
        },
        Expr::Bitwise {
            sreg: reg(1),
            dreg: reg(1),
            mask: (!MASQ_MARK).to_ne_bytes().to_vec(),
            xor: if on { MASQ_MARK } else { 0 }.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: reg(1),
        },
    ]
}

/// `dnat to <ip>:<port>`.
fn dnat(ip: Ipv4Addr, port: u16) -> [Expr; 3] {
    [
        Expr::Immediate {
            dreg: reg(0),
            data: Data::Value(ip.octets().to_vec()),
        },
        Expr::Immediate {
            dreg: reg(1),
            data: Data::Value(port.to_be_bytes().to_vec()),
        },
        Expr::Dnat {
            family: FAMILY,
            addr: reg(0),
            port: Some(reg(1)),
        },
    ]
}

/// `ip daddr` into `reg`.
fn daddr(reg: u32) -> Expr {
    Expr::Payload {
        base: Base::Network,
        offset: 16,
        len: 4,
        dreg: reg,
    }
}

fn lookup(set: &str, sreg: u32, dreg: Option<u32>) -> Expr {
    Expr::Lookup {
        set: set.into(),
        sreg,
        dreg,
        invert: false,
    }
}

/// `ip daddr . meta l4proto . th dport` looked up in `set` (a verdict map with `dreg`).
fn by_address(set: &str, dreg: Option<u32>) -> Vec<Expr> {
    let mut r = vec![daddr(reg(0))];
    r.extend(load_proto_port(1));
    r.push(lookup(set, reg(0), dreg));
    r
}

/// `ip daddr @node-ips` and `meta l4proto . th dport` looked up in `set`.
fn by_node_port(set: &str, dreg: Option<u32>) -> Vec<Expr> {
    let mut r = vec![daddr(reg(0)), lookup("node-ips", reg(0), None)];
    r.extend(load_proto_port(0));
    r.push(lookup(set, reg(0), dreg));
    r
}

/// The whole table for `d`, replacing whatever table of that name exists.
pub fn build(d: &Desired) -> Batch {
    let mut b = Batch::new();
    b.add_table(FAMILY, TABLE);
    b.delete_table(FAMILY, TABLE);
    b.add_table(FAMILY, TABLE);
    let nat = |hook, priority| BaseChain {
        kind: "nat",
        hook,
        priority,
    };
    b.add_chain(FAMILY, TABLE, "services", None);
    b.add_chain(
        FAMILY,
        TABLE,
        "prerouting",
        Some(&nat(Hook::Prerouting, -100)),
    );
    b.add_chain(FAMILY, TABLE, "output", Some(&nat(Hook::Output, -100)));
    b.add_chain(
        FAMILY,
        TABLE,
        "postrouting",
        Some(&nat(Hook::Postrouting, 100)),
    );
    let jump_services = [Expr::Immediate {
        dreg: REG_VERDICT,
        data: Data::Verdict(Verdict::Jump("services".into())),
    }];
    // Traffic from outside the cluster that a Service sends on is masqueraded, as kube-proxy
    // does (off-cluster traffic to a cluster IP; node ports, external IPs and load balancer
    // addresses with the Cluster traffic policy): its endpoint may be on another node, whose
    // reply would otherwise go straight to the client from an address it never spoke to. The
    // mark is set before the lookup and cleared again when nothing matched (a DNAT ends the
    // chain), so it only stays on service traffic.
    let mut outside = match_net(12, d.cluster_cidr, CmpOp::Neq).to_vec();
    outside.extend(set_masq_mark(true));
    b.add_rule(FAMILY, TABLE, "prerouting", &outside);
    b.add_rule(FAMILY, TABLE, "prerouting", &jump_services);
    b.add_rule(FAMILY, TABLE, "prerouting", &set_masq_mark(false));
    b.add_rule(FAMILY, TABLE, "output", &jump_services);
    b.add_rule(FAMILY, TABLE, "output", &set_masq_mark(false));
    b.add_rule(
        FAMILY,
        TABLE,
        "postrouting",
        &[
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: reg(0),
            },
            Expr::Bitwise {
                sreg: reg(0),
                dreg: reg(0),
                mask: MASQ_MARK.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: reg(0),
                op: CmpOp::Eq,
                data: MASQ_MARK.to_ne_bytes().to_vec(),
            },
            Expr::Masquerade,
        ],
    );
    if let Some(pods) = d.pod_cidr {
        let mut egress: Vec<Expr> = match_net(12, pods, CmpOp::Eq).to_vec();
        egress.extend(match_net(16, d.cluster_cidr, CmpOp::Neq));
        egress.push(Expr::Masquerade);
        b.add_rule(FAMILY, TABLE, "postrouting", &egress);
    }

    b.add_set(FAMILY, TABLE, &verdict_map("service-ips", 12));
    b.add_set(FAMILY, TABLE, &verdict_map("service-nodeports", 8));
    for (name, key_len) in [
        ("node-ips", 4),
        ("no-endpoints", 12),
        ("no-endpoint-nodeports", 8),
    ] {
        b.add_set(
            FAMILY,
            TABLE,
            &Set {
                name: name.into(),
                key_len,
                data: None,
                timeout_ms: None,
            },
        );
    }
    // Ports without endpoints are refused at once (ICMP port unreachable), as kube-proxy
    // does, in filter chains: forwarded and local traffic to their addresses, and traffic
    // to the node's addresses on their node ports.
    let filter = |hook| BaseChain {
        kind: "filter",
        hook,
        priority: 0,
    };
    for (chain, hook) in [
        ("filter-forward", Hook::Forward),
        ("filter-output", Hook::Output),
        ("filter-input", Hook::Input),
    ] {
        b.add_chain(FAMILY, TABLE, chain, Some(&filter(hook)));
        let mut refuse = by_address("no-endpoints", None);
        refuse.push(Expr::Reject);
        b.add_rule(FAMILY, TABLE, chain, &refuse);
    }
    let mut refuse_node_port = by_node_port("no-endpoint-nodeports", None);
    refuse_node_port.push(Expr::Reject);
    b.add_rule(FAMILY, TABLE, "filter-input", &refuse_node_port);
    let claims = claims(d);
    // Ports sorted by name, so a rebuild from the same state is the same batch.
    for sp in sorted(d) {
        add_port(&mut b, sp, &claims, d.cluster_cidr);
    }
    let node_ips: Vec<Element> = d
        .node_ips
        .iter()
        .map(|ip| Element {
            key: ip.octets().to_vec(),
            data: None,
        })
        .collect();
    b.add_elements(FAMILY, TABLE, "node-ips", &node_ips);
    if let Some((service_ip, local)) = d.dns {
        for proto in [Protocol::Udp, Protocol::Tcp] {
            let eq = |data: Vec<u8>| Expr::Cmp {
                sreg: reg(0),
                op: CmpOp::Eq,
                data,
            };
            let mut rule = vec![daddr(reg(0)), eq(service_ip.octets().to_vec())];
            let [l4, dport] = load_proto_port(0);
            rule.extend([l4, eq(vec![proto.number()])]);
            rule.extend([
                dport,
                Expr::Cmp {
                    sreg: reg(1),
                    op: CmpOp::Eq,
                    data: 53u16.to_be_bytes().to_vec(),
                },
            ]);
            rule.extend(dnat(local, 53));
            b.add_rule(FAMILY, TABLE, "services", &rule);
        }
    }
    // Node ports and load balancer addresses on the node's own addresses are masqueraded
    // whoever sends to them (kube-proxy's Cluster policy for external destinations): a pod
    // reaching another node's address would otherwise get its reply from an endpoint it
    // never spoke to. Cleared again by the base chains when nothing matched.
    let mut to_node = vec![daddr(reg(0)), lookup("node-ips", reg(0), None)];
    to_node.extend(set_masq_mark(true));
    b.add_rule(FAMILY, TABLE, "services", &to_node);
    b.add_rule(
        FAMILY,
        TABLE,
        "services",
        &by_address("service-ips", Some(REG_VERDICT)),
    );
    b.add_rule(
        FAMILY,
        TABLE,
        "services",
        &by_node_port("service-nodeports", Some(REG_VERDICT)),
    );
    b
}

/// Builds and applies the table in the network namespace at `netns` (None: the caller's).
pub fn sync(d: &Desired, netns: Option<&Path>) -> Result<(), NetError> {
    build(d).apply(netns)
}

/// Takes the table from `old` (what was last applied, if known) to `new`: only the ports that
/// changed when it can, else (or when that fails) the whole table. Returns whether the change
/// was incremental.
pub fn sync_from(
    old: Option<&Desired>,
    new: &Desired,
    netns: Option<&Path>,
) -> Result<bool, NetError> {
    if let Some(batch) = old.and_then(|old| update(old, new)) {
        match batch.apply(netns) {
            Ok(()) => return Ok(true),
            Err(e) => {
                tracing::warn!(error = %e, "an incremental rule change failed; rebuilding the table")
            }
        }
    }
    sync(new, netns).map(|()| false)
}

/// Removes the table, if it is there.
pub fn remove(netns: Option<&Path>) -> Result<(), NetError> {
    let mut b = Batch::new();
    b.add_table(FAMILY, TABLE);
    b.delete_table(FAMILY, TABLE);
    b.apply(netns)
}

/// The UDP flows that going from `old` to `new` leaves stale (see [`crate::conntrack`]):
/// those answered by an endpoint a UDP port no longer has, and those sent to the addresses of
/// a UDP port that had no endpoint and now has (they were refused, and their entries would
/// keep them refused).
pub fn stale_udp(old: &Desired, new: &Desired) -> crate::conntrack::Stale {
    let udp = |d: &Desired| -> BTreeMap<String, ServicePort> {
        d.services
            .iter()
            .filter(|s| s.protocol == Protocol::Udp)
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (before, after) = (udp(old), udp(new));
    let mut stale = crate::conntrack::Stale::default();
    for (name, was) in &before {
        let now = after.get(name);
        for ep in &was.endpoints {
            if now.is_none_or(|n| !n.endpoints.contains(ep)) {
                stale.gone_endpoints.insert(*ep);
            }
        }
    }
    for (name, now) in &after {
        let had = before.get(name).is_some_and(|w| !w.endpoints.is_empty());
        if had || now.endpoints.is_empty() {
            continue;
        }
        for ip in now.cluster_ip.iter().chain(&now.external_ips) {
            stale.revived.insert((*ip, now.port));
        }
        if let Some(np) = now.node_port {
            for ip in &new.node_ips {
                stale.revived.insert((*ip, np));
            }
        }
    }
    stale
}
