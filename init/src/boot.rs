//! The boot sequence as data: nine named phases, each a list of tasks over a [`BootCtx`] that
//! holds the kernel seams and what earlier tasks learned.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

use crate::config::{BootConfig, ConfigError, IpConfig};
use crate::console::{self, ConsoleError, RingFile};
use crate::dhcp::RetryPolicy;
use crate::machine::{self, Source};
use crate::modules::{self, DEFAULT_MODULES, ModuleIndex};
use crate::mounts::{self, MountError, host_path};
use crate::network::{self, NetError, NetState};
use crate::sequence::{Phase, task};
use crate::state::{self, StateError};
use crate::supervisor::ServiceSpec;
use crate::switch_root::SwitchRootError;
use crate::sys::{
    BlockOps, HostSetter, Link, ModuleLoader, Mounter, NetConfigurator, RootSwitcher,
};

/// Why a boot phase failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    SwitchRoot(#[from] SwitchRootError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("setting hostname {name}: {errno}")]
    Hostname { name: String, errno: Errno },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("service list: {0}")]
    Services(String),
    #[error("STATE: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    MachineConfig(String),
}

/// Opens the network configurator (rtnetlink in production) when the hostname or network phase
/// first needs it.
pub type NetFactory = Box<dyn FnMut() -> Result<Box<dyn NetConfigurator>, NetError>>;

/// Turns the boot configuration into the services to supervise.
pub type MakeServices = Box<dyn Fn(&BootConfig) -> Vec<ServiceSpec>>;

/// The kernel seams used by the boot phases.
pub struct Seams {
    pub root_switcher: Box<dyn RootSwitcher>,
    pub mounter: Box<dyn Mounter>,
    pub modules: Box<dyn ModuleLoader>,
    pub host: Box<dyn HostSetter>,
    pub block: Box<dyn BlockOps>,
    pub net_factory: NetFactory,
}

/// Everything the boot tasks share.
pub struct BootCtx {
    /// `/` in production; a temporary directory in tests. Files are read and written under it.
    pub root: PathBuf,
    pub seams: Seams,
    /// Open `/dev/console` in the console-log phase (off in tests).
    pub use_dev_console: bool,
    pub config: BootConfig,
    /// What the command line alone says; a machine config is folded over a copy of it.
    pub cmdline: BootConfig,
    pub default_modules: Vec<String>,
    pub nic_timeout: Duration,
    pub dhcp_policy: RetryPolicy,
    pub make_services: MakeServices,
    // Learned along the way:
    pub net: Option<Box<dyn NetConfigurator>>,
    pub nic: Option<Link>,
    pub hostname: Option<String>,
    pub net_state: Option<NetState>,
    pub services: Vec<ServiceSpec>,
    /// The machine config in force, once one is found.
    pub machine: Option<machine::Loaded>,
    /// STATE, once the state phase ran.
    pub state: Option<state::Status>,
    /// Why the machine config found on this boot cannot be used (every problem, one per line).
    pub config_problem: Option<String>,
}

impl BootCtx {
    pub fn new(root: PathBuf, seams: Seams, make_services: MakeServices) -> BootCtx {
        BootCtx {
            root,
            seams,
            use_dev_console: true,
            config: BootConfig::default(),
            cmdline: BootConfig::default(),
            default_modules: DEFAULT_MODULES.iter().map(|s| (*s).to_owned()).collect(),
            nic_timeout: Duration::from_secs(10),
            dhcp_policy: RetryPolicy::default(),
            make_services,
            net: None,
            nic: None,
            hostname: None,
            net_state: None,
            services: Vec::new(),
            machine: None,
            state: None,
            config_problem: None,
        }
    }

    fn net(&mut self) -> Result<&mut dyn NetConfigurator, BootError> {
        if self.net.is_none() {
            self.net = Some((self.seams.net_factory)()?);
        }
        match self.net.as_deref_mut() {
            Some(n) => Ok(n),
            None => Err(BootError::Net(NetError::Netlink {
                op: "open",
                message: "no configurator".into(),
            })),
        }
    }

