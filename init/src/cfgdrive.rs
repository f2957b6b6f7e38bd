//! The config drive: a FAT or ISO 9660 volume labelled `STRAKECFG` (as cloud-init's `cidata`
//! volumes are) that carries the machine config as `machine.yaml` (or `user-data`). Init finds it
//! by reading each block device's label from its first sectors, mounts it read-only just long
//! enough to read the file, and unmounts it.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use nix::mount::MsFlags;

use crate::mounts::host_path;
use crate::sys::{MountSpec, Mounter};

pub const LABEL: &str = "STRAKECFG";
/// Where the drive is mounted while init reads it.
pub const MOUNT_AT: &str = "/run/strake/cfgdrive";
/// The files looked for, in order.
pub const FILES: [&str; 2] = ["machine.yaml", "user-data"];
/// Enough of a volume to see both a FAT boot sector and the ISO 9660 primary volume descriptor.
const HEAD: usize = 0x8800;
const MAX_BYTES: u64 = 1 << 20;

/// A filesystem a config drive may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Vfat,
    Iso9660,
}

impl Fs {
    pub fn fstype(self) -> &'static str {
        match self {
            Fs::Vfat => "vfat",
            Fs::Iso9660 => "iso9660",
        }
    }

    /// The modules mounting it needs (there is no modprobe to load them on demand); those
    /// built into the kernel are skipped by the loader.
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Fs::Vfat => &["vfat", "nls_cp437", "nls_ascii"],
            Fs::Iso9660 => &["isofs"],
        }
    }
}

