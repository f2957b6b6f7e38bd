//! Conntrack entries over ctnetlink: the UDP flows a Service change leaves stale.
//!
//! UDP has no connection to close, so a client that keeps sending to a Service keeps its
//! conntrack entry (and with it the DNAT to an endpoint that is gone, or the refusal of a port
//! that had none) for as long as it sends. As kube-proxy does, the agent deletes those entries:
//! the UDP flows whose reply comes from an endpoint that went away, and the UDP flows to a
//! Service address whose port had no endpoint and now has one. Entries are dumped and deleted
//! one by one by their original tuple, over a NETLINK_NETFILTER socket opened in the namespace
//! concerned; nothing else is touched.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::{NetError, enter};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u8 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

pub const UDP: u8 = 17;

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry: the flow as it was first seen and as its replies come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
}

/// Which UDP entries to delete: those whose reply comes from one of `gone_endpoints`, or whose
/// original destination is one of `revived` (a Service address and port that had no
/// endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stale {
    pub gone_endpoints: BTreeSet<(Ipv4Addr, u16)>,
    pub revived: BTreeSet<(Ipv4Addr, u16)>,
}

impl Stale {
    pub fn is_empty(&self) -> bool {
        self.gone_endpoints.is_empty() && self.revived.is_empty()
    }

    pub fn matches(&self, e: &Entry) -> bool {
        e.orig.proto == UDP
            && (self.gone_endpoints.contains(&(e.reply.src, e.reply.sport))
                || self.revived.contains(&(e.orig.dst, e.orig.dport)))
    }
}

fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, payload))
    })
}

fn parse_tuple(buf: &[u8]) -> Tuple {
    let mut t = Tuple {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        proto: 0,
        sport: 0,
        dport: 0,
    };
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p) in attrs(p) {
                    if let Ok(b) = <[u8; 4]>::try_from(p) {
                        match ty {
                            CTA_IP_V4_SRC => t.src = Ipv4Addr::from(b),
                            CTA_IP_V4_DST => t.dst = Ipv4Addr::from(b),
                            _ => {}
                        }
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(p) {
                    match (ty, p) {
                        (CTA_PROTO_NUM, [n, ..]) => t.proto = *n,
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => t.sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => t.dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Parses one ctnetlink message's payload (after the netlink header): nfgenmsg, attributes.
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    if payload.len() < 4 || payload[0] != AF_INET {
        return None;
    }
    let mut orig = None;
    let mut reply = None;
    for (ty, p) in attrs(&payload[4..]) {
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(p)),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(p)),
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply: reply?,
    })
}

fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nest(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A ctnetlink request: netlink header, nfgenmsg (IPv4), attributes.
fn message(ty: u16, flags: u16, seq: u32, attrs: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    buf[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&[AF_INET, 0, 0, 0]);
    attrs(&mut buf);
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// The delete request for the entry whose original tuple is `t`.
fn delete_request(t: &Tuple, seq: u32) -> Vec<u8> {
    message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, |b| {
        nest(b, CTA_TUPLE_ORIG, |b| {
            nest(b, CTA_TUPLE_IP, |b| {
                put(b, CTA_IP_V4_SRC, &t.src.octets());
                put(b, CTA_IP_V4_DST, &t.dst.octets());
            });
            nest(b, CTA_TUPLE_PROTO, |b| {
                put(b, CTA_PROTO_NUM, &[t.proto]);
                put(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
                put(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
            });
        });
    })
}

fn ct_err(message: String) -> NetError {
    NetError::Netlink {
        op: "conntrack".into(),
        message,
    }
}

/// Every message in `buf`: (type, payload after the netlink header).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        out.push((ty, &buf[at + 16..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// Lists the IPv4 conntrack entries of the namespace at `netns` (None: the caller's).
pub fn list(netns: Option<&Path>) -> Result<Vec<Entry>, NetError> {
    in_thread(netns, |socket| {
        socket
            .send(&message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, 1, |_| {}), 0)
            .map_err(|e| ct_err(format!("asking for the table: {e}")))?;
        let mut entries = Vec::new();
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            socket
                .recv(&mut buf, 0)
                .map_err(|e| ct_err(format!("reading the table: {e}")))?;
            for (ty, payload) in messages(&buf) {
                match ty {
                    NLMSG_DONE => return Ok(entries),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if code != 0 {
                            return Err(ct_err(format!(
                                "listing: {}",
                                std::io::Error::from_raw_os_error(-code)
                            )));
                        }
                        return Ok(entries);
                    }
                    _ => entries.extend(parse_entry(payload)),
                }
            }
        }
    })
}

