//! GUID partition tables (UEFI 2.10 §5.3): reading one (primary, else the backup) and writing a
//! fresh one with its protective MBR and backup copy. Sectors are 512 bytes.

use crate::{Guid, le_u32 as u32_at, le_u64 as u64_at};

pub const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
const ENTRY_SIZE: u32 = 128;
/// Entries a table we write holds (the minimum the spec allows: 16 KiB of entries).
const ENTRIES: u32 = 128;
/// Sectors the entry array takes.
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Largest entry array read back (a table claiming more is refused, not allocated).
const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;

/// "Linux filesystem data" (0FC63DAF-8483-4772-8E79-3D69D8477DE4).
pub const LINUX_FILESYSTEM: Guid = Guid::from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// "EFI System Partition" (C12A7328-F81F-11D2-BA4B-00A0C93EC93B).
pub const EFI_SYSTEM: Guid = Guid::from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);

/// Why a table could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptError {
    #[error("the disk is {sectors} sectors; a GPT with a partition needs at least {needed}")]
    TooSmall { sectors: u64, needed: u64 },
    #[error("the {which} GPT header is damaged: {reason}")]
    Header { which: &'static str, reason: String },
    #[error("the {which} GPT's partition entries do not match their checksum")]
    EntriesChecksum { which: &'static str },
    #[error("partition {name:?} is invalid: {reason}")]
    Partition { name: String, reason: String },
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    /// First and last sector, inclusive.
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    /// The partition's label (its GPT name), at most 36 UTF-16 units.
    pub name: String,
    /// Its number as the kernel counts it (1 for the first entry slot).
    pub number: u32,
}

impl Partition {
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// A partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
    /// Whether the table came from the backup header because the primary was damaged.
    pub from_backup: bool,
}

impl Gpt {
    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// Where a header says its entries are, checked against the disk.
struct HeaderInfo {
    disk_guid: Guid,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entry_count: u32,
    entries_crc: u32,
}

fn parse_header(
    sector: &[u8],
    which: &'static str,
    my_lba: u64,
    sectors: u64,
) -> Result<HeaderInfo, GptError> {
    let bad = |reason: String| GptError::Header { which, reason };
    if sector.len() < SECTOR as usize || &sector[..8] != SIGNATURE {
        return Err(bad("no \"EFI PART\" signature".into()));
    }
    let size = u32_at(sector, 12);
    if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
        return Err(bad(format!("header size {size}")));
    }
    let mut copy = sector[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(sector, 16) {
        return Err(bad("header checksum mismatch".into()));
    }
    if u64_at(sector, 24) != my_lba {
        return Err(bad(format!(
            "it says it lives at sector {}, not {my_lba}",
            u64_at(sector, 24)
        )));
    }
    let first_usable = u64_at(sector, 40);
    let last_usable = u64_at(sector, 48);
    if first_usable > last_usable || last_usable >= sectors {
        return Err(bad(format!(
            "usable sectors {first_usable}..={last_usable} do not fit a {sectors}-sector disk"
        )));
    }
    let entry_size = u32_at(sector, 84);
    if entry_size < ENTRY_SIZE || !entry_size.is_power_of_two() {
        return Err(bad(format!("entry size {entry_size}")));
    }
    if entry_size != ENTRY_SIZE {
        return Err(bad(format!("entry size {entry_size} is not supported")));
    }
    let entry_count = u32_at(sector, 80);
    let bytes = u64::from(entry_count) * u64::from(entry_size);
    if bytes > MAX_ENTRY_BYTES {
        return Err(bad(format!("{entry_count} entries")));
    }
    let entries_lba = u64_at(sector, 72);
    let entry_sectors = bytes.div_ceil(SECTOR);
    if entries_lba.saturating_add(entry_sectors) > sectors || entries_lba < 2 {
        return Err(bad(format!(
            "entries at sector {entries_lba} are off the disk"
        )));
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&sector[56..72]);
    Ok(HeaderInfo {
        disk_guid: Guid(guid),
        first_usable,
        last_usable,
        entries_lba,
        entry_count,
        entries_crc: u32_at(sector, 88),
    })
}

fn parse_entries(
    h: &HeaderInfo,
    bytes: &[u8],
    which: &'static str,
) -> Result<Vec<Partition>, GptError> {
    let len = h.entry_count as usize * ENTRY_SIZE as usize;
    if bytes.len() < len || crc32fast::hash(&bytes[..len]) != h.entries_crc {
        return Err(GptError::EntriesChecksum { which });
    }
    let mut out = Vec::new();
    for (i, e) in bytes[..len].chunks_exact(ENTRY_SIZE as usize).enumerate() {
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[..16]);
        if t == [0; 16] {
            continue;
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&e[16..32]);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let name = String::from_utf16_lossy(&units);
        let (first_lba, last_lba) = (u64_at(e, 32), u64_at(e, 40));
        if first_lba > last_lba || first_lba < h.first_usable || last_lba > h.last_usable {
            return Err(GptError::Partition {
                name,
                reason: format!(
                    "sectors {first_lba}..={last_lba} are outside the usable {}..={}",
                    h.first_usable, h.last_usable
                ),
            });
        }
        out.push(Partition {
            type_guid: Guid(t),
            unique_guid: Guid(u),
            first_lba,
            last_lba,
            attributes: u64_at(e, 48),
            name,
            number: i as u32 + 1,
        });
    }
    Ok(out)
}

/// Reads the table of a disk of `sectors` sectors through `read(offset, len)`. `Ok(None)` when
/// neither header carries the GPT signature (no table); an error when one does but the table is
/// damaged beyond the other copy.
pub fn read(
    sectors: u64,
    read: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Result<Option<Gpt>, GptError>> {
    if sectors < 3 {
        return Ok(Ok(None));
    }
    let mut first_error = None;
    for (which, lba) in [("primary", 1), ("backup", sectors - 1)] {
        let sector = read(lba * SECTOR, SECTOR as usize)?;
        if sector.get(..8) != Some(SIGNATURE.as_slice()) {
            continue;
        }
        let parsed = parse_header(&sector, which, lba, sectors);
        let h = match parsed {
            Ok(h) => h,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let bytes = read(
            h.entries_lba * SECTOR,
            h.entry_count as usize * ENTRY_SIZE as usize,
        )?;
        match parse_entries(&h, &bytes, which) {
            Ok(partitions) => {
                return Ok(Ok(Some(Gpt {
                    disk_guid: h.disk_guid,
                    partitions,
                    from_backup: which == "backup",
                })));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    })
}

/// A partition to lay out: `size_sectors` of `None` takes the rest of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub size_sectors: Option<u64>,
    pub attributes: u64,
}

/// The writes that put a fresh table on a disk: byte offsets and their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub partitions: Vec<Partition>,
    pub writes: Vec<(u64, Vec<u8>)>,
}

fn encode_name(name: &str) -> Result<[u8; 72], GptError> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.is_empty() || units.len() > 36 {
        return Err(GptError::Partition {
            name: name.into(),
            reason: "a name is 1 to 36 UTF-16 units".into(),
        });
    }
    let mut out = [0u8; 72];
    for (i, u) in units.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    Ok(out)
}

fn header(
    disk_guid: Guid,
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR as usize];
    h[..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&REVISION.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.0);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(sectors: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of sector 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Lays out `specs` in order on a disk of `sectors` sectors, each starting on a 1 MiB boundary.
pub fn layout(sectors: u64, disk_guid: Guid, specs: &[PartitionSpec]) -> Result<Layout, GptError> {
    let first_usable = 2 + ENTRY_SECTORS;
    let backup_entries = sectors.saturating_sub(1 + ENTRY_SECTORS);
    let last_usable = backup_entries.saturating_sub(1);
    let needed = ALIGN_SECTORS * (specs.len() as u64 + 1) + 1 + ENTRY_SECTORS;
    if sectors < needed || specs.is_empty() || specs.len() > ENTRIES as usize {
        return Err(GptError::TooSmall { sectors, needed });
    }
    let mut partitions = Vec::new();
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut next = ALIGN_SECTORS;
    for (i, spec) in specs.iter().enumerate() {
        let name = encode_name(&spec.name)?;
        let first = next.div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
        let last = match spec.size_sectors {
            Some(n) if n > 0 => first + n - 1,
            Some(_) => {
                return Err(GptError::Partition {
                    name: spec.name.clone(),
                    reason: "size 0".into(),
                });
            }
            None => last_usable,
        };
        if last > last_usable || first > last {
            return Err(GptError::Partition {
                name: spec.name.clone(),
                reason: format!(
                    "sectors {first}..={last} do not fit before sector {}",
                    last_usable + 1
                ),
            });
        }
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[..16].copy_from_slice(&spec.type_guid.0);
        e[16..32].copy_from_slice(&spec.unique_guid.0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        e[48..56].copy_from_slice(&spec.attributes.to_le_bytes());
        e[56..128].copy_from_slice(&name);
        partitions.push(Partition {
            type_guid: spec.type_guid,
            unique_guid: spec.unique_guid,
            first_lba: first,
            last_lba: last,
            attributes: spec.attributes,
            name: spec.name.clone(),
            number: i as u32 + 1,
        });
        next = last + 1;
    }
    let crc = crc32fast::hash(&entries);
    let last = sectors - 1;
    let primary = header(disk_guid, 1, last, first_usable, last_usable, 2, crc);
    let backup = header(
        disk_guid,
        last,
        1,
        first_usable,
        last_usable,
        backup_entries,
        crc,
    );
    let mut head = protective_mbr(sectors);
    head.extend_from_slice(&primary);
    head.extend_from_slice(&entries);
    let mut tail = entries;
    tail.extend_from_slice(&backup);
    Ok(Layout {
        partitions,
        writes: vec![(0, head), (backup_entries * SECTOR, tail)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sectors: u64, layout: &Layout) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        for (off, bytes) in &layout.writes {
            d[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
        }
        d
    }

    fn reader(d: &[u8]) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
        |off, len| Ok(d[off as usize..off as usize + len].to_vec())
    }

    fn state(size: Option<u64>) -> PartitionSpec {
        PartitionSpec {
            name: "STATE".into(),
            type_guid: LINUX_FILESYSTEM,
            unique_guid: Guid([7; 16]),
            size_sectors: size,
            attributes: 0,
        }
    }

    #[test]
    fn written_table_reads_back_from_either_copy() {
        let sectors = 64 * 2048; // 64 MiB
        let efi = PartitionSpec {
            name: "EFI".into(),
            size_sectors: Some(8 * 2048),
            ..state(None)
        };
        let l = layout(sectors, Guid([1; 16]), &[efi, state(None)]).unwrap();
        assert_eq!(l.partitions[0].first_lba, 2048);
        assert_eq!(l.partitions[1].first_lba, 2048 + 8 * 2048);
        assert_eq!(l.partitions[1].last_lba, sectors - 34);
        let mut d = disk(sectors, &l);
        assert_eq!(&d[510..512], &[0x55, 0xAA]);
        let gpt = read(sectors, &mut reader(&d)).unwrap().unwrap().unwrap();
        assert!(!gpt.from_backup);
        assert_eq!(gpt.partitions, l.partitions);
        assert_eq!(gpt.partition("STATE").unwrap().number, 2);
        assert_eq!(gpt.disk_guid, Guid([1; 16]));

        // A torn primary header: the backup answers.
        d[512 + 30] ^= 0xFF;
        let gpt = read(sectors, &mut reader(&d)).unwrap().unwrap().unwrap();
        assert!(gpt.from_backup);
        assert_eq!(gpt.partitions, l.partitions);

        // Both damaged: an error naming the first.
        let last = (sectors - 1) * SECTOR;
        d[last as usize + 30] ^= 0xFF;
        let err = read(sectors, &mut reader(&d)).unwrap().unwrap_err();
        assert!(err.to_string().contains("primary GPT header"), "{err}");
    }

    #[test]
    fn blank_disk_has_no_table_and_damaged_entries_are_named() {
        let sectors = 8 * 2048;
        let d = vec![0u8; (sectors * SECTOR) as usize];
        assert_eq!(read(sectors, &mut reader(&d)).unwrap().unwrap(), None);

        let l = layout(sectors, Guid([1; 16]), &[state(None)]).unwrap();
        let mut d = disk(sectors, &l);
        // Damage the entries of both copies.
        d[2 * 512 + 60] ^= 1;
        let backup = l.writes[1].0 as usize;
        d[backup + 60] ^= 1;
        let err = read(sectors, &mut reader(&d)).unwrap().unwrap_err();
        assert_eq!(err, GptError::EntriesChecksum { which: "primary" });
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        assert!(matches!(
            layout(100, Guid([1; 16]), &[state(None)]),
            Err(GptError::TooSmall { .. })
        ));
        let err = layout(8 * 2048, Guid([1; 16]), &[state(Some(100 * 2048))]).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let long = PartitionSpec {
            name: "x".repeat(37),
            ..state(None)
        };
        assert!(layout(8 * 2048, Guid([1; 16]), &[long]).is_err());
    }

    #[test]
    fn the_guid_type_is_mixed_endian_on_disk() {
        assert_eq!(
            LINUX_FILESYSTEM.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(&LINUX_FILESYSTEM.0[..4], &[0xAF, 0x3D, 0xC6, 0x0F]);
    }
}
