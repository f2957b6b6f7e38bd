//! DHCPv4 messages (RFC 2131/2132): pure encode and decode. Decoding never panics: every
//! malformed input is a [`DecodeError`].

use std::net::Ipv4Addr;

/// BOOTP fixed header plus the magic cookie.
pub const HEADER_LEN: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BROADCAST_FLAG: u16 = 0x8000;

mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_REQUEST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// BOOTP op: request from a client or reply from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request,
    Reply,
}

/// A DHCP message with the options init understands; others are skipped when decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpMessage {
    pub op: Op,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub message_type: Option<MessageType>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Option<u32>,
    pub hostname: Option<String>,
    pub server_id: Option<Ipv4Addr>,
    pub requested_ip: Option<Ipv4Addr>,
    pub param_request: Vec<u8>,
    pub max_message_size: Option<u16>,
    pub client_id: Option<Vec<u8>>,
}

/// Why a datagram is not a DHCP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet is {0} bytes, shorter than the 240-byte DHCP header")]
    TooShort(usize),
    #[error("bad BOOTP op {0}")]
    BadOp(u8),
    #[error("hardware type {htype}/length {hlen} is not ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("missing DHCP magic cookie")]
    BadMagic,
    #[error("option {code} runs past the end of the packet")]
    Truncated { code: u8 },
    #[error("option {code} has invalid length {len}")]
    BadLength { code: u8, len: usize },
    #[error("unknown DHCP message type {0}")]
    BadMessageType(u8),
}

impl DhcpMessage {
    /// An empty client request from `chaddr` with transaction `xid`.
    pub fn request(xid: u32, chaddr: [u8; 6], message_type: MessageType) -> DhcpMessage {
        DhcpMessage {
            op: Op::Request,
            xid,
            secs: 0,
            broadcast: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            message_type: Some(message_type),
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            lease_time: None,
            hostname: None,
            server_id: None,
            requested_ip: None,
            param_request: Vec::new(),
            max_message_size: None,
            client_id: None,
        }
    }

