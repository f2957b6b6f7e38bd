//! The STATE filesystem template: an empty ext4 made by the host's `mkfs.ext4` with fixed
//! identifiers and time (so builds stay byte-identical), shipped in the initramfs as a sparse
//! image. A node formats its STATE partition by writing it and growing it online to the
//! partition's size; the image carries no mkfs.

use std::path::Path;
use std::process::Command;

use crate::ImageError;

/// Where the template sits in the initramfs (and so on every node).
pub const TEMPLATE_PATH: &str = "usr/lib/strake/state.ext4.sparse";
/// The template's size: the smallest STATE partition a node accepts.
pub const TEMPLATE_BYTES: u64 = 128 << 20;
/// Filesystem label, UUID and directory hash seed of every template.
pub const LABEL: &str = "STATE";
const UUID: &str = "5f0c3a9e-7d6b-4e1a-9c2d-3b8f1a0e6d47";
/// Blocks the resize inode reserves descriptor room for (1 TiB of 4 KiB blocks); growing past
/// it still works (the kernel switches to meta_bg).
const RESIZE_BLOCKS: u64 = 1 << 28;

/// Runs `mkfs.ext4` on a scratch file in `dir` (the build's own output directory, so two builds
/// sharing a cache never write one file) and returns the sparse template.
pub fn build_template(dir: &Path, mtime: u32) -> Result<Vec<u8>, ImageError> {
    std::fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))?;
    let path = dir.join(".state-template.ext4");
    let file = std::fs::File::create(&path).map_err(ImageError::io("creating", &path))?;
    file.set_len(TEMPLATE_BYTES)
        .map_err(ImageError::io("sizing", &path))?;
    drop(file);
    let extended = format!(
        "hash_seed={UUID},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,resize={RESIZE_BLOCKS}"
    );
    let output = Command::new("mkfs.ext4")
        .args([
            "-q", "-F", "-b", "4096", "-L", LABEL, "-U", UUID, "-J", "size=32",
        ])
        .args(["-E", &extended])
        // Features a 6.1 kernel has but older tools misreport are left out on purpose.
        .args(["-O", "^orphan_file"])
        .arg(&path)
        // 0 means "not set" to mkfs, which then stamps the current time: use 1 instead.
        .env("E2FSPROGS_FAKE_TIME", mtime.max(1).to_string())
        .output()
        .map_err(|source| ImageError::Tool {
            tool: "mkfs.ext4 (Debian package e2fsprogs)",
            detail: source.to_string(),
        })?;
    if !output.status.success() {
        return Err(ImageError::Tool {
            tool: "mkfs.ext4",
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let image = std::fs::read(&path).map_err(ImageError::io("reading", &path))?;
    let _ = std::fs::remove_file(&path);
    Ok(strake_disk::sparse::encode(&image, 4096))
}