/// Deletes the entries `stale` matches in the namespace at `netns`; returns how many went.
/// An entry that expired meanwhile is not an error.
pub fn flush(netns: Option<&Path>, stale: &Stale) -> Result<usize, NetError> {
    if stale.is_empty() {
        return Ok(0);
    }
    let doomed: Vec<Entry> = list(netns)?
        .into_iter()
        .filter(|e| stale.matches(e))
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    in_thread(netns, |socket| {
        let mut deleted = 0;
        let mut buf = Vec::with_capacity(4096);
        for (i, e) in doomed.iter().enumerate() {
            socket
                .send(&delete_request(&e.orig, i as u32 + 2), 0)
                .map_err(|err| ct_err(format!("deleting an entry: {err}")))?;
            buf.clear();
            socket
                .recv(&mut buf, 0)
                .map_err(|err| ct_err(format!("reading the answer: {err}")))?;
            for (ty, payload) in messages(&buf) {
                if ty == NLMSG_ERROR {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    match code {
                        0 => deleted += 1,
                        c if c == -libc::ENOENT => {}
                        c => {
                            return Err(ct_err(format!(
                                "deleting {:?}: {}",
                                e.orig,
                                std::io::Error::from_raw_os_error(-c)
                            )));
                        }
                    }
                }
            }
        }
        Ok(deleted)
    })
}

/// Runs `f` with a ctnetlink socket opened in the namespace at `netns`, on a thread of its
/// own.
fn in_thread<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce(&mut rtnetlink::sys::Socket) -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(netns)?;
            let mut socket =
                rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_NETFILTER)
                    .map_err(|e| ct_err(format!("opening a netfilter socket: {e}")))?;
            socket
                .bind_auto()
                .map_err(|e| ct_err(format!("binding: {e}")))?;
            f(&mut socket)
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Thread("the conntrack thread panicked".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            proto: UDP,
            sport,
            dport,
        }
    }

    #[test]
    fn a_delete_request_parses_back_to_its_tuple() {
        let t = tuple([10, 244, 0, 5], [10, 96, 0, 20], 40000, 53);
        let req = delete_request(&t, 7);
        let msgs = messages(&req);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0, (1 << 8) | 2);
        // The request carries only the original tuple; give it a reply to parse it back.
        let mut payload = msgs[0].1.to_vec();
        nest(&mut payload, CTA_TUPLE_REPLY, |_| {});
        let e = parse_entry(&payload).unwrap();
        assert_eq!(e.orig, t);
    }

    #[test]
    fn stale_entries_are_udp_from_gone_endpoints_or_to_revived_ports() {
        let stale = Stale {
            gone_endpoints: BTreeSet::from([(Ipv4Addr::new(10, 244, 1, 7), 5353)]),
            revived: BTreeSet::from([(Ipv4Addr::new(10, 96, 0, 30), 53)]),
        };
        let via_gone = Entry {
            orig: tuple([10, 244, 0, 5], [10, 96, 0, 20], 40000, 53),
            reply: tuple([10, 244, 1, 7], [10, 244, 0, 5], 5353, 40000),
        };
        assert!(stale.matches(&via_gone));
        let revived = Entry {
            orig: tuple([10, 244, 0, 5], [10, 96, 0, 30], 40001, 53),
            reply: tuple([10, 96, 0, 30], [10, 244, 0, 5], 53, 40001),
        };
        assert!(stale.matches(&revived));
        let mut tcp = via_gone;
        tcp.orig.proto = 6;
        assert!(!stale.matches(&tcp), "TCP flows end by themselves");
        let other = Entry {
            orig: tuple([10, 244, 0, 5], [10, 96, 0, 20], 40002, 53),
            reply: tuple([10, 244, 1, 8], [10, 244, 0, 5], 5353, 40002),
        };
        assert!(!stale.matches(&other));
    }
}