    fn write(&self, abs: &str, data: &[u8]) -> Result<(), BootError> {
        let path = host_path(&self.root, abs);
        let err = |source| BootError::Write {
            path: abs.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(path, data).map_err(err)
    }
}

type BootPhase = Phase<BootCtx, BootError>;

/// The boot sequence.
pub fn phases() -> Vec<BootPhase> {
    vec![
        Phase::new(
            "switch-root",
            vec![task("leave-initramfs", leave_initramfs)],
        ),
        Phase::new(
            "mounts",
            vec![
                task("base-mounts", base_mounts),
                task("cgroup-controllers", cgroup_controllers),
            ],
        ),
        Phase::new(
            "console-log",
            vec![
                task("dev-console", dev_console),
                task("log-ring", log_ring),
                task("boot-config", boot_config),
            ],
        ),
        Phase::new(
            "modules",
            vec![task("load", load_modules), task("efivarfs", efivarfs)],
        ),
        Phase::new(
            "machine-config",
            vec![
                task("find", machine_config),
                task("modules", config_modules),
            ],
        ),
        Phase::new(
            "state",
            vec![
                task("prepare", prepare_state),
                task("esp", mount_esp),
                task("modules", stored_config_modules),
                task("maintenance", decide_maintenance),
            ],
        ),
        Phase::new(
            "hostname",
            vec![task("choose", choose_hostname), task("set", set_hostname)],
        ),
        Phase::new(
            "network",
            vec![
                task("loopback", loopback),
                task("interface", interface),
                task("publish", publish_network),
                task("time", sync_time),
            ],
        ),
        Phase::new(
            "services",
            vec![
                task("machine-settings", machine_settings),
                task("plan", plan_services),
            ],
        ),
    ]
}

fn leave_initramfs(ctx: &mut BootCtx) -> Result<(), BootError> {
    if ctx.seams.root_switcher.root_is_initramfs()? {
        ctx.seams.root_switcher.switch_root()?;
    } else {
        tracing::info!(target: "strake_init::boot", "root is not the initramfs rootfs; not switching");
    }
    Ok(())
}

fn base_mounts(ctx: &mut BootCtx) -> Result<(), BootError> {
    Ok(mounts::mount_all(
        ctx.seams.mounter.as_mut(),
        &ctx.root,
        &mounts::base_mounts(),
    )?)
}

fn cgroup_controllers(ctx: &mut BootCtx) -> Result<(), BootError> {
    match mounts::enable_cgroup_controllers(&ctx.root) {
        Ok(list) => {
            tracing::info!(target: "strake_init::mounts", "cgroup2 controllers enabled: {}", list.join(" "));
            Ok(())
        }
        // Some controllers refused (e.g. a realtime cpu quirk): the others work; say so.
        Err(e @ MountError::Controllers { .. }) => {
            tracing::warn!(target: "strake_init::mounts", "{e}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn dev_console(ctx: &mut BootCtx) -> Result<(), BootError> {
    if ctx.use_dev_console
        && let Err(e) = console::use_dev_console("/dev/console")
    {
        // Keep logging to the console the kernel gave us.
        tracing::warn!(target: "strake_init::console", "{e}");
    }
    Ok(())
}

fn log_ring(ctx: &mut BootCtx) -> Result<(), BootError> {
    let ring = RingFile::open(
        &host_path(&ctx.root, console::LOG_PATH),
        console::RING_FILE_LIMIT,
    )?;
    console::global().attach_ring(ring);
    Ok(())
}

fn boot_config(ctx: &mut BootCtx) -> Result<(), BootError> {
    let cmdline = match std::fs::read_to_string(host_path(&ctx.root, "/proc/cmdline")) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(target: "strake_init::config", "reading /proc/cmdline: {e}; using defaults");
            String::new()
        }
    };
    let (config, warnings) = BootConfig::parse_cmdline(&cmdline);
    for w in &warnings {
        tracing::warn!(target: "strake_init::config", "{w}");
    }
    console::global().set_debug(config.debug);
    ctx.cmdline = config.clone();
    tracing::info!(target: "strake_init::config", "role {:?}, ip {}", config.role, describe_ip(&config.ip));
    config.save(host_path(&ctx.root, BootConfig::RUNTIME_PATH))?;
    ctx.config = config;
    Ok(())
}

fn describe_ip(ip: &IpConfig) -> String {
    match ip {
        IpConfig::Dhcp => "dhcp".into(),
        IpConfig::Static(s) => format!("{}/{} static", s.address, s.prefix),
    }
}

fn load_modules(ctx: &mut BootCtx) -> Result<(), BootError> {
    let mut names = ctx.default_modules.clone();
    names.extend(ctx.config.extra_modules.iter().cloned());
    if mounts::is_uefi(&ctx.root) {
        names.push("efivarfs".into());
    }
    load_named(ctx, &names);
    Ok(())
}

/// Loads `names` and their dependencies; problems are warnings (a missing module is not fatal).
/// Loads what mounting `fs` needs (there is no modprobe to load it on demand).
fn load_fs_modules(ctx: &mut BootCtx, fs: crate::cfgdrive::Fs) {
    let names: Vec<String> = fs.modules().iter().map(|m| (*m).to_owned()).collect();
    load_named(ctx, &names);
}

fn load_named(ctx: &mut BootCtx, names: &[String]) {
    let release = ctx.seams.modules.kernel_release();
    let index = match ModuleIndex::read(&ctx.root, &release) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(target: "strake_init::modules", "{e}; loading no modules");
            return;
        }
    };
    let report = modules::load_modules(
        ctx.seams.modules.as_mut(),
        &index,
        &ctx.root,
        &release,
        names,
    );
    for w in &report.warnings {
        tracing::warn!(target: "strake_init::modules", "{w}");
    }
    tracing::info!(
        target: "strake_init::modules",
        "loaded {} modules ({} already present, {} failed): {}",
        report.loaded.len(),
        report.already_loaded.len(),
        report.failed.len(),
        report.loaded.join(" ")
    );
}