    /// Serializes to wire format (header, cookie, options, end, padded to the BOOTP minimum of
    /// 300 bytes that some servers insist on).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(300);
        b.push(match self.op {
            Op::Request => 1,
            Op::Reply => 2,
        });
        b.extend_from_slice(&[1, 6, 0]); // ethernet, 6-byte address, 0 hops
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&(if self.broadcast { BROADCAST_FLAG } else { 0 }).to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&chaddr);
        b.extend_from_slice(&[0u8; 64 + 128]); // sname, file
        b.extend_from_slice(&MAGIC);
        if let Some(t) = self.message_type {
            put(&mut b, opt::MESSAGE_TYPE, &[t.code()]);
        }
        if let Some(id) = &self.client_id {
            put(&mut b, opt::CLIENT_ID, id);
        }
        if let Some(ip) = self.requested_ip {
            put(&mut b, opt::REQUESTED_IP, &ip.octets());
        }
        if let Some(ip) = self.server_id {
            put(&mut b, opt::SERVER_ID, &ip.octets());
        }
        if let Some(size) = self.max_message_size {
            put(&mut b, opt::MAX_MESSAGE_SIZE, &size.to_be_bytes());
        }
        if !self.param_request.is_empty() {
            put(&mut b, opt::PARAM_REQUEST, &self.param_request);
        }
        if let Some(mask) = self.subnet_mask {
            put(&mut b, opt::SUBNET_MASK, &mask.octets());
        }
        put_addrs(&mut b, opt::ROUTER, &self.routers);
        put_addrs(&mut b, opt::DNS, &self.dns);
        if let Some(t) = self.lease_time {
            put(&mut b, opt::LEASE_TIME, &t.to_be_bytes());
        }
        if let Some(h) = &self.hostname {
            put(&mut b, opt::HOSTNAME, h.as_bytes());
        }
        b.push(opt::END);
        if b.len() < 300 {
            b.resize(300, opt::PAD);
        }
        b
    }

    /// Parses a datagram. Unknown options are skipped; a missing END is tolerated.
    pub fn decode(buf: &[u8]) -> Result<DhcpMessage, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(buf.len()));
        }
        let op = match buf[0] {
            1 => Op::Request,
            2 => Op::Reply,
            other => return Err(DecodeError::BadOp(other)),
        };
        if buf[1] != 1 || buf[2] != 6 {
            return Err(DecodeError::NotEthernet {
                htype: buf[1],
                hlen: buf[2],
            });
        }
        if buf[236..240] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let addr = |at: usize| Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3]);
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&buf[28..34]);
        let mut msg = DhcpMessage {
            op,
            xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            secs: u16::from_be_bytes([buf[8], buf[9]]),
            broadcast: u16::from_be_bytes([buf[10], buf[11]]) & BROADCAST_FLAG != 0,
            ciaddr: addr(12),
            yiaddr: addr(16),
            siaddr: addr(20),
            giaddr: addr(24),
            chaddr,
            ..DhcpMessage::request(0, [0; 6], MessageType::Discover)
        };
        msg.message_type = None;
        let mut i = HEADER_LEN;
        while i < buf.len() {
            let code = buf[i];
            i += 1;
            match code {
                opt::PAD => continue,
                opt::END => break,
                _ => {}
            }
            let len = *buf.get(i).ok_or(DecodeError::Truncated { code })? as usize;
            i += 1;
            let data = buf.get(i..i + len).ok_or(DecodeError::Truncated { code })?;
            i += len;
            msg.apply_option(code, data)?;
        }
        Ok(msg)
    }

    fn apply_option(&mut self, code: u8, data: &[u8]) -> Result<(), DecodeError> {
        let bad = || DecodeError::BadLength {
            code,
            len: data.len(),
        };
        let one_addr = || -> Result<Ipv4Addr, DecodeError> {
            let a: [u8; 4] = data.try_into().map_err(|_| bad())?;
            Ok(Ipv4Addr::from(a))
        };
        let addrs = || -> Result<Vec<Ipv4Addr>, DecodeError> {
            if data.is_empty() || !data.len().is_multiple_of(4) {
                return Err(bad());
            }
            Ok(data
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect())
        };
        match code {
            opt::MESSAGE_TYPE => {
                let [t] = data else { return Err(bad()) };
                self.message_type =
                    Some(MessageType::from_code(*t).ok_or(DecodeError::BadMessageType(*t))?);
            }
            opt::SUBNET_MASK => self.subnet_mask = Some(one_addr()?),
            opt::ROUTER => self.routers.extend(addrs()?),
            opt::DNS => self.dns.extend(addrs()?),
            opt::LEASE_TIME => {
                let t: [u8; 4] = data.try_into().map_err(|_| bad())?;
                self.lease_time = Some(u32::from_be_bytes(t));
            }
            opt::HOSTNAME => {
                if data.is_empty() {
                    return Err(bad());
                }
                self.hostname = Some(String::from_utf8_lossy(data).into_owned());
            }
            opt::SERVER_ID => self.server_id = Some(one_addr()?),
            opt::REQUESTED_IP => self.requested_ip = Some(one_addr()?),
            opt::PARAM_REQUEST => self.param_request.extend_from_slice(data),
            opt::MAX_MESSAGE_SIZE => {
                let s: [u8; 2] = data.try_into().map_err(|_| bad())?;
                self.max_message_size = Some(u16::from_be_bytes(s));
            }
            opt::CLIENT_ID => self.client_id = Some(data.to_vec()),
            _ => {}
        }
        Ok(())
    }
}

/// The parameter request list init sends: mask, router, DNS, hostname, lease time.
pub fn wanted_params() -> Vec<u8> {
    vec![
        opt::SUBNET_MASK,
        opt::ROUTER,
        opt::DNS,
        opt::HOSTNAME,
        opt::LEASE_TIME,
    ]
}

fn put(b: &mut Vec<u8>, code: u8, data: &[u8]) {
    // Options longer than 255 bytes would need RFC 3396 splitting; ours never are, so truncate.
    let data = &data[..data.len().min(255)];
    b.push(code);
    b.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
    b.extend_from_slice(data);
}

fn put_addrs(b: &mut Vec<u8>, code: u8, addrs: &[Ipv4Addr]) {
    if addrs.is_empty() {
        return;
    }
    let bytes: Vec<u8> = addrs.iter().take(63).flat_map(|a| a.octets()).collect();
    put(b, code, &bytes);
}

