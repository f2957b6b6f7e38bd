//! A/B boot slots on the ESP, as systemd-boot sees them: each slot is a UKI in `EFI/Linux`
//! (`strake-a.efi`, `strake-b.efi`). A new image goes into the slot not running, named with a
//! boot counter (`strake-b+3.efi`), and is booted once through the `LoaderEntryOneShot` EFI
//! variable. Once the node is healthy on it, it is blessed: renamed without the counter and made
//! the default (`LoaderEntryDefault`). If it never gets healthy, the next boot (a panic, a
//! watchdog, or machined giving up) falls back to the default, the old slot: rollback.
//!
//! The ESP is mounted by init at [`ESP_MOUNT`] on UEFI boots from a disk that has one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::mounts::host_path;

/// Where init mounts the ESP of the boot disk.
pub const ESP_MOUNT: &str = "/run/strake/esp";
/// Where the UKIs live on the ESP.
pub const LINUX_DIR: &str = "EFI/Linux";
/// systemd-boot's vendor GUID for its variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Tries a new slot gets before systemd-boot gives up on it.
pub const TRIES: u32 = 3;
/// Non-volatile, boot-service and runtime access.
const ATTRIBUTES: u32 = 0x7;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The blessed file name, `strake-a.efi`.
    pub fn file(self) -> String {
        format!("strake-{}.efi", self.letter())
    }

    /// The file name of a slot on trial, `strake-b+3.efi`.
    pub fn trial_file(self) -> String {
        format!("strake-{}+{TRIES}.efi", self.letter())
    }
}

/// What an entry id (a file name in `EFI/Linux`) says: its slot and whether it is on trial
/// (still carries a boot counter: `strake-b+2-1.efi`).
pub fn parse_entry(id: &str) -> Option<(Slot, bool)> {
    let rest = id.strip_prefix("strake-")?.strip_suffix(".efi")?;
    let (letter, counter) = match rest.split_once('+') {
        Some((l, c)) => (l, Some(c)),
        None => (rest, None),
    };
    let slot = match letter {
        "a" => Slot::A,
        "b" => Slot::B,
        _ => return None,
    };
    if let Some(c) = counter {
        let ok = c
            .split('-')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ok || c.split('-').count() > 2 {
            return None;
        }
    }
    Some((slot, counter.is_some()))
}

fn var_path(root: &Path, name: &str) -> PathBuf {
    host_path(root, &format!("{EFIVARS}/{name}-{LOADER_GUID}"))
}