fn efivarfs(ctx: &mut BootCtx) -> Result<(), BootError> {
    if !mounts::is_uefi(&ctx.root) {
        return Ok(());
    }
    if !mounts::mount_efivarfs(ctx.seams.mounter.as_mut())? {
        tracing::warn!(target: "strake_init::mounts", "efivarfs is not available in this kernel; EFI variables are inaccessible");
    }
    Ok(())
}

fn prepare_state(ctx: &mut BootCtx) -> Result<(), BootError> {
    mount_state(ctx)?;
    if ctx.state.as_ref().and_then(|s| s.device.as_ref()).is_none() {
        return Ok(());
    }
    // A config applied through the machine API wins over every other source.
    let promoted = machine::has_staged(&ctx.root);
    if let Some(text) = machine::applied(&ctx.root) {
        let loaded = text
            .map_err(|e| format!("reading {}: {e}", machine::APPLIED))
            .and_then(|text| machine::load(&text, Source::Api));
        let loaded = match loaded {
            Ok(l) => l,
            Err(message) => {
                unusable(ctx, message);
                return Ok(());
            }
        };
        // The API's config replaces one given on this boot, usable or not.
        ctx.config_problem = None;
        if promoted {
            tracing::info!(target: "strake_init::machine", "the config staged through the machine API takes effect on this boot");
        }
        if let Some(given) = ctx.machine.as_ref().filter(|l| l.source != Source::State) {
            tracing::warn!(target: "strake_init::machine", "the machine config from {} is ignored: one applied through the machine API is on STATE ({})", given.source.describe(), machine::APPLIED);
        }
        return adopt(ctx, loaded);
    }
    // A config given on this boot is kept for the next; without one, the kept one applies.
    match &ctx.machine {
        Some(l) if l.source != Source::State => {
            machine::store(&ctx.root, &l.yaml).map_err(|source| BootError::Write {
                path: machine::STORED.into(),
                source,
            })?;
            tracing::info!(target: "strake_init::machine", "machine config kept on STATE ({})", machine::STORED);
        }
        Some(_) => {}
        // A config given on this boot that is not usable is not replaced by an older one.
        None if ctx.config_problem.is_some() => {}
        None => {
            if let Some(text) = machine::stored(&ctx.root) {
                match text
                    .map_err(|e| format!("reading {}: {e}", machine::STORED))
                    .and_then(|text| machine::load(&text, Source::State))
                {
                    Ok(loaded) => adopt(ctx, loaded)?,
                    Err(message) => unusable(ctx, message),
                }
            }
        }
    }
    Ok(())
}

