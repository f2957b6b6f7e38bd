//! The medium Strake booted from live: the hybrid ISO (ISO 9660, labelled
//! [`strake_disk::ISO_LABEL`]). Its El Torito EFI image is the ESP cut down to its files; an
//! install copies it to the new disk's ESP partition and gives the filesystem the partition's
//! size, so the disk boots systemd-boot and slot A by itself.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use nix::mount::MsFlags;

use crate::cfgdrive::{self, Fs};
use crate::mounts::host_path;
use crate::sys::{MountSpec, Mounter};

/// Where the medium is mounted while an install reads it.
pub const MOUNT_AT: &str = "/run/strake/media";

/// The boot medium's device name (`sr0`), if one is attached.
pub fn find(root: &Path) -> Option<String> {
    cfgdrive::find_labelled(root, strake_disk::ISO_LABEL)
        .filter(|(_, fs)| *fs == Fs::Iso9660)
        .map(|(name, _)| name)
}

/// Copies the ESP image from `medium` onto the partition `esp` (`sectors` long) and resizes its
/// filesystem to fill the partition. The medium is mounted read-only only while it is read.
pub fn install_esp(
    root: &Path,
    medium: &str,
    esp: &str,
    sectors: u64,
    mounter: &mut dyn Mounter,
) -> Result<(), String> {
    std::fs::create_dir_all(host_path(root, MOUNT_AT))
        .map_err(|e| format!("creating {MOUNT_AT}: {e}"))?;
    mounter
        .mount(&MountSpec {
            source: format!("/dev/{medium}"),
            target: MOUNT_AT.into(),
            fstype: Fs::Iso9660.fstype().into(),
            flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: None,
        })
        .map_err(|e| format!("mounting the boot medium /dev/{medium}: {e}"))?;
    let image = host_path(root, MOUNT_AT).join(strake_disk::ISO_ESP);
    let copied = copy_esp(root, &image, esp, sectors);
    if let Err(e) = mounter.umount_lazy(MOUNT_AT) {
        tracing::warn!(target: "strake_init::state", "unmounting the boot medium: {e}");
    }
    copied?;
    tracing::info!(target: "strake_init::state", "installed the ESP (systemd-boot, slot A) on /dev/{esp} from /dev/{medium}");
    Ok(())
}

fn copy_esp(root: &Path, image: &Path, esp: &str, sectors: u64) -> Result<(), String> {
    let what = |e: std::io::Error| format!("{}: {e}", image.display());
    let mut src = File::open(image).map_err(what)?;
    let len = src.metadata().map_err(what)?.len();
    let partition_bytes = sectors * strake_disk::gpt::SECTOR;
    if len > partition_bytes {
        return Err(format!(
            "the ESP image is {len} bytes, larger than the {partition_bytes}-byte ESP partition"
        ));
    }
    let mut head = vec![0u8; len.min(64 << 10) as usize];
    src.read_exact(&mut head).map_err(what)?;
    let volume = strake_disk::fat::Volume::parse(&head)
        .map_err(|e| format!("the boot medium's ESP image: {e}"))?;
    // The partition in the volume's sectors, no larger than its FATs can cover.
    let total = (partition_bytes / volume.bytes_per_sector).min(volume.max_sectors());
    let resize = strake_disk::fat::resize(&head, total)
        .map_err(|e| format!("the boot medium's ESP image: {e}"))?;
    let device = format!("/dev/{esp}");
    let on_dev = |e: std::io::Error| format!("writing {device}: {e}");
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(host_path(root, &device))
        .map_err(on_dev)?;
    src.seek(SeekFrom::Start(0)).map_err(what)?;
    let copied = std::io::copy(&mut src, &mut dst).map_err(on_dev)?;
    if copied != len {
        return Err(format!(
            "{} ended after {copied} of {len} bytes",
            image.display()
        ));
    }
    for (at, bytes) in resize {
        dst.seek(SeekFrom::Start(at)).map_err(on_dev)?;
        dst.write_all(&bytes).map_err(on_dev)?;
    }
    dst.sync_all().map_err(on_dev)
}
