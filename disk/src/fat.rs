//! Just enough FAT to move one filesystem between a small image and a large partition.
//!
//! The ESP image is built once, with FAT tables sized for the whole ESP partition. The ISO
//! carries it cut down to the clusters its files use ([`shrink`]); an install writes those bytes
//! at the start of the ESP partition and gives the filesystem the partition's size back
//! ([`resize`]). Only the boot sector's size fields change: the FATs already cover every
//! cluster, and clusters past the old end are free (zero) in them.
//!
//! The FAT type follows from the cluster count (as the specification says and firmware decides),
//! so a resize must keep the count inside its type's range: that is why the ESP is FAT16 with
//! 4 KiB clusters, which holds from 16 MiB to 255 MiB.

use std::fmt;

/// The ESP partition's size on a Strake disk: two UKI slots, systemd-boot, and room to grow.
pub const ESP_BYTES: u64 = 240 << 20;

/// What goes wrong reading or resizing a FAT volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatError {
    /// The bytes are not a FAT boot sector this module understands.
    NotFat(&'static str),
    /// The requested size would change the FAT type or overrun the FATs.
    Size(String),
}

impl fmt::Display for FatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatError::NotFat(why) => write!(f, "not a FAT volume: {why}"),
            FatError::Size(why) => write!(f, "cannot resize the FAT volume: {why}"),
        }
    }
}

impl std::error::Error for FatError {}

/// The FAT types, by cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    fn of(clusters: u64) -> FatType {
        if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }
}

/// The geometry in a FAT boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    pub bytes_per_sector: u64,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub fats: u64,
    pub root_entries: u64,
    pub fat_sectors: u64,
    pub total_sectors: u64,
    /// Whether the FAT32 fields (FAT size, FSInfo) are in use.
    fat32_layout: bool,
    fsinfo_sector: u64,
    backup_sector: u64,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

impl Volume {
    /// Reads the boot sector (the first 512 bytes of the volume).
    pub fn parse(boot: &[u8]) -> Result<Volume, FatError> {
        let boot = boot
            .get(..512)
            .ok_or(FatError::NotFat("shorter than a sector"))?;
        if boot[510..512] != [0x55, 0xAA] {
            return Err(FatError::NotFat("no boot signature"));
        }
        let bytes_per_sector = u16_at(boot, 11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(FatError::NotFat("bad sector size"));
        }
        let sectors_per_cluster = u64::from(boot[13]);
        if !sectors_per_cluster.is_power_of_two() {
            return Err(FatError::NotFat("bad cluster size"));
        }
        let fat16_sectors = u16_at(boot, 22);
        let fat32_layout = fat16_sectors == 0;
        let total16 = u16_at(boot, 19);
        let v = Volume {
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors: u16_at(boot, 14),
            fats: u64::from(boot[16]),
            root_entries: u16_at(boot, 17),
            fat_sectors: if fat32_layout {
                u32_at(boot, 36)
            } else {
                fat16_sectors
            },
            total_sectors: if total16 != 0 {
                total16
            } else {
                u32_at(boot, 32)
            },
            fat32_layout,
            fsinfo_sector: if fat32_layout { u16_at(boot, 48) } else { 0 },
            backup_sector: if fat32_layout { u16_at(boot, 50) } else { 0 },
        };
        if v.reserved_sectors == 0 || v.fats == 0 || v.fat_sectors == 0 {
            return Err(FatError::NotFat("no reserved sectors or FATs"));
        }
        if v.data_start() >= v.total_sectors {
            return Err(FatError::NotFat("no data region"));
        }
        Ok(v)
    }

    /// The first sector of the data region (cluster 2).
    pub fn data_start(&self) -> u64 {
        let root_sectors = (self.root_entries * 32).div_ceil(self.bytes_per_sector);
        self.reserved_sectors + self.fats * self.fat_sectors + root_sectors
    }

    /// Data clusters in a volume of `total_sectors`.
    pub fn clusters(&self, total_sectors: u64) -> u64 {
        total_sectors.saturating_sub(self.data_start()) / self.sectors_per_cluster
    }

    pub fn fat_type(&self) -> FatType {
        FatType::of(self.clusters(self.total_sectors))
    }

