//! `strake`: the one binary on a Strake node. As PID 1 (or `/init`) it is the init system;
//! otherwise the first argument picks a role: `controlplane`, `agent`, or `shim` (the
//! per-container process that drives libcontainer).

mod agent;
mod controlplane;
mod inventory;
mod machined;
mod membership;
mod restore;
mod snapshots;
mod vip;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strake_init::{BootConfig, RestartPolicy, Role, ServiceSpec};

#[derive(Parser)]
#[command(name = "strake", version, about = "Strake node binary")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run as PID 1.
    Init,
    /// Run the control plane: store, API server, scheduler, controllers.
    Controlplane(controlplane::Args),
    /// Run the node agent.
    Agent(agent::Args),
    /// Serve the machine API (maintenance mode until the node has a config).
    Machined(machined::Args),
    /// Per-container shim (internal; started by the agent).
    #[command(disable_help_flag = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The services init supervises for a node with this configuration.
fn services(cfg: &BootConfig) -> Vec<ServiceSpec> {
    let mut out = vec![ServiceSpec::new(
        "machined",
        &["/bin/strake", "machined"],
        RestartPolicy::Always,
    )];
    if cfg.maintenance {
        // Nothing else until a config arrives: machined hands it to init, which reboots.
    } else if cfg.role == Role::Controlplane {
        out.push(ServiceSpec::new(
            "controlplane",
            &["/bin/strake", "controlplane"],
            RestartPolicy::Always,
        ));
    }
    if !cfg.maintenance {
        out.push(ServiceSpec::new(
            "agent",
            &["/bin/strake", "agent"],
            RestartPolicy::Always,
        ));
    }
    for s in &mut out {
        s.env.push((
            "RUST_LOG".into(),
            if cfg.debug {
                format!("debug,openraft=info,{QUIET}")
            } else {
                format!("info,openraft=warn,{QUIET}")
            },
        ));
        s.env.push(("STRAKE_UNDER_INIT".into(), "1".into()));
    }
    out
}

/// openraft warns whenever a writer stops waiting for its answer; the store answers writers
/// as soon as the apply computed their responses and drops openraft's own answer by design.
const QUIET: &str = "openraft::raft::responder=error";

/// Loads the boot configuration init wrote, if any.
pub fn boot_config() -> Option<BootConfig> {
    let path = PathBuf::from(BootConfig::RUNTIME_PATH);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("ignoring unreadable {}: {e}", path.display());
            None
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,openraft=warn,{QUIET}"))
    });
    let under_init = std::env::var_os("STRAKE_UNDER_INIT").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // Under init, lines get init's boot-relative timestamps; don't add a second clock.
    if under_init {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// mimalloc: the control plane's write path allocates and frees JSON trees at a high rate,
/// and glibc's malloc spent ~40% of its CPU in a 5,000-node benchmark (cluster-bench: 621 →
/// 1,273 pods/s scheduled, 709 → 522 MiB RSS with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::process::id() == 1 || argv0.ends_with("/init") || argv0 == "init" {
        strake_init::run(services);
    }
    // The shim is exec'd per container operation: dispatch before anything else runs.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        return strake_runtime::shim::main(&args[2..]);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init => strake_init::run(services),
        Cmd::Shim { args } => strake_runtime::shim::main(&args),
        Cmd::Controlplane(args) => {
            init_logging();
            run_async(controlplane::run(args))
        }
        Cmd::Agent(args) => {
            init_logging();
            run_async(agent::run(args))
        }
        Cmd::Machined(args) => {
            init_logging();
            run_async(machined::run(args))
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
