//! The supervisor's decisions, without I/O: which service to start when, what to do when a child
//! exits, and whom to signal at shutdown. Time is passed in, so tests drive it with a fake clock.
//! The event loop in `runner.rs` executes these decisions.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// When to restart a service after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always restart (with backoff).
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// A supervised child of PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name used as the log prefix (`machined:`).
    pub name: String,
    /// `argv[0]` is the program path. Use `/bin/strake`, not `/proc/self/exe` (which points at
    /// the deleted initramfs file after switch-root).
    pub argv: Vec<String>,
    /// Environment on top of `PATH=/usr/sbin:/usr/bin:/sbin:/bin`.
    pub env: Vec<(String, String)>,
    pub restart: RestartPolicy,
}

impl ServiceSpec {
    pub fn new(name: &str, argv: &[&str], restart: RestartPolicy) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            restart,
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Signaled(i32),
}

impl ChildExit {
    pub fn success(self) -> bool {
        self == ChildExit::Exited(0)
    }
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with status {code}"),
            Self::Signaled(sig) => match nix::sys::signal::Signal::try_from(*sig) {
                Ok(s) => write!(f, "killed by {s}"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// Backoff schedule for restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    pid: Option<Pid>,
    started_at: Option<Instant>,
    next_start: Option<Instant>,
    delay: Duration,
    restarts: u32,
}

/// Where init publishes [`ServiceStatus`] for every service whenever one starts or exits.
pub const SERVICES_PATH: &str = "/run/strake/services.json";

/// One service as the supervisor sees it, for machined (`strakectl services`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `running`, `waiting` (to be restarted) or `stopped`.
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Since when it runs, or until when it waits, in seconds since boot (CLOCK_MONOTONIC).
    pub since: Option<f64>,
}

/// What happened to a supervised service that exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitDecision {
    pub name: String,
    pub exit: ChildExit,
    pub ran_for: Duration,
    /// `Some(delay)` when it will be restarted.
    pub restart_in: Option<Duration>,
}

/// The supervisor state.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Service>,
    backoff: Backoff,
    shutting_down: bool,
}

impl Supervisor {
    /// All services are due to start at `now`.
    pub fn new(specs: Vec<ServiceSpec>, backoff: Backoff, now: Instant) -> Supervisor {
        let services = specs
            .into_iter()
            .map(|spec| Service {
                spec,
                pid: None,
                started_at: None,
                next_start: Some(now),
                delay: backoff.initial,
                restarts: 0,
            })
            .collect();
        Supervisor {
            services,
            backoff,
            shutting_down: false,
        }
    }

    pub fn spec(&self, idx: usize) -> &ServiceSpec {
        &self.services[idx].spec
    }

