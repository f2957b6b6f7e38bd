//! nf_tables over netlink, encoded from the kernel's uapi (`linux/netfilter/nf_tables.h`):
//! tables, chains, sets and maps, rules built from the expressions Strake's service routing and
//! masquerade need, all sent as one batch that the kernel applies atomically or not at all.
//!
//! Every u32 attribute of nf_tables is big-endian; netlink headers and attribute headers are
//! in host order; attributes are padded to 4 bytes.

use std::path::Path;

use crate::{NetError, enter};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;

// Message types (enum nf_tables_msg_types).
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;

/// The register the verdict goes in, and the 32-bit data registers.
pub const REG_VERDICT: u32 = 0;
pub const REG32_00: u32 = 8;

/// `NFT_DATA_VERDICT`: the data type of verdict maps.
pub const DATA_VERDICT: u32 = 0xffff_ff00;

/// Address families (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ipv4 = 2,
    Ipv6 = 10,
}

/// Netfilter hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// Where a base chain attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// `nat`, `filter` or `route`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// Data in a register or a map: raw bytes, or a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// Where a payload expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Link = 0,
    Network = 1,
    Transport = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

/// Metadata keys (enum nft_meta_keys) Strake reads or sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    Iif = 4,
    Oif = 5,
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// Conntrack keys (enum nft_ct_keys) Strake reads. The tuple keys (`Protocol`, `ProtoSrc`,
/// `SrcIp`, ...) need a [`CtDir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Status = 2,
    /// The layer 4 protocol (1 byte).
    Protocol = 10,
    /// The layer 4 source port (2 bytes, big-endian).
    ProtoSrc = 11,
    ProtoDst = 12,
    /// The IPv4 source address (4 bytes).
    SrcIp = 19,
    DstIp = 20,
}

/// A conntrack tuple: the connection as first seen, or as its replies come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtDir {
    Original = 0,
    Reply = 1,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of the header `base` into `dreg`.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    /// Sets metadata from a register.
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    Ct {
        key: CtKey,
        dir: Option<CtDir>,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    /// Looks `sreg` up in a set; with `dreg`, a map (REG_VERDICT for a verdict map).
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// A random number below `modulus` into `dreg` (host byte order).
    Numgen {
        dreg: u32,
        modulus: u32,
    },
    /// DNAT to the address in `addr` and, if given, the port in `port`.
    Dnat {
        family: Family,
        addr: u32,
        port: Option<u32>,
    },
    Masquerade,
    /// ICMP port unreachable (a refused connection).
    Reject,
    Counter,
    /// Adds the key in `sreg` to `set` (a set with a timeout), or refreshes its timeout.
    DynsetUpdate {
        set: String,
        sreg: u32,
    },
}

/// A set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Key length in bytes (each concatenated field padded to 4).
    pub key_len: u32,
    /// For a map: the data type (DATA_VERDICT, or a value type) and its length.
    pub data: Option<(u32, u32)>,
    /// Elements expire this long after they were last added or updated (a set the rules
    /// update, as session affinity's).
    pub timeout_ms: Option<u64>,
}

/// One element: a key and, in a map, its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub data: Option<Data>,
}

