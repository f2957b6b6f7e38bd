//! The STATE partition: found by its GPT label, created on a blank disk that `strake.disk=`
//! hands to Strake, formatted from the ext4 template the image carries (then grown online to the
//! partition's size), and mounted at `/var/lib/strake`, with `/var/log` kept on it too. Without a
//! STATE partition the node runs as before, everything on tmpfs, and says so.
//!
//! Nothing is ever formatted that Strake did not lay out: a disk is partitioned only when it is
//! named and blank, and a partition is formatted only when it is labelled STATE, on the named
//! disk, and empty. Everything else is refused with the reason, and the disk is left alone.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::Serialize;
use strake_disk::gpt::{self, GptError, PartitionSpec};
use strake_disk::{Guid, sparse};

use crate::mounts::host_path;
use crate::sys::{BlockOps, MountSpec, Mounter};

/// The GPT name of the partition.
pub const LABEL: &str = "STATE";
/// Where it is mounted.
pub const MOUNT_POINT: &str = "/var/lib/strake";
/// The directory on STATE that is bind-mounted on `/var/log`.
const LOG_DIR: &str = "/var/lib/strake/log";
/// The ext4 template the image builder put in the initramfs.
pub const TEMPLATE: &str = "/usr/lib/strake/state.ext4.sparse";
/// What this boot found and did, as JSON, for the services and for people.
pub const STATUS_PATH: &str = "/run/strake/state.json";
/// Written by machined for `strakectl reset`: the next boot wipes STATE before using it.
pub const RESET_MARKER: &str = "/var/lib/strake/.reset";
/// Bytes at each end of a disk, and at the start of a partition, that must be zero for it to
/// count as blank (every partition table and filesystem Strake knows of writes there).
const BLANK_PROBE: u64 = 1 << 20;
/// How long a disk named by `strake.disk=` may take to appear, and a new partition after the
/// kernel rereads the table.
const DISK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("disk {disk} (strake.disk=) did not appear within {} s", DISK_WAIT.as_secs())]
    NoDisk { disk: String },
    #[error("/dev/{device}: {source}")]
    Io {
        device: String,
        source: std::io::Error,
    },
    #[error("/dev/{device}: {reason}; leaving it untouched")]
    Refused { device: String, reason: String },
    #[error("/dev/{device}: {source}")]
    Gpt { device: String, source: GptError },
    #[error(
        "several partitions are labelled {LABEL} ({0}); keep one, or name the disk to use with strake.disk="
    )]
    Ambiguous(String),
    #[error("no disk matches machine.install.diskSelector; disks seen: {0}")]
    NoMatch(String),
    #[error("the STATE template {TEMPLATE}: {0}")]
    Template(String),
    #[error("{op} /dev/{device}: {errno}")]
    Kernel {
        op: &'static str,
        device: String,
        errno: Errno,
    },
    #[error("mounting /dev/{device} on {target}: {errno}")]
    Mount {
        device: String,
        target: String,
        errno: Errno,
    },
}

/// A partition as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDev {
    pub name: String,
    pub number: u32,
    pub label: Option<String>,
    pub sectors: u64,
}

