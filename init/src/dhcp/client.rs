//! The DHCP client: DISCOVER → OFFER → REQUEST → ACK over any [`DhcpTransport`], with
//! retransmission backoff and an overall deadline. Lease renewal is not implemented yet: init
//! keeps the address after the lease expires (QEMU's user-mode DHCP hands out day-long leases).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::packet::{DecodeError, DhcpMessage, MessageType, Op, mask_to_prefix, wanted_params};

/// Sends and receives DHCP datagrams (client port 68 → server port 67, broadcast).
pub trait DhcpTransport {
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()>;
    /// Waits up to `timeout` for one datagram; `Ok(None)` when the time ran out.
    fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>>;
}

/// Retransmission schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first DISCOVER; doubles after each unanswered one.
    pub initial: Duration,
    /// Cap of the doubling.
    pub max: Duration,
    /// Give up after this long overall.
    pub deadline: Duration,
    /// REQUESTs sent for one OFFER before starting over with a DISCOVER.
    pub request_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            deadline: Duration::from_secs(30),
            request_attempts: 3,
        }
    }
}

/// An acknowledged lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_seconds: u32,
    pub server: Ipv4Addr,
    /// The hostname the server suggested, if any (informational).
    pub hostname: Option<String>,
}

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no DHCP lease after {waited:?} ({discovers} DISCOVERs, last problem: {last})")]
    Timeout {
        waited: Duration,
        discovers: u32,
        last: String,
    },
    #[error("DHCP server {server} acknowledged an unusable lease: {reason}")]
    BadLease { server: Ipv4Addr, reason: String },
}

/// What the client is looking for while waiting.
enum Want<'a> {
    Offer,
    AckFor(&'a DhcpMessage),
}

/// Obtains a lease for the interface with hardware address `mac`. `next_xid` supplies random
/// transaction ids (a fresh one per DISCOVER).
pub fn obtain_lease(
    transport: &mut dyn DhcpTransport,
    mac: [u8; 6],
    hostname: Option<&str>,
    policy: RetryPolicy,
    next_xid: &mut dyn FnMut() -> u32,
) -> Result<Lease, DhcpError> {
    let start = Instant::now();
    let deadline = start + policy.deadline;
    let mut backoff = policy.initial;
    let mut discovers = 0u32;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let xid = next_xid();
        let mut discover = base_request(xid, mac, hostname, MessageType::Discover, start);
        discover.param_request = wanted_params();
        transport.send(&discover.encode())?;
        discovers += 1;
        tracing::debug!(target: "strake_init::dhcp", "DISCOVER xid {xid:#010x} sent");
        let wait_until = (Instant::now() + backoff).min(deadline);
        let offer = wait_for(transport, xid, mac, Want::Offer, wait_until, &mut last)?;
        let req_wait = backoff;
        backoff = (backoff * 2).min(policy.max);
        let Some(offer) = offer else { continue };
        tracing::info!(
            target: "strake_init::dhcp",
            "OFFER of {} from {}",
            offer.yiaddr,
            offer.server_id.unwrap_or(offer.siaddr)
        );
        for _ in 0..policy.request_attempts.max(1) {
            let mut request = base_request(xid, mac, hostname, MessageType::Request, start);
            request.param_request = wanted_params();
            request.requested_ip = Some(offer.yiaddr);
            request.server_id = offer.server_id;
            transport.send(&request.encode())?;
            let until = (Instant::now() + req_wait).min(deadline);
            match wait_for(transport, xid, mac, Want::AckFor(&offer), until, &mut last)? {
                Some(reply) if reply.message_type == Some(MessageType::Ack) => {
                    return lease_from(&reply, &offer);
                }
                Some(_nak) => {
                    last = format!("NAK from {}", offer.server_id.unwrap_or(offer.siaddr));
                    tracing::warn!(target: "strake_init::dhcp", "{last}; starting over");
                    break;
                }
                None => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
    }
    Err(DhcpError::Timeout {
        waited: start.elapsed(),
        discovers,
        last,
    })
}

fn base_request(
    xid: u32,
    mac: [u8; 6],
    hostname: Option<&str>,
    t: MessageType,
    start: Instant,
) -> DhcpMessage {
    let mut m = DhcpMessage::request(xid, mac, t);
    m.secs = u16::try_from(start.elapsed().as_secs()).unwrap_or(u16::MAX);
    m.hostname = hostname.map(str::to_owned);
    m.max_message_size = Some(1500);
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    m.client_id = Some(client_id);
    m
}

/// Waits until `until` for a reply matching `xid`/`mac` and what is wanted. Other datagrams are
/// ignored (and remembered in `last` for the timeout error).
fn wait_for(
    transport: &mut dyn DhcpTransport,
    xid: u32,
    mac: [u8; 6],
    want: Want<'_>,
    until: Instant,
    last: &mut String,
) -> Result<Option<DhcpMessage>, DhcpError> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        let Some(datagram) = transport.recv(until - now)? else {
            return Ok(None);
        };
        let msg = match DhcpMessage::decode(&datagram) {
            Ok(m) => m,
            Err(e) => {
                note(last, &e);
                continue;
            }
        };
        if msg.op != Op::Reply || msg.xid != xid || msg.chaddr != mac {
            continue;
        }
        let wanted = match (&want, msg.message_type) {
            (Want::Offer, Some(MessageType::Offer)) => !msg.yiaddr.is_unspecified(),
            (Want::AckFor(offer), Some(MessageType::Ack | MessageType::Nak)) => {
                // A reply from another server (several answered the DISCOVER) is not ours.
                offer.server_id.is_none()
                    || msg.server_id.is_none()
                    || msg.server_id == offer.server_id
            }
            _ => false,
        };
        if wanted {
            return Ok(Some(msg));
        }
        *last = format!("unexpected {:?}", msg.message_type);
    }
}

