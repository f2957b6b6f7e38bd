//! A recording fake of every kernel seam, for unit tests: it records calls in order and can be
//! told to fail specific ones. Clones share one state.

use std::cell::{RefCell, RefMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use nix::errno::Errno;

use crate::dhcp::DhcpTransport;
use crate::dhcp::packet::{DhcpMessage, MessageType, Op};
use crate::modules::{LoadError, module_name};
use crate::network::NetError;
use crate::switch_root::SwitchRootError;
use crate::sys::{
    BlockOps, HostSetter, Link, LoadOutcome, ModuleLoader, MountSpec, Mounter, NetConfigurator,
    PowerAction, Rebooter, RootSwitcher,
};

#[derive(Default)]
pub struct FakeState {
    /// Every call, in order, as a short string (`mount /proc`, `load virtio_net`, ...).
    pub calls: Vec<String>,
    pub mounts: Vec<MountSpec>,
    pub umounts: Vec<String>,
    pub fail_mounts: HashMap<String, Errno>,
    pub root_is_initramfs: bool,
    pub module_calls: Vec<String>,
    pub already_loaded: HashSet<String>,
    pub refuse_modules: HashSet<String>,
    pub reboots: Vec<PowerAction>,
    pub hostname: Option<String>,
    pub links: Vec<Link>,
    /// `links()` returns only loopback this many times (a NIC driver still probing).
    pub links_hidden_for: u32,
    pub link_queries: u32,
    pub ups: Vec<u32>,
    pub addresses: Vec<(u32, Ipv4Addr, u8)>,
    pub routes: Vec<(u32, Ipv4Addr)>,
    /// Files (host paths and contents) that appear when the partition table is reread, as
    /// the kernel adds a partition's sysfs entry and device node.
    pub reread_creates: Vec<(std::path::PathBuf, Vec<u8>)>,
    /// Blocks each ext4 grow asked for.
    pub grows: Vec<u64>,
    pub fail_grow: Option<Errno>,
}

#[derive(Clone, Default)]
pub struct FakeKernel(Rc<RefCell<FakeState>>);

impl FakeKernel {
    /// A fake with `lo` and one virtio NIC `eth0` (MAC 52:54:00:12:34:56).
    pub fn with_nic() -> FakeKernel {
        let fake = FakeKernel::default();
        fake.state().links = vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some([0; 6]),
                loopback: true,
                ethernet: false,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                loopback: false,
                ethernet: true,
            },
        ];
        fake
    }

    pub fn state(&self) -> RefMut<'_, FakeState> {
        self.0.borrow_mut()
    }

    fn call(&self, c: String) {
        self.state().calls.push(c);
    }
}

impl Mounter for FakeKernel {
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
        self.call(format!("mount {}", spec.target));
        if let Some(e) = self.state().fail_mounts.get(&spec.target) {
            return Err(*e);
        }
        self.state().mounts.push(spec.clone());
        Ok(())
    }

    fn umount_lazy(&mut self, target: &str) -> Result<(), Errno> {
        self.call(format!("umount {target}"));
        self.state().umounts.push(target.into());
        Ok(())
    }
}

impl BlockOps for FakeKernel {
    fn reread_partitions(&mut self, _disk: &std::fs::File) -> Result<(), Errno> {
        self.call("reread-partitions".into());
        for (path, bytes) in std::mem::take(&mut self.state().reread_creates) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|_| Errno::EIO)?;
            }
            std::fs::write(&path, bytes).map_err(|_| Errno::EIO)?;
        }
        Ok(())
    }

    fn zero_range(&mut self, dev: &std::fs::File, offset: u64, len: u64) -> Result<(), Errno> {
        use std::os::unix::fs::FileExt as _;
        self.call(format!("zero {offset}+{len}"));
        dev.write_all_at(&vec![0u8; len as usize], offset)
            .map_err(|_| Errno::EIO)
    }

    fn grow_ext4(&mut self, _mountpoint: &Path, blocks: u64) -> Result<(), Errno> {
        self.call(format!("grow-ext4 {blocks}"));
        if let Some(e) = self.state().fail_grow {
            return Err(e);
        }
        self.state().grows.push(blocks);
        Ok(())
    }
}

impl RootSwitcher for FakeKernel {
    fn root_is_initramfs(&mut self) -> Result<bool, SwitchRootError> {
        Ok(self.state().root_is_initramfs)
    }

    fn switch_root(&mut self) -> Result<(), SwitchRootError> {
        self.call("switch-root".into());
        self.state().root_is_initramfs = false;
        Ok(())
    }
}

impl ModuleLoader for FakeKernel {
    fn kernel_release(&mut self) -> String {
        "6.1.0-test".into()
    }