/// Finds (or on the disk the configuration names, makes) STATE and mounts it.
fn mount_state(ctx: &mut BootCtx) -> Result<(), BootError> {
    let selector = ctx
        .machine
        .as_ref()
        .and_then(|m| m.config.machine.install.as_ref())
        .and_then(|i| i.disk_selector.clone());
    let wanted = match (&ctx.config.state_disk, selector) {
        (Some(disk), _) => Some(disk.clone()),
        (None, Some(selector)) => Some(state::select_disk(&ctx.root, &selector)?),
        (None, None) => None,
    };
    // Booted live from the ISO with a disk to install: the disk gets the ISO's ESP too.
    let medium = wanted.as_ref().and_then(|_| crate::media::find(&ctx.root));
    if let Some(name) = &medium {
        load_fs_modules(ctx, crate::cfgdrive::Fs::Iso9660);
        if !mounts::is_uefi(&ctx.root) {
            tracing::warn!(target: "strake_init::state", "booted from /dev/{name} by BIOS: a disk installed from it boots by UEFI only");
        }
    }
    let status = state::prepare(
        &ctx.root,
        wanted.as_deref(),
        medium.as_deref(),
        ctx.seams.mounter.as_mut(),
        ctx.seams.block.as_mut(),
    )?;
    state::publish(&ctx.root, &status).map_err(|source| BootError::Write {
        path: state::STATUS_PATH.into(),
        source,
    })?;
    ctx.state = Some(status);
    Ok(())
}

/// On a UEFI boot, mounts the ESP of STATE's disk at [`crate::slots::ESP_MOUNT`], where
/// upgrades write the other slot. Not fatal: without it the node runs but cannot upgrade.
fn mount_esp(ctx: &mut BootCtx) -> Result<(), BootError> {
    if !mounts::is_uefi(&ctx.root) {
        return Ok(());
    }
    let Some(device) = ctx.state.as_ref().and_then(|s| s.device.clone()) else {
        return Ok(());
    };
    let part = device.trim_start_matches("/dev/");
    let esp = state::scan(&ctx.root)
        .into_iter()
        .find(|d| d.partitions.iter().any(|p| p.name == part))
        .and_then(|d| {
            d.partitions
                .into_iter()
                .find(|p| p.label.as_deref() == Some("ESP"))
        });
    let Some(esp) = esp else {
        return Ok(());
    };
    load_fs_modules(ctx, crate::cfgdrive::Fs::Vfat);
    let target = crate::slots::ESP_MOUNT;
    if let Err(e) = std::fs::create_dir_all(host_path(&ctx.root, target)) {
        tracing::warn!(target: "strake_init::state", "creating {target}: {e}");
        return Ok(());
    }
    let spec = crate::sys::MountSpec::new(
        &format!("/dev/{}", esp.name),
        target,
        "vfat",
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("umask=0077"),
    );
    match ctx.seams.mounter.mount(&spec) {
        Ok(()) => {
            let running = crate::slots::selected(&ctx.root)
                .unwrap_or_else(|| "(not chosen by systemd-boot)".into());
            tracing::info!(target: "strake_init::state", "ESP /dev/{} mounted at {target}; booted entry {running}", esp.name);
        }
        Err(e) => {
            tracing::warn!(target: "strake_init::state", "mounting the ESP /dev/{}: {e}; upgrades are off", esp.name);
        }
    }
    Ok(())
}

/// With no machine config from any source and nothing on the command line that makes the node
/// a member of a cluster, the node waits for one in maintenance mode.
fn decide_maintenance(ctx: &mut BootCtx) -> Result<(), BootError> {
    const APPLY: &str =
        "apply one with `strakectl apply-config --insecure --nodes <address> --file <config.yaml>`";
    if let Some(problem) = &ctx.config_problem {
        let first = problem.lines().next().unwrap_or_default().to_owned();
        enter_maintenance(ctx)?;
        tracing::error!(target: "strake_init::machine", "maintenance mode: {first} (every problem is listed above). Fix it and {APPLY}");
    } else if ctx.machine.is_none() && !ctx.config.node_keys {
        enter_maintenance(ctx)?;
        tracing::warn!(target: "strake_init::machine", "no machine config (kernel command line, config drive, fw_cfg or STATE) and no strake.role, strake.token or strake.api: maintenance mode. To leave it, {APPLY}");
    }
    Ok(())
}

/// Only the command line's settings, and maintenance mode, for the services.
fn enter_maintenance(ctx: &mut BootCtx) -> Result<(), BootError> {
    ctx.config = ctx.cmdline.clone();
    ctx.config.maintenance = true;
    Ok(ctx
        .config
        .save(host_path(&ctx.root, BootConfig::RUNTIME_PATH))?)
}

