//! The VM harness used by `strakectl cluster up` and the end-to-end tests: boots a Strake image
//! in QEMU (TCG unless KVM is asked for), forwards guest ports to host loopback only, captures the
//! serial console to a file, and powers the guest off through QMP. A [`Lab`] gives a group of
//! VMs a private network of taps on bridges, inside a network namespace of its own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod lab;

pub use lab::Lab;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start {binary}: {source} (install the qemu-system-x86 package)")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QEMU exited early with {status}; last console lines:\n{tail}")]
    Exited { status: String, tail: String },
    #[error("timed out after {waited:?} waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        what: String,
        waited: Duration,
        tail: String,
    },
    #[error(
        "the guest's kernel went silent for {silent:?} before running init; last console lines:\n{tail}"
    )]
    KernelHung { silent: Duration, tail: String },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("invalid VM configuration: {0}")]
    Config(String),
}

/// What the kernel prints just before it runs init.
const KERNEL_DONE: &str = "Freeing unused kernel image";
/// How long a kernel that has started printing may stay silent before it counts as hung.
pub const KERNEL_SILENCE: Duration = Duration::from_secs(30);

/// CPU acceleration. KVM hangs guests on the machines this project is developed on, so TCG is
/// the default; `STRAKE_QEMU_ACCEL=kvm` opts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn from_env() -> Self {
        match std::env::var("STRAKE_QEMU_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }
}

/// One guest port forwarded to 127.0.0.1 on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// One network interface of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nic {
    /// QEMU's user-mode networking: the guest is 10.0.2.15, the host's loopback is 10.0.2.2,
    /// and the listed guest ports are forwarded to the host's 127.0.0.1. With `netboot`, QEMU's
    /// DHCP names a boot file its TFTP server serves, and firmware tries this NIC after the
    /// disks.
    User {
        forwards: Vec<PortForward>,
        netboot: Option<NetBoot>,
    },
    /// A tap device that already exists in the network namespace QEMU runs in (a [`Lab`]'s),
    /// with the guest's MAC address.
    Tap { ifname: String, mac: [u8; 6] },
}

/// What QEMU's user-mode networking offers a PXE boot: a directory served by TFTP and the file
/// DHCP names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetBoot {
    pub tftp_root: PathBuf,
    pub bootfile: String,
}

impl Nic {
    /// User-mode networking with these forwards.
    pub fn user(forwards: Vec<PortForward>) -> Nic {
        Nic::User {
            forwards,
            netboot: None,
        }
    }
}

/// UEFI firmware (OVMF) for a VM that boots from its first disk's ESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uefi {
    /// The firmware code (read-only).
    pub code: PathBuf,
    /// This VM's own copy of the variable store (boot entries, LoaderEntryOneShot).
    pub vars: PathBuf,
}

/// Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Uefi {
    /// OVMF with a fresh variable store at `vars` (copied from the package's template unless
    /// the file exists: a VM keeps its variables across boots).
    pub fn ovmf(vars: PathBuf) -> Result<Uefi, QemuError> {
        for p in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(p).exists() {
                return Err(QemuError::Config(format!(
                    "{p} is missing (apt-get install ovmf)"
                )));
            }
        }
        if !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars).map_err(io(&vars))?;
        }
        Ok(Uefi {
            code: OVMF_CODE.into(),
            vars,
        })
    }
}

/// A VM to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub name: String,
    /// Booted directly with `-kernel`/`-initrd`/`-append`, unless `uefi` is set or the path is
    /// empty (then the BIOS boots from the disks).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command line (console and panic settings are added).
    pub cmdline: String,
    /// Boot through UEFI firmware from the first disk instead of `kernel`.
    pub uefi: Option<Uefi>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// The guest's interfaces, `eth0` first.
    pub nics: Vec<Nic>,
    /// Virtio disks, `/dev/vda` first: qcow2 when the name ends in `.qcow2`, raw otherwise; a
    /// name ending in `.iso` is a CD-ROM instead (on virtio-scsi: the cloud kernel has no AHCI).
    /// Firmware tries them in this order.
    pub disks: Vec<PathBuf>,
    /// Files handed to the guest through fw_cfg, by name (`opt/...`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Directory for the serial log, QMP socket and pid file.
    pub state_dir: PathBuf,
}