/// A systemd-boot string variable (UTF-16LE after the 4 attribute bytes, NUL-terminated).
pub fn read_var(root: &Path, name: &str) -> Option<String> {
    let bytes = std::fs::read(var_path(root, name)).ok()?;
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Sets a systemd-boot string variable. efivarfs files are immutable until the flag is
/// cleared, and take the attributes and the value in a single write.
pub fn write_var(root: &Path, name: &str, value: &str) -> std::io::Result<()> {
    let path = var_path(root, name);
    if path.exists() {
        crate::sys::clear_immutable(&path)?;
    }
    let mut data = ATTRIBUTES.to_le_bytes().to_vec();
    for u in value.encode_utf16().chain(std::iter::once(0)) {
        data.extend_from_slice(&u.to_le_bytes());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.write_all(&data)
}

/// The entry systemd-boot booted this time (`LoaderEntrySelected`), if it booted us.
pub fn selected(root: &Path) -> Option<String> {
    read_var(root, "LoaderEntrySelected")
}

/// The running slot and whether it is still on trial: booted with a boot counter and not
/// blessed since (blessing renames the file; `LoaderEntrySelected` keeps the boot's name).
pub fn running(root: &Path) -> Option<(Slot, bool)> {
    let (slot, counted) = parse_entry(&selected(root)?)?;
    Some((slot, counted && !linux_dir(root).join(slot.file()).exists()))
}

fn linux_dir(root: &Path) -> PathBuf {
    host_path(root, ESP_MOUNT).join(LINUX_DIR)
}

/// Removes every file of `slot` in `EFI/Linux` (blessed or on trial).
fn clear_slot(root: &Path, slot: Slot) -> std::io::Result<()> {
    for entry in std::fs::read_dir(linux_dir(root))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_entry(&name).is_some_and(|(s, _)| s == slot) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes `uki` into the slot not running, on trial, and makes it the next boot's one shot.
/// Returns the slot written.
pub fn stage(root: &Path, uki: &[u8]) -> Result<Slot, String> {
    let (current, _) = running(root).ok_or(
        "systemd-boot did not boot this node from a Strake slot (no LoaderEntrySelected naming strake-a or strake-b): it cannot be upgraded in place",
    )?;
    let dir = linux_dir(root);
    if !dir.is_dir() {
        return Err(format!("the ESP is not mounted at {ESP_MOUNT}"));
    }
    let target = current.other();
    clear_slot(root, target).map_err(|e| format!("clearing slot {}: {e}", target.letter()))?;
    let path = dir.join(target.trial_file());
    let tmp = dir.join(".upgrade.tmp");
    (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(uki)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })?;
    write_var(root, "LoaderEntryOneShot", &target.trial_file())
        .map_err(|e| format!("setting LoaderEntryOneShot: {e}"))?;
    Ok(target)
}

/// Makes the running slot permanent: drops its boot counter and makes it the default.
pub fn bless(root: &Path) -> Result<Option<Slot>, String> {
    let Some((slot, true)) = running(root) else {
        return Ok(None);
    };
    let dir = linux_dir(root);
    // systemd-boot renamed the file when it counted this boot: find it by slot.
    let on_trial = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| parse_entry(n) == Some((slot, true)))
        .ok_or_else(|| {
            format!(
                "slot {}'s file is gone from {}",
                slot.letter(),
                dir.display()
            )
        })?;
    std::fs::rename(dir.join(&on_trial), dir.join(slot.file()))
        .and_then(|()| std::fs::File::open(&dir)?.sync_all())
        .map_err(|e| format!("blessing {on_trial}: {e}"))?;
    write_var(root, "LoaderEntryDefault", &slot.file())
        .map_err(|e| format!("setting LoaderEntryDefault: {e}"))?;
    Ok(Some(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_slot_and_trial() {
        assert_eq!(parse_entry("strake-a.efi"), Some((Slot::A, false)));
        assert_eq!(parse_entry("strake-b+3.efi"), Some((Slot::B, true)));
        assert_eq!(parse_entry("strake-b+2-1.efi"), Some((Slot::B, true)));
        assert_eq!(parse_entry("strake-b+0-3.efi"), Some((Slot::B, true)));
        for bad in [
            "strake-c.efi",
            "strake-a+x.efi",
            "strake-a+1-2-3.efi",
            "linux.efi",
            "strake-a+.efi",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
        assert_eq!(Slot::A.trial_file(), "strake-a+3.efi");
        assert_eq!(Slot::B.other().file(), "strake-a.efi");
    }

    fn machine(selected: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(host_path(root, EFIVARS)).unwrap();
        std::fs::create_dir_all(host_path(root, ESP_MOUNT).join(LINUX_DIR)).unwrap();
        std::fs::write(linux_dir(root).join("strake-a.efi"), b"old").unwrap();
        if let Some(s) = selected {
            write_var(root, "LoaderEntrySelected", s).unwrap();
        }
        dir
    }

    #[test]
    fn variables_are_utf16_after_their_attributes() {
        let dir = machine(None);
        write_var(dir.path(), "LoaderEntryOneShot", "strake-b+3.efi").unwrap();
        let raw = std::fs::read(var_path(dir.path(), "LoaderEntryOneShot")).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(&raw[4..8], &[b's', 0, b't', 0]);
        assert_eq!(&raw[raw.len() - 2..], &[0, 0]);
        assert_eq!(
            read_var(dir.path(), "LoaderEntryOneShot").as_deref(),
            Some("strake-b+3.efi")
        );
    }

    #[test]
    fn an_upgrade_goes_to_the_other_slot_on_trial_and_is_blessed_there() {
        let dir = machine(Some("strake-a.efi"));
        let root = dir.path();
        std::fs::write(linux_dir(root).join("strake-b.efi"), b"older").unwrap();
        assert_eq!(stage(root, b"new"), Ok(Slot::B));
        assert!(
            !linux_dir(root).join("strake-b.efi").exists(),
            "the old b is gone"
        );
        assert_eq!(
            std::fs::read(linux_dir(root).join("strake-b+3.efi")).unwrap(),
            b"new"
        );
        assert_eq!(
            read_var(root, "LoaderEntryOneShot").as_deref(),
            Some("strake-b+3.efi")
        );
        assert_eq!(
            std::fs::read(linux_dir(root).join("strake-a.efi")).unwrap(),
            b"old"
        );

        // systemd-boot booted it once and counted: strake-b+2-1.efi.
        std::fs::rename(
            linux_dir(root).join("strake-b+3.efi"),
            linux_dir(root).join("strake-b+2-1.efi"),
        )
        .unwrap();
        write_var(root, "LoaderEntrySelected", "strake-b+3.efi").unwrap();
        assert_eq!(running(root), Some((Slot::B, true)));
        assert_eq!(bless(root), Ok(Some(Slot::B)));
        assert_eq!(
            running(root),
            Some((Slot::B, false)),
            "blessed on this very boot"
        );
        assert_eq!(bless(root), Ok(None));
        assert_eq!(
            std::fs::read(linux_dir(root).join("strake-b.efi")).unwrap(),
            b"new"
        );
        assert_eq!(
            read_var(root, "LoaderEntryDefault").as_deref(),
            Some("strake-b.efi")
        );
        // A blessed slot needs nothing more.
        write_var(root, "LoaderEntrySelected", "strake-b.efi").unwrap();
        assert_eq!(bless(root), Ok(None));
    }

    #[test]
    fn a_node_not_booted_from_a_slot_cannot_stage() {
        let dir = machine(None);
        let err = stage(dir.path(), b"new").unwrap_err();
        assert!(err.contains("cannot be upgraded in place"), "{err}");
        let dir = machine(Some("strake-a.efi"));
        std::fs::remove_dir_all(host_path(dir.path(), ESP_MOUNT)).unwrap();
        let err = stage(dir.path(), b"new").unwrap_err();
        assert!(err.contains("ESP is not mounted"), "{err}");
    }
}