/// Maintenance mode's hand-off: machined validated a config and asks init to install it. Init
/// validates it again, makes it the one in force, prepares STATE on the disk it names (or uses
/// the STATE already mounted) and keeps it there. The caller reboots into it.
pub fn install_handoff(ctx: &mut BootCtx) -> Result<String, BootError> {
    if !ctx.config.maintenance {
        return Err(BootError::MachineConfig(
            "the node is not in maintenance mode: apply configs through the machine API".into(),
        ));
    }
    let text = match machine::handoff(&ctx.root) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return Err(BootError::MachineConfig(format!(
                "reading {}: {e}",
                machine::HANDOFF
            )));
        }
        None => {
            return Err(BootError::MachineConfig(format!(
                "no config at {}",
                machine::HANDOFF
            )));
        }
    };
    let loaded = machine::load(&text, Source::Api).map_err(BootError::MachineConfig)?;
    let previous = (ctx.config.clone(), ctx.machine.take());
    adopt(ctx, loaded)?;
    let kept = keep_handoff(ctx, &text);
    if kept.is_err() {
        // Still in maintenance mode, with what it had: no config in force.
        (ctx.config, ctx.machine) = previous;
        ctx.config
            .save(host_path(&ctx.root, BootConfig::RUNTIME_PATH))?;
        let in_force = host_path(&ctx.root, machine::IN_FORCE);
        if in_force.exists() {
            std::fs::remove_file(&in_force).map_err(|source| BootError::Write {
                path: machine::IN_FORCE.into(),
                source,
            })?;
        }
    }
    kept
}

fn keep_handoff(ctx: &mut BootCtx, text: &str) -> Result<String, BootError> {
    let mounted = ctx.state.as_ref().and_then(|s| s.device.clone());
    if mounted.is_none() {
        mount_state(ctx)?;
    }
    let Some(status) = ctx.state.clone().filter(|s| s.device.is_some()) else {
        return Err(BootError::MachineConfig(
            "this machine has no STATE partition and the config names no install disk (machine.install), so it could not be kept across the reboot".into(),
        ));
    };
    let device = status.device.unwrap_or_default();
    machine::store_at(&ctx.root, machine::APPLIED, text).map_err(|source| BootError::Write {
        path: machine::APPLIED.into(),
        source,
    })?;
    let how = match (mounted.is_some(), status.partitioned, status.formatted) {
        (true, _, _) => "kept it on STATE",
        (false, true, _) if status.esp.is_some() => {
            "installed Strake on the disk (an ESP with systemd-boot and slot A, and STATE) and kept it on STATE"
        }
        (false, true, _) => "partitioned the disk, formatted STATE and kept it there",
        (false, false, true) => "formatted STATE and kept it there",
        (false, false, false) => "kept it on STATE",
    };
    let message = format!("installed the config: {how} ({device}); the node reboots into it now");
    tracing::info!(target: "strake_init::machine", "{message}");
    Ok(message)
}

/// The config given on this boot: inline on the command line, else on a config drive, else
/// through QEMU's fw_cfg. One that cannot be read or is not valid puts the node in maintenance
/// mode with every problem on the console, rather than letting it run without it.
fn machine_config(ctx: &mut BootCtx) -> Result<(), BootError> {
    let found = match ctx.config.machine_config.take() {
        Some(yaml) => Some((Ok(yaml), Source::CommandLine)),
        None => match crate::cfgdrive::find(&ctx.root) {
            Some((name, fs)) => {
                tracing::info!(target: "strake_init::machine", "config drive /dev/{name} ({})", fs.fstype());
                load_fs_modules(ctx, fs);
                let text = crate::cfgdrive::read(&ctx.root, ctx.seams.mounter.as_mut(), &name, fs);
                Some((text, Source::ConfigDrive))
            }
            None => machine::fw_cfg(&ctx.root).map(|text| {
                (
                    text.map_err(|e| format!("reading {}: {e}", machine::FW_CFG)),
                    Source::FwCfg,
                )
            }),
        },
    };
    let Some((text, source)) = found else {
        return Ok(());
    };
    match text.and_then(|yaml| machine::load(&yaml, source)) {
        Ok(loaded) => adopt(ctx, loaded),
        Err(message) => {
            unusable(ctx, message);
            Ok(())
        }
    }
}

