//! The boot forms built from the kernel and initramfs, without root or loop mounts:
//! - a **UKI**: systemd-boot's EFI stub with the kernel, initramfs, command line and os-release
//!   added as PE sections by `objcopy`;
//! - the **ESP**: a FAT16 volume (made with mtools) holding systemd-boot as the removable-media
//!   loader and the UKI as slot A, with FATs sized for the whole ESP partition;
//! - a **GPT disk image** (raw, and qcow2 by `qemu-img convert`): that ESP, and a STATE partition
//!   holding the ext4 template, which init grows to the partition's size at first boot;
//! - a **PXE bundle**: the kernel, the initramfs and an iPXE script beside them; UEFI PXE may
//!   boot the UKI itself;
//! - a **hybrid ISO** (xorriso): isolinux for BIOS (the kernel and initramfs as files) and, for
//!   UEFI, the same ESP cut down to what its files use as the El Torito EFI image. It boots live
//!   (nothing on disk) into maintenance mode, and an install copies that image to the disk's ESP
//!   and gives it the partition's size back (`strake_disk::fat`).
//!
//! Every form is reproducible: timestamps come from `SOURCE_DATE_EPOCH` (clamped to what FAT can
//! hold), identifiers are fixed, and the PE timestamp objcopy writes is replaced.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use strake_disk::Guid;
use strake_disk::gpt::{self, PartitionSpec};

use crate::ImageError;

/// systemd-boot's EFI stub and boot manager, from Debian's `systemd-boot-efi`.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The UKI's kernel command line: the serial console last, so it is `/dev/console`.
pub const UKI_CMDLINE: &str = "console=tty0 console=ttyS0 panic=-1";
/// The disk image's size; init grows STATE's filesystem to fill its partition.
pub const DISK_BYTES: u64 = 2 << 30;
pub use strake_disk::fat::ESP_BYTES;
/// FAT cannot hold dates before 1980.
const FAT_EPOCH: u64 = 315_619_200;

pub use strake_disk::gpt::EFI_SYSTEM as ESP_TYPE;
/// Fixed identifiers: the image is the same bytes every build. A machine installed from it
/// shares them with every other; nothing finds a disk or partition by them.
const DISK_GUID: Guid = Guid::from_fields(0x5354_524b, 0x0001, 0x4000, [0x80, 0, 0, 0, 0, 0, 0, 1]);
const ESP_GUID: Guid = Guid::from_fields(0x5354_524b, 0x0002, 0x4000, [0x80, 0, 0, 0, 0, 0, 0, 2]);
const STATE_GUID: Guid =
    Guid::from_fields(0x5354_524b, 0x0003, 0x4000, [0x80, 0, 0, 0, 0, 0, 0, 3]);
/// The ESP's FAT volume serial.
const ESP_SERIAL: &str = "5354524b";
/// isolinux, from Debian's `isolinux` and `syslinux-common`.
pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHDPFX: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The UKI file name in slot A or B (`EFI/Linux/strake-a.efi`). systemd-boot lists UKIs in
/// `EFI/Linux` by themselves.
pub fn slot_file(slot: char) -> String {
    format!("strake-{slot}.efi")
}