/// Attributes under construction: a byte buffer with nesting.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        pad(self.0);
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b);
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn data(&mut self, ty: u16, d: &Data) {
        self.nest(ty, |a| match d {
            Data::Value(v) => a.put(1, v),
            Data::Verdict(v) => a.nest(2, |a| {
                a.u32(1, v.code() as u32);
                if let Some(c) = v.chain() {
                    a.str(2, c);
                }
            }),
        });
    }

    fn expr(&mut self, e: &Expr) {
        let name = match e {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Numgen { .. } => "numgen",
            Expr::Dnat { .. } => "nat",
            Expr::Masquerade => "masq",
            Expr::Reject => "reject",
            Expr::Counter => "counter",
            Expr::DynsetUpdate { .. } => "dynset",
        };
        self.nest(1, |a| {
            a.str(1, name);
            a.nest(2, |a| match e {
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    a.u32(1, *dreg);
                    a.u32(2, *base as u32);
                    a.u32(3, *offset);
                    a.u32(4, *len);
                }
                Expr::Meta { key, dreg } => {
                    a.u32(1, *dreg);
                    a.u32(2, *key as u32);
                }
                Expr::MetaSet { key, sreg } => {
                    a.u32(2, *key as u32);
                    a.u32(3, *sreg);
                }
                Expr::Ct { key, dir, dreg } => {
                    a.u32(1, *dreg);
                    a.u32(2, *key as u32);
                    if let Some(d) = dir {
                        a.put(3, &[*d as u8]);
                    }
                }
                Expr::Cmp { sreg, op, data } => {
                    a.u32(1, *sreg);
                    a.u32(2, *op as u32);
                    a.data(3, &Data::Value(data.clone()));
                }
                Expr::Bitwise {
                    sreg,
                    dreg,
                    mask,
                    xor,
                } => {
                    a.u32(1, *sreg);
                    a.u32(2, *dreg);
                    a.u32(3, mask.len() as u32);
                    a.data(4, &Data::Value(mask.clone()));
                    a.data(5, &Data::Value(xor.clone()));
                }
                Expr::Immediate { dreg, data } => {
                    a.u32(1, *dreg);
                    a.data(2, data);
                }
                Expr::Lookup {
                    set,
                    sreg,
                    dreg,
                    invert,
                } => {
                    a.str(1, set);
                    a.u32(2, *sreg);
                    if let Some(d) = dreg {
                        a.u32(3, *d);
                    }
                    if *invert {
                        a.u32(5, 1);
                    }
                }
                Expr::Numgen { dreg, modulus } => {
                    a.u32(1, *dreg);
                    a.u32(2, *modulus);
                    a.u32(3, 1); // random
                    a.u32(4, 0);
                }
                Expr::Dnat { family, addr, port } => {
                    a.u32(1, 1); // DNAT
                    a.u32(2, *family as u32);
                    a.u32(3, *addr);
                    if let Some(p) = port {
                        a.u32(5, *p);
                    }
                }
                Expr::Reject => {
                    a.u32(1, 0); // NFT_REJECT_ICMP_UNREACH
                    a.put(2, &[3]); // port unreachable
                }
                Expr::DynsetUpdate { set, sreg } => {
                    a.str(1, set);
                    a.u32(3, 1); // NFT_DYNSET_OP_UPDATE
                    a.u32(4, *sreg);
                }
                Expr::Masquerade | Expr::Counter => {}
            });
        });
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A batch of nf_tables changes, applied atomically by [`Batch::apply`].
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Offset of the last message's flags, which gets NLM_F_ACK.
    last_flags: Option<usize>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Self {
            buf: Vec::with_capacity(4096),
            seq: 0,
            last_flags: None,
        };
        b.message(NFNL_MSG_BATCH_BEGIN, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        b.last_flags = None;
        b
    }

    /// Appends one netlink message; returns nothing, remembers it as the last.
    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) {
        let start = self.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.last_flags = Some(self.buf.len());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs(&mut self.buf));
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn nft(&mut self, msg: u16, flags: u16, family: Family, attrs: impl FnOnce(&mut Attrs<'_>)) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            family as u8,
            0,
            attrs,
        );
    }

    /// Adds the table if it is missing.
    pub fn add_table(&mut self, family: Family, table: &str) -> &mut Self {
        self.nft(NEWTABLE, NLM_F_CREATE, family, |a| a.str(1, table));
        self
    }

    /// Deletes the table and everything in it (it must exist: add it first to be sure).
    pub fn delete_table(&mut self, family: Family, table: &str) -> &mut Self {
        self.nft(DELTABLE, 0, family, |a| a.str(1, table));
        self
    }

    /// Adds a chain; a base chain attaches to its hook with policy accept.
    pub fn add_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        base: Option<&BaseChain>,
    ) -> &mut Self {
        self.nft(NEWCHAIN, NLM_F_CREATE, family, |a| {
            a.str(1, table);
            a.str(3, chain);
            if let Some(b) = base {
                a.nest(4, |h| {
                    h.u32(1, b.hook as u32);
                    h.u32(2, b.priority as u32);
                });
                a.u32(5, 1); // NF_ACCEPT
                a.str(7, b.kind);
            }
        });
        self
    }

    /// Deletes every rule of a chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        self.nft(DELRULE, 0, family, |a| {
            a.str(1, table);
            a.str(2, chain);
        });
        self
    }

    /// Deletes a chain (it must be empty and unreferenced).
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        self.nft(DELCHAIN, 0, family, |a| {
            a.str(1, table);
            a.str(3, chain);
        });
        self
    }

    /// Deletes a set or map (no rule may refer to it).
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) -> &mut Self {
        self.nft(DELSET, 0, family, |a| {
            a.str(1, table);
            a.str(2, set);
        });
        self
    }

    /// Appends a rule to a chain.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
    ) -> &mut Self {
        self.nft(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, |a| {
            a.str(1, table);
            a.str(2, chain);
            a.nest(4, |l| {
                for e in exprs {
                    l.expr(e);
                }
            });
        });
        self
    }

    /// Adds a set or map (it must not exist).
    pub fn add_set(&mut self, family: Family, table: &str, set: &Set) -> &mut Self {
        // The set's id within the batch: the sequence number its message gets.
        let id = self.seq + 1;
        self.nft(NEWSET, NLM_F_CREATE | NLM_F_EXCL, family, |a| {
            a.str(1, table);
            a.str(2, &set.name);
            let map = if set.data.is_some() { 0x8 } else { 0 };
            // NFT_SET_TIMEOUT | NFT_SET_EVAL: elements expire and rules may add them.
            let dynamic = if set.timeout_ms.is_some() {
                0x10 | 0x20
            } else {
                0
            };
            a.u32(3, map | dynamic);
            a.u32(4, 0);
            a.u32(5, set.key_len);
            if let Some((ty, len)) = set.data {
                a.u32(6, ty);
                a.u32(7, len);
            }
            a.u32(10, id);
            if let Some(ms) = set.timeout_ms {
                a.put(11, &ms.to_be_bytes());
            }
        });
        self
    }

    /// Adds elements to a set or map.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) -> &mut Self {
        self.elements(NEWSETELEM, NLM_F_CREATE, family, table, set, elems)
    }

    /// Removes elements from a set or map (they must be there).
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) -> &mut Self {
        self.elements(DELSETELEM, 0, family, table, set, elems)
    }

    fn elements(
        &mut self,
        msg: u16,
        flags: u16,
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) -> &mut Self {
        if elems.is_empty() {
            return self;
        }
        self.nft(msg, flags, family, |a| {
            a.str(1, table);
            a.str(2, set);
            a.nest(3, |l| {
                for e in elems {
                    l.nest(1, |el| {
                        el.data(1, &Data::Value(e.key.clone()));
                        if let Some(d) = &e.data {
                            el.data(2, d);
                        }
                    });
                }
            });
        });
        self
    }

    /// Messages in the batch, besides its begin and end.
    pub fn len(&self) -> u32 {
        self.seq - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes sent: the messages, the last one asking for an ack, and the batch's end.
    pub fn finish(mut self) -> Vec<u8> {
        if let Some(at) = self.last_flags {
            let flags = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]) | NLM_F_ACK;
            self.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        self.message(NFNL_MSG_BATCH_END, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        self.buf
    }

    /// Sends the batch in the network namespace at `netns` (None: the caller's) and waits for
    /// the kernel's answer: all of it applied, or none of it and the first error.
    pub fn apply(self, netns: Option<&Path>) -> Result<(), NetError> {
        if self.is_empty() {
            return Ok(());
        }
        let last_seq = self.seq;
        let bytes = self.finish();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(netns)?;
                send(&bytes, last_seq)
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Thread("the nftables thread panicked".into())))
        })
    }
}