/// Records a config that cannot be used; the node goes to maintenance mode.
fn unusable(ctx: &mut BootCtx, message: String) {
    for line in message.lines() {
        tracing::error!(target: "strake_init::machine", "{line}");
    }
    ctx.config_problem = Some(message);
}

/// Loads the modules the machine config given on this boot adds.
fn config_modules(ctx: &mut BootCtx) -> Result<(), BootError> {
    load_config_modules(ctx, |s| !matches!(s, Source::State | Source::Api))
}

/// Loads the modules the machine config kept on STATE adds, when that is the one in force.
fn stored_config_modules(ctx: &mut BootCtx) -> Result<(), BootError> {
    load_config_modules(ctx, |s| matches!(s, Source::State | Source::Api))
}

fn load_config_modules(ctx: &mut BootCtx, from: fn(Source) -> bool) -> Result<(), BootError> {
    let Some(loaded) = ctx.machine.as_ref().filter(|l| from(l.source)) else {
        return Ok(());
    };
    let names: Vec<String> = loaded
        .config
        .machine
        .kernel
        .modules
        .iter()
        .map(|m| m.name.clone())
        .collect();
    if !names.is_empty() {
        load_named(ctx, &names);
    }
    Ok(())
}

/// Makes a validated machine config the one in force: folds it over the command line's
/// settings and rewrites the services' copy of them.
fn adopt(ctx: &mut BootCtx, loaded: machine::Loaded) -> Result<(), BootError> {
    // Fold over the command line's settings alone, not over a config this one replaces.
    let mut config = ctx.cmdline.clone();
    config.maintenance = false;
    ctx.config = config;
    for field in machine::fold(&loaded.config, &mut ctx.config) {
        tracing::warn!(target: "strake_init::machine", "{field}: set in the machine config but not applied by this version");
    }
    tracing::info!(
        target: "strake_init::machine",
        "machine config from {}: role {:?}, hostname {}, ip {}",
        loaded.source.describe(),
        ctx.config.role,
        ctx.config.hostname.as_deref().unwrap_or("(from the NIC)"),
        describe_ip(&ctx.config.ip)
    );
    ctx.config
        .save(host_path(&ctx.root, BootConfig::RUNTIME_PATH))?;
    machine::store_at(&ctx.root, machine::IN_FORCE, &loaded.yaml).map_err(|source| {
        BootError::Write {
            path: machine::IN_FORCE.into(),
            source,
        }
    })?;
    ctx.machine = Some(loaded);
    Ok(())
}

fn machine_settings(ctx: &mut BootCtx) -> Result<(), BootError> {
    let Some(loaded) = &ctx.machine else {
        return Ok(());
    };
    for failure in machine::apply_sysctls(&ctx.root, &loaded.config) {
        tracing::warn!(target: "strake_init::machine", "{failure}");
    }
    match machine::install_cluster_ca(&ctx.root, &loaded.config)
        .map_err(BootError::MachineConfig)?
    {
        machine::CaInstall::Written => {
            tracing::info!(target: "strake_init::machine", "cluster CA from cluster.ca put in {}", machine::PKI_DIR);
        }
        machine::CaInstall::Kept => tracing::warn!(
            target: "strake_init::machine",
            "{} holds another cluster CA than cluster.ca: keeping it (every certificate of this cluster hangs on it); `strakectl reset` to start over with the config's",
            machine::PKI_DIR
        ),
        machine::CaInstall::NotGiven | machine::CaInstall::Same => {}
    }
    machine::write_files(&ctx.root, &loaded.config).map_err(BootError::MachineConfig)
}

fn wanted_interface(config: &BootConfig) -> Option<String> {
    match &config.ip {
        IpConfig::Static(s) => s.interface.clone(),
        IpConfig::Dhcp => None,
    }
}

fn find_nic(ctx: &mut BootCtx) -> Result<Link, BootError> {
    if let Some(nic) = &ctx.nic {
        return Ok(nic.clone());
    }
    let wanted = wanted_interface(&ctx.config);
    let timeout = ctx.nic_timeout;
    let nic = network::wait_for_interface(
        ctx.net()?,
        wanted.as_deref(),
        timeout,
        Duration::from_millis(50),
    )?;
    tracing::info!(target: "strake_init::network", "using interface {} (index {})", nic.name, nic.index);
    ctx.nic = Some(nic.clone());
    Ok(nic)
}

