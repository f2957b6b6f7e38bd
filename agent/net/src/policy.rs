//! NetworkPolicy enforcement as one nf_tables table of Strake's own (`ip strake-policy`),
//! rebuilt whole and swapped atomically from the desired state.
//!
//! ```text
//! chain forward { type filter hook forward priority 0; policy accept;
//!                 ct original ip saddr vmap @egress      # isolated senders: jump out-<h>
//!                 ct reply ip saddr vmap @ingress }      # isolated receivers: jump in-<h>
//! chain in-<h>  { <peer> <port> return ...; drop }       # one per isolated pod and direction
//! ```
//!
//! Every packet is judged by its connection's tuple, not its own header: the sender is the
//! original source, the receiver is the reply's source (the endpoint a Service DNAT picked) and
//! the port is the receiver's own. Replies are therefore judged exactly as the connection that
//! they belong to, and a connection a new policy forbids is cut at its next packet, while one
//! it still allows carries on. A pod in no policy's direction is not isolated and has no
//! chain; traffic the node itself sends to its pods (probes) and receives from them (the
//! node-local DNS) does not pass the forward hook and is never filtered.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use sha2::{Digest as _, Sha256};

use crate::NetError;
use crate::nft::{
    BaseChain, Batch, CmpOp, CtDir, CtKey, DATA_VERDICT, Data, Element, Expr, Family, Hook,
    REG_VERDICT, Set, Verdict, prefix_mask,
};
use crate::services::{Protocol, reg};

pub const TABLE: &str = "strake-policy";
const FAMILY: Family = Family::Ipv4;

/// An address range a rule names (`ipBlock`): `cidr` less every `except`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: Ipv4Net,
    pub except: Vec<Ipv4Net>,
}

/// Who a rule lets in (or out to).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peers {
    /// Pods' addresses (selected by pod and namespace selectors).
    pub addresses: BTreeSet<Ipv4Addr>,
    pub blocks: Vec<Block>,
}

/// A protocol and, optionally, a port range on the receiving pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub protocol: Protocol,
    /// `(first, last)`, inclusive; None: every port.
    pub range: Option<(u16, u16)>,
}

/// One thing a policy allows an isolated pod, in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// None: any peer.
    pub peers: Option<Peers>,
    /// None: any protocol and port.
    pub ports: Option<Ports>,
}

/// A pod of this node and what it may receive and send; None in a direction means that no
/// policy isolates it there, an empty list that nothing is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// `ns/name`, for naming its chains.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// Everything the table is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub pods: Vec<Isolation>,
}

#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        }
    }

    /// The other end of the connection, as the tuple keys it: an isolated receiver's peer
    /// is the original source; an isolated sender's is the reply's source.
    fn peer(self, dreg: u32) -> Expr {
        Expr::Ct {
            key: CtKey::SrcIp,
            dir: Some(match self {
                Direction::Ingress => CtDir::Original,
                Direction::Egress => CtDir::Reply,
            }),
            dreg,
        }
    }
}

fn chain_name(dir: Direction, pod: &str) -> String {
    format!(
        "{}-{}",
        dir.prefix(),
        hex::encode(&Sha256::digest(pod.as_bytes())[..8])
    )
}

/// `ct original protocol == p` and, for a range, the receiver's port within it.
fn port_match(p: &Ports) -> Vec<Expr> {
    let mut r = vec![
        Expr::Ct {
            key: CtKey::Protocol,
            dir: Some(CtDir::Original),
            dreg: reg(2),
        },
        Expr::Cmp {
            sreg: reg(2),
            op: CmpOp::Eq,
            data: vec![p.protocol.number()],
        },
    ];
    if let Some((first, last)) = p.range {
        r.push(Expr::Ct {
            key: CtKey::ProtoSrc,
            dir: Some(CtDir::Reply),
            dreg: reg(3),
        });
        if first == last {
            r.push(Expr::Cmp {
                sreg: reg(3),
                op: CmpOp::Eq,
                data: first.to_be_bytes().to_vec(),
            });
        } else {
            r.push(Expr::Cmp {
                sreg: reg(3),
                op: CmpOp::Gte,
                data: first.to_be_bytes().to_vec(),
            });
            r.push(Expr::Cmp {
                sreg: reg(3),
                op: CmpOp::Lte,
                data: last.to_be_bytes().to_vec(),
            });
        }
    }
    r
}

/// The peer (in reg 1) inside `net`, or outside it with `op` Neq.
fn peer_in(dir: Direction, net: Ipv4Net, op: CmpOp) -> [Expr; 3] {
    [
        dir.peer(reg(1)),
        Expr::Bitwise {
            sreg: reg(1),
            dreg: reg(1),
            mask: prefix_mask(net.prefix_len(), 4),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: reg(1),
            op,
            data: net.network().octets().to_vec(),
        },
    ]
}

fn verdict(v: Verdict) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: Data::Verdict(v),
    }
}

