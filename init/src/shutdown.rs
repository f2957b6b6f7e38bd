//! The last steps of a shutdown, after the services have stopped (or been killed): kill whatever
//! is left, sync, lazily unmount everything but `/`, sync again and power off or reboot.

use crate::sys::{Mounter, PowerAction, Rebooter};

/// Mount points from a mountinfo table in the order to unmount them (most recent first), without
/// `/`. Octal escapes (`\040` for a space) are decoded.
pub fn unmount_order(mountinfo: &str) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p != "/")
        .collect();
    points.reverse();
    points
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills all remaining processes, syncs, unmounts and powers off or reboots. `reap` collects the
/// killed processes. Returns only if the reboot syscall failed (or with the test fake).
pub fn finalize(
    sys: &mut dyn Rebooter,
    mounter: &mut dyn Mounter,
    mountinfo: &str,
    action: PowerAction,
    reap: &mut dyn FnMut(),
) {
    tracing::info!(target: "strake_init::shutdown", "killing remaining processes");
    if let Err(e) = sys.kill_all() {
        tracing::debug!(target: "strake_init::shutdown", "kill(-1): {e}");
    }
    reap();
    sys.sync();
    for point in unmount_order(mountinfo) {
        if let Err(e) = mounter.umount_lazy(&point) {
            tracing::debug!(target: "strake_init::shutdown", "unmounting {point}: {e}");
        }
    }
    sys.sync();
    let what = match action {
        PowerAction::PowerOff => "powering off",
        PowerAction::Reboot => "rebooting",
    };
    tracing::info!(target: "strake_init::shutdown", "{what}");
    if let Err(e) = sys.reboot(action) {
        tracing::error!(target: "strake_init::shutdown", "{what} failed: {e}; halting here");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;

    const INFO: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
20 1 0:20 / /proc rw - proc proc rw
21 1 0:21 / /sys rw - sysfs sysfs rw
22 21 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
23 1 0:23 / /var/lib/my\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn unmounts_children_before_parents() {
        assert_eq!(
            unmount_order(INFO),
            ["/var/lib/my dir", "/sys/fs/cgroup", "/sys", "/proc"]
        );
    }

    #[test]
    fn final_steps_in_order() {
        let fake = FakeKernel::default();
        let (mut a, mut b) = (fake.clone(), fake.clone());
        let mut reaped = 0;
        finalize(&mut a, &mut b, INFO, PowerAction::Reboot, &mut || {
            reaped += 1
        });
        assert_eq!(reaped, 1);
        assert_eq!(
            fake.state().calls,
            [
                "kill-all",
                "sync",
                "umount /var/lib/my dir",
                "umount /sys/fs/cgroup",
                "umount /sys",
                "umount /proc",
                "sync",
                "reboot Reboot"
            ]
        );
    }
}
