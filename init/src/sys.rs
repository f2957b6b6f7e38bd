//! The kernel seams init goes through, as traits, with their real (Linux) implementations. The boot
//! phases and the shutdown sequence only talk to these traits, so they run against the recording
//! fake in `fake.rs` in unit tests.

use std::net::Ipv4Addr;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::dhcp::DhcpTransport;
use crate::network::NetError;

/// One mount, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub flags: MsFlags,
    pub data: Option<String>,
}

impl MountSpec {
    pub fn new(
        source: &str,
        target: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Self {
        MountSpec {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: data.map(Into::into),
        }
    }
}

/// mount(2) and umount2(2). Targets are absolute paths in init's root.
pub trait Mounter {
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno>;
    /// Lazily detaches `target` (MNT_DETACH).
    fn umount_lazy(&mut self, target: &str) -> Result<(), Errno>;
}

/// Replaces the initramfs rootfs by a tmpfs (see `switch_root.rs`).
pub trait RootSwitcher {
    /// Whether `/` is the kernel's initramfs `rootfs`.
    fn root_is_initramfs(&mut self) -> Result<bool, crate::switch_root::SwitchRootError>;
    /// Copies `/` into a fresh tmpfs, deletes the originals and makes the tmpfs the root.
    fn switch_root(&mut self) -> Result<(), crate::switch_root::SwitchRootError>;
}

/// What happened when a module was handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded,
    AlreadyLoaded,
}

/// finit_module(2)/init_module(2).
pub trait ModuleLoader {
    /// `uname -r`.
    fn kernel_release(&mut self) -> String;
    /// Loads the module file at `path` (absolute, in init's root).
    fn load(&mut self, path: &Path) -> Result<LoadOutcome, crate::modules::LoadError>;
}

/// The power action at the end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// reboot(2), sync(2) and friends.
pub trait Rebooter {
    /// Make ctrl-alt-del send SIGINT to init instead of rebooting at once.
    fn disable_cad(&mut self) -> Result<(), Errno>;
    fn sync(&mut self);
    /// Returns only on failure (the fake returns Ok).
    fn reboot(&mut self, action: PowerAction) -> Result<(), Errno>;
    /// kill(-1, SIGKILL): every process but init.
    fn kill_all(&mut self) -> Result<(), Errno>;
}

/// Block device and filesystem ioctls the STATE partition needs.
pub trait BlockOps {
    /// BLKRRPART: the kernel reads the disk's partition table again.
    fn reread_partitions(&mut self, disk: &std::fs::File) -> Result<(), Errno>;
    /// BLKZEROOUT: `len` bytes from `offset` read back as zeros.
    fn zero_range(&mut self, dev: &std::fs::File, offset: u64, len: u64) -> Result<(), Errno>;
    /// EXT4_IOC_RESIZE_FS on the filesystem mounted at `mountpoint` (a host path): grows it to
    /// `blocks` blocks while mounted.
    fn grow_ext4(&mut self, mountpoint: &Path, blocks: u64) -> Result<(), Errno>;
}

/// sethostname(2) and clock_settime(2).
pub trait HostSetter {
    fn set_hostname(&mut self, name: &str) -> Result<(), Errno>;
    /// Steps the wall clock (CLOCK_REALTIME) to `to`.
    fn set_time(&mut self, to: std::time::SystemTime) -> Result<(), Errno>;
}

/// A network interface as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub loopback: bool,
    /// ARPHRD_ETHER and not a virtual device kind (veth, bridge, ...).
    pub ethernet: bool,
}

/// rtnetlink operations plus the DHCP socket.
pub trait NetConfigurator {
    fn links(&mut self) -> Result<Vec<Link>, NetError>;
    fn set_up(&mut self, index: u32) -> Result<(), NetError>;
    /// Adds an address; an address that is already there is fine.
    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    /// Adds the default route via `gateway` out of `index`; an existing identical route is fine.
    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetError>;
    /// A DHCP client socket on `link` (UDP 0.0.0.0:68, bound to the device, broadcast allowed).
    fn dhcp_transport(&mut self, link: &Link) -> Result<Box<dyn DhcpTransport>, NetError>;
}

/// The real Linux implementation of the small seams.
#[derive(Debug, Default)]
pub struct LinuxSys;

impl Mounter for LinuxSys {
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
        nix::mount::mount(
            Some(spec.source.as_str()),
            spec.target.as_str(),
            Some(spec.fstype.as_str()),
            spec.flags,
            spec.data.as_deref(),
        )
    }

    fn umount_lazy(&mut self, target: &str) -> Result<(), Errno> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }
}

impl ModuleLoader for LinuxSys {
    fn kernel_release(&mut self) -> String {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn load(&mut self, path: &Path) -> Result<LoadOutcome, crate::modules::LoadError> {
        crate::modules::load_module_file(path)
    }
}

impl Rebooter for LinuxSys {
    fn disable_cad(&mut self) -> Result<(), Errno> {
        nix::sys::reboot::set_cad_enabled(false)
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn reboot(&mut self, action: PowerAction) -> Result<(), Errno> {
        let mode = match action {
            PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        };
        nix::sys::reboot::reboot(mode).map(|never| match never {})
    }

    fn kill_all(&mut self) -> Result<(), Errno> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-1),
            nix::sys::signal::Signal::SIGKILL,
        )
    }
}

nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_read!(fs_getflags, b'f', 1, libc::c_long);
nix::ioctl_write_ptr!(fs_setflags, b'f', 2, libc::c_long);
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Clears a file's immutable flag (efivarfs sets it on every variable). A filesystem without
/// flags has nothing to clear.
pub fn clear_immutable(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a long into `flags`, which lives across the call.
    match unsafe { fs_getflags(f.as_raw_fd(), &mut flags) } {
        Ok(_) => {}
        Err(Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    let cleared = flags & !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads at most a long from the pointer, which lives across the call.
    unsafe { fs_setflags(f.as_raw_fd(), &cleared) }
        .map(drop)
        .map_err(Into::into)
}
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

impl BlockOps for LinuxSys {
    fn reread_partitions(&mut self, disk: &std::fs::File) -> Result<(), Errno> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: BLKRRPART takes no argument; the descriptor is open for the call's length.
        unsafe { blkrrpart(disk.as_raw_fd()) }.map(drop)
    }

    fn zero_range(&mut self, dev: &std::fs::File, offset: u64, len: u64) -> Result<(), Errno> {
        use std::os::fd::AsRawFd as _;
        let range = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64s (start, length) from the pointer, which lives
        // across the call.
        unsafe { blkzeroout(dev.as_raw_fd(), &range) }.map(drop)
    }

    fn grow_ext4(&mut self, mountpoint: &Path, blocks: u64) -> Result<(), Errno> {
        use std::os::fd::AsRawFd as _;
        let dir = std::fs::File::open(mountpoint)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer.
        unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }.map(drop)
    }
}

impl HostSetter for LinuxSys {
    fn set_hostname(&mut self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn set_time(&mut self, to: std::time::SystemTime) -> Result<(), Errno> {
        let since = to
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Errno::EINVAL)?;
        nix::time::clock_settime(
            nix::time::ClockId::CLOCK_REALTIME,
            nix::sys::time::TimeSpec::from_duration(since),
        )
    }
}