/// The filesystem and label of a volume, from its first [`HEAD`] bytes.
pub fn label(head: &[u8]) -> Option<(Fs, String)> {
    iso9660_label(head)
        .map(|l| (Fs::Iso9660, l))
        .or_else(|| fat_label(head).map(|l| (Fs::Vfat, l)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn iso9660_label(head: &[u8]) -> Option<String> {
    let pvd = head.get(0x8000..0x8000 + 0x48)?;
    (pvd[0] == 1 && &pvd[1..6] == b"CD001").then(|| text(&pvd[0x28..0x48]))
}

fn fat_label(head: &[u8]) -> Option<String> {
    let boot = head.get(..512)?;
    if boot[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([boot[11], boot[12]]);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) || boot[13] == 0 {
        return None;
    }
    let sectors_per_fat16 = u16::from_le_bytes([boot[22], boot[23]]);
    // The extended boot record, where the label is: after the FAT32 fields, or right after
    // the common BPB for FAT12/16.
    let (signature, label_at, kind_at) = if sectors_per_fat16 == 0 {
        (66, 71, 82)
    } else {
        (38, 43, 54)
    };
    if boot[signature] != 0x29 || !boot[kind_at..kind_at + 3].eq_ignore_ascii_case(b"FAT") {
        return None;
    }
    Some(text(&boot[label_at..label_at + 11]))
}

/// The first block device whose label is [`LABEL`], by name (`vdb`, `sr0`), with its filesystem.
pub fn find(root: &Path) -> Option<(String, Fs)> {
    find_labelled(root, LABEL)
}

/// The first block device whose filesystem label is `wanted` (case aside), by name.
pub fn find_labelled(root: &Path, wanted: &str) -> Option<(String, Fs)> {
    let mut names: Vec<String> = std::fs::read_dir(host_path(root, "/sys/class/block"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let mut head = vec![0u8; HEAD];
        let mut f = File::open(host_path(root, &format!("/dev/{name}"))).ok()?;
        let mut filled = 0;
        while filled < HEAD {
            match f.read(&mut head[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        head.truncate(filled);
        let (fs, l) = label(&head)?;
        l.eq_ignore_ascii_case(wanted).then_some((name, fs))
    })
}

/// The machine config on the config drive `name` (found by [`find`], its [`Fs::modules`]
/// loaded): an error when it cannot be read.
pub fn read(root: &Path, mounter: &mut dyn Mounter, name: &str, fs: Fs) -> Result<String, String> {
    let device = format!("/dev/{name}");
    let device = device.as_str();
    let dir = host_path(root, MOUNT_AT);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {MOUNT_AT}: {e}"))?;
    mounter
        .mount(&MountSpec {
            source: device.into(),
            target: MOUNT_AT.into(),
            fstype: fs.fstype().into(),
            flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: None,
        })
        .map_err(|e| format!("mounting the config drive {device} ({}): {e}", fs.fstype()))?;
    let found = FILES.iter().find_map(|f| {
        let path = dir.join(f);
        path.exists().then(|| (f, read_limited(&path)))
    });
    if let Err(e) = mounter.umount_lazy(MOUNT_AT) {
        tracing::warn!(target: "strake_init::machine", "unmounting the config drive: {e}");
    }
    match found {
        Some((_, Ok(text))) => Ok(text),
        Some((f, Err(e))) => Err(format!("reading {f} on the config drive {device}: {e}")),
        None => Err(format!(
            "the config drive {device} has neither {}",
            FILES.join(" nor ")
        )),
    }
}

fn read_limited(path: &Path) -> Result<String, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake::FakeKernel;

    /// A FAT16 boot sector labelled `label`, as mkfs.fat writes it.
    pub(crate) fn fat16(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; HEAD];
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[22..24].copy_from_slice(&32u16.to_le_bytes());
        b[38] = 0x29;
        let mut l = format!("{label:<11}").into_bytes();
        l.truncate(11);
        b[43..54].copy_from_slice(&l);
        b[54..62].copy_from_slice(b"FAT16   ");
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    fn iso(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; HEAD];
        b[0x8000] = 1;
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        b[0x8006] = 1;
        let l = format!("{label:<32}");
        b[0x8028..0x8048].copy_from_slice(l.as_bytes());
        b
    }

    #[test]
    fn labels_are_read_from_fat_and_iso9660() {
        assert_eq!(
            label(&fat16("STRAKECFG")),
            Some((Fs::Vfat, "STRAKECFG".into()))
        );
        let mut fat32 = vec![0u8; 512];
        fat32[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat32[13] = 8;
        fat32[66] = 0x29;
        fat32[71..82].copy_from_slice(b"cidata     ");
        fat32[82..90].copy_from_slice(b"FAT32   ");
        fat32[510..].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(label(&fat32), Some((Fs::Vfat, "cidata".into())));
        assert_eq!(
            label(&iso("STRAKECFG")),
            Some((Fs::Iso9660, "STRAKECFG".into()))
        );
        // Not a filesystem, or cut short: no label, no panic.
        assert_eq!(label(&[0u8; 4096]), None);
        assert_eq!(label(&[]), None);
        let mut ext4ish = vec![0u8; HEAD];
        ext4ish[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(label(&ext4ish), None);
    }

    fn drive_root(devices: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in devices {
            std::fs::create_dir_all(dir.path().join("sys/class/block").join(name)).unwrap();
            std::fs::create_dir_all(dir.path().join("dev")).unwrap();
            std::fs::write(dir.path().join("dev").join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn the_drive_is_found_by_label_mounted_read_only_and_read() {
        let dir = drive_root(&[
            ("vda", vec![0u8; HEAD]),
            ("vdb", fat16("OTHER")),
            ("vdc", fat16("strakecfg")),
        ]);
        let root = dir.path();
        assert_eq!(find(root), Some(("vdc".into(), Fs::Vfat)));
        // The fake does not mount: the file sits where the mount would show it.
        let mounted = root.join(MOUNT_AT.trim_start_matches('/'));
        std::fs::create_dir_all(&mounted).unwrap();
        std::fs::write(mounted.join("user-data"), "from user-data").unwrap();
        let fake = FakeKernel::default();
        let got = read(root, &mut fake.clone(), "vdc", Fs::Vfat);
        assert_eq!(got.as_deref(), Ok("from user-data"));
        std::fs::write(mounted.join("machine.yaml"), "preferred").unwrap();
        let got = read(root, &mut fake.clone(), "vdc", Fs::Vfat);
        assert_eq!(got.as_deref(), Ok("preferred"));
        let st = fake.state();
        let m = &st.mounts[0];
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.fstype.as_str()),
            ("/dev/vdc", MOUNT_AT, "vfat")
        );
        assert!(m.flags.contains(MsFlags::MS_RDONLY));
        assert!(
            st.calls
                .iter()
                .any(|c| c.contains("umount") && c.contains(MOUNT_AT)),
            "{:?}",
            st.calls
        );
    }

    #[test]
    fn a_drive_without_a_config_or_with_a_bad_one_is_an_error() {
        let dir = drive_root(&[("sr0", iso("STRAKECFG"))]);
        let root = dir.path();
        assert_eq!(find(root), Some(("sr0".into(), Fs::Iso9660)));
        let err = read(root, &mut FakeKernel::default(), "sr0", Fs::Iso9660).unwrap_err();
        assert!(
            err.contains("has neither machine.yaml nor user-data"),
            "{err}"
        );
        let mounted = root.join(MOUNT_AT.trim_start_matches('/'));
        std::fs::write(mounted.join("machine.yaml"), [0xff, 0xfe]).unwrap();
        let err = read(root, &mut FakeKernel::default(), "sr0", Fs::Iso9660).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        assert!(find(drive_root(&[("vda", vec![])]).path()).is_none());
    }
}