/// A whole disk and its partitions, as sysfs describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    pub sectors: u64,
    pub partitions: Vec<PartDev>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn uevent_value(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The disks under `/sys/class/block` (not loop, RAM or optical devices), sorted by name.
pub fn scan(root: &Path) -> Vec<BlockDev> {
    let class = host_path(root, "/sys/class/block");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut disks = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = class.join(&name);
        if dir.join("partition").exists()
            || ["loop", "ram", "zram", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
        {
            continue;
        }
        let sectors = read_trimmed(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let mut partitions = Vec::new();
        for c in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let pdir = c.path();
            let Some(number) = read_trimmed(&pdir.join("partition")).and_then(|s| s.parse().ok())
            else {
                continue;
            };
            partitions.push(PartDev {
                name: c.file_name().to_string_lossy().into_owned(),
                number,
                label: uevent_value(&pdir, "PARTNAME"),
                sectors: read_trimmed(&pdir.join("size"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            });
        }
        partitions.sort_by_key(|p| p.number);
        disks.push(BlockDev {
            name,
            sectors,
            partitions,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// Size, model, serial and WWN of a disk, as sysfs reports them.
pub fn facts(root: &Path, disk: &BlockDev) -> strake_machineconfig::DiskFacts {
    let dir = host_path(root, &format!("/sys/class/block/{}", disk.name));
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| read_trimmed(&dir.join(n)).filter(|v| !v.is_empty()))
    };
    strake_machineconfig::DiskFacts {
        name: disk.name.clone(),
        bytes: disk.sectors * gpt::SECTOR,
        model: first(&["device/model"]),
        serial: first(&["serial", "device/serial"]),
        wwn: first(&["wwid", "device/wwid"]),
    }
}

/// The disk `selector` picks (the first match by name), waiting for disks still being probed.
pub fn select_disk(
    root: &Path,
    selector: &strake_machineconfig::DiskSelector,
) -> Result<String, StateError> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let all: Vec<_> = scan(root).iter().map(|d| facts(root, d)).collect();
        if let Some(d) = selector.select(&all) {
            tracing::info!(target: "strake_init::state", "install disk {} (machine.install.diskSelector)", d.describe());
            return Ok(d.name.clone());
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = all.iter().map(|d| d.describe()).collect();
            return Err(StateError::NoMatch(if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a partition holds, from its first mebibyte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// An ext4 (or ext2/3) filesystem of this many blocks of this size.
    Ext4 { blocks: u64, block_size: u64 },
    /// Nothing: all zeros.
    Empty,
    /// Something else.
    Other,
}

/// Reads an ext superblock's size, or says the bytes are empty or something else.
pub fn contents(head: &[u8]) -> Contents {
    if head.len() >= 2048 && head[0x438..0x43A] == [0x53, 0xEF] {
        let sb = &head[1024..2048];
        let u32_at = |at| strake_disk::le_u32(sb, at);
        let log = u32_at(0x18);
        let mut blocks = u64::from(u32_at(0x04));
        // INCOMPAT_64BIT: the high half of the block count.
        if u32_at(0x60) & 0x80 != 0 {
            blocks |= u64::from(u32_at(0x150)) << 32;
        }
        return Contents::Ext4 {
            blocks,
            block_size: 1024u64 << log.min(6),
        };
    }
    if strake_disk::is_zero(head) {
        Contents::Empty
    } else {
        Contents::Other
    }
}

/// What to do, decided from what is on the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No STATE anywhere and no disk named: everything stays on tmpfs.
    Ephemeral,
    /// Partition the named blank disk, then format its STATE partition.
    Install { disk: String, sectors: u64 },
    /// Use this STATE partition, formatting it first if it is empty.
    Use {
        partition: String,
        sectors: u64,
        contents: Contents,
    },
}

/// Decides from the disks, the disk named by `strake.disk=` (if any) and two probes: what a
/// partition holds, and whether a whole disk is blank.
pub fn plan(
    disks: &[BlockDev],
    wanted: Option<&str>,
    probe: &mut dyn FnMut(&str) -> Result<Contents, StateError>,
    blank: &mut dyn FnMut(&str) -> Result<bool, StateError>,
) -> Result<Plan, StateError> {
    let labelled = |d: &BlockDev| {
        d.partitions
            .iter()
            .filter(|p| p.label.as_deref() == Some(LABEL))
            .cloned()
            .collect::<Vec<_>>()
    };
    let refuse = |device: &str, reason: String| StateError::Refused {
        device: device.into(),
        reason,
    };
    let (candidates, owned) = match wanted {
        Some(name) => {
            let Some(disk) = disks.iter().find(|d| d.name == name) else {
                return Err(StateError::NoDisk { disk: name.into() });
            };
            let found = labelled(disk);
            if found.is_empty() {
                if !disk.partitions.is_empty() {
                    let names: Vec<&str> =
                        disk.partitions.iter().map(|p| p.name.as_str()).collect();
                    return Err(refuse(
                        name,
                        format!(
                            "it has partitions ({}) but none is labelled {LABEL}: it holds data Strake did not write",
                            names.join(", ")
                        ),
                    ));
                }
                if !blank(name)? {
                    return Err(refuse(
                        name,
                        "it is not blank (it holds data Strake did not write)".into(),
                    ));
                }
                return Ok(Plan::Install {
                    disk: name.into(),
                    sectors: disk.sectors,
                });
            }
            (found, true)
        }
        None => (disks.iter().flat_map(labelled).collect(), false),
    };
    match candidates.as_slice() {
        [] => Ok(Plan::Ephemeral),
        [p] => {
            let contents = probe(&p.name)?;
            match contents {
                Contents::Ext4 { .. } => {}
                Contents::Empty if owned => {}
                Contents::Empty => {
                    return Err(refuse(
                        &p.name,
                        format!(
                            "the {LABEL} partition has no filesystem; name its disk with strake.disk= to let Strake format it"
                        ),
                    ));
                }
                Contents::Other => {
                    return Err(refuse(
                        &p.name,
                        format!("the {LABEL} partition holds something that is not ext4"),
                    ));
                }
            }
            Ok(Plan::Use {
                partition: p.name.clone(),
                sectors: p.sectors,
                contents,
            })
        }
        many => Err(StateError::Ambiguous(
            many.iter()
                .map(|p| format!("/dev/{}", p.name))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// What this boot did, written to [`STATUS_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `None` when the node runs without STATE (everything on tmpfs).
    pub device: Option<String>,
    pub bytes: u64,
    pub partitioned: bool,
    pub formatted: bool,
    /// Filesystem blocks before an online grow on this boot.
    pub grown_from_blocks: Option<u64>,
    /// Emptied on this boot, as a reset asked.
    #[serde(default)]
    pub wiped: bool,
    /// The ESP this boot installed from the boot medium (systemd-boot and slot A), if any.
    #[serde(default)]
    pub esp: Option<String>,
}

fn io(device: &str) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        device: device.into(),
        source,
    }
}

fn open(root: &Path, device: &str, write: bool) -> Result<File, StateError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(host_path(root, &format!("/dev/{device}")))
        .map_err(io(device))
}

fn read_at(file: &File, device: &str, offset: u64, len: usize) -> Result<Vec<u8>, StateError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(io(device))?;
    Ok(buf)
}

fn random_guid() -> Guid {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    Guid::random_v4(b)
}

/// Finds, creates or formats STATE as [`plan`] decides, and mounts it. Returns what it did.
/// Finds, makes or reuses STATE and mounts it. `medium` is the ISO the machine booted from (a
/// device name, see [`crate::media`]): a blank disk being installed then also gets an ESP with
/// systemd-boot and slot A copied from it, and boots by itself from then on.
pub fn prepare(
    root: &Path,
    wanted: Option<&str>,
    medium: Option<&str>,
    mounter: &mut dyn Mounter,
    block: &mut dyn BlockOps,
) -> Result<Status, StateError> {
    let mut disks = scan(root);
    if let Some(name) = wanted {
        let deadline = Instant::now() + DISK_WAIT;
        while !disks.iter().any(|d| d.name == name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            disks = scan(root);
        }
    }
    let mut probe = |device: &str| {
        let f = open(root, device, false)?;
        let len = f.metadata().map_err(io(device))?.len();
        let len = if len == 0 {
            // A block device's file length is 0; seek to learn its size.
            (&f).seek(SeekFrom::End(0)).map_err(io(device))?
        } else {
            len
        };
        Ok(contents(&read_at(
            &f,
            device,
            0,
            BLANK_PROBE.min(len) as usize,
        )?))
    };
    let mut blank = |device: &str| {
        let f = open(root, device, false)?;
        let len = (&f).seek(SeekFrom::End(0)).map_err(io(device))?;
        let n = BLANK_PROBE.min(len);
        Ok(strake_disk::is_zero(&read_at(&f, device, 0, n as usize)?)
            && strake_disk::is_zero(&read_at(&f, device, len - n, n as usize)?))
    };
    let mut status = Status {
        device: None,
        bytes: 0,
        partitioned: false,
        formatted: false,
        grown_from_blocks: None,
        wiped: false,
        esp: None,
    };
    let (partition, sectors, contents) = match plan(&disks, wanted, &mut probe, &mut blank)? {
        Plan::Ephemeral => return Ok(status),
        Plan::Install { disk, sectors } => {
            let parts = partition_disk(root, &disk, sectors, medium.is_some(), block)?;
            status.partitioned = true;
            let state = parts.last().cloned().expect("STATE is the last partition");
            if let (Some(medium), [esp, _]) = (medium, parts.as_slice()) {
                crate::media::install_esp(root, medium, &esp.name, esp.sectors, mounter).map_err(
                    |reason| StateError::Refused {
                        device: disk.clone(),
                        reason,
                    },
                )?;
                status.esp = Some(format!("/dev/{}", esp.name));
            }
            (state.name, state.sectors, Contents::Empty)
        }
        Plan::Use {
            partition,
            sectors,
            contents,
        } => (partition, sectors, contents),
    };
    let bytes = sectors * gpt::SECTOR;
    status.device = Some(format!("/dev/{partition}"));
    status.bytes = bytes;
    let (blocks, block_size) = match contents {
        Contents::Ext4 { blocks, block_size } => (blocks, block_size),
        _ => {
            let blocks = format(root, &partition, bytes, block)?;
            status.formatted = true;
            (blocks, 4096)
        }
    };
    std::fs::create_dir_all(host_path(root, MOUNT_POINT)).map_err(io(&partition))?;
    mounter
        .mount(&MountSpec::new(
            &format!("/dev/{partition}"),
            MOUNT_POINT,
            "ext4",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        ))
        .map_err(|errno| StateError::Mount {
            device: partition.clone(),
            target: MOUNT_POINT.into(),
            errno,
        })?;
    let target = bytes / block_size;
    if target > blocks {
        match block.grow_ext4(&host_path(root, MOUNT_POINT), target) {
            Ok(()) => status.grown_from_blocks = Some(blocks),
            // The filesystem works at its old size; say so and go on.
            Err(errno) => tracing::warn!(
                target: "strake_init::state",
                "growing the filesystem on /dev/{partition} from {blocks} to {target} blocks: {errno}; it keeps its size"
            ),
        }
    }
    if host_path(root, RESET_MARKER).exists() {
        wipe(root).map_err(io(&partition))?;
        status.wiped = true;
        tracing::warn!(target: "strake_init::state", "{LABEL} on /dev/{partition} wiped, as `strakectl reset` asked: the node starts over");
    }
    let logs = host_path(root, LOG_DIR);
    std::fs::create_dir_all(&logs).map_err(io(&partition))?;
    std::fs::create_dir_all(host_path(root, "/var/log")).map_err(io(&partition))?;
    mounter
        .mount(&MountSpec::new(
            LOG_DIR,
            "/var/log",
            "none",
            MsFlags::MS_BIND,
            None,
        ))
        .map_err(|errno| StateError::Mount {
            device: partition.clone(),
            target: "/var/log".into(),
            errno,
        })?;
    Ok(status)
}

/// Removes everything on STATE (the marker last), keeping the filesystem.
fn wipe(root: &Path) -> std::io::Result<()> {
    let dir = host_path(root, MOUNT_POINT);
    let marker = host_path(root, RESET_MARKER);
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path == marker || path.file_name().is_some_and(|n| n == "lost+found") {
            continue;
        }
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_file(&marker)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Writes a GPT over the whole blank disk: an ESP of [`strake_disk::fat::ESP_BYTES`] first
/// when `with_esp`, then STATE filling the rest. Waits for the kernel to show the partitions
/// and returns them in order.
fn partition_disk(
    root: &Path,
    disk: &str,
    sectors: u64,
    with_esp: bool,
    block: &mut dyn BlockOps,
) -> Result<Vec<PartDev>, StateError> {
    let mut specs = Vec::new();
    if with_esp {
        specs.push(PartitionSpec {
            name: "ESP".into(),
            type_guid: gpt::EFI_SYSTEM,
            unique_guid: random_guid(),
            size_sectors: Some(strake_disk::fat::ESP_BYTES / gpt::SECTOR),
            attributes: 0,
        });
    }
    specs.push(PartitionSpec {
        name: LABEL.into(),
        type_guid: gpt::LINUX_FILESYSTEM,
        unique_guid: random_guid(),
        size_sectors: None,
        attributes: 0,
    });
    let layout = gpt::layout(sectors, random_guid(), &specs).map_err(|source| StateError::Gpt {
        device: disk.into(),
        source,
    })?;
    let mut f = open(root, disk, true)?;
    for (offset, bytes) in &layout.writes {
        f.seek(SeekFrom::Start(*offset)).map_err(io(disk))?;
        f.write_all(bytes).map_err(io(disk))?;
    }
    f.sync_all().map_err(io(disk))?;
    block
        .reread_partitions(&f)
        .map_err(|errno| StateError::Kernel {
            op: "rereading the partition table of",
            device: disk.into(),
            errno,
        })?;
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(target: "strake_init::state", "wrote a GPT with {} on /dev/{disk}", names.join(" and "));
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let shown: Vec<PartDev> = scan(root)
            .into_iter()
            .find(|d| d.name == disk)
            .map(|d| d.partitions)
            .unwrap_or_default();
        let found: Vec<PartDev> = (1..=specs.len() as u32)
            .filter_map(|n| shown.iter().find(|p| p.number == n).cloned())
            .filter(|p| host_path(root, &format!("/dev/{}", p.name)).exists())
            .collect();
        if found.len() == specs.len() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(StateError::Refused {
                device: disk.into(),
                reason: "the kernel did not show the new partitions".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes the ext4 template onto the (empty) partition. Returns the filesystem's size in blocks.
fn format(
    root: &Path,
    partition: &str,
    bytes: u64,
    block: &mut dyn BlockOps,
) -> Result<u64, StateError> {
    let path = host_path(root, TEMPLATE);
    let raw = std::fs::read(&path).map_err(|e| StateError::Template(e.to_string()))?;
    let image = sparse::decode(&raw).map_err(|e| StateError::Template(e.to_string()))?;
    if image.block_size != 4096 {
        return Err(StateError::Template(format!(
            "block size {} (expected 4096)",
            image.block_size
        )));
    }
    if image.len > bytes {
        return Err(StateError::Refused {
            device: partition.into(),
            reason: format!(
                "the partition is {} MiB; STATE needs at least {} MiB",
                bytes >> 20,
                image.len >> 20
            ),
        });
    }
    let mut f = open(root, partition, true)?;
    block
        .zero_range(&f, 0, image.len)
        .map_err(|errno| StateError::Kernel {
            op: "zeroing",
            device: partition.into(),
            errno,
        })?;
    for (offset, data) in &image.blocks {
        f.seek(SeekFrom::Start(*offset)).map_err(io(partition))?;
        f.write_all(data).map_err(io(partition))?;
    }
    f.sync_all().map_err(io(partition))?;
    tracing::info!(target: "strake_init::state", "formatted /dev/{partition} as ext4");
    Ok(image.len / 4096)
}

/// Writes [`STATUS_PATH`] and says on the console what this boot has for state.
pub fn publish(root: &Path, status: &Status) -> std::io::Result<()> {
    match &status.device {
        None => tracing::warn!(
            target: "strake_init::state",
            "no {LABEL} partition: {MOUNT_POINT} is on tmpfs and everything (the store, the PKI, images) is lost at reboot; boot with a disk and strake.disk= to keep it"
        ),
        Some(dev) => tracing::info!(
            target: "strake_init::state",
            "{LABEL} is {dev} ({} MiB{}{}), mounted on {MOUNT_POINT}",
            status.bytes >> 20,
            if status.formatted { ", formatted on this boot" } else { "" },
            if status.grown_from_blocks.is_some() { ", grown to fill its partition" } else { "" },
        ),
    }
    let path: PathBuf = host_path(root, STATUS_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(path, json)
}

#[cfg(test)]
#[path = "state_tests.rs"]
pub(crate) mod tests;
