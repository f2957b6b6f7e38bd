//! A private network for a group of VMs: a network namespace of its own holding bridges (one
//! per L2 segment, each with an address that is the lab's "host side" on it) and persistent
//! tap devices that QEMU opens by name. The namespace routes between its segments, so VMs on
//! different segments reach each other through it, one hop away and not on one L2.
//!
//! Nothing here touches the host's own network: the namespace is new, and a thread that
//! [`Lab::enter`]s it (and every process it starts: QEMU, kubectl, a registry) sees only the
//! lab. Dropping the lab deletes the namespace, and with it every bridge and tap.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::QemuError;

/// A lab's network namespace, deleted on drop.
pub struct Lab {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), QemuError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| QemuError::Config(format!("cannot run `ip` (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(QemuError::Config(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn valid_name(kind: &str, name: &str, max: usize) -> Result<(), QemuError> {
    if name.is_empty()
        || name.len() > max
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(QemuError::Config(format!(
            "{kind} name {name:?} must be 1-{max} characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

impl Lab {
    /// Creates the namespace `name` with loopback up and IPv4 forwarding on.
    pub fn create(name: &str) -> Result<Lab, QemuError> {
        valid_name("lab", name, 64)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(QemuError::Config(
                "a lab network needs root (it creates a network namespace and taps)".into(),
            ));
        }
        ip(&["netns", "add", name])?;
        let lab = Lab {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        lab.sysctl("net/ipv4/ip_forward", "1")?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path (`/run/netns/<name>`).
    pub fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Writes a `/proc/sys` setting of the lab's namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), QemuError> {
        let netns = self.netns();
        let path = Path::new("/proc/sys").join(key);
        let value = value.to_string();
        std::thread::spawn(move || -> Result<(), QemuError> {
            enter(&netns)?;
            std::fs::write(&path, value).map_err(|source| QemuError::Io { path, source })
        })
        .join()
        .unwrap_or_else(|_| Err(QemuError::Config("the sysctl thread panicked".into())))
    }

    /// An L2 segment: a bridge named `bridge` holding `address/prefix`, the lab's side of it
    /// (the segment's gateway).
    pub fn add_segment(
        &self,
        bridge: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), QemuError> {
        valid_name("bridge", bridge, 15)?;
        if prefix > 32 {
            return Err(QemuError::Config(format!("prefix /{prefix} is not IPv4")));
        }
        let n = self.name.as_str();
        ip(&["-n", n, "link", "add", bridge, "type", "bridge"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{address}/{prefix}"),
            "dev",
            bridge,
        ])?;
        ip(&["-n", n, "link", "set", bridge, "up"])
    }

    /// A persistent tap named `tap` on the segment `bridge`, for QEMU to open by name
    /// ([`crate::Nic::Tap`]).
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<(), QemuError> {
        valid_name("tap", tap, 15)?;
        let n = self.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", n, "link", "set", tap, "master", bridge, "up"])
    }

    /// Sets the lab's link `name` (a tap, say) up or down: down cuts whatever is behind it off
    /// the segment, as a pulled cable does.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), QemuError> {
        valid_name("link", name, 15)?;
        let state = if up { "up" } else { "down" };
        ip(&["-n", self.name.as_str(), "link", "set", name, state])
    }

    /// Moves the calling thread into the lab's namespace: its sockets and every process it
    /// starts from now on are inside the lab. Other threads are unaffected.
    pub fn enter(&self) -> Result<(), QemuError> {
        enter(&self.netns())
    }
}

fn enter(netns: &Path) -> Result<(), QemuError> {
    let f = std::fs::File::open(netns).map_err(|source| QemuError::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| QemuError::Config(format!("entering {}: {e}", netns.display())))
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_routes_between_its_segments_and_goes_away_on_drop() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates a network namespace and must run as root"
        );
        let name = format!("strake-labtest-{}", std::process::id());
        let lab = Lab::create(&name).unwrap();
        lab.add_segment("seg-a", Ipv4Addr::new(192, 0, 2, 1), 24)
            .unwrap();
        lab.add_tap("tap-a", "seg-a").unwrap();
        let err = lab.add_tap("tap a", "seg-a").unwrap_err();
        assert!(err.to_string().contains("tap name"), "{err}");
        let err = lab.add_tap("tap-b", "no-such-bridge").unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
        // A thread inside the lab sees the segment's address and forwarding on.
        let netns = lab.netns();
        let inside = std::thread::spawn(move || {
            enter(&netns).unwrap();
            let l = std::net::TcpListener::bind("192.0.2.1:0");
            let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
            (l.is_ok(), fwd.trim().to_string())
        })
        .join()
        .unwrap();
        assert_eq!(inside, (true, "1".to_string()));
        // The host never had that address.
        assert!(std::net::TcpListener::bind("192.0.2.1:0").is_err());
        drop(lab);
        assert!(!Path::new("/run/netns").join(&name).exists());
    }
}