fn note(last: &mut String, e: &DecodeError) {
    tracing::debug!(target: "strake_init::dhcp", "ignoring malformed datagram: {e}");
    *last = format!("malformed reply: {e}");
}

fn lease_from(ack: &DhcpMessage, offer: &DhcpMessage) -> Result<Lease, DhcpError> {
    let server = ack.server_id.or(offer.server_id).unwrap_or(ack.siaddr);
    let bad = |reason: String| DhcpError::BadLease { server, reason };
    let address = if ack.yiaddr.is_unspecified() {
        offer.yiaddr
    } else {
        ack.yiaddr
    };
    if address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_loopback()
    {
        return Err(bad(format!("address {address}")));
    }
    let prefix = match ack.subnet_mask.or(offer.subnet_mask) {
        Some(mask) => {
            mask_to_prefix(mask).ok_or_else(|| bad(format!("non-contiguous netmask {mask}")))?
        }
        None => classful_prefix(address),
    };
    if prefix == 0 {
        return Err(bad("netmask 0.0.0.0".into()));
    }
    let routers = if ack.routers.is_empty() {
        &offer.routers
    } else {
        &ack.routers
    };
    let dns = if ack.dns.is_empty() {
        &offer.dns
    } else {
        &ack.dns
    };
    Ok(Lease {
        address,
        prefix,
        gateway: routers.iter().copied().find(|r| !r.is_unspecified()),
        dns: dns.clone(),
        lease_seconds: ack.lease_time.or(offer.lease_time).unwrap_or(3600),
        server,
        hostname: ack.hostname.clone(),
    })
}

/// The historical class A/B/C prefix, for servers that send no netmask.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDhcpServer;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            deadline: Duration::from_millis(300),
            request_attempts: 2,
        }
    }

    fn counter() -> impl FnMut() -> u32 {
        let mut n = 0x1000;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn full_exchange_yields_the_lease() {
        let mut server = FakeDhcpServer::slirp();
        let lease = obtain_lease(
            &mut server,
            MAC,
            Some("strake-123456"),
            quick(),
            &mut counter(),
        )
        .expect("lease");
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.lease_seconds, 86400);
        let seen = &server.received;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].message_type, Some(MessageType::Discover));
        assert_eq!(seen[1].message_type, Some(MessageType::Request));
        assert_eq!(seen[1].requested_ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(seen[1].server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(seen[1].xid, seen[0].xid);
        assert_eq!(seen[0].hostname.as_deref(), Some("strake-123456"));
        assert!(seen.iter().all(|m| m.broadcast && m.chaddr == MAC));
    }

    #[test]
    fn retries_unanswered_discovers_with_fresh_xids() {
        let mut server = FakeDhcpServer::slirp();
        server.drop_discovers = 2;
        let lease = obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect("lease");
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        let xids: Vec<u32> = server.received.iter().map(|m| m.xid).collect();
        assert_eq!(xids, [0x1001, 0x1002, 0x1003, 0x1003]);
    }

    #[test]
    fn ignores_foreign_and_malformed_replies() {
        let mut server = FakeDhcpServer::slirp();
        server.noise = true;
        let lease = obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect("lease");
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[test]
    fn nak_starts_over() {
        let mut server = FakeDhcpServer::slirp();
        server.nak_requests = 1;
        obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect("lease");
        let types: Vec<_> = server
            .received
            .iter()
            .filter_map(|m| m.message_type)
            .collect();
        assert_eq!(
            types,
            [
                MessageType::Discover,
                MessageType::Request,
                MessageType::Discover,
                MessageType::Request
            ]
        );
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let mut server = FakeDhcpServer::slirp();
        server.drop_discovers = usize::MAX;
        let started = Instant::now();
        let err =
            obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect_err("timeout");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let DhcpError::Timeout { discovers, .. } = err else {
            panic!("{err}")
        };
        // 5, 10, 20, 20, ... ms: bounded by the backoff, not a busy loop.
        assert!((5..=40).contains(&discovers), "{discovers}");
    }

    #[test]
    fn unusable_leases_are_rejected() {
        let mut server = FakeDhcpServer::slirp();
        server.mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        let err =
            obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect_err("bad mask");
        assert!(err.to_string().contains("non-contiguous netmask"), "{err}");
        let mut server = FakeDhcpServer::slirp();
        server.mask = None;
        let lease =
            obtain_lease(&mut server, MAC, None, quick(), &mut counter()).expect("classful");
        assert_eq!(lease.prefix, 8);
    }
}