impl VmConfig {
    pub fn serial_log(&self) -> PathBuf {
        self.state_dir.join(format!("{}.console.log", self.name))
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.state_dir.join(format!("{}.qmp", self.name))
    }
    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.pid", self.name))
    }

    /// The full QEMU argument list (without the binary).
    pub fn args(&self) -> Result<Vec<String>, QemuError> {
        if self.memory_mib < 256 {
            return Err(QemuError::Config(format!(
                "{} MiB of memory is too little; use at least 256",
                self.memory_mib
            )));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(QemuError::Config(format!(
                "VM name {:?} must be alphanumeric or '-'",
                self.name
            )));
        }
        let mut net_args = Vec::new();
        for (i, nic) in self.nics.iter().enumerate() {
            let mut bootindex = None;
            let (netdev, mac) = match nic {
                Nic::User { forwards, netboot } => {
                    let mut netdev = format!("user,id=net{i}");
                    for f in forwards {
                        // Bound to loopback only: nothing outside this machine can reach the
                        // guest.
                        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
                    }
                    if let Some(boot) = netboot {
                        let root = boot.tftp_root.display().to_string();
                        if root.contains(',') || boot.bootfile.contains(',') {
                            return Err(QemuError::Config(format!(
                                "TFTP root {root:?} and boot file {:?} must not contain ','",
                                boot.bootfile
                            )));
                        }
                        netdev.push_str(&format!(",tftp={root},bootfile={}", boot.bootfile));
                        bootindex = Some(self.disks.len() + i);
                    }
                    (netdev, None)
                }
                Nic::Tap { ifname, mac } => {
                    if ifname.is_empty()
                        || ifname.len() > 15
                        || !ifname
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(QemuError::Config(format!(
                            "tap name {ifname:?} must be 1-15 characters of [A-Za-z0-9_-]"
                        )));
                    }
                    if mac[0] & 1 == 1 {
                        return Err(QemuError::Config(format!(
                            "MAC {} is a multicast address",
                            format_mac(mac)
                        )));
                    }
                    (
                        format!("tap,id=net{i},ifname={ifname},script=no,downscript=no"),
                        Some(format_mac(mac)),
                    )
                }
            };
            net_args.push("-netdev".to_string());
            net_args.push(netdev);
            net_args.push("-device".to_string());
            let mut boot = bootindex
                .map(|n| format!(",bootindex={n}"))
                .unwrap_or_default();
            if self.uefi.is_some() && bootindex.is_some() {
                // A UEFI network boot is OVMF's own PXE: the NIC's iPXE ROM would take over, and
                // the kernels it starts from EFI hang at ExitBootServices.
                boot.push_str(",romfile=");
            }
            net_args.push(match mac {
                Some(mac) => format!("virtio-net-pci,netdev=net{i},mac={mac}{boot}"),
                None => format!("virtio-net-pci,netdev=net{i}{boot}"),
            });
        }
        let accel = match self.accel {
            Accel::Tcg => "tcg,thread=multi",
            Accel::Kvm => "kvm",
        };
        let cmdline = format!("console=ttyS0 panic=-1 {}", self.cmdline)
            .trim()
            .to_string();
        let s = |x: &str| x.to_string();
        let mut args = vec![
            s("-name"),
            self.name.clone(),
            s("-machine"),
            s("q35"),
            s("-accel"),
            s(accel),
            s("-cpu"),
            s(if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            }),
            s("-smp"),
            self.cpus.to_string(),
            s("-m"),
            self.memory_mib.to_string(),
        ];
        match &self.uefi {
            // No kernel and no UEFI: the BIOS boots from the disks (an ISO first).
            None if self.kernel.as_os_str().is_empty() => {}
            None => args.extend([
                s("-kernel"),
                self.kernel.display().to_string(),
                s("-initrd"),
                self.initrd.display().to_string(),
                s("-append"),
                cmdline,
            ]),
            Some(uefi) => {
                for (unit, file, readonly) in [(0, &uefi.code, ",readonly=on"), (1, &uefi.vars, "")]
                {
                    let path = file.display().to_string();
                    if path.contains(',') {
                        return Err(QemuError::Config(format!(
                            "firmware path {path:?} must not contain ','"
                        )));
                    }
                    args.push(s("-drive"));
                    args.push(format!(
                        "if=pflash,format=raw,unit={unit},file={path}{readonly}"
                    ));
                }
            }
        }
        args.extend(net_args);
        for (name, file) in &self.fw_cfg {
            let path = file.display().to_string();
            if !name.starts_with("opt/") || name.contains(',') || path.contains(',') {
                return Err(QemuError::Config(format!(
                    "fw_cfg entry {name:?} ({path:?}): the name must start with opt/ and neither may contain ','"
                )));
            }
            args.push(s("-fw_cfg"));
            args.push(format!("name={name},file={path}"));
        }
        // Firmware tries the disks in order; a kernel given to QEMU boots first by itself (its
        // loader takes bootindex 0).
        let by_firmware = self.kernel.as_os_str().is_empty();
        let order = |i: usize| {
            if by_firmware {
                format!(",bootindex={i}")
            } else {
                String::new()
            }
        };
        for (i, disk) in self.disks.iter().enumerate() {
            let path = disk.display().to_string();
            if path.contains(',') {
                return Err(QemuError::Config(format!(
                    "disk path {path:?} must not contain ','"
                )));
            }
            if path.ends_with(".iso") {
                if !args.iter().any(|a| a == "virtio-scsi-pci,id=scsi0") {
                    args.push(s("-device"));
                    args.push(s("virtio-scsi-pci,id=scsi0"));
                }
                args.push(s("-drive"));
                args.push(format!(
                    "file={path},format=raw,if=none,id=disk{i},media=cdrom,readonly=on"
                ));
                args.push(s("-device"));
                args.push(format!("scsi-cd,drive=disk{i},bus=scsi0.0{}", order(i)));
                continue;
            }
            let format = if path.ends_with(".qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            args.push(s("-drive"));
            args.push(format!(
                "file={path},format={format},if=none,id=disk{i},discard=unmap"
            ));
            args.push(s("-device"));
            args.push(format!("virtio-blk-pci,drive=disk{i}{}", order(i)));
        }
        args.extend([
            s("-device"),
            s("virtio-rng-pci"),
            s("-display"),
            s("none"),
            s("-vga"),
            s("none"),
            s("-serial"),
            format!("file:{}", self.serial_log().display()),
            s("-monitor"),
            s("none"),
            s("-qmp"),
            format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
            s("-no-reboot"),
            s("-nodefaults"),
        ]);
        Ok(args)
    }
}

