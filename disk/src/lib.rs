//! Disk formats Strake writes and reads without any tool in the image: GUID partition tables
//! and the sparse images that carry a filesystem template. Pure data in, data out: the callers
//! (init on a node, the image builder on a host) do the I/O.

pub mod fat;
pub mod gpt;
pub mod sparse;

use std::fmt;

/// The ISO's volume label: an install finds the medium it booted from by it.
pub const ISO_LABEL: &str = "STRAKE";
/// The ESP image in the ISO's file tree (also its El Torito EFI image), which an install copies
/// to the disk's ESP.
pub const ISO_ESP: &str = "efiboot.img";

/// A GUID in its on-disk byte order (the first three fields little-endian, as UEFI stores them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the fields of its text form `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// A version-4 GUID from 16 random bytes.
    pub fn random_v4(mut bytes: [u8; 16]) -> Guid {
        // The version sits in the high nibble of the third field, stored little-endian.
        bytes[7] = (bytes[7] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether every byte is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The little-endian u32 at `at` (the caller has checked the bounds).
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian u64 at `at` (the caller has checked the bounds).
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
