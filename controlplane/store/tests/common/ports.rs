//! Loopback ports for test members that bind them later (a restarted member binds its old
//! port again).
//!
//! A port from binding port 0 lies in the kernel's ephemeral range (32768 and up), where any
//! process's outgoing connection may take it as its source port before the member binds it.
//! These come from below that range instead, from a slice of it per test process, so
//! concurrent test binaries rarely meet; each is checked free when handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

const FIRST: u16 = 20_000;
const SLICES: u16 = 40;
const PER_SLICE: u16 = 300;

/// A free loopback port, as "127.0.0.1:port".
pub fn free_addr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slice = (std::process::id() % u32::from(SLICES)) as u16;
    for _ in 0..PER_SLICE {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % PER_SLICE;
        let port = FIRST + slice * PER_SLICE + n;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!(
        "no free loopback port in {FIRST}..{}",
        FIRST + SLICES * PER_SLICE
    );
}