/// `52:54:00:12:34:56` form.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A running VM.
pub struct Vm {
    cfg: VmConfig,
    child: Option<Child>,
    started: Instant,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QemuError + '_ {
    move |source| QemuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Vm {
    /// Starts QEMU as a child of this process.
    pub fn start(cfg: VmConfig) -> Result<Vm, QemuError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
        let _ = std::fs::remove_file(cfg.serial_log());
        let _ = std::fs::remove_file(cfg.qmp_socket());
        let args = cfg.args()?;
        let binary = "qemu-system-x86_64".to_string();
        let child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(cfg.state_dir.join(format!("{}.qemu.log", cfg.name)))
                    .map_err(io(&cfg.state_dir))?,
            ))
            .spawn()
            .map_err(|source| QemuError::Spawn { binary, source })?;
        std::fs::write(cfg.pid_file(), child.id().to_string()).map_err(io(&cfg.pid_file()))?;
        Ok(Vm {
            cfg,
            child: Some(child),
            started: Instant::now(),
        })
    }

    /// Starts QEMU detached (its own session, not our child), for a cluster that outlives us.
    pub fn start_detached(cfg: VmConfig) -> Result<u32, QemuError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
        let _ = std::fs::remove_file(cfg.serial_log());
        let _ = std::fs::remove_file(cfg.qmp_socket());
        let mut args = cfg.args()?;
        args.push("-daemonize".into());
        args.push("-pidfile".into());
        args.push(cfg.pid_file().display().to_string());
        let binary = "qemu-system-x86_64".to_string();
        let out = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| QemuError::Spawn { binary, source })?;
        if !out.status.success() {
            return Err(QemuError::Exited {
                status: out.status.to_string(),
                tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let pid = std::fs::read_to_string(cfg.pid_file()).map_err(io(&cfg.pid_file()))?;
        pid.trim()
            .parse()
            .map_err(|_| QemuError::Config(format!("bad pid file {}", cfg.pid_file().display())))
    }

    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.cfg.serial_log()).unwrap_or_default()
    }

    /// Fails with the console's last lines if QEMU has exited.
    pub fn check_alive(&mut self) -> Result<(), QemuError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let mut tail = tail(&self.cfg.serial_log(), 40);
            let qemu_err = std::fs::read_to_string(
                self.cfg
                    .state_dir
                    .join(format!("{}.qemu.log", self.cfg.name)),
            )
            .unwrap_or_default();
            if !qemu_err.trim().is_empty() {
                tail.push_str("\nqemu: ");
                tail.push_str(qemu_err.trim());
            }
            self.child = None;
            return Err(QemuError::Exited {
                status: status.to_string(),
                tail,
            });
        }
        Ok(())
    }

    /// Starts the VM and waits (up to `timeout`) for its kernel to finish its own start and run
    /// init. A guest whose console stops for [`KERNEL_SILENCE`] before that has hung: TCG hangs
    /// guests there, rarely and at a different place each time. Such a guest is powered off and
    /// started again once, saying so. Not for a boot that must not be repeated (a one-shot
    /// trial slot): a second start would boot something else.
    pub fn start_past_kernel(cfg: VmConfig, timeout: Duration) -> Result<Vm, QemuError> {
        let mut vm = Vm::start(cfg.clone())?;
        match vm.wait_past_kernel(timeout) {
            Err(QemuError::KernelHung { tail, .. }) => {
                eprintln!(
                    "guest {} hung in the kernel's start (console silent for {KERNEL_SILENCE:?}); powering it off and starting it again once. Last lines:\n{tail}",
                    cfg.name
                );
                vm.kill();
                let mut again = Vm::start(cfg)?;
                again.wait_past_kernel(timeout)?;
                Ok(again)
            }
            other => other.map(|()| vm),
        }
    }

    fn wait_past_kernel(&mut self, timeout: Duration) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        let (mut seen, mut since) = (0, Instant::now());
        loop {
            let text = self.console();
            if text.contains(KERNEL_DONE) {
                return Ok(());
            }
            self.check_alive()?;
            if text.len() != seen {
                (seen, since) = (text.len(), Instant::now());
            }
            // Firmware may be silent for a while; a kernel that printed and then stopped is not.
            if text.contains("Linux version") && since.elapsed() > KERNEL_SILENCE {
                return Err(QemuError::KernelHung {
                    silent: KERNEL_SILENCE,
                    tail: tail(&self.cfg.serial_log(), 20),
                });
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    what: format!("{KERNEL_DONE:?} on the console"),
                    waited: timeout,
                    tail: tail(&self.cfg.serial_log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the console shows `needle`; returns the console text.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.contains(needle) {
                return Ok(text);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    what: format!("{needle:?} on the console"),
                    waited: timeout,
                    tail: tail(&self.cfg.serial_log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `check` until it returns true, failing early if QEMU dies.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    what: what.into(),
                    waited: timeout,
                    tail: tail(&self.cfg.serial_log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit by itself (the guest rebooted or powered off: QEMU runs with
    /// `-no-reboot`). Fails with the console's tail if it is still running after `timeout`.
    pub fn wait_exit(&mut self, what: &str, timeout: Duration) -> Result<(), QemuError> {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    what: what.into(),
                    waited: timeout,
                    tail: tail(&self.cfg.serial_log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Presses the ACPI power button and waits for QEMU to exit; kills it after `timeout`.
    /// Returns true if the guest powered off by itself.
    pub fn power_off(&mut self, timeout: Duration) -> bool {
        let _ = qmp(&self.cfg.qmp_socket(), "system_powerdown");
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        false
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one QMP command (after the capabilities handshake) and returns the reply line.
pub fn qmp(socket: &Path, command: &str) -> Result<String, QemuError> {
    let err = |e: std::io::Error| QemuError::Qmp(format!("{}: {e}", socket.display()));
    let mut stream = UnixStream::connect(socket).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(err)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(err)?; // greeting
    stream
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .map_err(err)?;
    line.clear();
    reader.read_line(&mut line).map_err(err)?;
    let cmd = serde_json::json!({"execute": command});
    stream
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(err)?;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(err)? == 0 {
            return Err(QemuError::Qmp("connection closed".into()));
        }
        // Skip asynchronous events.
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return Ok(line.trim().to_string());
        }
    }
}

/// Stops a detached VM: power button via QMP, then SIGKILL after `timeout`.
pub fn stop_detached(state_dir: &Path, name: &str, timeout: Duration) -> Result<bool, QemuError> {
    let pid_file = state_dir.join(format!("{name}.pid"));
    let pid: i32 = match std::fs::read_to_string(&pid_file) {
        Ok(p) => p
            .trim()
            .parse()
            .map_err(|_| QemuError::Config(format!("bad pid file {}", pid_file.display())))?,
        Err(_) => return Ok(false),
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = qmp(&state_dir.join(format!("{name}.qmp")), "system_powerdown");
    let deadline = Instant::now() + timeout;
    let mut clean = false;
    while Instant::now() < deadline {
        if nix::sys::signal::kill(pid, None).is_err() {
            clean = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !clean {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(&pid_file);
    Ok(clean)
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is possible).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            name: "t1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "strake.token=x".into(),
            uefi: None,
            memory_mib: 512,
            cpus: 2,
            accel: Accel::Tcg,
            nics: vec![Nic::user(vec![PortForward {
                host: 16443,
                guest: 6443,
            }])],
            disks: Vec::new(),
            fw_cfg: Vec::new(),
            state_dir: "/tmp/s".into(),
        }
    }

    #[test]
    fn fw_cfg_files_are_named_under_opt() {
        let mut c = cfg();
        c.fw_cfg = vec![("opt/strake/config".into(), "/d/m.yaml".into())];
        let a = c.args().unwrap().join(" ");
        assert!(
            a.contains("-fw_cfg name=opt/strake/config,file=/d/m.yaml"),
            "{a}"
        );
        c.fw_cfg = vec![("etc/x".into(), "/d/m.yaml".into())];
        assert!(c.args().is_err());
    }

    #[test]
    fn uefi_boots_from_firmware_instead_of_the_kernel() {
        let mut c = cfg();
        c.uefi = Some(Uefi {
            code: "/fw/code.fd".into(),
            vars: "/s/vm.vars.fd".into(),
        });
        let a = c.args().unwrap().join(" ");
        assert!(!a.contains("-kernel") && !a.contains("-append"), "{a}");
        assert!(
            a.contains("-drive if=pflash,format=raw,unit=0,file=/fw/code.fd,readonly=on -drive if=pflash,format=raw,unit=1,file=/s/vm.vars.fd"),
            "{a}"
        );
    }

    #[test]
    fn disks_are_virtio_in_order_with_their_format() {
        let mut c = cfg();
        c.disks = vec!["/d/state.qcow2".into(), "/d/raw.img".into()];
        let a = c.args().unwrap().join(" ");
        assert!(
            a.contains("-drive file=/d/state.qcow2,format=qcow2,if=none,id=disk0,discard=unmap -device virtio-blk-pci,drive=disk0 -drive file=/d/raw.img,format=raw"),
            "{a}"
        );
        c.disks = vec!["/d/a,b.img".into()];
        assert!(c.args().is_err());
        // Booted by firmware: it tries the disks in their order.
        c.kernel = PathBuf::new();
        c.disks = vec!["/d/node.raw".into(), "/d/strake.iso".into()];
        let a = c.args().unwrap().join(" ");
        assert!(
            a.contains("-device virtio-scsi-pci,id=scsi0 -drive file=/d/strake.iso,format=raw,if=none,id=disk1,media=cdrom,readonly=on -device scsi-cd,drive=disk1,bus=scsi0.0,bootindex=1"),
            "{a}"
        );
        assert!(a.contains("virtio-blk-pci,drive=disk0,bootindex=0"), "{a}");
    }

    #[test]
    fn a_netboot_nic_serves_tftp_and_boots_after_the_disks() {
        let mut c = cfg();
        c.disks = vec!["/d/node.raw".into()];
        c.nics = vec![Nic::User {
            forwards: Vec::new(),
            netboot: Some(NetBoot {
                tftp_root: "/b/image".into(),
                bootfile: "strake.efi".into(),
            }),
        }];
        let a = c.args().unwrap().join(" ");
        assert!(
            a.contains("-netdev user,id=net0,tftp=/b/image,bootfile=strake.efi -device virtio-net-pci,netdev=net0,bootindex=1"),
            "{a}"
        );
        // Under UEFI the boot is OVMF's own PXE: no iPXE ROM on that NIC, and only on it.
        c.uefi = Some(Uefi {
            code: "/fw/code.fd".into(),
            vars: "/s/vars.fd".into(),
        });
        assert!(
            c.args()
                .unwrap()
                .join(" ")
                .contains("netdev=net0,bootindex=1,romfile=")
        );
        c.nics = vec![Nic::user(Vec::new())];
        assert!(!c.args().unwrap().join(" ").contains("romfile"));
        c.nics = vec![Nic::User {
            forwards: Vec::new(),
            netboot: Some(NetBoot {
                tftp_root: "/b/a,b".into(),
                bootfile: "strake.efi".into(),
            }),
        }];
        assert!(c.args().is_err());
    }

    #[test]
    fn args_use_tcg_and_loopback_forwards() {
        let a = cfg().args().unwrap().join(" ");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("hostfwd=tcp:127.0.0.1:16443-:6443"), "{a}");
        assert!(a.contains("console=ttyS0 panic=-1 strake.token=x"), "{a}");
        assert!(a.contains("-no-reboot"));
        assert!(a.contains("-netdev user,id=net0,hostfwd"), "{a}");
    }

    #[test]
    fn taps_carry_their_mac_and_come_after_user_networking() {
        let mut c = cfg();
        c.nics.push(Nic::Tap {
            ifname: "lab-tap1".into(),
            mac: [0x52, 0x54, 0, 0x77, 0, 0x0b],
        });
        let a = c.args().unwrap().join(" ");
        assert!(
            a.contains("-netdev tap,id=net1,ifname=lab-tap1,script=no,downscript=no -device virtio-net-pci,netdev=net1,mac=52:54:00:77:00:0b"),
            "{a}"
        );
        let mut c = cfg();
        c.nics = vec![Nic::Tap {
            ifname: "a b".into(),
            mac: [0x52, 0, 0, 0, 0, 1],
        }];
        assert!(c.args().is_err());
        c.nics = vec![Nic::Tap {
            ifname: "tap0".into(),
            mac: [0x01, 0, 0, 0, 0, 1],
        }];
        assert!(c.args().unwrap_err().to_string().contains("multicast"));
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = cfg();
        c.memory_mib = 64;
        assert!(c.args().is_err());
        let mut c = cfg();
        c.name = "a b".into();
        assert!(c.args().is_err());
    }
}
