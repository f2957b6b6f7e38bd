//! strake-init: PID 1 of the Strake appliance — boot phases (switch-root, mounts, console log,
//! modules, hostname, network with its own DHCP client), the service supervisor, reaper and shutdown.
//! It must not hold cluster logic: services (machined, controlplane, agent) are opaque child processes.

pub mod boot;
pub mod cfgdrive;
pub mod config;
pub mod console;
pub mod dhcp;
pub mod machine;
pub mod media;
pub mod modules;
pub mod mounts;
pub mod network;
pub mod ntp;
pub mod power_button;
pub mod runner;
pub mod sequence;
pub mod shutdown;
pub mod slots;
pub mod state;
pub mod supervisor;
pub mod switch_root;
pub mod sys;

#[cfg(test)]
mod fake;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use config::{BootConfig, ConfigError, ConfigWarning, IpConfig, Role, StaticIp};
pub use supervisor::{Backoff, RestartPolicy, ServiceSpec};
pub use sys::PowerAction;

use boot::{BootCtx, Seams};
use sys::{LinuxSys, NetConfigurator, Rebooter};

/// Runs PID 1: the boot sequence, then the supervisor loop, until a power-off or reboot request.
/// `make_services` turns the boot configuration into the services to supervise (argv[0] should be
/// `/bin/strake`). Never returns; a failed boot phase is logged and the node waits, still reaping
/// and still answering power-off/reboot, with no services running.
pub fn run(make_services: impl Fn(&BootConfig) -> Vec<ServiceSpec> + 'static) -> ! {
    console::install();
    let started = Instant::now();
    if let Err(e) = runner::block_signals() {
        tracing::error!(target: "strake_init", "{e}");
    }
    let mut sys = LinuxSys;
    if let Err(e) = sys.disable_cad() {
        tracing::warn!(target: "strake_init", "disabling ctrl-alt-del reboot: {e}");
    }
    tracing::info!(target: "strake_init", "strake init {} starting", env!("CARGO_PKG_VERSION"));

    let seams = Seams {
        root_switcher: Box::new(switch_root::LinuxRootSwitcher),
        mounter: Box::new(LinuxSys),
        modules: Box::new(LinuxSys),
        host: Box::new(LinuxSys),
        block: Box::new(LinuxSys),
        net_factory: Box::new(|| {
            Ok(Box::new(network::RtNetlink::new()?) as Box<dyn NetConfigurator>)
        }),
    };
    let mut ctx = BootCtx::new(PathBuf::from("/"), seams, Box::new(make_services));
    let phases = boot::phases();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        sequence::run_sequence(&phases, &mut ctx)
    }));
    let services = match outcome {
        Ok(Ok(_)) => {
            tracing::info!(target: "strake_init", "boot sequence done in {:.3}s", started.elapsed().as_secs_f64());
            std::mem::take(&mut ctx.services)
        }
        Ok(Err(e)) => {
            tracing::error!(target: "strake_init", "boot failed: {e}. No services will start; power off or reboot to retry");
            Vec::new()
        }
        Err(_) => {
            tracing::error!(target: "strake_init", "boot sequence panicked. No services will start");
            Vec::new()
        }
    };
    supervise(services, ctx)
}

/// How long init waits after answering a maintenance-mode hand-off before rebooting, so that
/// machined can pass the answer on to the client.
const HANDOFF_REBOOT_DELAY: Duration = Duration::from_secs(2);

fn supervise(services: Vec<ServiceSpec>, mut ctx: BootCtx) -> ! {
    let mut runner =
        match runner::Runner::new(services, Backoff::default(), Some(PathBuf::from("/"))) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(target: "strake_init", "cannot start the supervisor: {e}");
                reap_forever()
            }
        };
    let mut reboot_at: Option<Instant> = None;
    loop {
        let wait = reboot_at.map_or(Duration::from_secs(60), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let events = match std::panic::catch_unwind(AssertUnwindSafe(|| runner.step(wait))) {
            Ok(events) => events,
            Err(_) => {
                tracing::error!(target: "strake_init", "supervisor step panicked; continuing");
                Vec::new()
            }
        };
        if events.iter().any(|e| {
            matches!(
                e,
                runner::RunnerEvent::Started { .. }
                    | runner::RunnerEvent::Exited(_)
                    | runner::RunnerEvent::SpawnFailed { .. }
            )
        }) {
            publish_services(&runner);
        }
        if events.contains(&runner::RunnerEvent::ConfigHandedOver) && reboot_at.is_none() {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                boot::install_handoff(&mut ctx).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("installing the config panicked".into()));
            let answer = match outcome {
                Ok(message) => {
                    reboot_at = Some(Instant::now() + HANDOFF_REBOOT_DELAY);
                    machine::HandoffResult { ok: true, message }
                }
                Err(message) => {
                    tracing::error!(target: "strake_init::machine", "the handed-over config was not installed: {message}");
                    machine::HandoffResult { ok: false, message }
                }
            };
            if let Err(e) = machine::answer_handoff(&ctx.root, &answer) {
                tracing::error!(target: "strake_init::machine", "answering machined: {e}");
            }
        }
        if reboot_at.is_some_and(|t| Instant::now() >= t) {
            reboot_at = None;
            runner.request_shutdown(PowerAction::Reboot, &mut Vec::new());
        }
        if let Some(action) = runner.shutdown_ready() {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut reap = || runner.reap_until_empty(Instant::now() + Duration::from_secs(2));
            shutdown::finalize(&mut LinuxSys, &mut LinuxSys, &mountinfo, action, &mut reap);
            reap_forever()
        }
    }
}

/// Writes every service's state to [`supervisor::SERVICES_PATH`] for machined.
fn publish_services(runner: &runner::Runner) {
    let (secs, nanos) = console::monotonic_now();
    let since_boot = Duration::new(secs, nanos);
    let boot = Instant::now()
        .checked_sub(since_boot)
        .unwrap_or_else(Instant::now);
    let status = runner.supervisor().status(boot);
    let result = serde_json::to_string(&status)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let path = PathBuf::from(supervisor::SERVICES_PATH);
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, &path)
        });
    if let Err(e) = result {
        tracing::warn!(target: "strake_init", "writing {}: {e}", supervisor::SERVICES_PATH);
    }
}

/// The last resort when nothing else can run: keep reaping so zombies never pile up.
fn reap_forever() -> ! {
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(3600)),
        }
    }
}