fn nft_err(message: String) -> NetError {
    NetError::Netlink {
        op: "nftables batch".into(),
        message,
    }
}

fn send(bytes: &[u8], last_seq: u32) -> Result<(), NetError> {
    use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| nft_err(format!("{what}: {e}"))
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a netfilter socket"))?;
    socket.bind_auto().map_err(io("binding"))?;
    // The whole batch goes in one message, which must fit the socket's send buffer (root may
    // raise it past the system's limit, as nft does).
    let want = bytes.len() + (64 << 10);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBufForce, &want)
        .or_else(|_| {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &want)
        })
        .map_err(|e| nft_err(format!("sizing the send buffer to {want} bytes: {e}")))?;
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &(4usize << 20),
    );
    let sent = socket.send(bytes, 0).map_err(io("sending"))?;
    if sent != bytes.len() {
        return Err(nft_err(format!("sent {sent} of {} bytes", bytes.len())));
    }
    let mut first_error = None;
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0).map_err(io("receiving"))?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
            if len < 16 || at + len > buf.len() {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                if code != 0 && first_error.is_none() {
                    first_error = Some((seq, std::io::Error::from_raw_os_error(-code)));
                }
                if seq == last_seq {
                    return match first_error {
                        None => Ok(()),
                        Some((seq, e)) => {
                            Err(nft_err(format!("message {} of the batch: {e}", seq - 1)))
                        }
                    };
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// `bytes` as a prefix mask of `bits` over `len` bytes.
pub fn prefix_mask(bits: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        let start = (i * 8) as u32;
        let bits = u32::from(bits);
        *b = if bits >= start + 8 {
            0xff
        } else if bits > start {
            0xffu8 << (8 - (bits - start))
        } else {
            0
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_the_last_asks_for_an_ack() {
        let mut b = Batch::new();
        b.add_table(Family::Ipv4, "t");
        b.add_rule(
            Family::Ipv4,
            "t",
            "c",
            &[Expr::Immediate {
                dreg: REG_VERDICT,
                data: Data::Verdict(Verdict::Accept),
            }],
        );
        assert_eq!(b.len(), 2);
        let bytes = b.finish();
        let mut at = 0;
        let mut seen = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages are padded");
            let ty = u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]);
            let flags = u16::from_ne_bytes([bytes[at + 6], bytes[at + 7]]);
            seen.push((ty, flags & NLM_F_ACK != 0));
            at += len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            seen,
            [
                (NFNL_MSG_BATCH_BEGIN, false),
                ((10 << 8) | NEWTABLE, false),
                ((10 << 8) | NEWRULE, true),
                (NFNL_MSG_BATCH_END, false),
            ]
        );
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(24, 4), [255, 255, 255, 0]);
        assert_eq!(prefix_mask(12, 4), [255, 240, 0, 0]);
        assert_eq!(prefix_mask(0, 4), [0, 0, 0, 0]);
        assert_eq!(prefix_mask(32, 4), [255, 255, 255, 255]);
    }
}