    /// The number of clusters the FATs have entries for.
    fn fat_capacity(&self) -> u64 {
        let bits = match self.fat_type() {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        (self.fat_sectors * self.bytes_per_sector * 8 / bits).saturating_sub(2)
    }

    /// The byte range of the first FAT.
    pub fn fat_range(&self) -> std::ops::Range<usize> {
        let start = self.reserved_sectors * self.bytes_per_sector;
        (start as usize)..((start + self.fat_sectors * self.bytes_per_sector) as usize)
    }

    /// The highest cluster the FAT marks as used (1 when none is), from the first FAT's bytes.
    pub fn highest_used_cluster(&self, fat: &[u8]) -> u64 {
        let entry = |n: u64| -> u64 {
            match self.fat_type() {
                FatType::Fat32 => u32_at(fat, (n * 4) as usize) & 0x0FFF_FFFF,
                FatType::Fat16 => u16_at(fat, (n * 2) as usize),
                FatType::Fat12 => {
                    let at = (n * 3 / 2) as usize;
                    let pair = u16_at(fat, at);
                    if n.is_multiple_of(2) {
                        pair & 0xFFF
                    } else {
                        pair >> 4
                    }
                }
            }
        };
        let last = (self.clusters(self.total_sectors) + 1).min(self.fat_capacity() + 1);
        (2..=last).rev().find(|&n| entry(n) != 0).unwrap_or(1)
    }

    /// The sector just past cluster `n`.
    pub fn end_of_cluster(&self, n: u64) -> u64 {
        self.data_start() + (n.max(1) - 1) * self.sectors_per_cluster
    }

    /// The smallest size that keeps this volume's type; it holds cluster `used` too.
    pub fn min_sectors(&self, used: u64) -> u64 {
        let min_clusters = match self.fat_type() {
            FatType::Fat12 => 1,
            FatType::Fat16 => 4085,
            FatType::Fat32 => 65525,
        };
        self.end_of_cluster(used)
            .max(self.data_start() + min_clusters * self.sectors_per_cluster)
    }

    /// The largest size that keeps this volume's type and stays inside its FATs.
    pub fn max_sectors(&self) -> u64 {
        let type_max = match self.fat_type() {
            FatType::Fat12 => 4084,
            FatType::Fat16 => 65524,
            FatType::Fat32 => 0x0FFF_FFF5,
        };
        let clusters = self.fat_capacity().min(type_max);
        (self.data_start() + clusters * self.sectors_per_cluster).min(u64::from(u32::MAX))
    }
}

/// The writes (byte offset in the volume, bytes) that make the volume `total_sectors` long,
/// given its reserved region (boot sector onward; on FAT32 through the backup boot sector and
/// its FSInfo). Refuses a size that would change the FAT type or outgrow the FATs.
pub fn resize(reserved: &[u8], total_sectors: u64) -> Result<Vec<(u64, Vec<u8>)>, FatError> {
    let v = Volume::parse(reserved)?;
    let (min, max) = (v.min_sectors(1), v.max_sectors());
    if total_sectors < min || total_sectors > max {
        return Err(FatError::Size(format!(
            "{total_sectors} sectors is outside {min}..={max}, the sizes a {:?} volume with these FATs may have",
            v.fat_type()
        )));
    }
    let bps = v.bytes_per_sector;
    let sector = |n: u64| -> Result<Vec<u8>, FatError> {
        reserved
            .get((n * bps) as usize..((n + 1) * bps) as usize)
            .map(<[u8]>::to_vec)
            .ok_or(FatError::NotFat("the reserved region is cut short"))
    };
    let set_size = |mut boot: Vec<u8>| {
        boot[19..21].copy_from_slice(&0u16.to_le_bytes());
        boot[32..36].copy_from_slice(&(total_sectors as u32).to_le_bytes());
        boot
    };
    let mut writes = vec![(0, set_size(sector(0)?))];
    if v.fat32_layout {
        // The free count the FSInfo caches is no longer right: mark it unknown.
        let mut fsinfos = vec![v.fsinfo_sector];
        if v.backup_sector != 0 {
            writes.push((v.backup_sector * bps, set_size(sector(v.backup_sector)?)));
            fsinfos.push(v.backup_sector + v.fsinfo_sector);
        }
        for n in fsinfos {
            let mut info = sector(n)?;
            if info[..4] == *b"RRaA" {
                info[488..492].copy_from_slice(&u32::MAX.to_le_bytes());
                writes.push((n * bps, info));
            }
        }
    }
    Ok(writes)
}

/// The volume in `image` cut down to the clusters its files use (rounded up to `align` bytes,
/// and no smaller than its FAT type allows), with its boot sector saying so.
pub fn shrink(image: &[u8], align: u64) -> Result<Vec<u8>, FatError> {
    let v = Volume::parse(image)?;
    let fat = image
        .get(v.fat_range())
        .ok_or(FatError::NotFat("the image is cut short"))?;
    let used = v.highest_used_cluster(fat);
    let bps = v.bytes_per_sector;
    let align_sectors = (align / bps).max(1);
    let want = v.min_sectors(used).div_ceil(align_sectors) * align_sectors;
    let total = want.min(v.total_sectors);
    let mut out = image
        .get(..(total * bps) as usize)
        .ok_or(FatError::NotFat(
            "the image is shorter than its boot sector says",
        ))?
        .to_vec();
    for (at, bytes) in resize(&out, total)? {
        out[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 volume of `total` 512-byte sectors, 8 sectors a cluster, FATs of `fat_sectors`,
    /// with clusters 2..=`used` in one chain.
    fn fat16(total: u64, fat_sectors: u64, used: u64) -> Vec<u8> {
        let mut img = vec![0u8; (total * 512) as usize];
        img[11..13].copy_from_slice(&512u16.to_le_bytes());
        img[13] = 8;
        img[14..16].copy_from_slice(&4u16.to_le_bytes());
        img[16] = 2;
        img[17..19].copy_from_slice(&512u16.to_le_bytes());
        img[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
        img[32..36].copy_from_slice(&(total as u32).to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xAA;
        let fat = 4 * 512;
        img[fat..fat + 4].copy_from_slice(&[0xF8, 0xFF, 0xFF, 0xFF]);
        for n in 2..=used {
            let next: u16 = if n == used { 0xFFFF } else { n as u16 + 1 };
            let at = fat + (n as usize) * 2;
            img[at..at + 2].copy_from_slice(&next.to_le_bytes());
        }
        img
    }

    #[test]
    fn a_fat16_volume_is_read_and_typed_by_its_cluster_count() {
        // 240 MiB: 491520 sectors, FATs for 61440 clusters (240 sectors each).
        let img = fat16(491_520, 240, 10);
        let v = Volume::parse(&img).unwrap();
        assert_eq!(v.fat_type(), FatType::Fat16);
        assert_eq!(v.data_start(), 4 + 480 + 32);
        assert_eq!(v.highest_used_cluster(&img[v.fat_range()]), 10);
        assert_eq!(v.end_of_cluster(10), 516 + 8 * 9);
    }

    #[test]
    fn shrinking_keeps_the_files_and_the_type_and_resizing_gives_the_size_back() {
        let img = fat16(491_520, 240, 5000);
        let small = shrink(&img, 1 << 20).unwrap();
        assert_eq!(small.len() % (1 << 20), 0);
        let v = Volume::parse(&small).unwrap();
        assert_eq!(v.fat_type(), FatType::Fat16);
        assert!(v.total_sectors >= v.end_of_cluster(5000));
        assert!(v.total_sectors < 491_520);
        assert_eq!(small[..v.fat_range().end], {
            let mut head = img[..v.fat_range().end].to_vec();
            head[32..36].copy_from_slice(&(v.total_sectors as u32).to_le_bytes());
            head
        });
        // Few used clusters: still no smaller than FAT16's minimum cluster count.
        let tiny = shrink(&fat16(491_520, 240, 3), 512).unwrap();
        let t = Volume::parse(&tiny).unwrap();
        assert_eq!(t.fat_type(), FatType::Fat16);
        assert_eq!(t.clusters(t.total_sectors), 4085);

        let mut grown = small.clone();
        grown.resize(491_520 * 512, 0);
        for (at, bytes) in resize(&small[..16 << 10], 491_520).unwrap() {
            grown[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        assert_eq!(grown, img);
    }

    #[test]
    fn a_size_that_changes_the_type_or_outgrows_the_fats_is_refused() {
        let img = fat16(491_520, 240, 10);
        let v = Volume::parse(&img).unwrap();
        // Too few clusters for FAT16: firmware would read it as FAT12.
        let err = resize(&img[..4096], v.data_start() + 4084 * 8).unwrap_err();
        assert!(matches!(err, FatError::Size(_)), "{err}");
        // More clusters than the FATs have entries for.
        let err = resize(&img[..4096], v.data_start() + 61_440 * 8).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(resize(&img[..4096], v.data_start() + 61_438 * 8).is_ok());
    }

    #[test]
    fn bytes_that_are_not_fat_are_refused() {
        assert!(Volume::parse(&[0u8; 512]).is_err());
        assert!(Volume::parse(&[0u8; 100]).is_err());
        let mut img = fat16(491_520, 240, 10);
        img[13] = 3;
        assert!(Volume::parse(&img).is_err());
    }
}
