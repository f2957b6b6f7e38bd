//! The ACPI power button (QEMU's `system_powerdown`): the `button` driver exposes it as an input
//! device named "Power Button", whose evdev node (module `evdev`) reports KEY_POWER.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// `struct input_event` on 64-bit Linux: timeval (16 bytes), type u16, code u16, value i32.
pub const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// `/dev/input/eventN` nodes whose device name contains "Power Button", found through sysfs
/// under `root`.
pub fn find_power_buttons(root: &Path) -> Vec<PathBuf> {
    let class = root.join("sys/class/input");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .is_ok_and(|n| n.contains("Power Button"))
        })
        .map(|e| root.join("dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Whether a buffer of input events holds a KEY_POWER press. A trailing partial event is ignored.
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|ev| {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Opens an event node non-blocking.
pub fn open_button(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Reads what is available; true when the power button was pressed.
pub fn read_press(file: &mut File) -> bool {
    let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        pressed |= has_power_press(&buf[..n]);
    }
    pressed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn detects_power_press_only() {
        let mut buf = event(0, 0, 0);
        buf.extend(event(EV_KEY, KEY_POWER, 0));
        assert!(!has_power_press(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(has_power_press(&buf));
        assert!(!has_power_press(&event(EV_KEY, 30, 1)));
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 1)[..20]));
    }

    #[test]
    fn finds_buttons_by_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (ev, name) in [
            ("event0", "AT Translated Set 2 keyboard"),
            ("event1", "Power Button"),
            ("mouse0", "Power Button"),
        ] {
            let d = tmp.path().join("sys/class/input").join(ev).join("device");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("name"), format!("{name}\n")).expect("write");
        }
        assert_eq!(
            find_power_buttons(tmp.path()),
            [tmp.path().join("dev/input/event1")]
        );
    }
}