fn run(cmd: &mut Command, what: &'static str) -> Result<(), ImageError> {
    let out = cmd.output().map_err(|e| ImageError::Tool {
        tool: what,
        detail: format!("{e} (is it installed?)"),
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Builds the UKI at `out` from the kernel, initramfs and `os_release`.
pub fn build_uki(
    vmlinuz: &Path,
    initramfs: &Path,
    os_release: &str,
    cmdline: &str,
    mtime: u32,
    out: &Path,
) -> Result<(), ImageError> {
    for p in [Path::new(STUB), vmlinuz, initramfs] {
        if !p.exists() {
            return Err(ImageError::Tool {
                tool: "uki",
                detail: format!(
                    "{} is missing{}",
                    p.display(),
                    if p == Path::new(STUB) {
                        " (apt-get install systemd-boot-efi)"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    let dir = out.parent().unwrap_or(Path::new("."));
    let osrel = dir.join(".uki-osrel");
    let cmd = dir.join(".uki-cmdline");
    std::fs::write(&osrel, os_release).map_err(ImageError::io("writing", &osrel))?;
    std::fs::write(&cmd, cmdline).map_err(ImageError::io("writing", &cmd))?;
    let tmp = out.with_extension("efi.tmp");
    let section = |name: &str, file: &Path, vma: u64| {
        [
            "--add-section".to_owned(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_owned(),
            format!("{name}={vma:#x}"),
        ]
    };
    let mut args = Vec::new();
    args.extend(section(".osrel", &osrel, 0x20000));
    args.extend(section(".cmdline", &cmd, 0x30000));
    args.extend(section(".linux", vmlinuz, 0x200_0000));
    // The initrd goes last, above the kernel: nothing follows it to collide with.
    args.extend(section(".initrd", initramfs, 0x300_0000));
    run(
        Command::new("objcopy").args(&args).arg(STUB).arg(&tmp),
        "objcopy",
    )?;
    let _ = std::fs::remove_file(&osrel);
    let _ = std::fs::remove_file(&cmd);
    let mut bytes = std::fs::read(&tmp).map_err(ImageError::io("reading", &tmp))?;
    fix_pe_timestamp(&mut bytes, mtime).map_err(|detail| ImageError::Tool {
        tool: "uki",
        detail,
    })?;
    std::fs::write(&tmp, &bytes).map_err(ImageError::io("writing", &tmp))?;
    std::fs::rename(&tmp, out).map_err(ImageError::io("renaming", out))
}

/// Sets the PE/COFF timestamp (objcopy writes the time of day) and recomputes the checksum.
pub fn fix_pe_timestamp(pe: &mut [u8], stamp: u32) -> Result<(), String> {
    let at = |o: usize| {
        pe.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let header = at(0x3c).ok_or("not a PE file: too short")? as usize;
    if pe.get(header..header + 4) != Some(b"PE\0\0".as_slice()) {
        return Err("not a PE file: no PE signature".into());
    }
    let timestamp = header + 8;
    let checksum = header + 24 + 64;
    if pe.len() < checksum + 4 {
        return Err("not a PE file: header cut short".into());
    }
    pe[timestamp..timestamp + 4].copy_from_slice(&stamp.to_le_bytes());
    pe[checksum..checksum + 4].fill(0);
    let sum = pe_checksum(pe, checksum);
    pe[checksum..checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE checksum: 16-bit one's-complement-style sum of the file (its checksum field counted
/// as zero), folded, plus the file's length.
fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let off = i * 2;
        if off >= checksum_at && off < checksum_at + 4 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// Makes a FAT image of `bytes` at `out` (FAT32 when `fat32`, else what mtools picks for the
/// size) holding `dirs` and `files` (source, `::/path` destination), with fixed dates and serial.
fn fat_image(
    out: &Path,
    bytes: u64,
    label: &str,
    dirs: &[&str],
    files: &[(PathBuf, String)],
    mtime: u32,
) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(ImageError::io("creating", out))?;
    f.set_len(bytes).map_err(ImageError::io("sizing", out))?;
    drop(f);
    let epoch = u64::from(mtime).max(FAT_EPOCH).to_string();
    let image = out.display().to_string();
    let tool = |name: &str| {
        let mut c = Command::new(name);
        c.env("SOURCE_DATE_EPOCH", &epoch)
            .env("MTOOLS_SKIP_CHECK", "1");
        c
    };
    let sectors = (bytes / 512).to_string();
    let mut format = tool("mformat");
    // 4 KiB clusters: FAT16 from 16 MiB to 255 MiB (see strake_disk::fat).
    format.args([
        "-i", &image, "-T", &sectors, "-h", "64", "-s", "32", "-c", "8", "-v", label, "-N",
        ESP_SERIAL, "::",
    ]);
    run(&mut format, "mformat (apt-get install mtools)")?;
    if !dirs.is_empty() {
        run(tool("mmd").args(["-i", &image]).args(dirs), "mmd")?;
    }
    for (src, dst) in files {
        run(
            tool("mcopy").arg("-i").arg(&image).arg(src).arg(dst),
            "mcopy",
        )?;
    }
    Ok(())
}

fn require(path: &str, package: &str) -> Result<(), ImageError> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            tool: "boot forms",
            detail: format!("{path} is missing (apt-get install {package})"),
        })
    }
}

/// Builds the ESP as a FAT32 image file with systemd-boot and the UKI in slot A.
/// The PXE bundle's iPXE script: the kernel and initramfs by names relative to the script's own
/// URL (TFTP or HTTP), with the UKI's command line. `initrd=` names the initramfs for the EFI
/// stub when iPXE runs under UEFI.
pub fn ipxe_script(cmdline: &str) -> String {
    format!(
        "#!ipxe\nkernel {} initrd={} {cmdline}\ninitrd {}\nboot\n",
        crate::VMLINUZ_FILE,
        crate::INITRAMFS_FILE,
        crate::INITRAMFS_FILE
    )
}

/// The ESP image at `out`, [`ESP_BYTES`] long: systemd-boot, its loader.conf, and the UKI in
/// slot A.
pub fn build_esp(uki: &Path, mtime: u32, out: &Path) -> Result<(), ImageError> {
    require(SYSTEMD_BOOT, "systemd-boot-efi")?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let loader = dir.join(".loader.conf");
    // No menu; the newest slot that is not out of tries boots. A/B slots are matched by glob
    // because the boot counter is part of an entry's id.
    std::fs::write(&loader, "timeout 0\ndefault strake-*\n")
        .map_err(ImageError::io("writing", &loader))?;
    let result = fat_image(
        out,
        ESP_BYTES,
        "ESP",
        &["::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader"],
        &[
            (
                PathBuf::from(SYSTEMD_BOOT),
                "::/EFI/BOOT/BOOTX64.EFI".to_owned(),
            ),
            (
                uki.to_path_buf(),
                format!("::/EFI/Linux/{}", slot_file('a')),
            ),
            (loader.clone(), "::/loader/loader.conf".to_owned()),
        ],
        mtime,
    );
    let _ = std::fs::remove_file(&loader);
    result
}

/// Sets the mtime of `dir`, and of everything under it, to `secs` since the epoch.
fn set_mtimes(dir: &Path, secs: u64) -> Result<(), ImageError> {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let entries = std::fs::read_dir(dir).map_err(ImageError::io("reading", dir))?;
    for entry in entries {
        let path = entry.map_err(ImageError::io("reading", dir))?.path();
        if path.is_dir() {
            set_mtimes(&path, secs)?;
        } else {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(when))
                .map_err(ImageError::io("dating", &path))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|f| f.set_modified(when))
        .map_err(ImageError::io("dating", dir))
}

/// Builds the hybrid ISO at `out`: BIOS through isolinux, UEFI through the UKI.
pub use strake_disk::{ISO_ESP, ISO_LABEL};

pub fn build_iso(
    vmlinuz: &Path,
    initramfs: &Path,
    esp: &Path,
    cmdline: &str,
    mtime: u32,
    out: &Path,
) -> Result<(), ImageError> {
    for (path, package) in [
        (ISOLINUX_BIN, "isolinux"),
        (ISOHDPFX, "isolinux"),
        (LDLINUX, "syslinux-common"),
    ] {
        require(path, package)?;
    }
    let dir = out.parent().unwrap_or(Path::new("."));
    let root = dir.join(".iso-root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["isolinux", "boot"] {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(ImageError::io("creating", &d))?;
    }
    let copy = |from: &Path, to: &str| {
        let dst = root.join(to);
        std::fs::copy(from, &dst)
            .map(|_| ())
            .map_err(ImageError::io("copying", from))
    };
    copy(Path::new(ISOLINUX_BIN), "isolinux/isolinux.bin")?;
    copy(Path::new(LDLINUX), "isolinux/ldlinux.c32")?;
    copy(vmlinuz, "boot/vmlinuz")?;
    copy(initramfs, "boot/initramfs.zst")?;
    let cfg = root.join("isolinux/isolinux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "DEFAULT strake\nPROMPT 0\nTIMEOUT 0\nLABEL strake\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initramfs.zst\n  APPEND {cmdline}\n"
        ),
    )
    .map_err(ImageError::io("writing", &cfg))?;
    // The El Torito EFI image: the ESP, cut down to the clusters its files use.
    let full = std::fs::read(esp).map_err(ImageError::io("reading", esp))?;
    let small = strake_disk::fat::shrink(&full, 1 << 20).map_err(|e| ImageError::Tool {
        tool: "the ESP image",
        detail: e.to_string(),
    })?;
    drop(full);
    let efi = root.join(ISO_ESP);
    std::fs::write(&efi, small).map_err(ImageError::io("writing", &efi))?;
    // xorriso records each file's and directory's mtime: make them the build's.
    set_mtimes(&root, u64::from(mtime).max(FAT_EPOCH))?;
    let tmp = out.with_extension("iso.tmp");
    let _ = std::fs::remove_file(&tmp);
    run(
        Command::new("xorriso")
            .env(
                "SOURCE_DATE_EPOCH",
                u64::from(mtime).max(FAT_EPOCH).to_string(),
            )
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&tmp)
            .args([
                "-V",
                ISO_LABEL,
                "-r",
                "-isohybrid-mbr",
                ISOHDPFX,
                "-c",
                "isolinux/boot.cat",
                "-b",
                "isolinux/isolinux.bin",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-eltorito-alt-boot",
                "-e",
                ISO_ESP,
                "-no-emul-boot",
                "-isohybrid-gpt-basdat",
            ])
            .arg(&root),
        "xorriso (apt-get install xorriso)",
    )?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, out).map_err(ImageError::io("renaming", out))
}

/// Builds the raw GPT disk image at `out` from the ESP image and the STATE template (sparse
/// bytes).
pub fn build_disk(esp: &Path, state_template: &[u8], out: &Path) -> Result<(), ImageError> {
    let layout = gpt::layout(
        DISK_BYTES / gpt::SECTOR,
        DISK_GUID,
        &[
            PartitionSpec {
                name: "ESP".into(),
                type_guid: ESP_TYPE,
                unique_guid: ESP_GUID,
                size_sectors: Some(ESP_BYTES / gpt::SECTOR),
                attributes: 0,
            },
            PartitionSpec {
                name: crate::state::LABEL.into(),
                type_guid: gpt::LINUX_FILESYSTEM,
                unique_guid: STATE_GUID,
                size_sectors: None,
                attributes: 0,
            },
        ],
    )
    .map_err(|e| ImageError::Tool {
        tool: "gpt",
        detail: e.to_string(),
    })?;
    let tmp = out.with_extension("raw.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut disk = std::fs::File::create(&tmp).map_err(ImageError::io("creating", &tmp))?;
    disk.set_len(DISK_BYTES)
        .map_err(ImageError::io("sizing", &tmp))?;
    let mut put = |offset: u64, bytes: &[u8]| -> Result<(), ImageError> {
        disk.seek(SeekFrom::Start(offset))
            .and_then(|_| disk.write_all(bytes))
            .map_err(ImageError::io("writing", &tmp))
    };
    for (offset, bytes) in &layout.writes {
        put(*offset, bytes)?;
    }
    let esp_start = layout.partitions[0].first_lba * gpt::SECTOR;
    let state_start = layout.partitions[1].first_lba * gpt::SECTOR;
    // The ESP image's non-zero blocks only: the disk stays sparse.
    let esp_bytes = std::fs::read(esp).map_err(ImageError::io("reading", esp))?;
    for (i, block) in esp_bytes.chunks(64 << 10).enumerate() {
        if !strake_disk::is_zero(block) {
            put(esp_start + (i as u64) * (64 << 10), block)?;
        }
    }
    let sparse = strake_disk::sparse::decode(state_template).map_err(|e| ImageError::Tool {
        tool: "state template",
        detail: e.to_string(),
    })?;
    for (offset, block) in &sparse.blocks {
        put(state_start + offset, block)?;
    }
    disk.sync_all().map_err(ImageError::io("syncing", &tmp))?;
    drop(disk);
    std::fs::rename(&tmp, out).map_err(ImageError::io("renaming", out))
}

/// `qemu-img convert` of the raw image to qcow2.
pub fn build_qcow2(raw: &Path, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("qcow2.tmp");
    run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(&tmp),
        "qemu-img (apt-get install qemu-utils)",
    )?;
    std::fs::rename(&tmp, out).map_err(ImageError::io("renaming", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pe_timestamp_is_replaced_and_the_checksum_recomputed() {
        let mut pe = vec![0u8; 0x200];
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x88..0x8c].copy_from_slice(&0x6571_0000u32.to_le_bytes());
        pe[0x150] = 0x12;
        fix_pe_timestamp(&mut pe, 7).unwrap();
        assert_eq!(&pe[0x88..0x8c], &7u32.to_le_bytes());
        let stored = u32::from_le_bytes(pe[0xd8..0xdc].try_into().unwrap());
        assert_eq!(stored, pe_checksum(&pe, 0xd8));
        let again = pe.clone();
        fix_pe_timestamp(&mut pe, 7).unwrap();
        assert_eq!(pe, again, "stable");
        assert!(fix_pe_timestamp(&mut [0u8; 16], 0).is_err());
        let mut not_pe = vec![0u8; 0x200];
        not_pe[0x3c] = 0x80;
        assert!(fix_pe_timestamp(&mut not_pe, 0).is_err());
    }

    #[test]
    fn the_pe_checksum_matches_the_published_algorithm() {
        // Words 0x0001, 0xffff (carry folds) and a trailing odd byte 0x02, plus the length 5.
        let data = [0x01, 0x00, 0xff, 0xff, 0x02];
        assert_eq!(pe_checksum(&data, 100), 0x0003 + 5);
    }
}