/// One isolated pod's chain in one direction: each allowance returns, anything else drops.
fn add_chain(b: &mut Batch, dir: Direction, pod: &Isolation, allows: &[Allow]) -> String {
    let chain = chain_name(dir, &pod.pod);
    b.add_chain(FAMILY, TABLE, &chain, None);
    for (i, allow) in allows.iter().enumerate() {
        let ports = allow.ports.as_ref().map(port_match).unwrap_or_default();
        let mut rules: Vec<Vec<Expr>> = Vec::new();
        match &allow.peers {
            None => rules.push(ports.clone()),
            Some(peers) => {
                if !peers.addresses.is_empty() {
                    let set = format!("{chain}-{i}");
                    b.add_set(
                        FAMILY,
                        TABLE,
                        &Set {
                            name: set.clone(),
                            key_len: 4,
                            data: None,
                            timeout_ms: None,
                        },
                    );
                    let elems: Vec<Element> = peers
                        .addresses
                        .iter()
                        .map(|a| Element {
                            key: a.octets().to_vec(),
                            data: None,
                        })
                        .collect();
                    b.add_elements(FAMILY, TABLE, &set, &elems);
                    let mut r = vec![
                        dir.peer(reg(1)),
                        Expr::Lookup {
                            set,
                            sreg: reg(1),
                            dreg: None,
                            invert: false,
                        },
                    ];
                    r.extend(ports.iter().cloned());
                    rules.push(r);
                }
                for block in &peers.blocks {
                    let mut r = peer_in(dir, block.cidr, CmpOp::Eq).to_vec();
                    for ex in &block.except {
                        r.extend(peer_in(dir, *ex, CmpOp::Neq));
                    }
                    r.extend(ports.iter().cloned());
                    rules.push(r);
                }
            }
        }
        for mut r in rules {
            r.push(verdict(Verdict::Return));
            b.add_rule(FAMILY, TABLE, &chain, &r);
        }
    }
    b.add_rule(FAMILY, TABLE, &chain, &[verdict(Verdict::Drop)]);
    chain
}

/// The whole table for `d`, replacing whatever table of that name exists.
pub fn build(d: &Desired) -> Batch {
    let mut b = Batch::new();
    b.add_table(FAMILY, TABLE);
    b.delete_table(FAMILY, TABLE);
    b.add_table(FAMILY, TABLE);
    for name in ["ingress", "egress"] {
        b.add_set(
            FAMILY,
            TABLE,
            &Set {
                name: name.into(),
                key_len: 4,
                data: Some((DATA_VERDICT, 0)),
                timeout_ms: None,
            },
        );
    }
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for pod in &d.pods {
        if let Some(allows) = &pod.ingress {
            let chain = add_chain(&mut b, Direction::Ingress, pod, allows);
            ingress.push(Element {
                key: pod.ip.octets().to_vec(),
                data: Some(Data::Verdict(Verdict::Jump(chain))),
            });
        }
        if let Some(allows) = &pod.egress {
            let chain = add_chain(&mut b, Direction::Egress, pod, allows);
            egress.push(Element {
                key: pod.ip.octets().to_vec(),
                data: Some(Data::Verdict(Verdict::Jump(chain))),
            });
        }
    }
    if !ingress.is_empty() {
        b.add_elements(FAMILY, TABLE, "ingress", &ingress);
    }
    if !egress.is_empty() {
        b.add_elements(FAMILY, TABLE, "egress", &egress);
    }
    b.add_chain(
        FAMILY,
        TABLE,
        "forward",
        Some(&BaseChain {
            kind: "filter",
            hook: Hook::Forward,
            priority: 0,
        }),
    );
    for (dir, map) in [
        (Direction::Egress, "egress"),
        (Direction::Ingress, "ingress"),
    ] {
        // The isolated end of the connection: the sender for egress, the receiver for
        // ingress, each the other's peer.
        let me = Expr::Ct {
            key: CtKey::SrcIp,
            dir: Some(match dir {
                Direction::Egress => CtDir::Original,
                Direction::Ingress => CtDir::Reply,
            }),
            dreg: reg(0),
        };
        b.add_rule(
            FAMILY,
            TABLE,
            "forward",
            &[
                me,
                Expr::Lookup {
                    set: map.into(),
                    sreg: reg(0),
                    dreg: Some(REG_VERDICT),
                    invert: false,
                },
            ],
        );
    }
    b
}

/// Builds and applies the table in the network namespace at `netns` (None: the caller's).
pub fn sync(d: &Desired, netns: Option<&Path>) -> Result<(), NetError> {
    build(d).apply(netns)
}

/// Removes the table, if it is there.
pub fn remove(netns: Option<&Path>) -> Result<(), NetError> {
    let mut b = Batch::new();
    b.add_table(FAMILY, TABLE);
    b.delete_table(FAMILY, TABLE);
    b.apply(netns)
}