    fn load(&mut self, path: &Path) -> Result<LoadOutcome, LoadError> {
        let shown = path.display().to_string();
        let name = module_name(&shown);
        self.call(format!("load {name}"));
        let mut s = self.state();
        s.module_calls.push(shown.clone());
        if s.refuse_modules.contains(&name) {
            return Err(LoadError::Kernel {
                path: shown,
                errno: Errno::ENOEXEC,
            });
        }
        if s.already_loaded.insert(name) {
            Ok(LoadOutcome::Loaded)
        } else {
            Ok(LoadOutcome::AlreadyLoaded)
        }
    }
}

impl Rebooter for FakeKernel {
    fn disable_cad(&mut self) -> Result<(), Errno> {
        self.call("disable-cad".into());
        Ok(())
    }

    fn sync(&mut self) {
        self.call("sync".into());
    }

    fn reboot(&mut self, action: PowerAction) -> Result<(), Errno> {
        self.call(format!("reboot {action:?}"));
        self.state().reboots.push(action);
        Ok(())
    }

    fn kill_all(&mut self) -> Result<(), Errno> {
        self.call("kill-all".into());
        Ok(())
    }
}

impl HostSetter for FakeKernel {
    fn set_hostname(&mut self, name: &str) -> Result<(), Errno> {
        self.call(format!("hostname {name}"));
        self.state().hostname = Some(name.into());
        Ok(())
    }

    fn set_time(&mut self, to: std::time::SystemTime) -> Result<(), Errno> {
        let secs = to
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.call(format!("set-time {secs}"));
        Ok(())
    }
}

impl NetConfigurator for FakeKernel {
    fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let mut s = self.state();
        s.link_queries += 1;
        if s.links_hidden_for > 0 {
            s.links_hidden_for -= 1;
            return Ok(s.links.iter().filter(|l| l.loopback).cloned().collect());
        }
        Ok(s.links.clone())
    }

    fn set_up(&mut self, index: u32) -> Result<(), NetError> {
        self.call(format!("up {index}"));
        self.state().ups.push(index);
        Ok(())
    }

    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        self.call(format!("addr {index} {address}/{prefix}"));
        self.state().addresses.push((index, address, prefix));
        Ok(())
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetError> {
        self.call(format!("route {index} via {gateway}"));
        self.state().routes.push((index, gateway));
        Ok(())
    }

    fn dhcp_transport(&mut self, link: &Link) -> Result<Box<dyn DhcpTransport>, NetError> {
        self.call(format!("dhcp {}", link.name));
        Ok(Box::new(FakeDhcpServer::slirp()))
    }
}

/// A scripted DHCP server behaving like QEMU's slirp (10.0.2.15/24, gateway 10.0.2.2,
/// DNS 10.0.2.3), answering instantly, with knobs for misbehaviour.
pub struct FakeDhcpServer {
    pub received: Vec<DhcpMessage>,
    pending: VecDeque<Vec<u8>>,
    pub drop_discovers: usize,
    pub nak_requests: usize,
    /// Also send garbage and replies for other transactions before each real reply.
    pub noise: bool,
    pub mask: Option<Ipv4Addr>,
}

impl FakeDhcpServer {
    pub fn slirp() -> FakeDhcpServer {
        FakeDhcpServer {
            received: Vec::new(),
            pending: VecDeque::new(),
            drop_discovers: 0,
            nak_requests: 0,
            noise: false,
            mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        }
    }

    fn reply(&self, to: &DhcpMessage, t: MessageType) -> DhcpMessage {
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let mut m = DhcpMessage::request(to.xid, to.chaddr, t);
        m.op = Op::Reply;
        m.siaddr = server;
        m.server_id = Some(server);
        if t != MessageType::Nak {
            m.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
            m.subnet_mask = self.mask;
            m.routers = vec![server];
            m.dns = vec![Ipv4Addr::new(10, 0, 2, 3)];
            m.lease_time = Some(86400);
        }
        m
    }
}

impl DhcpTransport for FakeDhcpServer {
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        let msg = DhcpMessage::decode(packet).map_err(std::io::Error::other)?;
        self.received.push(msg.clone());
        let reply = match msg.message_type {
            Some(MessageType::Discover) if self.drop_discovers > 0 => {
                self.drop_discovers -= 1;
                return Ok(());
            }
            Some(MessageType::Discover) => self.reply(&msg, MessageType::Offer),
            Some(MessageType::Request) if self.nak_requests > 0 => {
                self.nak_requests -= 1;
                self.reply(&msg, MessageType::Nak)
            }
            Some(MessageType::Request) => self.reply(&msg, MessageType::Ack),
            _ => return Ok(()),
        };
        if self.noise {
            self.pending.push_back(vec![1, 2, 3]);
            let mut other = reply.clone();
            other.xid ^= 0xffff;
            self.pending.push_back(other.encode());
            let mut other_mac = reply.clone();
            other_mac.chaddr[5] ^= 1;
            self.pending.push_back(other_mac.encode());
        }
        self.pending.push_back(reply.encode());
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        // Nothing to say: behave like a socket that waits out its timeout.
        std::thread::sleep(timeout);
        Ok(None)
    }
}