fn choose_hostname(ctx: &mut BootCtx) -> Result<(), BootError> {
    let name = match ctx.config.hostname.clone() {
        Some(h) => h,
        None => network::default_hostname(find_nic(ctx)?.mac),
    };
    ctx.hostname = Some(name);
    Ok(())
}

fn set_hostname(ctx: &mut BootCtx) -> Result<(), BootError> {
    let name = ctx
        .hostname
        .clone()
        .unwrap_or_else(|| network::default_hostname(None));
    ctx.seams
        .host
        .set_hostname(&name)
        .map_err(|errno| BootError::Hostname {
            name: name.clone(),
            errno,
        })?;
    ctx.write("/etc/hostname", format!("{name}\n").as_bytes())?;
    tracing::info!(target: "strake_init::hostname", "hostname is {name}");
    Ok(())
}

fn loopback(ctx: &mut BootCtx) -> Result<(), BootError> {
    Ok(network::configure_loopback(ctx.net()?)?)
}

fn interface(ctx: &mut BootCtx) -> Result<(), BootError> {
    let nic = find_nic(ctx)?;
    let ip = ctx.config.ip.clone();
    let hostname = ctx
        .hostname
        .clone()
        .unwrap_or_else(|| network::default_hostname(nic.mac));
    let policy = ctx.dhcp_policy;
    let mac = nic.mac.unwrap_or_default();
    let mut xid = move || network::random_u32(mac);
    let state = network::configure_interface(ctx.net()?, &nic, &ip, &hostname, policy, &mut xid)?;
    tracing::info!(
        target: "strake_init::network",
        "{} is {}/{} via {} ({})",
        state.interface,
        state.address,
        state.prefix,
        state.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        state.source
    );
    ctx.net_state = Some(state);
    Ok(())
}

fn publish_network(ctx: &mut BootCtx) -> Result<(), BootError> {
    if let Some(state) = &ctx.net_state {
        let hostname = ctx.hostname.clone().unwrap_or_default();
        network::write_files(&ctx.root, &hostname, state)?;
    }
    // The netlink runtime is only for this phase.
    ctx.net = None;
    Ok(())
}

/// Steps the clock from the first of the machine config's time servers that answers. Never
/// fatal: a node with a wrong clock still boots, and says so.
fn sync_time(ctx: &mut BootCtx) -> Result<(), BootError> {
    let Some(time) = ctx.machine.as_ref().map(|m| m.config.machine.time.clone()) else {
        return Ok(());
    };
    if time.disabled || time.servers.is_empty() {
        return Ok(());
    }
    for server in &time.servers {
        let addr = match crate::ntp::parse_server(server) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(target: "strake_init::time", "{e}");
                continue;
            }
        };
        match crate::ntp::query(addr, Duration::from_secs(2)) {
            Ok(offset) => {
                let to = crate::ntp::adjusted(std::time::SystemTime::now(), offset);
                match ctx.seams.host.set_time(to) {
                    Ok(()) => {
                        tracing::info!(target: "strake_init::time", "clock stepped by {:.3} s from {addr}", offset as f64 / 1e9)
                    }
                    Err(e) => {
                        tracing::warn!(target: "strake_init::time", "setting the clock from {addr}: {e}")
                    }
                }
                return Ok(());
            }
            Err(e) => tracing::warn!(target: "strake_init::time", "{e}"),
        }
    }
    tracing::warn!(target: "strake_init::time", "no time server answered; the clock stays as the hardware set it");
    Ok(())
}

fn plan_services(ctx: &mut BootCtx) -> Result<(), BootError> {
    let services = (ctx.make_services)(&ctx.config);
    let mut seen = std::collections::HashSet::new();
    for s in &services {
        if s.argv.is_empty() {
            return Err(BootError::Services(format!(
                "service {} has an empty argv",
                s.name
            )));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(BootError::Services(format!(
                "service name {} is used twice",
                s.name
            )));
        }
        tracing::info!(target: "strake_init::boot", "service {}: {}", s.name, s.argv.join(" "));
    }
    ctx.services = services;
    Ok(())
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