/// Prefix length of a contiguous netmask, or `None` for masks like 255.0.255.0.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).unwrap_or(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> DhcpMessage {
        DhcpMessage {
            op: Op::Reply,
            yiaddr: Ipv4Addr::new(10, 0, 2, 15),
            siaddr: Ipv4Addr::new(10, 0, 2, 2),
            message_type: Some(MessageType::Offer),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            lease_time: Some(86400),
            hostname: Some("guest".into()),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            ..DhcpMessage::request(
                0xdead_beef,
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                MessageType::Offer,
            )
        }
    }

    #[test]
    fn round_trips() {
        let mut discover = DhcpMessage::request(7, [1, 2, 3, 4, 5, 6], MessageType::Discover);
        discover.param_request = wanted_params();
        discover.hostname = Some("strake-123456".into());
        discover.max_message_size = Some(1500);
        discover.client_id = Some(vec![1, 1, 2, 3, 4, 5, 6]);
        discover.requested_ip = Some(Ipv4Addr::new(10, 0, 2, 15));
        for m in [discover, offer()] {
            let wire = m.encode();
            assert!(wire.len() >= 300);
            assert_eq!(DhcpMessage::decode(&wire).expect("decode"), m);
        }
    }

    #[test]
    fn header_layout_is_rfc2131() {
        let wire = DhcpMessage::request(0x0102_0304, [0xaa; 6], MessageType::Discover).encode();
        assert_eq!(&wire[..4], &[1, 1, 6, 0]);
        assert_eq!(&wire[4..8], &[1, 2, 3, 4]);
        assert_eq!(&wire[10..12], &[0x80, 0]);
        assert_eq!(&wire[28..34], &[0xaa; 6]);
        assert_eq!(&wire[236..240], &MAGIC);
        assert_eq!(&wire[240..243], &[53, 1, 1]);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let good = offer().encode();
        assert_eq!(
            DhcpMessage::decode(&good[..100]),
            Err(DecodeError::TooShort(100))
        );
        let mut b = good.clone();
        b[0] = 9;
        assert_eq!(DhcpMessage::decode(&b), Err(DecodeError::BadOp(9)));
        let mut b = good.clone();
        b[2] = 16;
        assert!(matches!(
            DhcpMessage::decode(&b),
            Err(DecodeError::NotEthernet { .. })
        ));
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(DhcpMessage::decode(&b), Err(DecodeError::BadMagic));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[3, 8, 10, 0]);
        assert_eq!(
            DhcpMessage::decode(&b),
            Err(DecodeError::Truncated { code: 3 })
        );
        let mut b = good[..240].to_vec();
        b.push(51);
        assert_eq!(
            DhcpMessage::decode(&b),
            Err(DecodeError::Truncated { code: 51 })
        );
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[1, 3, 255, 255, 255, 255]);
        assert_eq!(
            DhcpMessage::decode(&b),
            Err(DecodeError::BadLength { code: 1, len: 3 })
        );
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 42, 255]);
        assert_eq!(
            DhcpMessage::decode(&b),
            Err(DecodeError::BadMessageType(42))
        );
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[6, 6, 1, 1, 1, 1, 2, 2, 255]);
        assert_eq!(
            DhcpMessage::decode(&b),
            Err(DecodeError::BadLength { code: 6, len: 6 })
        );
    }

    #[test]
    fn unknown_options_and_padding_are_skipped() {
        let mut b = offer().encode()[..240].to_vec();
        b.extend_from_slice(&[0, 0, 53, 1, 5, 99, 2, 7, 7, 0, 1, 4, 255, 255, 0, 0]);
        let m = DhcpMessage::decode(&b).expect("decode without END");
        assert_eq!(m.message_type, Some(MessageType::Ack));
        assert_eq!(m.subnet_mask, Some(Ipv4Addr::new(255, 255, 0, 0)));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: mutate a valid packet byte by byte and truncate it.
        let good = offer().encode();
        let mut seed: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut b = good.clone();
            let at = 236 + (seed as usize % (b.len() - 236));
            b[at] = (seed >> 8) as u8;
            let cut = 240 + (seed as usize >> 3) % (b.len() - 240);
            b.truncate(cut);
            let _ = DhcpMessage::decode(&b);
        }
    }

    #[test]
    fn masks_to_prefixes() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
