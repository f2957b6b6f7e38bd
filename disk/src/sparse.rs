//! A sparse image: a fixed-size image of which only the non-zero blocks are stored. The image
//! builder turns the empty ext4 filesystem `mkfs.ext4` made into one (128 MiB in, a few dozen
//! KiB out); init writes it onto a zeroed partition and lets the kernel grow it.
//!
//! Layout, little-endian: `STRKSPR1`, block size (u32), image length (u64), block count (u32),
//! then per block its index (u64, strictly increasing) and `block size` bytes.

const MAGIC: &[u8; 8] = b"STRKSPR1";
const HEADER: usize = 8 + 4 + 8 + 4;

/// Why an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    #[error("not a sparse image (bad magic)")]
    Magic,
    #[error("sparse image is truncated: {0}")]
    Truncated(&'static str),
    #[error("sparse image is invalid: {0}")]
    Invalid(String),
}

/// A decoded image that borrows its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse<'a> {
    pub block_size: u32,
    pub len: u64,
    /// Byte offset and contents of every stored block, in order.
    pub blocks: Vec<(u64, &'a [u8])>,
}

/// Encodes `image` with blocks of `block_size` bytes (a power of two, at least 512).
pub fn encode(image: &[u8], block_size: u32) -> Vec<u8> {
    assert!(block_size.is_power_of_two() && block_size >= 512);
    let bs = block_size as usize;
    let stored: Vec<(usize, &[u8])> = image
        .chunks(bs)
        .enumerate()
        .filter(|(_, b)| !crate::is_zero(b))
        .collect();
    let mut out = Vec::with_capacity(HEADER + stored.len() * (8 + bs));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&block_size.to_le_bytes());
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    for (i, b) in stored {
        out.extend_from_slice(&(i as u64).to_le_bytes());
        out.extend_from_slice(b);
        // The last block of an image that is not a whole number of blocks is padded.
        out.resize(out.len() + (bs - b.len()), 0);
    }
    out
}

/// Decodes an image, checking every bound before trusting it.
pub fn decode(bytes: &[u8]) -> Result<Sparse<'_>, SparseError> {
    if bytes.len() < HEADER {
        return Err(if bytes.starts_with(MAGIC) || MAGIC.starts_with(bytes) {
            SparseError::Truncated("header")
        } else {
            SparseError::Magic
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(SparseError::Magic);
    }
    let u32_at = |at| crate::le_u32(bytes, at);
    let u64_at = |at| crate::le_u64(bytes, at);
    let block_size = u32_at(8);
    if !block_size.is_power_of_two() || !(512..=1 << 20).contains(&block_size) {
        return Err(SparseError::Invalid(format!("block size {block_size}")));
    }
    let len = u64_at(12);
    let count = u32_at(20) as usize;
    let bs = block_size as usize;
    let body = &bytes[HEADER..];
    let need = count
        .checked_mul(8 + bs)
        .ok_or_else(|| SparseError::Invalid(format!("{count} blocks")))?;
    if body.len() < need {
        return Err(SparseError::Truncated("blocks"));
    }
    if body.len() > need {
        return Err(SparseError::Invalid(format!(
            "{} bytes after the last block",
            body.len() - need
        )));
    }
    let total_blocks = len.div_ceil(u64::from(block_size));
    let mut blocks = Vec::with_capacity(count);
    let mut last: Option<u64> = None;
    for rec in body.chunks_exact(8 + bs) {
        let index = crate::le_u64(rec, 0);
        if index >= total_blocks {
            return Err(SparseError::Invalid(format!(
                "block {index} is past the image's {total_blocks} blocks"
            )));
        }
        if last.is_some_and(|l| index <= l) {
            return Err(SparseError::Invalid(format!(
                "block {index} is out of order"
            )));
        }
        last = Some(index);
        let offset = index * u64::from(block_size);
        // A final partial block stores only what is inside the image.
        let keep = (len - offset).min(u64::from(block_size)) as usize;
        blocks.push((offset, &rec[8..8 + keep]));
    }
    Ok(Sparse {
        block_size,
        len,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_stores_only_nonzero_blocks() {
        let mut image = vec![0u8; 10 * 4096 + 100];
        image[5] = 1;
        image[3 * 4096 + 7] = 2;
        image[10 * 4096 + 99] = 3;
        let enc = encode(&image, 4096);
        assert_eq!(enc.len(), HEADER + 3 * (8 + 4096));
        let dec = decode(&enc).unwrap();
        assert_eq!(dec.len, image.len() as u64);
        let offsets: Vec<u64> = dec.blocks.iter().map(|b| b.0).collect();
        assert_eq!(offsets, [0, 3 * 4096, 10 * 4096]);
        let mut out = vec![0u8; dec.len as usize];
        for (off, b) in &dec.blocks {
            out[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        assert_eq!(out, image);
    }

    #[test]
    fn damaged_images_are_refused_with_the_reason() {
        let mut image = vec![0u8; 4 * 4096];
        image[4096] = 9;
        image[2 * 4096] = 9;
        let enc = encode(&image, 4096);
        assert_eq!(decode(b"nonsense, not an image"), Err(SparseError::Magic));
        assert_eq!(decode(b"STRK"), Err(SparseError::Truncated("header")));
        assert_eq!(
            decode(&enc[..enc.len() - 1]),
            Err(SparseError::Truncated("blocks"))
        );
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        // Out of order: swap the two records' indexes.
        let mut swapped = enc.clone();
        let second = HEADER + 8 + 4096;
        swapped[HEADER] = 2;
        swapped[second] = 1;
        assert!(decode(&swapped).unwrap_err().to_string().contains("order"));
        // Past the end.
        let mut past = enc.clone();
        past[second] = 4;
        assert!(decode(&past).unwrap_err().to_string().contains("past"));
        // A huge count never allocates.
        let mut huge = enc;
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