    /// Services that should be started now.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        if self.shutting_down {
            return Vec::new();
        }
        (0..self.services.len())
            .filter(|&i| {
                let s = &self.services[i];
                s.pid.is_none() && s.next_start.is_some_and(|t| t <= now)
            })
            .collect()
    }

    /// Records a successful spawn.
    pub fn started(&mut self, idx: usize, pid: Pid, now: Instant) {
        let s = &mut self.services[idx];
        s.pid = Some(pid);
        s.started_at = Some(now);
        s.next_start = None;
    }

    /// Records a failed spawn; retries after the backoff delay. Returns that delay.
    pub fn start_failed(&mut self, idx: usize, now: Instant) -> Duration {
        let max = self.backoff.max;
        let s = &mut self.services[idx];
        let delay = s.delay;
        s.next_start = Some(now + delay);
        s.delay = (s.delay * 2).min(max);
        delay
    }

    /// Routes an exit status. `None` when `pid` is not a supervised service (an orphan).
    pub fn exited(&mut self, pid: Pid, exit: ChildExit, now: Instant) -> Option<ExitDecision> {
        let backoff = self.backoff;
        let shutting_down = self.shutting_down;
        let s = self.services.iter_mut().find(|s| s.pid == Some(pid))?;
        s.pid = None;
        let ran_for = s
            .started_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if ran_for >= backoff.healthy_after {
            s.delay = backoff.initial;
        }
        let restart = !shutting_down
            && match s.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Never => false,
            };
        let restart_in = restart.then(|| {
            let delay = s.delay;
            s.next_start = Some(now + delay);
            s.delay = (s.delay * 2).min(backoff.max);
            s.restarts += 1;
            delay
        });
        Some(ExitDecision {
            name: s.spec.name.clone(),
            exit,
            ran_for,
            restart_in,
        })
    }

    /// When the loop must wake up next to start something.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        self.services
            .iter()
            .filter(|s| s.pid.is_none())
            .filter_map(|s| s.next_start)
            .min()
    }

    /// Stops all restarts; returns the running services to signal.
    pub fn begin_shutdown(&mut self) -> Vec<(String, Pid)> {
        self.shutting_down = true;
        for s in &mut self.services {
            s.next_start = None;
        }
        self.running()
    }

    pub fn running(&self) -> Vec<(String, Pid)> {
        self.services
            .iter()
            .filter_map(|s| s.pid.map(|p| (s.spec.name.clone(), p)))
            .collect()
    }

    /// Every service's state; `boot` is the monotonic instant the seconds count from.
    pub fn status(&self, boot: Instant) -> Vec<ServiceStatus> {
        let secs = |t: Instant| t.saturating_duration_since(boot).as_secs_f64();
        self.services
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.name.clone(),
                state: match (s.pid, s.next_start) {
                    (Some(_), _) => "running",
                    (None, Some(_)) => "waiting",
                    (None, None) => "stopped",
                }
                .to_owned(),
                pid: s.pid.map(Pid::as_raw),
                restarts: s.restarts,
                since: match s.pid {
                    Some(_) => s.started_at.map(secs),
                    None => s.next_start.map(secs),
                },
            })
            .collect()
    }

    pub fn restarts(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| s.restarts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn sup(policies: &[RestartPolicy], t0: Instant) -> Supervisor {
        let specs = policies
            .iter()
            .enumerate()
            .map(|(i, p)| ServiceSpec::new(&format!("svc{i}"), &["/bin/strake", "x"], *p))
            .collect();
        Supervisor::new(specs, Backoff::default(), t0)
    }

    #[test]
    fn restarts_with_exponential_backoff_capped_at_30s() {
        let t0 = Instant::now();
        let mut s = sup(&[RestartPolicy::Always], t0);
        assert_eq!(s.due(t0), [0]);
        let mut now = t0;
        let mut delays = Vec::new();
        for i in 0..8 {
            let pid = Pid::from_raw(100 + i);
            s.started(0, pid, now);
            assert!(s.due(now).is_empty());
            now += secs(1);
            let d = s.exited(pid, ChildExit::Exited(1), now).expect("ours");
            let delay = d.restart_in.expect("restart");
            delays.push(delay.as_secs());
            assert_eq!(s.next_deadline(), Some(now + delay));
            assert!(s.due(now).is_empty());
            now += delay;
            assert_eq!(s.due(now), [0]);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(s.restarts("svc0"), Some(8));
    }

    #[test]
    fn status_says_what_each_service_is_doing() {
        let t0 = Instant::now();
        let mut s = sup(&[RestartPolicy::Always, RestartPolicy::Never], t0);
        s.started(0, Pid::from_raw(7), t0 + secs(2));
        s.started(1, Pid::from_raw(8), t0 + secs(2));
        s.exited(Pid::from_raw(8), ChildExit::Exited(0), t0 + secs(3));
        let st = s.status(t0);
        assert_eq!(
            (st[0].state.as_str(), st[0].pid, st[0].since),
            ("running", Some(7), Some(2.0))
        );
        assert_eq!((st[1].state.as_str(), st[1].pid), ("stopped", None));
        s.exited(Pid::from_raw(7), ChildExit::Exited(1), t0 + secs(4));
        let st = s.status(t0);
        assert_eq!((st[0].state.as_str(), st[0].restarts), ("waiting", 1));
        assert_eq!(st[0].since, Some(5.0), "waits until its restart");
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let t0 = Instant::now();
        let mut s = sup(&[RestartPolicy::Always], t0);
        for (i, ran) in [1u64, 1, 1, 61, 1].iter().enumerate() {
            let now = t0 + secs(1000 * i as u64);
            s.started(0, Pid::from_raw(10), now);
            let d = s
                .exited(Pid::from_raw(10), ChildExit::Signaled(9), now + secs(*ran))
                .expect("ours");
            let expected = [1, 2, 4, 1, 2][i];
            assert_eq!(d.restart_in, Some(secs(expected)), "round {i}");
        }
    }

    #[test]
    fn policies_decide_restarts_and_orphans_are_not_ours() {
        let t0 = Instant::now();
        let mut s = sup(
            &[
                RestartPolicy::OnFailure,
                RestartPolicy::Never,
                RestartPolicy::OnFailure,
            ],
            t0,
        );
        for i in 0..3 {
            s.started(i, Pid::from_raw(i as i32 + 1), t0);
        }
        assert_eq!(
            s.exited(Pid::from_raw(1), ChildExit::Exited(0), t0)
                .expect("ours")
                .restart_in,
            None
        );
        assert_eq!(
            s.exited(Pid::from_raw(2), ChildExit::Exited(3), t0)
                .expect("ours")
                .restart_in,
            None
        );
        assert_eq!(
            s.exited(Pid::from_raw(3), ChildExit::Exited(3), t0)
                .expect("ours")
                .restart_in,
            Some(secs(1))
        );
        assert_eq!(s.exited(Pid::from_raw(999), ChildExit::Exited(0), t0), None);
        // The same pid reported twice is an orphan the second time.
        assert_eq!(s.exited(Pid::from_raw(3), ChildExit::Exited(0), t0), None);
    }

    #[test]
    fn failed_spawns_back_off_too() {
        let t0 = Instant::now();
        let mut s = sup(&[RestartPolicy::Always], t0);
        assert_eq!(s.start_failed(0, t0), secs(1));
        assert!(s.due(t0).is_empty());
        assert_eq!(s.due(t0 + secs(1)), [0]);
        assert_eq!(s.start_failed(0, t0 + secs(1)), secs(2));
    }

    #[test]
    fn shutdown_stops_restarts_and_lists_running() {
        let t0 = Instant::now();
        let mut s = sup(&[RestartPolicy::Always, RestartPolicy::Always], t0);
        s.started(0, Pid::from_raw(5), t0);
        let running = s.begin_shutdown();
        assert_eq!(running, [("svc0".to_string(), Pid::from_raw(5))]);
        assert!(s.due(t0 + secs(100)).is_empty());
        assert_eq!(s.next_deadline(), None);
        let d = s
            .exited(Pid::from_raw(5), ChildExit::Signaled(15), t0)
            .expect("ours");
        assert_eq!(d.restart_in, None);
        assert!(s.running().is_empty());
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(ChildExit::Exited(2).to_string(), "exited with status 2");
        assert_eq!(ChildExit::Signaled(9).to_string(), "killed by SIGKILL");
    }
}
