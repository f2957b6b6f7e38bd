//! A one-shot SNTP client (RFC 4330) for `machine.time.servers`: init asks each server in turn,
//! once the network is up, and steps the clock by the first answer's offset. Servers are IP
//! addresses or `ip:port`; a name would need a resolver init does not have yet (the machine
//! config accepts names, and init says it cannot use them).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const PACKET: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtpError {
    #[error("time server {0:?} is not an IP address or ip:port (names are not resolved yet)")]
    Address(String),
    #[error("{server}: {reason}")]
    Exchange { server: SocketAddr, reason: String },
}

/// A server address: `192.0.2.1`, `192.0.2.1:123`, `[2001:db8::1]:123` or `2001:db8::1`.
pub fn parse_server(s: &str) -> Result<SocketAddr, NtpError> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 123))
        })
        .map_err(|_| NtpError::Address(s.to_owned()))
}

/// NTP's 64-bit timestamp for a wall-clock time.
fn to_ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Nanoseconds since the Unix epoch of an NTP timestamp (before 2036's era rollover).
fn from_ntp(ts: u64) -> i128 {
    let secs = i128::from(ts >> 32) - i128::from(NTP_UNIX_OFFSET);
    let nanos = (i128::from(ts & 0xFFFF_FFFF) * 1_000_000_000) >> 32;
    secs * 1_000_000_000 + nanos
}

fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// The request: version 4, client mode, our transmit time (echoed back as the origin).
pub fn request(now: SystemTime) -> ([u8; PACKET], u64) {
    let mut p = [0u8; PACKET];
    p[0] = 4 << 3 | 3;
    let tx = to_ntp(now);
    p[40..48].copy_from_slice(&tx.to_be_bytes());
    (p, tx)
}

/// Checks a reply to the request that carried `sent` and returns the clock's offset in
/// nanoseconds (add it to the local clock), from the four timestamps of RFC 4330 §5.
pub fn offset(reply: &[u8], sent: u64, t1: SystemTime, t4: SystemTime) -> Result<i128, String> {
    if reply.len() < PACKET {
        return Err(format!("a {}-byte reply", reply.len()));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&reply[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let (li, mode, stratum) = (reply[0] >> 6, reply[0] & 7, reply[1]);
    if mode != 4 {
        return Err(format!("mode {mode}, not a server reply"));
    }
    if li == 3 || stratum == 0 || stratum > 15 {
        return Err(format!("the server is unsynchronised (stratum {stratum})"));
    }
    if u64_at(24) != sent {
        return Err("the reply does not answer our request".into());
    }
    let (t2, t3) = (from_ntp(u64_at(32)), from_ntp(u64_at(40)));
    if u64_at(40) == 0 {
        return Err("no transmit time".into());
    }
    Ok(((t2 - nanos(t1)) + (t3 - nanos(t4))) / 2)
}

/// Asks `server` once; returns the offset in nanoseconds.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<i128, NtpError> {
    let fail = |reason: String| NtpError::Exchange { server, reason };
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| fail("bind".into()))?
    } else {
        "[::]:0".parse().map_err(|_| fail("bind".into()))?
    };
    let socket = UdpSocket::bind(bind).map_err(|e| fail(e.to_string()))?;
    socket.connect(server).map_err(|e| fail(e.to_string()))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    let t1 = SystemTime::now();
    let (req, sent) = request(t1);
    socket.send(&req).map_err(|e| fail(e.to_string()))?;
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + timeout;
    // Why the last datagram was not an answer, reported if no answer follows.
    let mut rejected: Option<String> = None;
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(fail(rejected.unwrap_or_else(|| e.to_string()))),
        };
        let t4 = SystemTime::now();
        match offset(&buf[..n], sent, t1, t4) {
            Ok(o) => return Ok(o),
            Err(e) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(fail(e));
                }
                socket
                    .set_read_timeout(Some(left))
                    .map_err(|e| fail(e.to_string()))?;
                rejected = Some(e);
            }
        }
    }
}

/// The wall-clock time `offset_ns` away from `now`.
pub fn adjusted(now: SystemTime, offset_ns: i128) -> SystemTime {
    let magnitude = Duration::from_nanos(offset_ns.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if offset_ns >= 0 {
        now + magnitude
    } else {
        now.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// What a server at wall-clock `now` with this `stratum` answers to `request` (for tests).
#[cfg(test)]
pub(crate) fn reply_to(request: &[u8], now: SystemTime, stratum: u8) -> [u8; PACKET] {
    let mut r = [0u8; PACKET];
    r[0] = 4 << 3 | 4;
    r[1] = stratum;
    r[24..32].copy_from_slice(&request[40..48]);
    let ts = to_ntp(now);
    r[32..40].copy_from_slice(&ts.to_be_bytes());
    r[40..48].copy_from_slice(&ts.to_be_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback whose clock is `skew` ahead of ours, answering one request.
    fn server(skew: Duration, stratum: u8) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(n, PACKET);
            assert_eq!(buf[0] & 7, 3, "client mode");
            let r = reply_to(&buf[..n], SystemTime::now() + skew, stratum);
            s.send_to(&r, from).unwrap();
        });
        (addr, h)
    }

    #[test]
    fn the_offset_of_a_skewed_server_is_measured() {
        let (addr, h) = server(Duration::from_secs(3600), 2);
        let off = query(addr, Duration::from_secs(5)).unwrap();
        h.join().unwrap();
        let secs = off as f64 / 1e9;
        // Loopback: within a second of the skew, even on a loaded machine.
        assert!((secs - 3600.0).abs() < 1.0, "offset {secs}");
        let later = adjusted(UNIX_EPOCH + Duration::from_secs(10), off);
        assert!(later > UNIX_EPOCH + Duration::from_secs(3600));
    }

    #[test]
    fn unsynchronised_and_foreign_replies_are_refused() {
        let (addr, h) = server(Duration::ZERO, 0);
        let err = query(addr, Duration::from_millis(500)).unwrap_err();
        h.join().unwrap();
        assert!(err.to_string().contains("unsynchronised"), "{err}");

        let now = SystemTime::now();
        let (_, sent) = request(now);
        let mut reply = [0u8; PACKET];
        reply[0] = 4 << 3 | 4;
        reply[1] = 1;
        reply[24..32].copy_from_slice(&(sent + 1).to_be_bytes());
        reply[40..48].copy_from_slice(&sent.to_be_bytes());
        assert!(
            offset(&reply, sent, now, now)
                .unwrap_err()
                .contains("does not answer")
        );
        assert!(offset(&reply[..10], sent, now, now).is_err());
    }

    #[test]
    fn servers_are_addresses() {
        assert_eq!(
            parse_server("192.0.2.1").unwrap(),
            "192.0.2.1:123".parse().unwrap()
        );
        assert_eq!(
            parse_server("[2001:db8::1]:1123").unwrap(),
            "[2001:db8::1]:1123".parse().unwrap()
        );
        assert!(parse_server("pool.ntp.org").is_err());
        // Timestamps survive the round trip to within a nanosecond.
        let t = UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789);
        assert!((from_ntp(to_ntp(t)) - nanos(t)).abs() <= 1);
    }
}
