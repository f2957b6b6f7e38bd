//! A small, strict newc reader used only by tests to parse back what the writer produced.

use super::{HEADER_LEN, NEWC_MAGIC, TRAILER_NAME};

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub offset: usize,
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub check: u32,
    pub data: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn hex_field(header: &[u8], index: usize) -> Result<u32, String> {
    let start = 6 + index * 8;
    let text = std::str::from_utf8(&header[start..start + 8])
        .map_err(|e| format!("field {index} is not ASCII: {e}"))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("field {index} is not hex: {text:?}"));
    }
    u32::from_str_radix(text, 16).map_err(|e| format!("field {index}: {e}"))
}

/// Parses a whole archive. Returns the entries before the trailer, and fails on a bad magic, a
/// misaligned header, a missing trailer, or bytes after the trailer's padding.
pub(crate) fn parse(archive: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        if pos % 4 != 0 {
            return Err(format!("header at offset {pos} is not 4-byte aligned"));
        }
        let header = archive
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| format!("archive ends inside a header at offset {pos} (no trailer?)"))?;
        if &header[..6] != NEWC_MAGIC {
            return Err(format!("bad magic {:?} at offset {pos}", &header[..6]));
        }
        let f = |i| hex_field(header, i);
        let namesize = f(11)? as usize;
        let filesize = f(6)? as usize;
        let name_start = pos + HEADER_LEN;
        let name_bytes = archive
            .get(name_start..name_start + namesize)
            .ok_or_else(|| format!("name at offset {name_start} runs past the end"))?;
        let (nul, name) = name_bytes.split_last().ok_or("zero namesize")?;
        if *nul != 0 {
            return Err(format!("name at offset {name_start} is not NUL-terminated"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
        let data_start = align4(name_start + namesize);
        check_zero(archive, name_start + namesize, data_start)?;
        let data = archive
            .get(data_start..data_start + filesize)
            .ok_or_else(|| format!("data of {name:?} runs past the end"))?
            .to_vec();
        let next = align4(data_start + filesize);
        check_zero(archive, data_start + filesize, next)?;
        let entry = Entry {
            offset: pos,
            name,
            ino: f(0)?,
            mode: f(1)?,
            uid: f(2)?,
            gid: f(3)?,
            nlink: f(4)?,
            mtime: f(5)?,
            dev_major: f(7)?,
            dev_minor: f(8)?,
            rdev_major: f(9)?,
            rdev_minor: f(10)?,
            check: f(12)?,
            data,
        };
        pos = next;
        if entry.name == TRAILER_NAME {
            if pos != archive.len() {
                return Err(format!("{} bytes after the trailer", archive.len() - pos));
            }
            return Ok(entries);
        }
        entries.push(entry);
    }
}

fn check_zero(archive: &[u8], from: usize, to: usize) -> Result<(), String> {
    let pad = archive
        .get(from..to)
        .ok_or_else(|| format!("padding at {from} runs past the end"))?;
    if pad.iter().any(|&b| b != 0) {
        return Err(format!("non-zero padding at offset {from}"));
    }
    Ok(())
}
