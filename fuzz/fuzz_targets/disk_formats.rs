//! What init reads off a disk it may not have written: any bytes as a sparse template or as a
//! whole disk's partition table either decode within their bounds or give an error, never a
//! panic; a table that reads back has every partition inside the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strake_disk::{gpt, sparse};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = sparse::decode(data) {
        for (offset, block) in &s.blocks {
            assert!(offset + block.len() as u64 <= s.len, "a block past the image's end");
        }
    }
    let sectors = data.len() as u64 / gpt::SECTOR;
    let mut read = |off: u64, len: usize| {
        let start = off as usize;
        Ok(data
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| vec![0; len]))
    };
    if let Ok(Ok(Some(t))) = gpt::read(sectors, &mut read) {
        for p in &t.partitions {
            assert!(p.first_lba <= p.last_lba && p.last_lba < sectors, "{p:?}");
        }
    }
});
